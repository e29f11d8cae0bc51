"""The HTTP store's single POSTs (a server without the batch endpoint), over a fake transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import anyio
import orjson
import pytest

from wr124_session_actor import StoreBadResponse
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor.stores._http import HttpStore
from wr124_session_actor.transports import Params, Response

pytestmark = pytest.mark.anyio


def server_id(posted: int, doc: dict[str, Any]) -> object:
    """The answer of a service that assigns ids of its own."""
    return {"id": f"server-{doc['id']}"}


class NoBatchTransport:
    """Answers the batch endpoint with ``batch_status`` (405) and each single POST, after a short wait,
    with ``answer(number of POSTs so far, the document)``; records the POSTs in the order they started
    and the most in flight."""

    name = "mock"

    def __init__(self, answer: Callable[[int, dict[str, Any]], object] = server_id, batch_status: int = 405) -> None:
        self.answer = answer
        self.batch_status = batch_status
        self.posted: list[tuple[str, int]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                      content: bytes | None = None) -> Response:
        if url.endswith("/batch"):
            await anyio.lowlevel.checkpoint()
            return Response(self.batch_status, {}, b'{"error": "no batch endpoint"}')
        assert method == "POST" and content is not None
        doc = orjson.loads(content)
        self.posted.append((doc["session_id"], doc["content"]["state"]["n"]))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await anyio.sleep(0.001)
        self.in_flight -= 1
        return Response(201, {}, orjson.dumps(self.answer(len(self.posted), doc)))

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


async def test_single_posts_are_bounded_parallel_and_in_order_per_session() -> None:
    """40 documents of 10 sessions, concurrency 3: at most 3 POSTs at once (and more than one), each
    session's documents in order, and every id in its document's place."""
    transport = NoBatchTransport()
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=3)
    docs = [encode_document(StateUpload(f"s{n % 10}", {"n": n}, "t", "a")) for n in range(40)]
    ids = await store.insert_many(docs)
    assert ids == [f"server-{d.id}" for d in docs]
    assert store.batch_supported is False
    assert 1 < transport.most_in_flight <= 3
    assert sorted(transport.posted) == sorted((f"s{n % 10}", n) for n in range(40))
    for session in range(10):
        steps = [n for s, n in transport.posted if s == f"s{session}"]
        assert steps == sorted(steps)
    await store.aclose()


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_a_server_without_the_batch_endpoint_gets_single_posts(status: int) -> None:
    """Not Found, Method Not Allowed and Not Implemented all mean no batch endpoint: the documents go
    as single POSTs (every one, once), and the store asks the batch endpoint no more."""
    transport = NoBatchTransport(batch_status=status)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=2)
    first = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(3)]
    later = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(3, 5)]
    assert await store.insert_many(first) == [f"server-{d.id}" for d in first]
    assert store.batch_supported is False
    sent = store.requests_sent
    assert await store.insert_many(later) == [f"server-{d.id}" for d in later]
    assert store.requests_sent == sent + 2  # no new batch request
    assert [n for _, n in transport.posted] == [0, 1, 2, 3, 4]
    await store.aclose()


async def test_a_created_id_may_be_named_underscore_id() -> None:
    """``{"_id": ...}`` answers are taken (a number as its text); an answer with neither is a bad response."""
    # As the original client allowed: ``_id``, a string or a number.
    transport = NoBatchTransport(lambda n, _doc: {"_id": n} if n % 2 else {"_id": f"doc-{n}"})
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(4)]
    assert await store.insert_many(docs) == ["1", "doc-2", "3", "doc-4"]
    await store.aclose()

    store = HttpStore("http://127.0.0.1:1", "p", lambda: NoBatchTransport(lambda _n, _doc: {"ok": True}),
                      concurrency=1)
    with pytest.raises(StoreBadResponse, match="no 'id'"):
        await store.insert_many(docs[:1])
    await store.aclose()
