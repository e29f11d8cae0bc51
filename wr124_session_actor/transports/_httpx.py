"""The httpx transport (asyncio and trio): one ``httpx.AsyncClient`` for the transport's life."""

from __future__ import annotations

from collections.abc import Mapping

import httpx

from .._exceptions import StoreTimeout, StoreUnavailable
from ._base import CloseGuard, Params, Response

__all__ = ["HttpxTransport"]


class HttpxTransport:
    """HTTP over one pooled ``httpx.AsyncClient``, created on first use."""

    name = "httpx"

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._client: httpx.AsyncClient | None = None
        self._guard = CloseGuard()

    async def _get_client(self) -> httpx.AsyncClient:
        if self._client is None or self._client.is_closed:
            client = httpx.AsyncClient(
                timeout=None,  # the caller's deadline bounds the call
                limits=httpx.Limits(max_connections=self._max_connections),
                trust_env=False,
            )
            self._client = client
            await self._guard.arm(client.aclose)
        return self._client

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params = (),
        content: bytes | None = None,
    ) -> Response:
        """Send one request; map httpx's errors to store errors."""
        client = await self._get_client()
        try:
            resp = await client.request(method, url, headers=headers, params=list(params), content=content)
        except httpx.TimeoutException as exc:
            raise StoreTimeout(f"{method} {url}: timed out") from exc
        except httpx.TransportError as exc:
            raise StoreUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._guard.aclose()
        self._client = None
