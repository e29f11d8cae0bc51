"""The one-method HTTP transport interface, and how a transport's client is closed for sure."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CloseGuard", "Params", "Response", "Transport", "detached", "utf8_values"]

#: Query parameters, in order (a key may repeat).
Params = Sequence[tuple[str, str]]


def utf8_values(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """The headers with their values as UTF-8 bytes, as aiohttp sends them: a project id or key beyond
    Latin-1 (a project named in Chinese) goes out as its UTF-8 bytes, where httpcore and http.client
    refuse such text."""
    return [(name, value.encode()) for name, value in headers.items()]


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP response, fully read. Header names are lower case."""

    status: int
    headers: Mapping[str, str]
    content: bytes


class Transport(Protocol):
    """Sends one HTTP request. Raises ``StoreUnavailable`` (cannot connect, reset) or ``StoreTimeout``."""

    #: The client library's name: "aiohttp", "httpx", "urllib" or "mock".
    name: str

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Params = (),
        content: bytes | None = None,
    ) -> Response:
        """Send a request and return the whole response; HTTP error statuses are returned, not raised."""
        ...

    async def aclose(self) -> None:
        """Close the client and its connections."""
        ...


def detached(exc: BaseException) -> BaseException:
    """``exc`` without its traceback, to chain to the store error a transport raises for it.

    The traceback holds the transport's own frame (``self``: the transport and its close guard). A client
    library's error is often in a reference cycle of its own (a frame that keeps its last error), which
    then kept a dropped manager's transport alive until the garbage collector freed it together with its
    client, before the guard could close it ("Unclosed client session" after failed calls). The message
    names the error; its type and ``__cause__`` stay.
    """
    return exc.with_traceback(None)


async def _close_when_finalized(close: Callable[[], Awaitable[object]]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await close()


class CloseGuard:
    """Closes a pooled client even when its owner never calls ``aclose()``.

    The original usage keeps a bare manager and never closes it. A parked async generator is
    finalized by the event loop (asyncio's ``shutdown_asyncgens`` at the end of ``asyncio.run``, trio
    at the end of ``trio.run``), or soon after it is garbage-collected; its ``finally`` closes the
    client there, so no "Unclosed client session" warning is left behind. (Trio, which closes such a
    generator in a system task, says so with a ResourceWarning, shown only where warnings are on.) The
    close callable must not hold the guard's owner: that would make a reference cycle, which the garbage
    collector finalizes as a whole, the client with it, before the guard can close it.
    """

    def __init__(self) -> None:
        self._guard: AsyncGenerator[None, None] | None = None

    async def arm(self, close: Callable[[], Awaitable[object]]) -> None:
        """Call ``close`` when the running event loop finalizes us, unless :meth:`aclose` did first."""
        self._guard = _close_when_finalized(close)
        await self._guard.asend(None)

    async def aclose(self) -> None:
        """Run the close now (once)."""
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.aclose()
