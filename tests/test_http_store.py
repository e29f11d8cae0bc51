"""The HTTP store against servers unlike ours: single POSTs (no batch endpoint) and smaller body limits."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest

from wr124_session_actor import ActorSystem, Config, StoreBadResponse, StoreRejected, StoreUnavailable
from wr124_session_actor._document import EncodedDocument, StateUpload, encode_document
from wr124_session_actor.server import ServerLimits, ServerThread
from wr124_session_actor.stores import open_store
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

    def __init__(self, answer: Callable[[int, dict[str, Any]], object] = server_id, batch_status: int = 405,
                 delay: float = 0.001) -> None:
        self.answer = answer
        self.batch_status = batch_status
        self.delay = delay
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
        await anyio.sleep(self.delay)
        self.in_flight -= 1
        answer = self.answer(len(self.posted), doc)
        if isinstance(answer, Response):
            return answer
        return Response(201, {}, orjson.dumps(answer))

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


async def test_a_failed_post_among_several_sessions_is_a_store_error() -> None:
    """Without the batch endpoint, a write of 12 sessions' documents posted by several workers, one POST
    answered 503: the write raises that StoreUnavailable itself, as a single POST's failure is raised (not
    an exception group, which no caller of a store catches), and no worker takes a session after it."""
    def answer(n: int, doc: dict[str, Any]) -> object:
        return Response(503, {}, b'{"error": "busy"}') if doc["content"]["state"]["n"] == 1 else server_id(n, doc)

    transport = NoBatchTransport(answer)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=3)
    docs = [encode_document(StateUpload(f"s{n}", {"n": n}, "t", "a")) for n in range(12)]
    with pytest.raises(StoreUnavailable, match="503"):
        await store.insert_many(docs)
    assert len(transport.posted) <= 6  # the first round of three, and at most one more by each worker
    await store.aclose()


def resent(docs: list[EncodedDocument]) -> list[EncodedDocument]:
    """The documents as sent again by another write: a replay of the outbox in a new process, say (a write's
    own retry does not send again what its single POSTs stored)."""
    return [dataclasses.replace(doc, stored_as=None) for doc in docs]


async def test_a_retried_write_does_not_post_again_what_it_stored() -> None:
    """A write of single POSTs that fails part-way raises; its retry posts only the documents not stored yet and
    answers every id, those the server made for the first ones included (a server that makes its own ids
    stored them twice)."""
    def answer(n: int, doc: dict[str, Any]) -> object:
        return Response(503, {}, b'{"detail": "busy"}') if n == 3 else {"id": f"server-{doc['content']['state']['n']}"}

    transport = NoBatchTransport(answer)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(5)]
    with pytest.raises(StoreUnavailable, match="503"):
        await store.insert_many(docs)
    assert await store.insert_many(docs) == [f"server-{n}" for n in range(5)]
    assert transport.posted == [("s", 0), ("s", 1), ("s", 2), ("s", 2), ("s", 3), ("s", 4)]
    await store.aclose()


async def test_a_batch_refused_for_a_repeated_id_is_looked_up_document_by_document() -> None:
    """A batch endpoint that answers 409 to a repeated id (a retry of a batch whose answer was lost): the batch
    is posted document by document, each 409 looked up, and a look-up answered 5xx is a transient error
    (both were a permanent 'HTTP 409' failure of documents the server held)."""
    held: dict[str, dict[str, Any]] = {}
    gets: list[str] = []

    class Transport:
        name = "mock"

        async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                          content: bytes | None = None) -> Response:
            await anyio.lowlevel.checkpoint()
            if method == "GET":
                gets.append(url)
                doc = held.get(url.rsplit("/", 1)[1])
                if len(gets) == 1:
                    return Response(503, {}, b'{"detail": "busy"}')
                return Response(200, {}, orjson.dumps(doc)) if doc else Response(404, {}, b'{"detail": "no"}')
            assert content is not None
            body = orjson.loads(content)
            docs = body["documents"] if url.endswith("/batch") else [body]
            if any(doc["id"] in held for doc in docs):
                return Response(409, {}, b'{"detail": "duplicate id"}')
            held.update((doc["id"], doc) for doc in docs)
            ids = [doc["id"] for doc in docs]
            return Response(201, {}, orjson.dumps({"ids": ids} if url.endswith("/batch") else {"id": ids[0]}))

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()

    store = HttpStore("http://127.0.0.1:1", "p", Transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(3)]
    assert await store.insert_many(docs[:1]) == [docs[0].id]
    again = resent(docs)  # its answer was lost, say: all three are sent
    with pytest.raises(StoreUnavailable, match="503"):
        await store.insert_many(again)
    assert await store.insert_many(again) == [d.id for d in docs]
    assert list(held) == [d.id for d in docs] and len(gets) == 2 and store.batch_supported
    await store.aclose()


async def test_a_created_id_may_be_named_underscore_id() -> None:
    """``{"_id": ...}`` answers are taken (a number as its text); a success that names neither keeps the id sent."""
    # As the original client allowed: ``_id``, a string or a number.
    transport = NoBatchTransport(lambda n, _doc: {"_id": n} if n % 2 else {"_id": f"doc-{n}"})
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(4)]
    assert await store.insert_many(docs) == ["1", "doc-2", "3", "doc-4"]
    await store.aclose()



async def test_a_created_answer_of_another_shape_is_stored_under_the_id_sent() -> None:
    """A single POST or a batch answered ``201 Created`` with a body that names no id (``null``, ``{"status":
    "created"}``, malformed JSON, a list of the wrong length) is stored: the status says created, and the
    document keeps the id it was sent with (or its ``Location``). It was a bad response: FAILED and counted
    failed though stored, and under 20% such answers 84-172 stored documents a run were reported lost.
    Another success (200) must name the id: an HTML page from a proxy confirms nothing."""
    bodies = [b"null", b'{"status": "created"}', b"{not json", b"[]", b'{"id": null}']
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(len(bodies) + 1)]

    def answer(n: int, doc: dict[str, Any]) -> Response:
        if n > len(bodies):
            return Response(201, {"location": "/p/json-documents/at-its-location"}, b'{"status": "created"}')
        return Response(201, {}, bodies[n - 1])

    store = HttpStore("http://127.0.0.1:1", "p", lambda: NoBatchTransport(answer), concurrency=1)
    assert await store.insert_many(docs) == [d.id for d in docs[:-1]] + ["at-its-location"]
    await store.aclose()

    for body in (b"null", b'{"ids": ["only-one"]}', b'{"created": 3}', b"<html>Created</html>",
                 b'{"ids": [null, "x", "y"]}', b'{"ids": [{"id": "a"}, "x", "y"]}'):
        class BatchTransport:
            name = "mock"

            async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                              content: bytes | None = None, body: bytes = body) -> Response:
                await anyio.lowlevel.checkpoint()
                assert url.endswith("/batch")
                return Response(201, {}, body)

            async def aclose(self) -> None:
                await anyio.lowlevel.checkpoint()

        store = HttpStore("http://127.0.0.1:1", "p", BatchTransport, concurrency=1)
        assert await store.insert_many(resent(docs[:3])) == [d.id for d in docs[:3]], body
        await store.aclose()

    store = HttpStore("http://127.0.0.1:1", "p",
                      lambda: NoBatchTransport(lambda _n, _doc: Response(200, {}, b"<html>Welcome</html>")))
    with pytest.raises(StoreBadResponse, match="malformed JSON"):
        await store.insert_many(resent(docs[:1]))
    await store.aclose()
    store = HttpStore("http://127.0.0.1:1", "p",
                      lambda: NoBatchTransport(lambda _n, _doc: Response(200, {}, b'{"ok": true}')))
    with pytest.raises(StoreBadResponse, match="no 'id'"):
        await store.insert_many(resent(docs[:1]))
    await store.aclose()


@pytest.mark.parametrize("body", [b'{"ids": []}', b'{"ids": ["only-one"]}', b'{"ids": [null, null, null]}'])
async def test_a_batch_answered_200_must_name_each_document(body: bytes) -> None:
    """A batch answered ``200`` with an ``ids`` list that does not name each document (empty, another
    length, not ids) confirms nothing: a bad response, not SUCCESS (the server may have stored nothing)."""
    class BatchTransport:
        name = "mock"

        async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                          content: bytes | None = None) -> Response:
            await anyio.lowlevel.checkpoint()
            return Response(200, {}, body)

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()

    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(3)]
    store = HttpStore("http://127.0.0.1:1", "p", BatchTransport, concurrency=1)
    with pytest.raises(StoreBadResponse, match="naming each of the 3 documents"):
        await store.insert_many(resent(docs))
    await store.aclose()

async def test_a_created_answer_with_no_body_keeps_the_id_sent_or_its_location() -> None:
    """``201 Created`` (or ``204``) with an empty body: the document is named by the ``Location`` it was
    given, or else keeps the client id it was sent with (not a bad response, and so not posted again)."""
    def answer(n: int, doc: dict[str, Any]) -> Response:
        if n == 2:
            return Response(201, {"location": f"/p/json-documents/server-{n}?v=1"}, b"")
        return Response(204 if n == 3 else 201, {}, b"" if n % 2 else b"  \n")

    transport = NoBatchTransport(answer)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(4)]
    assert await store.insert_many(docs) == [docs[0].id, "server-2", docs[2].id, docs[3].id]
    assert len(transport.posted) == 4
    await store.aclose()


async def test_a_repeated_id_refused_as_a_conflict_is_taken_as_stored() -> None:
    """A service without the batch endpoint that refuses an id it holds (409): a document it already
    stored under our id (a retry whose answer was lost, a replay) is taken as stored; a 409 for one it
    does not hold (or holds as another document) is still a refusal."""
    held: dict[str, dict[str, Any]] = {}

    class Transport:
        name = "mock"

        async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                          content: bytes | None = None) -> Response:
            await anyio.lowlevel.checkpoint()
            if url.endswith("/batch"):
                return Response(404, {}, b"")
            if method == "GET":
                doc = held.get(url.rsplit("/", 1)[1])
                return Response(200, {}, orjson.dumps(doc)) if doc else Response(404, {}, b'{"detail": "no"}')
            assert content is not None
            doc = orjson.loads(content)
            if doc["id"] in held or doc["content"]["state"].get("conflict"):
                return Response(409, {}, b'{"detail": "conflict"}')
            held[doc["id"]] = doc
            return Response(201, {}, orjson.dumps({"id": doc["id"]}))

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()

    store = HttpStore("http://127.0.0.1:1", "p", Transport, concurrency=1)
    docs = [encode_document(StateUpload("s", {"n": n}, "t", "a")) for n in range(3)]
    assert await store.insert_many(docs[:2]) == [d.id for d in docs[:2]]
    assert await store.insert_many(resent(docs)) == [d.id for d in docs]  # the first two again: already there
    held[docs[0].id] = {**held[docs[0].id], "name": "another document"}
    with pytest.raises(StoreRejected, match="409"):
        await store.insert_many(resent(docs[:1]))
    with pytest.raises(StoreRejected, match="409"):
        await store.insert_many([encode_document(StateUpload("s", {"conflict": True}, "t", "a"))])
    await store.aclose()


async def test_a_batch_answered_with_no_body_keeps_the_ids_sent() -> None:
    """A batch endpoint that answers ``201`` with an empty body stored the documents under the ids sent."""
    batches: list[int] = []

    class Transport:
        name = "mock"

        async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                          content: bytes | None = None) -> Response:
            assert url.endswith("/batch") and content is not None
            batches.append(len(orjson.loads(content)["documents"]))
            await anyio.lowlevel.checkpoint()
            return Response(201, {}, b"")

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()

    store = HttpStore("http://127.0.0.1:1", "p", Transport, concurrency=1)
    docs = [encode_document(StateUpload(f"s{n}", {"n": n}, "t", "a")) for n in range(5)]
    assert await store.insert_many(docs) == [d.id for d in docs]
    assert batches == [5] and store.batch_supported is True
    await store.aclose()


class SmallBodyTransport:
    """A batch endpoint that refuses bodies over ``max_body`` bytes (413, as a proxy's limit would) and
    stores the rest; records the document count of every batch request and its status."""

    name = "mock"

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.batches: list[tuple[int, int]] = []

    async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                      content: bytes | None = None) -> Response:
        await anyio.lowlevel.checkpoint()
        assert method == "POST" and url.endswith("/batch") and content is not None
        docs = orjson.loads(content)["documents"]
        status = 413 if len(content) > self.max_body else 201
        self.batches.append((len(docs), status))
        if status == 413:
            return Response(413, {"content-type": "text/html"}, b"<html>413 Request Entity Too Large</html>")
        return Response(201, {}, orjson.dumps({"ids": [d["id"] for d in docs]}))

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


async def test_a_body_limit_below_ours_is_learned_from_413() -> None:
    """A server (or proxy) that takes smaller bodies than ours answers 413: the store sends that chunk
    again in halves, keeps later writes to what was taken, and refuses only a document too large alone."""
    transport = SmallBodyTransport(max_body=10_000)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport)
    docs = [encode_document(StateUpload("s", {"n": n, "pad": "x" * 900}, "t", "a")) for n in range(40)]
    assert await store.insert_many(docs[:20]) == [d.id for d in docs[:20]]
    statuses = [status for _, status in transport.batches]
    assert statuses[0] == 413 and 201 in statuses
    assert statuses.index(201) > max(i for i, s in enumerate(statuses) if s == 413)  # learned, then all taken
    assert sum(n for n, status in transport.batches if status == 201) == 20
    transport.batches.clear()
    assert await store.insert_many(docs[20:]) == [d.id for d in docs[20:]]
    assert {s for _, s in transport.batches} == {201}  # no 413 again: the store keeps to the smaller size
    huge = encode_document(StateUpload("s", {"pad": "x" * 20_000}, "t", "a"))
    with pytest.raises(StoreRejected) as refused:
        await store.insert_many([huge])
    assert refused.value.status_code == 413
    await store.aclose()


async def test_a_server_with_a_small_body_limit_stores_every_state(tmp_path: Path, anyio_backend: str) -> None:
    """The reference server taking bodies of 30 KB at most (our default is 64 MB): 20 sessions × 50
    keep-all states of ~1 KB are all stored, none refused, and writes stay batched."""
    limits = ServerLimits(max_body_bytes=30_000)
    with ServerThread(str(tmp_path / "small.db"), limits=limits) as server:
        client = ("aiohttp",) if anyio_backend == "asyncio" else ("httpx",)
        config = Config(api_url=server.url, keep="all", http_clients=client, timeout=5.0)
        store = open_store(config)
        assert isinstance(store, HttpStore)
        async with ActorSystem(config, store=store) as system:
            for step in range(50):
                for session in range(20):
                    system.handle(f"s{session}").submit({"step": step, "pad": "x" * 900}, "t", "a")
                await anyio.lowlevel.checkpoint()
        stats = system.statistics()
        assert (stats.documents, stats.failed) == (1000, 0)
        assert store.requests_sent <= 1000 / 10, store.requests_sent  # 413s included


async def test_a_batch_body_over_a_megabyte_is_sent_whole(tmp_path: Path, anyio_backend: str) -> None:
    """700 states of ~2.3 KB in one batch request of ~1.6 MB, with every warning an error (as pytest is
    set here): aiohttp warns about raw bytes bodies past 1 MiB, a ResourceWarning that used to escape
    the write and the system's exit; all 700 are stored, 692 in one request after the first write's first 8
    found out the batch endpoint, under trio (httpx) too."""
    with ServerThread(str(tmp_path / "big.db")) as server:
        client = ("aiohttp",) if anyio_backend == "asyncio" else ("httpx",)
        config = Config(api_url=server.url, keep="all", http_clients=client, max_batch=1000, timeout=30.0)
        store = open_store(config)
        assert isinstance(store, HttpStore)
        async with ActorSystem(config, store=store) as system:
            handle = system.handle("s")
            for step in range(700):
                handle.submit({"step": step, "pad": "x" * 2000}, "t", "a")
        stats = system.statistics()
        assert (stats.documents, stats.failed, stats.store_writes) == (700, 0, 2)
        assert store.requests_sent == 2


async def _upload_each(system: ActorSystem, sessions: int) -> list[float]:
    """Every session awaits one upload at once; returns when each call returned (seconds from the start)."""
    returned: list[float] = []
    started = anyio.current_time()

    async def upload(n: int) -> None:
        await system.manager(f"s{n}").upload_session_state({"n": n}, "t", "a")
        returned.append(anyio.current_time() - started)

    async with anyio.create_task_group() as group:
        for n in range(sessions):
            group.start_soon(upload, n)
    return returned


async def test_each_session_is_answered_when_its_own_post_ends() -> None:
    """Without the batch endpoint, 20 sessions awaiting an upload each (two POSTs at a time, 20 ms each):
    a session is answered when its own POST ends, not when the last of a merged write's does."""
    transport = NoBatchTransport(delay=0.02)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=2)
    async with ActorSystem(Config(api_url="memory://", write_concurrency=2, timeout=5.0), store=store) as system:
        returned = await _upload_each(system, 20)
    assert sorted(n for _, n in transport.posted) == list(range(20))
    assert system.statistics().documents == 20
    assert statistics.median(returned) < 0.75 * max(returned), sorted(returned)


async def test_writes_that_find_no_batch_endpoint_keep_to_their_deadline() -> None:
    """60 sessions' states queued before the store knows the server has no batch endpoint (several writes
    start meanwhile), four 50 ms POSTs at a time with a timeout of 0.6 s: those first writes are small and
    get the timeout per document, so none times out and is sent again, and nothing is posted twice (late
    callers may time out: their calls are bounded, their states are still stored). A merged write of 20
    with a one-request deadline would need 0.75 s or more; each POST has 0.55 s to spare, so a stalled
    machine (a CI box running the whole suite) does not make it time out."""
    transport = NoBatchTransport(delay=0.05)
    store = HttpStore("http://127.0.0.1:1", "p", lambda: transport, concurrency=4)
    config = Config(api_url="memory://", write_concurrency=4, timeout=0.6, max_batch=20)
    async with ActorSystem(config, store=store) as system:
        await _upload_each(system, 60)
    assert sorted(n for _, n in transport.posted) == list(range(60))
    assert system.statistics().documents == 60


async def test_a_long_error_detail_is_quoted_short() -> None:
    """A server's error detail is quoted to 500 characters (a 200 KB one went into every log line of the write,
    the open circuit's refusals and the give-up at exit)."""

    class Busy:
        name = "mock"

        async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                          content: bytes | None = None) -> Response:
            await anyio.lowlevel.checkpoint()
            return Response(503, {}, orjson.dumps({"detail": "x" * 200_000}))

        async def aclose(self) -> None:
            await anyio.lowlevel.checkpoint()

    store = HttpStore("http://127.0.0.1:1", "p", Busy)
    with pytest.raises(StoreUnavailable) as caught:
        await store.get("d")
    assert str(caught.value) == f"HTTP 503: {'x' * 500}..."
    await store.aclose()
