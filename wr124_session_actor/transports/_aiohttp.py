"""The aiohttp transport (asyncio only): one ``ClientSession`` for the transport's life."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Final

import aiohttp

from .._exceptions import StoreTimeout, StoreUnavailable
from ._base import CloseGuard, Params, Response, detached

__all__ = ["AiohttpTransport"]

#: Bodies larger than this go as a stream of 64 KiB pieces (``io.BytesIO``): aiohttp warns about raw bytes
#: past 1 MiB (a ``ResourceWarning``, an exception where warnings are errors), and a piece at a time lets
#: the event loop run between them.
_STREAMED_BODY: Final = 64 * 1024


class AiohttpTransport:
    """HTTP over one pooled ``aiohttp.ClientSession``, created on first use inside the running loop."""

    name = "aiohttp"

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._guard = CloseGuard()

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                timeout=aiohttp.ClientTimeout(total=None),  # the caller's deadline bounds the call
                auto_decompress=True,
            )
            self._session = session
            await self._guard.arm(session.close)
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params = (),
        content: bytes | None = None,
    ) -> Response:
        """Send one request (a redirect is answered as it is: the store follows it); map aiohttp's errors
        to store errors."""
        session = await self._client()
        data = io.BytesIO(content) if content is not None and len(content) > _STREAMED_BODY else content
        try:
            async with session.request(
                method, url, headers=headers, params=list(params) or None, data=data, allow_redirects=False
            ) as resp:
                body = await resp.read()
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body)
        except TimeoutError as exc:
            raise StoreTimeout(f"{method} {url}: timed out") from detached(exc)
        except aiohttp.ClientError as exc:
            raise StoreUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from detached(exc)

    async def aclose(self) -> None:
        """Close the session and its connector."""
        await self._guard.aclose()
        self._session = None
