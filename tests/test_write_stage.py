"""The write stage: many sessions' batches merged into few store writes, and refusals isolated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, SessionStateManager, SystemStatistics
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor import _write_stage as write_stage
from wr124_session_actor._document import EncodedDocument
from wr124_session_actor._exceptions import StoreRejected, StoreUnavailable
from wr124_session_actor._write_stage import MAX_PACE
from wr124_session_actor.stores import DocumentStore, HttpStore, MemoryStore, open_store
from wr124_session_actor.transports import Params, Response

from .conftest import stored_states
from .test_http_store import NoBatchTransport

pytestmark = pytest.mark.anyio


class CountingStore:
    """Wraps a store; records the size of every insert_many and how many run at once."""

    def __init__(self, inner: DocumentStore, delay: float = 0.0) -> None:
        self.inner = inner
        self.delay = delay
        self.writes: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        #: The writes in flight as each write started (itself included).
        self.started_with: list[int] = []
        #: As an HTTP store says it (``False``: a server without the batch endpoint; ``None``: not known yet).
        self.batch_supported: bool | None = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        self.writes.append(len(docs))
        self.in_flight += 1
        self.started_with.append(self.in_flight)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self._hold()
            return await self.inner.insert_many(docs)
        finally:
            self.in_flight -= 1

    async def _hold(self) -> None:
        """What a write waits for before it reaches the inner store."""
        await anyio.sleep(self.delay)


class GatedStore(CountingStore):
    """A counting store whose writes end when the test opens ``gate``."""

    def __init__(self, inner: DocumentStore) -> None:
        super().__init__(inner)
        self.gate = anyio.Event()

    async def _hold(self) -> None:
        await self.gate.wait()

    async def started(self, writes: int) -> None:
        """Wait until ``writes`` writes have started."""
        with anyio.fail_after(5):
            while len(self.writes) < writes:
                await anyio.sleep(0.001)


class RecordingGatedStore(GatedStore):
    """A gated store that records the sessions of each write's documents."""

    def __init__(self, inner: DocumentStore) -> None:
        super().__init__(inner)
        self.sessions: list[list[str]] = []

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        self.sessions.append([doc.session_id for doc in docs])
        return await super().insert_many(docs)

    async def open_gate_later(self) -> None:
        await anyio.sleep(0.05)
        self.gate.set()


class TestMerging:
    async def test_sessions_share_writes_bounded_by_max_batch(self, sqlite_config: Config) -> None:
        """2,000 sessions with one upload each go to the store in few writes of at most max_batch
        documents, one write in flight at a time on sqlite."""
        config = sqlite_config.replace(max_batch=300)
        store = CountingStore(open_store(config), delay=0.01)
        async with ActorSystem(config, store=store) as system:
            for n in range(2000):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
        assert sum(store.writes) == 2000
        assert max(store.writes) <= 300
        assert len(store.writes) <= 12
        assert store.most_in_flight == 1
        assert system.statistics().store_writes == len(store.writes)

    async def test_concurrency_setting_bounds_writes_in_flight(self, memory_config: Config) -> None:
        """SESSION_STATE_WRITE_CONCURRENCY bounds the store writes in flight; full writes use the slots."""
        config = memory_config.replace(write_concurrency=3, max_batch=50)
        store = CountingStore(open_store(config), delay=0.05)
        async with ActorSystem(config, store=store) as system:
            for n in range(1000):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
        assert sum(store.writes) == 1000
        assert 1 < store.most_in_flight <= 3

    @pytest.mark.parametrize("batch_supported", [True, False])
    async def test_without_a_batch_endpoint_writes_do_not_wait_to_merge(self, memory_config: Config,
                                                                        batch_supported: bool) -> None:
        """Three sessions' batches, one write slow in flight: with a batch endpoint the other two wait
        and leave merged; without one (each document a POST anyway) they start at once, each alone."""
        config = memory_config.replace(write_concurrency=4, debounce=0.0)
        store = CountingStore(open_store(config), delay=0.2)
        store.batch_supported = batch_supported
        async with ActorSystem(config, store=store) as system:
            for n in range(3):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
        assert sorted(store.writes) == ([1, 2] if batch_supported else [1, 1, 1])
        assert store.most_in_flight == (1 if batch_supported else 3)

    async def test_the_first_write_finds_out_alone_and_small_then_lets_others_start(self) -> None:
        """The store's first write is one session's batch of 120 states, against a server without the batch
        endpoint taking 20 ms a POST; 20 other sessions each await an upload meanwhile. The first write
        finds out with its first documents alone (one request's deadline), then lets the others start while
        it posts the rest (with a deadline per POST). It used to carry all 120 within one request's deadline,
        and nothing else could start until it ended: the 20 uploads and the big write itself timed out."""
        transport = NoBatchTransport(delay=0.02)
        store = HttpStore("http://127.0.0.1:1", "p", lambda: transport)
        config = Config(api_url="http://127.0.0.1:1", keep="all", timeout=1.5, debounce=0.0)
        async with ActorSystem(config, store=store) as system:
            big = system.handle("big")
            for n in range(120):
                assert big.submit({"n": n}, "t", "a") is S.SUCCESS
            await anyio.sleep(0.05)
            results = await _gather([partial(system.handle(f"s{i}").upload, {"n": i}, "t", "a") for i in range(20)])
        assert [status for status, _ in results] == [S.SUCCESS] * 20, results
        stats = system.statistics()
        assert (stats.documents, stats.failed) == (140, 0)
        assert [n for session, n in transport.posted if session == "big"] == list(range(120))  # each once, in order
        last_big = max(i for i, (session, _) in enumerate(transport.posted) if session == "big")
        assert all(i < last_big for i, (session, _) in enumerate(transport.posted) if session != "big")

    @pytest.mark.parametrize("failing", ["the rest once", "the rest for good"])
    async def test_the_first_writes_first_documents_are_not_sent_again(self, failing: str) -> None:
        """The first write's first documents are stored, and its rest fails: a server that makes its own ids
        (a new document per POST) holds each state once, after the retry or after the exit; and those stored
        are answered as stored at the exit (28 documents were stored for 20 states, or 8 stored were logged
        as lost)."""
        stored: list[object] = []
        batches = 0

        class OwnIdsServer:
            name = "mock"

            async def request(self, method: str, url: str, *, headers: Mapping[str, str], params: Params = (),
                              content: bytes | None = None) -> Response:
                nonlocal batches
                await anyio.lowlevel.checkpoint()
                if url.endswith("/health"):  # the circuit breaker's probe
                    return Response(200, {}, b'{"status": "ok"}')
                assert url.endswith("/batch") and content is not None
                batches += 1
                if batches == 2 or (batches > 2 and failing == "the rest for good"):
                    return Response(503, {}, b"")
                docs = orjson.loads(content)["documents"]
                stored.extend(doc["content"]["state"]["n"] for doc in docs)
                return Response(201, {}, orjson.dumps({"ids": [f"own-{len(stored) - i}" for i in range(len(docs))]}))

            async def aclose(self) -> None:
                await anyio.lowlevel.checkpoint()

        store = HttpStore("http://127.0.0.1:1", "p", OwnIdsServer)
        config = Config(api_url="http://127.0.0.1:1", keep="all", retries=0, retry_backoff=0.01, debounce=0.0,
                        shutdown_timeout=1.0)
        async with ActorSystem(config, store=store) as system:
            handle = system.handle("s")
            for n in range(20):
                assert handle.submit({"n": n}, "t", "a") is S.SUCCESS
        stats = system.statistics()
        if failing == "the rest once":
            assert sorted(stored) == list(range(20))  # type: ignore[type-var]
            assert (stats.documents, stats.failed) == (20, 0)
        else:
            assert sorted(stored) == list(range(8))  # type: ignore[type-var]
            assert (stats.documents, stats.failed) == (8, 12)

    async def test_two_slots_freed_at_once_start_two_writes(self, memory_config: Config) -> None:
        """Two writes in flight end together while two batches wait: both start at once (one woken
        leader per free slot), not the second only after the first one ends."""
        config = memory_config.replace(write_concurrency=2, debounce=0.0, max_batch=1)  # a write per batch
        store = GatedStore(open_store(config))
        async with ActorSystem(config, store=store) as system:
            for n in range(4):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
            await store.started(2)
            first, store.gate = store.gate, anyio.Event()
            first.set()  # the two writes in flight end together
            await store.started(4)  # the other two start while neither has ended
            store.gate.set()
        assert store.writes == [1, 1, 1, 1]
        assert store.started_with == [1, 2, 1, 2]

    @pytest.mark.parametrize("leave", ["exit", "read"])
    async def test_newer_states_submitted_during_the_write_are_written_after_it(self, memory_config: Config,
                                                                                leave: str) -> None:
        """keep="latest": a session's newer states of the agents being written, submitted while that write is
        in flight, are written after it, whether the system then closes or a read flushes them (they were
        dropped without a word: the batch held as many items as the write, and was emptied)."""
        config = memory_config.replace(debounce=0.0)
        store = RecordingGatedStore(open_store(config))

        async def open_gate_later() -> None:
            await anyio.sleep(0.1)  # meanwhile the actor, woken by the read or the exit, takes the newer states
            store.gate.set()

        async with anyio.create_task_group() as tg, ActorSystem(config, store=store) as system:
            assert system.handle("other").submit({"v": 0}, "t", "x") is S.SUCCESS  # its actor leads the write
            manager = system.manager("s")
            for agent in ("x", "y"):
                assert manager.submit_session_state({"v": 0}, "t", agent) is S.SUCCESS
            await store.started(1)
            with anyio.fail_after(5):  # the session's batch is handed over: in the write, or queued behind it
                while "s" not in store.sessions[0] and not system.statistics().write_queue:
                    await anyio.sleep(0.001)
            for agent in ("x", "y"):
                assert manager.submit_session_state({"v": 1}, "t", agent) is S.SUCCESS
            tg.start_soon(open_gate_later)
            if leave == "read":
                status, latest = await manager.restore_agent_session_state("x")
                assert (status, latest and latest["state"]) == (S.SUCCESS, {"v": 1})
        stats = system.statistics()
        assert (stats.submitted, stats.documents, stats.coalesced, stats.failed, stats.pending) == (5, 5, 0, 0, 0)
        stored = await stored_states(config, "s")
        assert sorted(state["v"] for state in stored) == [0, 0, 1, 1]

    async def test_batches_a_caller_waits_for_are_written_first(self, memory_config: Config) -> None:
        """While 50 sessions' submitted batches queue behind a write in flight, an awaited upload of another
        session and the flush before an actor-mode read go in the next write, not after the 50 (with more
        queued than the timeout lets through, they timed out behind fire-and-forget traffic)."""
        config = memory_config.replace(write_concurrency=1, max_batch=5, debounce=0.0)
        store = RecordingGatedStore(open_store(config))
        async with anyio.create_task_group() as tg, ActorSystem(config, store=store) as system:
            system.handle("first").submit({"n": 0}, "t", "a")
            await store.started(1)
            for n in range(50):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
            await anyio.sleep(0.05)  # their batches are queued in the stage
            reader = system.manager("reader")
            reader.submit_session_state({"r": 1}, "t", "a")
            tg.start_soon(store.open_gate_later)
            uploaded, (status, content) = await _gather([
                lambda: system.manager("waiter").upload_session_state({"w": 1}, "t", "a"),
                reader.restore_latest_session_state])
            assert (uploaded[0], status, content and content["state"]) == (S.SUCCESS, S.SUCCESS, {"r": 1})
        assert store.sessions[0] == ["first"]
        assert {"waiter", "reader"} <= set(store.sessions[1])
        assert sum(map(len, store.sessions)) == 53

    async def test_an_awaited_upload_that_times_out_says_so_and_is_still_written(self, memory_config: Config) -> None:
        """An awaited upload with no answer within the timeout is TIMEOUT with a message that says so, and that
        the upload may still be stored (it said "the actor system is closed" of an open system); it is."""
        config = memory_config.replace(timeout=0.2)
        store = GatedStore(open_store(config))
        async with ActorSystem(config, store=store) as system:
            status, message = await system.manager("s").upload_session_state({"v": 1}, "t", "a")
            assert status is S.TIMEOUT
            assert message.startswith("no reply within 0.2s (SESSION_STATE_TIMEOUT)") and "still be stored" in message
            status, message = await system.manager("s").flush()
            assert (status, message.startswith("no reply within 0.2s")) == (S.TIMEOUT, True)
            store.gate.set()
        assert await stored_states(config, "s") == [{"v": 1}]

    async def test_an_actor_mode_delete_that_times_out_or_finds_the_system_closed_says_so(
            self, memory_config: Config) -> None:
        """A delete behind a write that does not answer is TIMEOUT "no reply within ...", and one after the
        system closed is FAILED "the actor system is closed" (both said "session state upload is disabled")."""
        config = memory_config.replace(timeout=0.2)
        store = GatedStore(open_store(config))
        async with ActorSystem(config, store=store) as system:
            manager = system.manager("s")
            manager.submit_session_state({"v": 1}, "t", "a")
            status, message = await manager.delete_session_state("some-id")
            assert (status, message) == (S.TIMEOUT, "no reply within 0.2s (SESSION_STATE_TIMEOUT)")
            store.gate.set()
        assert await manager.delete_session_state("some-id") == (S.FAILED, "the actor system is closed")

    async def test_a_flush_reports_the_failures_of_its_own_session_only(self, memory_config: Config) -> None:
        """Another session's upload refused for good while a flush waits does not make that flush FAILED (it
        compared the system's failure count before and after)."""
        config = memory_config.replace(write_concurrency=2, debounce=0.0)

        class RefusingB(GatedStore):
            async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
                if any(doc.session_id == "b" for doc in docs):
                    await self.gate.wait()
                    raise StoreRejected("refused", status_code=422)
                await self.gate.wait()
                await anyio.sleep(0.05)  # ends after b's refusal
                return await self.inner.insert_many(docs)

        store = RefusingB(open_store(config))

        async def open_gate_later() -> None:
            await anyio.sleep(0.05)
            store.gate.set()

        async with anyio.create_task_group() as tg, ActorSystem(config, store=store) as system:
            system.handle("b").submit({"n": 1}, "t", "a")
            await anyio.sleep(0.02)  # b's write has started
            a = system.manager("a")
            a.submit_session_state({"n": 2}, "t", "a")
            tg.start_soon(open_gate_later)
            assert await a.flush() == (S.SUCCESS, "flushed")
            assert await system.manager("b").flush() == (S.SUCCESS, "flushed")  # b's own failure was earlier
        assert system.statistics().failed == 1

    @pytest.mark.parametrize("keep", ["latest", "all"])
    async def test_a_transient_failure_in_a_split_write_is_tried_again(self, keep: str) -> None:
        """One session, agents a and b continue their states in one write: a's continuation is stale, so the write
        is split; b's single write then meets one 503. b's continuation is tried again and stored, and b's next
        state too; only a's is refused. (Every document of the split had failed, so the job was answered with
        the first failure, a's conflict: b's continuation was FAILED for good with a's message, and b's next
        state refused as continuing it.)"""
        config = Config(api_url=f"memory://split-{keep}", cache_ttl=0, retries=0, retry_backoff=0.05).replace(keep=keep)

        class OneUnavailable(MemoryStore):
            fails = 1

            async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
                if len(docs) == 1 and docs[0].agent == "b" and docs[0].parent_seq is not None and self.fails:
                    self.fails -= 1
                    raise StoreUnavailable("HTTP 503")
                return await super().insert_many(docs)

        direct = SessionStateManager("s", config)
        seqs = {}
        for agent in ("a", "b"):
            await direct.upload_session_state({"v": "seed"}, "t", agent)
            seqs[agent] = (await direct.restore_agent_session_state(agent))[1]["seq"]  # type: ignore[index]
        await direct.upload_session_state({"v": "other writer"}, "t", "a")
        answers: dict[str, tuple[S, str]] = {}
        async with ActorSystem(config, store=OneUnavailable(f"split-{keep}")) as system:
            manager = system.manager("s")

            async def continue_(agent: str) -> None:
                answers[agent] = await manager.upload_session_state({"v": "c1"}, "t", agent, parent_seq=seqs[agent])

            async with anyio.create_task_group() as tg:
                for agent in ("a", "b"):
                    tg.start_soon(continue_, agent)
            answers["b next"] = await manager.upload_session_state({"v": "n2"}, "t", "b")
        assert answers["a"][0] is S.FAILED and "conflict" in answers["a"][1]
        assert (answers["b"][0], answers["b next"][0]) == (S.SUCCESS, S.SUCCESS)
        status, docs = await direct.download_session_states(agent_name="b")
        assert (status, [d["content"]["state"]["v"] for d in docs]) == (S.SUCCESS, ["n2", "c1", "seed"])
        await direct.aclose()

    async def test_gauges_read_zero_once_a_deadline_exit_gave_up_the_queue(self, memory_config: Config) -> None:
        """Batches still queued in the stage when shutdown_timeout ends are given up (logged, counted failed), and
        the write_queue and running_actors gauges then read 0 (write_queue kept the given-up batches)."""
        config = memory_config.replace(write_concurrency=1, shutdown_timeout=0.3, debounce=0.0)
        store = GatedStore(open_store(config))
        async with ActorSystem(config, store=store) as system:
            for n in range(5):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
            await store.started(1)
            with anyio.fail_after(5):
                while system.statistics().write_queue < 1:  # the other sessions' batches join the stage
                    await anyio.sleep(0.005)
        stats = system.statistics()
        assert (stats.failed, stats.write_queue, stats.running_actors, stats.pending) == (5, 0, 0, 0)
        store.gate.set()

    async def test_write_observers_see_every_write(self, memory_config: Config) -> None:
        """Each store write is reported once to the observers, with its documents and status."""
        seen: list[tuple[int, S]] = []
        async with ActorSystem(memory_config) as system:
            system.add_write_observer(lambda o: seen.append((o.documents, o.status)))
            for n in range(10):
                await system.manager(f"s{n}").upload_session_state({"n": n}, "t", "a")
        assert sum(d for d, _ in seen) == 10 and {s for _, s in seen} == {S.SUCCESS}
        assert len(seen) == system.statistics().store_writes


class TestPacing:
    async def test_sessions_that_trickle_in_share_paced_writes(self, memory_config: Config) -> None:
        """Sessions that arrive one by one, each due on its own while the store is idle (it is faster than
        their arrival): they share a write per pace instead of one write each."""
        store = CountingStore(open_store(memory_config))
        sessions = 300
        async with ActorSystem(memory_config, store=store) as system:
            started = anyio.current_time()
            for n in range(sessions):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
                await anyio.sleep(0.001)
            elapsed = anyio.current_time() - started
        assert sum(store.writes) == sessions
        # One write per pace while they arrive, then the last ones (due after a debounce) and the exit.
        assert len(store.writes) <= elapsed / MAX_PACE + 3, (len(store.writes), elapsed)
        assert len(store.writes) < sessions / 5

    async def test_awaited_uploads_and_flushes_are_not_paced(self, memory_config: Config,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
        """A caller waiting for its write is not held by the pace, nor is the final flush; a batch nobody
        waits for is (here a pace of 30 s: it is written only by the flush at exit)."""
        monkeypatch.setattr(write_stage, "MAX_PACE", 30.0)
        config = memory_config.replace(debounce=30.0, max_delay=0.0)
        store = CountingStore(open_store(config))
        with anyio.fail_after(5):
            async with ActorSystem(config, store=store) as system:
                for n in range(3):  # each right after the other's write: an idle store, within the pace
                    status, _ = await system.manager(f"a{n}").upload_session_state({"n": n}, "t", "a")
                    assert status is S.SUCCESS
                system.handle("quiet").submit({"n": 0}, "t", "a")  # due at once (max_delay 0), then paced
                await anyio.sleep(0.1)
                assert store.writes == [1, 1, 1]
                status, _ = await system.manager("other").upload_session_state({"n": 1}, "t", "a")
                assert status is S.SUCCESS  # an urgent write takes the paced batch along
        assert store.writes == [1, 1, 1, 2]


class TestWaitingSessions:
    async def test_sessions_waiting_for_their_write_hold_no_task(self, sqlite_config: Config) -> None:
        """While a slow write is in flight, 1,000 sessions whose batches wait in the stage run no task;
        each is still written, once, when its turn comes (and closing waits for them)."""
        config = sqlite_config.replace(max_batch=300, debounce=0.0)
        store = CountingStore(open_store(config), delay=0.5)
        async with ActorSystem(config, store=store) as system:
            stats = await self._park(system, store, 1000)
            assert len(store.writes) == 1  # still the first write
            assert stats.running_actors <= 2  # the leader (and at most one about to park)
            assert stats.live_actors == 1000 and stats.pending == 1000
        stats = system.statistics()
        assert (stats.documents, stats.failed, stats.pending, stats.running_actors) == (1000, 0, 0, 0)
        assert sum(store.writes) == 1000 and max(store.writes) <= 300

    @staticmethod
    async def _park(system: ActorSystem, store: CountingStore, sessions: int) -> SystemStatistics:
        """Submit once in each of ``sessions`` new sessions and wait until the batches behind the first
        (slow) write park in the stage with no task; return the statistics then. (The actors' tasks end as
        they do, and trio runs the new tasks in a random order, so this waits for the last ones, and for
        every upload to be in its session's batch: a task still running may not have taken its own yet.)"""
        for n in range(sessions):
            system.handle(f"s{n}").submit({"n": n}, "t", "a")
        with anyio.fail_after(10):
            while store.in_flight == 0 or (stats := system.statistics()).running_actors > 2 \
                    or stats.write_queue < sessions - 100 or stats.pending < sessions:
                await anyio.sleep(0.01)
        return stats

    async def test_closing_starts_a_task_per_write_not_per_waiting_session(self, sqlite_config: Config) -> None:
        """Closing while 1,000 sessions wait in the stage behind a slow write: they are all written, and
        the exit starts a task for each write's leader only (it started one per waiting session: 10,000
        sessions took seconds just to start their tasks)."""
        config = sqlite_config.replace(max_batch=300, debounce=0.0)
        store = CountingStore(open_store(config), delay=0.2)
        async with ActorSystem(config, store=store) as system:
            before = (await self._park(system, store, 1000)).actors_started
        stats = system.statistics()
        assert (stats.documents, stats.failed, stats.pending, stats.running_actors) == (1000, 0, 0, 0)
        assert stats.actors_started - before <= len(store.writes) + 2, (stats.actors_started - before, store.writes)

    async def test_a_store_that_never_answers_at_closing(self, sqlite_config: Config) -> None:
        """The store never answers: at the closing deadline each of the 1,000 waiting sessions, most of them
        without a task, gives its upload up once, logged with its session (never silently), and no task
        is started for those the deadline found parked."""
        config = sqlite_config.replace(max_batch=300, debounce=0.0, shutdown_timeout=0.3)
        store = GatedStore(open_store(config))  # the gate never opens
        with capture_logs() as logs:
            async with ActorSystem(config, store=store) as system:
                before = (await self._park(system, store, 1000)).actors_started
            stats = system.statistics()
        given_up = [e for e in logs if e["event"] == "session_state.upload" and e["status"] == "failed"]
        assert sum(e["batch_size"] for e in given_up) == 1000 == stats.failed
        assert len({e["session_id"] for e in given_up}) == 1000
        assert all("shutdown_timeout" in e["error"] for e in given_up)
        assert (stats.pending, stats.running_actors) == (0, 0)
        assert stats.actors_started - before <= 2 * config.store_write_concurrency + 2


class TestRefusals:
    async def test_a_conflict_fails_alone_in_a_merged_write(self, sqlite_config: Config) -> None:
        """One upload that continues a stale state (parent_seq) is refused with a conflict; the other
        sessions' uploads in the same merged write are stored."""
        direct = SessionStateManager("shared", sqlite_config)
        _, first = await direct.upload_session_state({"v": 1}, "t", "a")
        await direct.upload_session_state({"v": 2}, "t", "a")
        status, content = await direct.restore_session_state(first)
        assert status is S.SUCCESS and content is not None
        stale_seq = content["seq"]
        await direct.aclose()
        async with ActorSystem(sqlite_config.replace(debounce=0.05)) as system:
            others = [system.manager(f"other-{n}") for n in range(20)]
            results = await _gather(
                [lambda m=m: m.upload_session_state({"ok": True}, "t", "a") for m in others]
                + [lambda: system.manager("shared").upload_session_state({"v": 3}, "t", "a", parent_seq=stale_seq)])
        *ok, conflict = results
        assert {s for s, _ in ok} == {S.SUCCESS}
        assert conflict[0] is S.FAILED and "conflict" in conflict[1]


    async def test_a_conflict_fails_alone_in_its_sessions_batch(self, sqlite_config: Config) -> None:
        """keep="all": one of a session's ten uploads in one batch is refused with a conflict; the other nine
        are answered as stored, and counted so (all ten were FAILED 'conflict', while the nine were stored)."""
        direct = SessionStateManager("s", sqlite_config)
        _, first = await direct.upload_session_state({"v": 1}, "t", "a")
        await direct.upload_session_state({"v": 2}, "t", "a")
        status, content = await direct.restore_session_state(first)
        assert status is S.SUCCESS and content is not None
        await direct.aclose()
        with capture_logs() as logs:
            async with ActorSystem(sqlite_config.replace(keep="all", debounce=0.05)) as system:
                manager = system.manager("s")
                results = await _gather(
                    [lambda n=n: manager.upload_session_state({"n": n}, "t", f"b{n}") for n in range(9)]
                    + [lambda: manager.upload_session_state({"v": 3}, "t", "a", parent_seq=content["seq"])])
        *ok, conflict = results
        assert {s for s, _ in ok} == {S.SUCCESS} and len({i for _, i in ok}) == 9
        assert conflict[0] is S.FAILED and "conflict" in conflict[1]
        stats = system.statistics()
        assert (stats.documents, stats.failed) == (9, 1)
        warned = [e for e in logs if e["event"] == "session_state.upload" and e["log_level"] == "warning"]
        assert [len(e["ids"]) for e in warned] == [1] and "conflict" in warned[0]["error"]
        assert sorted(s.get("n", -1) for s in await stored_states(sqlite_config, "s")) == [-1, -1, *range(9)]


async def _gather(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    async def run(index: int) -> None:
        results[index] = await calls[index]()

    async with anyio.create_task_group() as tg:
        for index in range(len(calls)):
            tg.start_soon(run, index)
    return results


class TestPressure:
    async def test_chatty_sessions_still_coalesce(self, memory_config: Config) -> None:
        """keep="latest": 100 chatty sessions (5,000 queued snapshots in all) are no reason to write early;
        each session's snapshots coalesce to its newest state. (Quiet and max_delay are far away, so that
        only pressure could make a write early, not a pause of the machine.)"""
        async with ActorSystem(memory_config.replace(debounce=30.0, max_delay=60.0)) as system:
            handles = [system.handle(f"s{n}") for n in range(100)]
            for step in range(50):
                for handle in handles:
                    handle.submit({"step": step}, "t", "a")
                    await anyio.lowlevel.checkpoint()
        stats = system.statistics()
        assert stats.documents == 100 and stats.store_writes <= 3
        assert stats.coalesced == 100 * 50 - 100

    async def test_keep_all_backlog_is_written_without_waiting_for_quiet(self, memory_config: Config) -> None:
        """keep="all": a full write's worth queued across sessions is written while the agents keep going,
        long before max_delay."""
        config = memory_config.replace(keep="all", max_delay=30.0, debounce=30.0, max_batch=100)
        async with ActorSystem(config) as system:
            handles = [system.handle(f"s{n}") for n in range(20)]
            for step in range(20):
                for handle in handles:
                    handle.submit({"step": step}, "t", "a")
                    await anyio.lowlevel.checkpoint()
            with anyio.fail_after(10):
                while system.statistics().documents < 300:
                    await anyio.sleep(0.01)


class TestEncodingTurns:
    async def test_long_encodings_take_turns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Sessions whose batches are long to encode (they yield to the loop) take turns: after its first
        slice, each batch is encoded to its end before the next one goes on. Short batches never wait."""
        import wr124_session_actor._document as document

        order: list[str] = []
        real = document.encode_document

        def recorded(upload: document.StateUpload, *args: Any, **kwargs: Any) -> EncodedDocument:
            order.append(upload.session_id)
            return real(upload, *args, **kwargs)

        monkeypatch.setattr(document, "encode_document", recorded)
        turn = anyio.Lock()
        state = {"text": "x" * 20_000}  # 10 documents: ~200 KB; 40 per batch: 3 slices of ~256 KB
        batches = {f"s{n}": [document.StateUpload(f"s{n}", dict(state)) for _ in range(40)] for n in range(4)}
        short = [document.StateUpload("short", {"n": 1})]
        async with anyio.create_task_group() as group:
            for uploads in batches.values():
                group.start_soon(document.encode_documents, uploads, turn)
            group.start_soon(document.encode_documents, short, turn)
        assert sorted(order) == sorted([f"s{n}" for n in range(4) for _ in range(40)] + ["short"])
        assert order.index("short") <= 4 * 13  # before any long one went past its first slice: no wait
        for session in batches:
            positions = [i for i, s in enumerate(order) if s == session]
            rest = positions[13:]  # after its first slice (13 documents reach 256 KB)
            assert rest == list(range(rest[0], rest[0] + len(rest))), session
