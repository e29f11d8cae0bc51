"""The httpx transport (asyncio and trio): httpx's connection pools (``httpcore``) for the transport's life.

A store call is one plain request with bytes in and bytes out, so the transport talks to the pool httpx
itself sends through, ``httpcore.AsyncConnectionPool``, and skips the client layer's per-request work
(URL and header models, cookies, auth and redirect handling, content decoding), none of which applies
here: about 1.5× less CPU per request. Under trio, where aiohttp cannot run, that is what bounds a
server without the batch endpoint (one POST per document). httpcore comes with the ``httpx`` extra.

Each request borrows a pool of one connection from a free list (the most recently used first) and gives
it back. One shared pool looks at every pooled connection twice per request (whether it expired: a
``poll`` of its socket each): with 8 requests in flight that was 16 system calls per request, and an
eighth of the client's time under trio.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from functools import partial

import anyio
import httpcore

from .._exceptions import StoreTimeout, StoreUnavailable
from ._base import CloseGuard, Params, Response, detached, utf8_values

__all__ = ["HttpxTransport"]

#: httpcore's failures that mean "the server could not be reached or the exchange broke".
_UNAVAILABLE = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ConnectionNotAvailable,
                httpcore.ProxyError, httpcore.UnsupportedProtocol)


class HttpxTransport:
    """HTTP over ``httpcore`` pools of one connection each, made as requests need them (see the module
    docstring): at most ``max_connections`` requests at once (more wait), and as many pools kept open."""

    name = "httpx"

    def __init__(self, *, max_connections: int = 100) -> None:
        self._max_connections = max_connections
        #: Pools not in use, the most recently used last.
        self._idle: list[httpcore.AsyncConnectionPool] = []
        self._busy: set[httpcore.AsyncConnectionPool] = set()
        self._slots: anyio.Semaphore | None = None
        self._guard: CloseGuard | None = None

    async def _open(self) -> anyio.Semaphore:
        """The request slots, made (with the close guard) in the running event loop on first use."""
        if self._slots is None or self._guard is None:
            self._guard = CloseGuard()
            # The pools, not the transport: a guard holding the transport would keep it in a reference
            # cycle, which the garbage collector finalizes as a whole (its sockets warning, unclosed).
            await self._guard.arm(partial(_close_pools, self._idle, self._busy))
            self._slots = anyio.Semaphore(self._max_connections)
        return self._slots

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
        if params:
            url = f"{url}?{urllib.parse.urlencode(list(params))}"
        async with await self._open():
            pool = self._idle.pop() if self._idle else httpcore.AsyncConnectionPool(max_connections=1)
            self._busy.add(pool)
            try:
                resp = await pool.request(method, url, headers=utf8_values(headers), content=content)
            except httpcore.TimeoutException as exc:
                raise StoreTimeout(f"{method} {url}: timed out") from detached(exc)
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from detached(exc)
            finally:
                self._busy.discard(pool)
                if self._guard is not None:
                    self._idle.append(pool)
                else:  # the transport was closed meanwhile
                    with anyio.CancelScope(shield=True):
                        await pool.aclose()
        response_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers}
        return Response(resp.status, response_headers, resp.content)

    async def aclose(self) -> None:
        """Close the pools and their connections."""
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.aclose()


async def _close_pools(idle: list[httpcore.AsyncConnectionPool], busy: set[httpcore.AsyncConnectionPool]) -> None:
    pools = [*idle, *busy]
    idle.clear()
    busy.clear()
    for pool in pools:
        await pool.aclose()
