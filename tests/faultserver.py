"""A misbehaving HTTP server on loopback, for faults the reference server never shows; and a transport
with a bug of its own."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import anyio.lowlevel
from aiohttp import web

from wr124_session_actor.transports import Response

Fault = Literal["500", "503-retry-after", "bad-json", "not-object", "reset", "hang", "404-batch"]


def closed_port_url() -> str:
    """A loopback URL on which nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _app(fault: Fault, hits: list[str]) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(f"{request.method} {request.path}")
        if fault == "500":
            return web.json_response({"error": "boom"}, status=500)
        if fault == "503-retry-after":
            return web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"})
        if fault == "bad-json":
            # 200, not 201: a 201 Created says the document was stored whatever its body (the client takes
            # it so); a 200 whose body is not the JSON asked for confirms nothing.
            return web.Response(status=200, body=b'{"id": "x", "data": [', content_type="application/json")
        if fault == "not-object":
            return web.Response(status=200, body=b"[1, 2]", content_type="application/json")
        if fault == "reset":
            transport = request.transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
            return web.Response()
        if fault == "hang":
            await asyncio.sleep(3600)
        return web.json_response({"error": "no such route"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@contextmanager
def fault_server(fault: Fault) -> Iterator[tuple[str, list[str]]]:
    """Serve ``fault`` on 127.0.0.1 in a background thread; yield its URL and the requests it saw."""
    hits: list[str] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(_app(fault, hits), handle_signals=False, shutdown_timeout=0.1)
    url: list[str] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def start() -> None:
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            url.append(f"http://127.0.0.1:{port}")

        loop.run_until_complete(start())
        # Ready once the loop runs forever: a stop asked for sooner would be lost before run_forever.
        loop.call_soon(ready.set)
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield url[0], hits
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class BrokenTransport:
    """A client library with a bug of its own: every request raises an exception nobody mapped."""

    name = "mock"

    def __init__(self) -> None:
        self.requests = 0

    async def request(self, method: str, url: str, **_: Any) -> Response:
        await anyio.lowlevel.checkpoint()
        self.requests += 1
        raise RuntimeError("a client library's own bug")

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
