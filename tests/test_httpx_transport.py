"""The httpx transport: a pool of one connection per request in flight, reused, bounded, and closed."""

from __future__ import annotations

import anyio
import pytest
from aiohttp import web

from wr124_session_actor import StoreUnavailable
from wr124_session_actor.transports._httpx import HttpxTransport

from .faults.docserver import serve_app

pytestmark = pytest.mark.anyio


class Peers:
    """An app whose ``/slow`` answers after 50 ms; it records each request's client port and the most
    requests it held at once."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def slow(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else -1)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await anyio.sleep(0.05)
        finally:
            self.in_flight -= 1
        return web.json_response({"ok": True})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/slow", self.slow)
        return app


async def test_connections_are_reused_and_bounded() -> None:
    """Ten requests at once with room for three: at most three reach the server together, over three
    connections, which later requests reuse; closing closes them, and a later request opens anew."""
    peers = Peers()
    with serve_app(peers.app()) as url:
        transport = HttpxTransport(max_connections=3)

        async def get() -> None:
            response = await transport.request("GET", f"{url}/slow", headers={})
            assert response.status == 200 and response.content == b'{"ok": true}'

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(get)
        assert peers.most_in_flight == 3
        assert len(set(peers.ports)) == 3
        for _ in range(3):
            await get()
        assert len(set(peers.ports)) == 3  # sequential requests reuse a kept connection
        await transport.aclose()
        await get()  # a closed transport opens again on use
        assert len(set(peers.ports)) == 4
        await transport.aclose()


async def test_an_unreachable_server_is_unavailable() -> None:
    """Nothing listens: the request raises ``StoreUnavailable`` and the transport stays usable."""
    transport = HttpxTransport()
    with pytest.raises(StoreUnavailable):
        await transport.request("GET", "http://127.0.0.1:9/", headers={})
    peers = Peers()
    with serve_app(peers.app()) as url:
        assert (await transport.request("GET", f"{url}/slow", headers={})).status == 200
    await transport.aclose()


async def test_a_cancelled_request_leaves_the_transport_usable() -> None:
    """A request cancelled mid-flight (the caller's deadline) gives its pool back; the next request on it
    gets a fresh answer, not the cancelled one's."""
    peers = Peers()
    with serve_app(peers.app()) as url:
        transport = HttpxTransport(max_connections=1)
        with anyio.move_on_after(0.01):
            await transport.request("GET", f"{url}/slow", headers={})
        for _ in range(2):
            response = await transport.request("GET", f"{url}/slow", headers={})
            assert response.status == 200 and response.content == b'{"ok": true}'
        await transport.aclose()
