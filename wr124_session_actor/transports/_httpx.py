"""The httpx transport (asyncio and trio): httpx's connection pool (``httpcore``) for the transport's life.

A store call is one plain request with bytes in and bytes out, so the transport talks to the pool httpx
itself sends through, ``httpcore.AsyncConnectionPool``, and skips the client layer's per-request work
(URL and header models, cookies, auth and redirect handling, content decoding), none of which applies
here: about 1.5× less CPU per request. Under trio, where aiohttp cannot run, that is what bounds a
server without the batch endpoint (one POST per document). httpcore comes with the ``httpx`` extra.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping

import httpcore

from .._exceptions import StoreTimeout, StoreUnavailable
from ._base import CloseGuard, Params, Response

__all__ = ["HttpxTransport"]

#: httpcore's failures that mean "the server could not be reached or the exchange broke".
_UNAVAILABLE = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ConnectionNotAvailable,
                httpcore.ProxyError, httpcore.UnsupportedProtocol)


class HttpxTransport:
    """HTTP over one ``httpcore.AsyncConnectionPool`` (httpx's own pool), created on first use."""

    name = "httpx"

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        self._pool: httpcore.AsyncConnectionPool | None = None
        self._guard = CloseGuard()

    async def _get_pool(self) -> httpcore.AsyncConnectionPool:
        if self._pool is None:
            pool = httpcore.AsyncConnectionPool(max_connections=self._max_connections)
            self._pool = pool
            await self._guard.arm(pool.aclose)
        return self._pool

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params = (),
        content: bytes | None = None,
    ) -> Response:
        """Send one request (no timeout of its own: the caller's deadline bounds it); map httpcore's
        errors to store errors."""
        pool = await self._get_pool()
        if params:
            url = f"{url}?{urllib.parse.urlencode(list(params))}"
        try:
            resp = await pool.request(method, url, headers=list(headers.items()), content=content)
        except httpcore.TimeoutException as exc:
            raise StoreTimeout(f"{method} {url}: timed out") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
        return Response(resp.status, response_headers, resp.content)

    async def aclose(self) -> None:
        """Close the pool and its connections."""
        await self._guard.aclose()
        self._pool = None
