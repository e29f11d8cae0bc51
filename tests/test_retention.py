"""Retention enforced where the data is: the sqlite and PostgreSQL engines' sweeps, the stores, under load."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from wr124_session_actor import ActorSystem, Config, PruneReport, RetentionPolicy, SessionStateStatus
from wr124_session_actor._document import EncodedDocument, StateUpload, encode_document
from wr124_session_actor._retention import PRUNE_BATCH
from wr124_session_actor.stores import (
    DocumentConflict,
    DocumentEngine,
    MemoryStore,
    PostgresDocuments,
    Query,
    RetentionSweeper,
    SqliteDocuments,
    SqliteStore,
)

from .pgcluster import create_database, drop_database

S = SessionStateStatus


def state(session: str, agent: str | None, i: int) -> EncodedDocument:
    """The state document ``{"i": i}`` of ``agent`` in ``session`` (``None``: a document with no agent)."""
    doc = encode_document(StateUpload(session, {"i": i}, "t", agent or "nobody"))
    if agent is None:
        return EncodedDocument(doc.id, doc.session_id, doc.name, ("note",), doc.body)
    return doc


def states(engine: DocumentEngine, project: str, session: str, agent: str) -> list[int]:
    """The ``i`` of every stored state of ``agent`` in ``session``, in ``seq`` order."""
    docs, _ = engine.query(project, Query(session_id=session, tags=(agent,), limit=1000, sort_by="seq", sort_order=1))
    return [doc["content"]["state"]["i"] for doc in docs]


def all_docs(engine: DocumentEngine, project: str, session: str | None = None) -> list[dict[str, Any]]:
    """Every document of the project (or session), in ``seq`` order."""
    docs, _ = engine.query(project, Query(session_id=session, limit=1000, sort_by="seq", sort_order=1))
    return docs


def moment(doc: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(doc["created_at"])


def between(engine: DocumentEngine, project: str, older: set[str]) -> datetime:
    """A time after every stored document whose id is in ``older`` and before every other one."""
    docs = engine.query(project, Query(limit=1000))[0]
    last = max(moment(d) for d in docs if d["id"] in older)
    first = min(moment(d) for d in docs if d["id"] not in older)
    assert last < first
    return last + (first - last) / 2


@pytest.fixture(params=["sqlite", "postgres"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_engine(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> DocumentEngine:
    if kind == "sqlite":
        return SqliteDocuments(tmp_path / "retention.db")
    return PostgresDocuments(request.getfixturevalue("postgres_url"), pool_size=4)


@pytest.fixture
def engine(engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DocumentEngine]:
    """A sqlite engine on a fresh file, or a PostgreSQL engine (each test uses its own project)."""
    made = open_engine(engine_kind, tmp_path, request)
    yield made
    made.close()


@pytest.fixture
def project() -> str:
    return f"ret-{uuid.uuid4().hex[:12]}"


class TestKeepLast:
    def test_keeps_the_newest_n_of_every_agent(self, engine: DocumentEngine, project: str) -> None:
        """keep_last=5 leaves each (session, agent) its 5 newest states by seq, in order; documents
        without an agent stay; the report counts what went."""
        for i in range(12):
            engine.insert_many(project, [state(f"s{s}", f"a{a}", i) for s in range(3) for a in range(2)])
        engine.insert_many(project, [state("s0", None, 0)])
        dry = engine.prune(project, RetentionPolicy(keep_last=5), dry_run=True)
        report = engine.prune(project, RetentionPolicy(keep_last=5))
        assert report == PruneReport(0, 3 * 2 * 7, dry.bytes, dry_run=False)
        assert report.bytes > 0
        for s in range(3):
            for a in range(2):
                assert states(engine, project, f"s{s}", f"a{a}") == [7, 8, 9, 10, 11]
        assert len(all_docs(engine, project, "s0")) == 11  # 2 agents × 5 + the one without an agent

    def test_small_batches_and_one_session(self, engine: DocumentEngine, project: str) -> None:
        """Batches smaller than the work give the same result; session_id limits the sweep."""
        for i in range(10):
            engine.insert_many(project, [state("s1", "a", i), state("s2", "a", i)])
        report = engine.prune(project, RetentionPolicy(keep_last=2), session_id="s1", batch_size=3)
        assert report.documents == 8
        assert states(engine, project, "s1", "a") == [8, 9]
        assert states(engine, project, "s2", "a") == list(range(10))

    async def test_store_trims_after_its_writes(self, tmp_path: Path, anyio_backend: str) -> None:
        """A store with keep_last trims the sessions it writes; a batch never leaves fewer than N."""
        store = SqliteStore(tmp_path / "s.db", "p", retention=RetentionPolicy(keep_last=3))
        for start in range(0, 12, 4):
            await store.insert_many([state("s", "a", i) for i in range(start, start + 4)])
            assert states(store.engine, "p", "s", "a") == [start + 1, start + 2, start + 3]
        await store.aclose()


class TestMaxAge:
    def test_removes_old_states_but_each_agents_newest(self, engine: DocumentEngine, project: str) -> None:
        """Older than max_age goes, except the newest state of every agent; new states stay."""
        for i in range(4):
            engine.insert_many(project, [state("s", "a", i), state("s", "b", i), state("quiet", "c", i)])
        old = {doc["id"] for doc in all_docs(engine, project)}
        for i in range(4, 7):
            engine.insert_many(project, [state("s", "a", i)])
        now = between(engine, project, old) + timedelta(hours=1)
        policy = RetentionPolicy(max_age=3600)
        dry = engine.prune(project, policy, now=now, dry_run=True)
        report = engine.prune(project, policy, now=now)
        assert (report.sessions, report.documents, dry.documents) == (0, 4 + 3 + 3, 10)
        assert states(engine, project, "s", "a") == [4, 5, 6]
        assert states(engine, project, "s", "b") == [3]  # old, but b's newest
        assert states(engine, project, "quiet", "c") == [3]  # a live session keeps its last states
        assert engine.prune(project, policy, now=now + timedelta(days=365)).documents == 2  # a's 4, 5


class TestIdleTtl:
    def test_removes_an_idle_session_whole(self, engine: DocumentEngine, project: str) -> None:
        """A session with no write for idle_ttl goes whole (documents without an agent too); an active
        one is left alone."""
        engine.insert_many(project, [state("idle", "a", i) for i in range(3)] + [state("idle", None, 9)])
        old = {doc["id"] for doc in all_docs(engine, project)}
        engine.insert_many(project, [state("active", "a", 0)])
        now = between(engine, project, old) + timedelta(days=30)
        report = engine.prune(project, RetentionPolicy(idle_ttl=30 * 86400), now=now)
        assert (report.sessions, report.documents) == (1, 4)
        assert all_docs(engine, project, "idle") == []
        assert states(engine, project, "active", "a") == [0]
        # The session can start again from nothing.
        engine.insert_many(project, [state("idle", "a", 100)])
        assert states(engine, project, "idle", "a") == [100]

    def test_a_continuation_of_a_state_removed_with_its_session_is_refused(self, engine: DocumentEngine,
                                                                          project: str) -> None:
        """A state restored before its session was removed for idleness, then continued after another writer
        began the session again: refused, since the new writer's states are newer, on every engine. On
        PostgreSQL the removal took the session's seq counter with it, the new states were numbered from 1
        again, below the old parent, and the stale continuation was stored (with a seq below its parent)."""
        engine.insert_many(project, [state("idle", "a", i) for i in range(5)])
        parent = all_docs(engine, project, "idle")[-1]["seq"]
        now = moment(all_docs(engine, project, "idle")[-1]) + timedelta(days=31)
        assert engine.prune(project, RetentionPolicy(idle_ttl=30 * 86400), now=now).sessions == 1
        engine.insert_many(project, [state("idle", "a", 100 + i) for i in range(3)])  # the other writer
        assert all(doc["seq"] > parent for doc in all_docs(engine, project, "idle"))
        stale = encode_document(StateUpload("idle", {"i": 5}, "t", "a", parent_seq=parent))
        with pytest.raises(DocumentConflict, match=f"continues seq {parent} of agent 'a'"):
            engine.insert_many(project, [stale])
        assert states(engine, project, "idle", "a") == [100, 101, 102]


class TestDryRun:
    def test_changes_nothing_and_matches_the_real_run(self, engine: DocumentEngine, project: str) -> None:
        """A dry run removes nothing and reports exactly what the real run then removes."""
        for i in range(6):
            engine.insert_many(project, [state("old", "a", i), state("live", "a", i), state("live", "b", i)])
        old = {doc["id"] for doc in all_docs(engine, project)}
        engine.insert_many(project, [state("live", "a", 6)])
        now = between(engine, project, old) + timedelta(hours=2)
        policy = RetentionPolicy(keep_last=4, max_age=3 * 3600, idle_ttl=7200)
        before = [doc["id"] for doc in all_docs(engine, project)]
        dry = engine.prune(project, policy, now=now, dry_run=True)
        assert [doc["id"] for doc in all_docs(engine, project)] == before
        real = engine.prune(project, policy, now=now)
        assert dry == PruneReport(real.sessions, real.documents, real.bytes, dry_run=True)
        assert (real.sessions, real.documents) == (1, 6 + 3 + 2)
        assert len(all_docs(engine, project)) == len(before) - real.documents
        assert engine.prune(project, policy, now=now, dry_run=True) == PruneReport(dry_run=True)


class TestSweeper:
    def test_periodic_sweep_is_time_gated(self, tmp_path: Path) -> None:
        """sweep_if_due runs once per interval (one caller claims it) by the whole policy."""
        engine = SqliteDocuments(tmp_path / "g.db")
        clock = [100.0]
        sweeper = RetentionSweeper(engine, RetentionPolicy(keep_last=2), interval=10, clock=lambda: clock[0])
        engine.insert_many("p", [state("s", "a", i) for i in range(5)])
        assert sweeper.sweep_if_due("p") is None
        clock[0] += 10
        report = sweeper.sweep_if_due("p")
        assert report is not None and report.documents == 3
        assert sweeper.sweep_if_due("p") is None
        engine.close()

    def test_a_budget_stops_and_resumes(self, tmp_path: Path) -> None:
        """A sweep past its time budget stops after a session, stays due, and the next call goes on."""
        engine = SqliteDocuments(tmp_path / "b.db")
        engine.insert_many("p", [state(f"s{s}", "a", i) for s in range(3) for i in range(3)])
        first = engine.prune("p", RetentionPolicy(keep_last=1), time_budget=0)
        assert (first.documents, first.complete) == (2, False)
        sweeper = RetentionSweeper(engine, RetentionPolicy(keep_last=1), interval=0, time_budget=0)
        while (report := sweeper.sweep_if_due("p")) is not None and not report.complete:
            pass
        assert [states(engine, "p", f"s{s}", "a") for s in range(3)] == [[2], [2], [2]]
        engine.close()

    def test_sweeps_cut_short_reach_every_session(self, engine: DocumentEngine, project: str) -> None:
        """Sweeps that run out of their budget go on from where the last one stopped: a session late in order
        is reached even when the first sessions have something to remove at every sweep (each sweep started
        again from the first session, removed its new excess and stopped: the late ones never went)."""
        sweeper = RetentionSweeper(engine, RetentionPolicy(keep_last=1), interval=0, time_budget=0)
        engine.insert_many(project, [state(f"s{s}", "a", i) for s in range(5) for i in range(3)])
        for round_ in range(5):
            engine.insert_many(project, [state("s0", "a", 10 + 2 * round_), state("s0", "a", 11 + 2 * round_)])
            report = sweeper.sweep_if_due(project)
            assert report is not None and report.documents >= 1
        assert [states(engine, project, f"s{s}", "a") for s in range(1, 5)] == [[2], [2], [2], [2]]
        assert states(engine, project, "s0", "a")[-1] == 19

    def test_sweeps_resume_in_any_collation(self, postgres_url: str) -> None:
        """On a PostgreSQL database whose collation orders text otherwise than code points (ICU's en-US puts
        "B" between "a" and "c"), sweeps cut short after each session still go round every session (resumed by
        code point order over rows in the database's order, they went round "a", "c" only)."""
        url = create_database(postgres_url, "icu", "TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                                                  " LOCALE 'C.UTF-8'")
        engine = PostgresDocuments(url, pool_size=2)
        try:
            names = ["a", "B", "c", "D"]
            sweeper = RetentionSweeper(engine, RetentionPolicy(keep_last=1), interval=0, time_budget=0)
            swept = []
            for round_ in range(len(names)):  # every session has something to remove at every sweep
                engine.insert_many("p", [state(name, "x", 2 * round_ + i) for name in names for i in range(2)])
                report = sweeper.sweep_if_due("p")
                assert report is not None and not report.complete
                swept += [name for name in names if len(states(engine, "p", name, "x")) == 1]
                engine.insert_many("p", [state(name, "x", 100 + round_) for name in swept[-1:]])
            assert sorted(swept) == sorted(names)
        finally:
            engine.close()
            drop_database(postgres_url, url)

    def test_the_trim_after_a_write_leaves_the_sweep_its_turn(self, tmp_path: Path) -> None:
        """A store whose trim after each write runs out of its budget still runs its due sweep, which moves on
        past a session with a backlog, and an idle session goes (the sweep waited for a trim that completed,
        and never ran while the trims ran out of their budget)."""
        engine = SqliteDocuments(tmp_path / "t.db")
        old = datetime.now(UTC) - timedelta(days=2)
        engine.insert_many("p", [state("idle", "a", 0)])
        with engine._connection() as conn:
            conn.execute("UPDATE documents SET created_at = ?", (old.isoformat(timespec="microseconds"),))
        sweeper = RetentionSweeper(engine, RetentionPolicy(keep_last=1, idle_ttl=86400), interval=0, time_budget=0)
        for round_ in range(2):  # a backlog the trim after each write cannot finish in its budget
            docs = [state("busy", "a", i) for i in range(3 * PRUNE_BATCH * round_, 3 * PRUNE_BATCH * (round_ + 1))]
            engine.insert_many("p", docs)
            sweeper.after_insert("p", docs)
        assert states(engine, "p", "idle", "a") == []
        engine.close()

    @pytest.mark.parametrize("policy", [RetentionPolicy(keep_last=1), RetentionPolicy(max_age=3600)])
    def test_a_budget_stops_within_one_session(self, engine: DocumentEngine, project: str,
                                               policy: RetentionPolicy) -> None:
        """The budget is checked between batches of one session too: a session with a large backlog is
        trimmed over several sweeps (it was checked only between sessions, and one session of 120,000 states
        held a write for 18 s against a 0.25 s budget). Each pass removes the oldest first; the result is
        the policy's."""
        for start in range(0, 3000, 1000):
            engine.insert_many(project, [state("big", "a", i) for i in range(start, start + 1000)])
        now = moment(all_docs(engine, project, "big")[-1]) + timedelta(hours=2)
        first = engine.prune(project, policy, batch_size=100, time_budget=0, now=now)
        assert (first.documents, first.complete) == (100, False)
        assert states(engine, project, "big", "a")[0] == 100
        passes = 1
        while True:
            passes += 1
            if engine.prune(project, policy, batch_size=100, time_budget=0, now=now).complete:
                break
        assert passes == 30 and states(engine, project, "big", "a") == [2999]  # 2,999 states, 100 a pass

    async def test_the_memory_stores_sweep_runs_off_the_event_loop(self, anyio_backend: str) -> None:
        """The memory store runs its engine's calls on the event loop, but not a sweep, which takes a while
        (50,000 states blocked the loop for 2.2-2.7 s)."""
        store = MemoryStore("sweep", "p", retention=RetentionPolicy(keep_last=1))
        threads = []
        after_insert = store.retention.after_insert

        def recorded(project: str, docs: Any) -> None:
            threads.append(threading.get_ident())
            after_insert(project, docs)

        store.retention.after_insert = recorded  # type: ignore[method-assign]
        await store.insert_many([state("s", "a", i) for i in range(3)])
        assert len(threads) == 1 and threads[0] != threading.get_ident()
        assert states(store.engine, "p", "s", "a") == [2]
        await store.aclose()


class TestReplicas:
    def test_sweeps_at_once_with_a_writer(
        self, engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest, project: str
    ) -> None:
        """Three engines (replicas) sweeping one database at once while a fourth writes: every agent
        keeps at least its N newest states, and after the last sweep exactly those."""
        engines = [open_engine(engine_kind, tmp_path, request) for _ in range(4)]
        writer, sweepers = engines[0], engines[1:]
        writer.insert_many(project, [state(f"s{s}", "a", i) for i in range(300) for s in range(4)])
        done = threading.Event()
        errors: list[BaseException] = []

        def sweep(engine: DocumentEngine) -> None:
            try:
                while not done.is_set():
                    engine.prune(project, RetentionPolicy(keep_last=5), batch_size=50)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sweep, args=(e,)) for e in sweepers]
        for thread in threads:
            thread.start()
        for i in range(300, 340):
            writer.insert_many(project, [state(f"s{s}", "a", i) for s in range(4)])
            for s in range(4):
                assert states(writer, project, f"s{s}", "a")[-5:] == list(range(i - 4, i + 1))
        done.set()
        for thread in threads:
            thread.join()
        assert errors == []
        sweepers[0].prune(project, RetentionPolicy(keep_last=5))
        for s in range(4):
            assert states(writer, project, f"s{s}", "a") == list(range(335, 340))
        for made in engines:
            made.close()


# --------------------------------------------------------------------------------------------------
# The load figures


SESSIONS, AGENTS, SUBMITS = 20, 3, 500


async def submit_all(config: Config) -> None:
    """keep="all": SESSIONS × AGENTS × SUBMITS submits, each agent's states numbered 0..SUBMITS-1.

    A session's pending batch holds all of its submits (mailbox and ``max_batch``), so that nothing is
    coalesced and every state reaches the store: the sweep alone decides what stays.
    """
    config = config.replace(mailbox_size=4 * AGENTS * SUBMITS, max_batch=AGENTS * SUBMITS)
    async with ActorSystem(config) as system:
        handles = [system.handle(f"s{s}") for s in range(SESSIONS)]
        for i in range(SUBMITS):
            for handle in handles:
                for a in range(AGENTS):
                    assert handle.submit({"i": i}, "t", f"a{a}") is S.SUCCESS
            await anyio.lowlevel.checkpoint()
    stats = system.statistics()
    assert (stats.failed, stats.coalesced) == (0, 0), stats


async def assert_newest_five(config: Config) -> None:
    """Every agent has at most 5 states: its 5 newest, in order, ending with its very last."""
    async with ActorSystem(config.replace(keep_last=0)) as system:
        for s in range(SESSIONS):
            status, docs = await system.manager(f"s{s}").download_session_states(limit=1000)
            assert status is S.SUCCESS
            by_agent: dict[str, list[tuple[int, int]]] = {}
            for doc in docs:
                by_agent.setdefault(doc["content"]["agent_name"], []).append((doc["seq"], doc["content"]["state"]["i"]))
            assert sorted(by_agent) == [f"a{a}" for a in range(AGENTS)]
            for kept in by_agent.values():
                assert [i for _, i in sorted(kept)] == list(range(SUBMITS - 5, SUBMITS))


@pytest.mark.slow
class TestKeepLastUnderLoad:
    """keep="all" with KEEP_LAST=5: 20 sessions × 3 agents × 500 submits."""

    async def test_sqlite(self, sqlite_url: str, anyio_backend: str) -> None:
        """On the embedded sqlite store (the store trims after its writes)."""
        config = Config(api_url=sqlite_url, keep="all", keep_last=5, timeout=120)
        await submit_all(config)
        await assert_newest_five(config)

    async def test_reference_server(self, tmp_path: Path, anyio_backend: str) -> None:
        """On the reference server started with keep_last=5 (the server trims after each write)."""
        from wr124_session_actor.server import ServerThread

        with ServerThread(tmp_path / "server.db", retention=RetentionPolicy(keep_last=5)) as server:
            config = Config(api_url=server.url, keep="all", timeout=120)
            await submit_all(config)
            await assert_newest_five(config)

    async def test_postgresql(self, postgres_url: str, project: str, anyio_backend: str) -> None:
        """On PostgreSQL."""
        config = Config(api_url=postgres_url, project_id=project, keep="all", keep_last=5, timeout=120)
        await submit_all(config)
        await assert_newest_five(config)


class TestSweepUnderLoad:
    async def test_writers_see_no_failure_and_no_long_pause(
        self, engine_kind: str, tmp_path: Path, request: pytest.FixtureRequest, project: str, anyio_backend: str
    ) -> None:
        """A sweep (another engine, as another replica or the CLI would) while 5 writers keep writing:
        no writer fails or waits a second, and every writer's 5 newest states survive."""
        sweeper = open_engine(engine_kind, tmp_path, request)
        sqlite_url = f"sqlite:///{tmp_path / 'retention.db'}"
        url = sqlite_url if engine_kind == "sqlite" else request.getfixturevalue("postgres_url")
        sweeper.ping()  # opens (and migrates) the database before the writers start
        backlog = [state(f"w{w}", "a", -1) for w in range(5) for _ in range(4000)]
        for start in range(0, len(backlog), 1000):
            sweeper.insert_many(project, backlog[start : start + 1000])
        config = Config(api_url=url, project_id=project, keep="all", debounce=0.001, timeout=30)
        written: dict[int, list[str]] = {w: [] for w in range(5)}
        pauses: list[float] = []
        sweeping = True
        policy = RetentionPolicy(keep_last=5)

        async def writer(system: ActorSystem, w: int) -> None:
            handle = system.handle(f"w{w}")
            i = 0
            while sweeping or i < 20:
                started = time.perf_counter()
                status, doc_id = await handle.upload({"i": i}, "t", "a")
                pauses.append(time.perf_counter() - started)
                assert status is S.SUCCESS, doc_id
                written[w].append(doc_id)
                i += 1

        async with ActorSystem(config) as system, anyio.create_task_group() as tg:
            for w in range(5):
                tg.start_soon(writer, system, w)
            sweep_started = time.perf_counter()
            removed = await anyio.to_thread.run_sync(lambda: sweeper.prune(project, policy, batch_size=1000))
            sweep_took = time.perf_counter() - sweep_started
            sweeping = False
        assert removed.documents >= 5 * (4000 - 5)
        final = sweeper.prune(project, policy)
        for w in range(5):
            kept = [doc["id"] for doc in all_docs(sweeper, project, f"w{w}")]
            assert kept == written[w][-5:], (len(kept), final)
        sweeper.close()
        worst = max(pauses)
        print(f"\n{engine_kind}: {len(pauses)} awaited uploads during the sweep, worst pause {worst * 1000:.0f} ms,"
              f" p99 {sorted(pauses)[int(len(pauses) * 0.99)] * 1000:.0f} ms;"
              f" the sweep took {sweep_took * 1000:.0f} ms")
        assert worst < 1.0  # the bound (loose on purpose: the figure itself is the data)
        # No writer waits out the sweep. (Waiting in sqlite's busy handler, whose tries back off to one per
        # 100 ms, the first write of every writer waited until the last batch: 340-1068 ms of a 500 ms
        # sweep on a slow machine, over the bound above. Writers now ask every millisecond: 35-60 ms.)
        assert worst < max(0.25, sweep_took / 2)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SESSION_STATE_KEEP_LAST", "SESSION_STATE_MAX_AGE", "SESSION_STATE_IDLE_TTL"):
        monkeypatch.delenv(var, raising=False)
    assert "SESSION_STATE_KEEP_LAST" not in os.environ
