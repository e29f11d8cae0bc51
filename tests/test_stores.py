"""The memory, sqlite and PostgreSQL stores behind the DocumentStore protocol (the HTTP store:
test_http_store.py; PostgreSQL specifics: test_postgres.py)."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest

from wr124_session_actor import (
    DocumentNotFound,
    DocumentStore,
    Query,
    RetentionPolicy,
    StoreClosed,
    StoreRejected,
    StoreUnavailable,
)
from wr124_session_actor._document import EncodedDocument, StateUpload, encode_document
from wr124_session_actor.stores import (
    DocumentConflict,
    EngineStore,
    MemoryStore,
    PostgresDocuments,
    SqliteDocuments,
    SqliteStore,
    _engine,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DocumentStore]:
    """Each store kind, fresh."""
    made: DocumentStore
    if request.param == "memory":
        made = MemoryStore("t")
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "d.db")
    else:
        made = EngineStore(PostgresDocuments(request.getfixturevalue("postgres_db"), pool_size=2))
    yield made
    await made.aclose()


def doc(session: str = "s1", agent: str = "a", parent_seq: int | None = None, **state: object) -> EncodedDocument:
    return encode_document(StateUpload(session, dict(state), "task", agent, parent_seq=parent_seq))


class TestStoreProtocol:
    async def test_is_a_document_store(self, store: DocumentStore) -> None:
        """Both stores satisfy the protocol."""
        assert isinstance(store, DocumentStore)

    async def test_insert_get_delete(self, store: DocumentStore) -> None:
        """A document inserted can be read back with server fields, then deleted."""
        d = doc(n=1)
        assert await store.insert_many([d]) == [d.id]
        got = await store.get(d.id)
        assert got["_id"] == got["id"] == d.id
        assert got["content"]["state"] == {"n": 1}
        assert got["created_at"] and got["updated_at"]
        await store.delete(d.id)
        with pytest.raises(DocumentNotFound):
            await store.get(d.id)
        with pytest.raises(DocumentNotFound):
            await store.delete(d.id)

    async def test_same_id_twice_is_not_duplicated(self, store: DocumentStore) -> None:
        """Re-inserting the same document (a retried write) stores it once."""
        d = doc(n=1)
        await store.insert_many([d])
        await store.insert_many([d, d])
        result = await store.query(Query(session_id="s1"))
        assert result.total == 1

    async def test_conflicting_body_rejects_the_whole_batch(self, store: DocumentStore) -> None:
        """An id reused with another body is rejected and nothing of that batch is stored."""
        d = doc(n=1)
        await store.insert_many([d])
        other = EncodedDocument(d.id, d.session_id, d.name, d.tags, d.body.replace(b'"n":1', b'"n":2'))
        fresh = doc(n=3)
        with pytest.raises(StoreRejected):
            await store.insert_many([fresh, other])
        with pytest.raises(DocumentNotFound):
            await store.get(fresh.id)

    async def test_query_filters_and_order(self, store: DocumentStore) -> None:
        """Session, tags (all must match), name pattern, paging; newest first."""
        docs = [doc("s1", "a", i=0), doc("s1", "b", i=1), doc("s2", "a", i=2), doc("s1", "a", i=3)]
        for d in docs:
            await store.insert_many([d])
        result = await store.query(Query(session_id="s1", tags=("session_state", "a")))
        assert [r["content"]["state"]["i"] for r in result.data] == [3, 0]
        assert result.total == 2
        page = await store.query(Query(session_id="s1", limit=1, skip=1))
        assert [r["content"]["state"]["i"] for r in page.data] == [1]
        assert page.total == 3
        oldest = await store.query(Query(session_id="s1", sort_order=1, limit=1))
        assert oldest.data[0]["content"]["state"]["i"] == 0
        named = await store.query(Query(name_pattern="session_state_s2_"))
        assert [r["content"]["state"]["i"] for r in named.data] == [2]

    async def test_created_bounds_are_inclusive(self, store: DocumentStore) -> None:
        """created_after / created_before select by the server's creation time."""
        await store.insert_many([doc(i=0)])
        first = (await store.query(Query())).data[0]["created_at"]
        assert (await store.query(Query(created_after=first))).total == 1
        assert (await store.query(Query(created_before=first))).total == 1
        assert (await store.query(Query(created_after="2999-01-01T00:00:00.000000+00:00"))).total == 0

    async def test_closed_store_raises_store_closed(self, store: DocumentStore) -> None:
        """Using a store after aclose() is a StoreClosed error."""
        await store.aclose()
        with pytest.raises(StoreClosed):
            await store.query(Query())


class TestSeqAndParents:
    """``seq`` and ``parent_seq`` behave the same on every store."""

    async def test_seq_increases_per_session_in_write_order(self, store: DocumentStore) -> None:
        """Each stored document carries a top-level seq, strictly increasing per session in write order;
        sort_by=seq follows it and created_at agrees with it."""
        written = [doc("s1", i=0), doc("s2", i=1)]
        await store.insert_many(written)
        written += [doc("s1", i=2), doc("s1", i=3)]
        await store.insert_many(written[2:])
        await store.insert_many([written[2]])  # a repeat keeps its seq
        result = await store.query(Query(session_id="s1", sort_by="seq", sort_order=1))
        seqs = [d["seq"] for d in result.data]
        assert [d["content"]["state"]["i"] for d in result.data] == [0, 2, 3]
        assert all(type(s) is int for s in seqs) and seqs == sorted(set(seqs))
        assert [d["created_at"] for d in result.data] == sorted(d["created_at"] for d in result.data)
        newest = await store.query(Query(session_id="s1", sort_by="seq", limit=1))
        assert newest.data[0]["content"]["state"]["i"] == 3
        assert (await store.get(written[3].id))["seq"] == seqs[-1]

    async def test_parent_seq_conflict(self, store: DocumentStore) -> None:
        """Continuing the newest state of an agent is stored; continuing an older one is a conflict and
        stores nothing of the batch; other agents and a retried write are not affected."""
        await store.insert_many([doc("s1", "a", i=0)])
        first = (await store.query(Query(session_id="s1"))).data[0]["seq"]
        await store.insert_many([doc("s1", "b", i=1)])  # another agent: not a newer state of "a"
        ok = doc("s1", "a", parent_seq=first, i=2)
        await store.insert_many([ok])
        await store.insert_many([ok])  # the same write again (a retry) is not a conflict with itself
        fresh, stale = doc("s1", "b", i=3), doc("s1", "a", parent_seq=first, i=4)
        with pytest.raises(DocumentConflict, match="conflict"):
            await store.insert_many([fresh, stale])
        with pytest.raises(DocumentNotFound):
            await store.get(fresh.id)
        assert (await store.query(Query(session_id="s1"))).total == 3

    async def test_parent_seq_of_a_document_without_an_agent(self, store: DocumentStore) -> None:
        """A document with no agent (another client's, with no ``content.agent_name``) may give a parent_seq:
        checked against the newest agentless state of its session (PostgreSQL refused any such document,
        422 "IndeterminateDatatype")."""
        def agentless(parent_seq: int | None, i: int) -> EncodedDocument:
            return dataclasses.replace(doc("s1", parent_seq=parent_seq, i=i), agent=None)

        first = agentless(None, 0)
        await store.insert_many([first, doc("s1", "a", i=9)])
        seq = (await store.get(first.id))["seq"]
        await store.insert_many([agentless(seq, 1)])
        with pytest.raises(DocumentConflict, match="conflict"):
            await store.insert_many([agentless(seq, 2)])
        assert (await store.query(Query(session_id="s1"))).total == 3


class TestSharing:
    async def test_memory_stores_of_one_name_share_data(self) -> None:
        """Two memory stores of the same URL see each other's writes; other names do not."""
        d = doc(i=1)
        await MemoryStore("x").insert_many([d])
        assert (await MemoryStore("x").get(d.id))["id"] == d.id
        with pytest.raises(DocumentNotFound):
            await MemoryStore("y").get(d.id)

    async def test_projects_are_isolated(self, tmp_path: Path) -> None:
        """A document of one project is invisible to another on the same file."""
        d = doc(i=1)
        a, b = SqliteStore(tmp_path / "p.db", "a"), SqliteStore(tmp_path / "p.db", "b")
        await a.insert_many([d])
        with pytest.raises(DocumentNotFound):
            await b.get(d.id)
        await a.aclose()
        await b.aclose()


class TestLargeDocuments:
    async def test_large_body_round_trips(self, store: DocumentStore) -> None:
        """A body over 1 MiB (written to sqlite in chunks) reads back intact."""
        d = doc(blob="z" * (3 * 1024 * 1024 + 7))
        await store.insert_many([d])
        assert (await store.get(d.id))["content"]["state"]["blob"] == "z" * (3 * 1024 * 1024 + 7)
        await store.insert_many([d])  # the same again: recognised, not duplicated
        assert (await store.query(Query())).total == 1


class TestEngineBatches:
    """``SqliteDocuments.insert_many``: all-new batches in one go, others checked id by id."""

    @pytest.fixture
    def engine(self, tmp_path: Path) -> Iterator[SqliteDocuments]:
        made = SqliteDocuments(tmp_path / "e.db")
        yield made
        made.close()

    @staticmethod
    def ids_in_order(engine: SqliteDocuments) -> list[str]:
        data, _ = engine.query("p", Query(sort_order=1, limit=1000))
        return [d["id"] for d in data]

    @staticmethod
    def other_body(d: EncodedDocument) -> EncodedDocument:
        return EncodedDocument(d.id, d.session_id, d.name, d.tags, bytes(d.body).replace(b'"i":', b'"i":-', 1))

    async def test_all_new(self, engine: SqliteDocuments) -> None:
        """Every document is created, stored in the batch's order."""
        docs = [doc(i=i) for i in range(5)]
        assert engine.insert_many("p", docs) == [(d.id, True) for d in docs]
        assert self.ids_in_order(engine) == [d.id for d in docs]
        assert engine.insert_many("p", []) == []

    async def test_some_exist(self, engine: SqliteDocuments) -> None:
        """Existing ids (anywhere in the batch) are reported not created; the rest are stored in order."""
        docs = [doc(i=i) for i in range(6)]
        engine.insert_many("p", [docs[2], docs[5]])
        assert engine.insert_many("p", docs) == [(d.id, d not in (docs[2], docs[5])) for d in docs]
        assert self.ids_in_order(engine) == [d.id for d in (docs[2], docs[5], docs[0], docs[1], docs[3], docs[4])]
        assert engine.insert_many("p", docs[::-1]) == [(d.id, False) for d in docs[::-1]]

    async def test_repeat_within_a_batch(self, engine: SqliteDocuments) -> None:
        """An id twice in one batch: created once, then recognised; with another body, a conflict."""
        a, b = doc(i=1), doc(i=2)
        assert engine.insert_many("p", [a, b, a]) == [(a.id, True), (b.id, True), (a.id, False)]
        c = doc(i=3)
        with pytest.raises(DocumentConflict):
            engine.insert_many("p", [c, self.other_body(c)])
        assert self.ids_in_order(engine) == [a.id, b.id]

    async def test_conflict_keeps_nothing(self, engine: SqliteDocuments) -> None:
        """A conflict anywhere in the batch, large bodies included, stores none of it."""
        old = doc(i=0)
        engine.insert_many("p", [old])
        big = doc(i=1, blob="z" * (2 * 1024 * 1024))
        for batch in ([doc(i=2), big, self.other_body(old)], [self.other_body(old), big], [big, doc(i=3), old,
                                                                                          self.other_body(old)]):
            with pytest.raises(DocumentConflict):
                engine.insert_many("p", batch)
            assert self.ids_in_order(engine) == [old.id]

    async def test_large_bodies_in_a_batch(self, engine: SqliteDocuments) -> None:
        """Large and small bodies mixed keep their order and bytes, new or repeated."""
        docs = [doc(i=0), doc(i=1, blob="x" * (1024 * 1024 + 1)), doc(i=2), doc(i=3, blob="y" * (3 * 1024 * 1024))]
        assert engine.insert_many("p", docs) == [(d.id, True) for d in docs]
        extra = doc(i=4, blob="w" * (1024 * 1024 + 5))
        assert engine.insert_many("p", [extra, *docs, extra]) == [
            (extra.id, True), *[(d.id, False) for d in docs], (extra.id, False)
        ]
        assert self.ids_in_order(engine) == [d.id for d in (*docs, extra)]
        for d in (*docs, extra):
            got = engine.get("p", d.id)
            assert got is not None
            assert got["content"]["state"] == orjson.loads(d.body)["content"]["state"]


class TestCheckpoints:
    """A sqlite file's WAL is checkpointed by the engine's own thread, not inside the writes."""

    THREAD = "wr124-sqlite-checkpoint"

    @classmethod
    def checkpoint_threads(cls) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == cls.THREAD]

    def test_writes_reach_the_database_file_without_a_writer_checkpoint(self, tmp_path: Path) -> None:
        """6 MB written stay far under the writer's own checkpoint mark (16,000 pages), yet the
        database file soon holds them: the thread copied the WAL into it."""
        path = tmp_path / "c.db"
        engine = SqliteDocuments(path)
        try:
            for i in range(3):
                engine.insert_many("p", [doc(i=i, blob=str(i) * (2 * 1024 * 1024))])
            deadline = time.monotonic() + 10
            while path.stat().st_size < 6 * 1024 * 1024 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert path.stat().st_size >= 6 * 1024 * 1024
            assert engine.query("p", Query(limit=10))[1] == 3
        finally:
            engine.close()

    def test_close_joins_the_thread_and_a_later_write_starts_it_again(self, tmp_path: Path) -> None:
        """Closing leaves no checkpoint thread behind and checkpoints the whole WAL; the engine opens
        again on the next call, with its thread."""
        path = tmp_path / "c.db"
        engine = SqliteDocuments(path)
        for i in range(2):
            before = set(self.checkpoint_threads())
            engine.insert_many("p", [doc(i=i)])
            (started,) = set(self.checkpoint_threads()) - before
            engine.close()
            assert not started.is_alive()
            assert not Path(f"{path}-wal").exists()  # the last connection closed checkpointed everything
        reopened = SqliteDocuments(path)
        assert reopened.query("p", Query(limit=10))[1] == 2
        reopened.close()

    def test_memory_engine_has_no_thread(self) -> None:
        """``":memory:"`` has no WAL: no checkpoint thread."""
        before = set(self.checkpoint_threads())
        engine = SqliteDocuments(":memory:")
        engine.insert_many("p", [doc(i=1)])
        assert set(self.checkpoint_threads()) == before
        engine.close()


class TestWriteLock:
    """A write waiting for another connection's lock asks for it every millisecond, up to the busy timeout."""

    def test_a_writer_gets_in_between_another_connections_back_to_back_transactions(self, tmp_path: Path) -> None:
        """Another process's transactions of 20 ms with 2 ms between them: an insert gets in within a few
        of them. (sqlite's own busy handler, backing off to one try per 100 ms, waited for the last one.)"""
        path = tmp_path / "lock.db"
        engine = SqliteDocuments(path)
        engine.ping()
        other = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        holding = threading.Event()
        stop = threading.Event()

        def hold_in_turns() -> None:
            for _ in range(100):  # 2.2 s at most
                other.execute("BEGIN IMMEDIATE")
                holding.set()
                time.sleep(0.02)
                other.execute("COMMIT")
                if stop.is_set():
                    return
                time.sleep(0.002)

        thread = threading.Thread(target=hold_in_turns)
        thread.start()
        try:
            assert holding.wait(10)
            started = time.monotonic()
            engine.insert_many("p", [doc(i=1)])
            waited = time.monotonic() - started
            assert not stop.is_set() and thread.is_alive()  # it got in while the other still wrote
            stop.set()
            assert waited < 0.5
        finally:
            stop.set()
            thread.join()
            other.close()
            engine.close()

    def test_a_lock_held_past_the_busy_timeout_is_a_store_error(self, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """Held longer than the busy timeout, the write fails (StoreUnavailable, "database is locked"); the
        connection keeps its busy timeout, and writes once the lock is free."""
        monkeypatch.setattr(_engine, "_BUSY_TIMEOUT", 0.05)
        path = tmp_path / "lock.db"
        engine = SqliteDocuments(path)
        engine.ping()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="database is locked"):
                engine.insert_many("p", [doc(i=1)])
            other.execute("COMMIT")
            with engine._connection() as conn:
                assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 50
            assert engine.insert_many("p", [doc(i=2)])[0][1] is True
        finally:
            other.close()
            engine.close()

    def test_every_kind_of_busy_is_tried_again_and_other_errors_are_not(self) -> None:
        """An extended busy code (SQLITE_BUSY_RECOVERY: another process recovers the WAL) is tried again
        like a plain one; another error is raised at once. Either way the busy timeout is set back."""

        class Connection:
            def __init__(self, failures: list[int]) -> None:
                self.failures = failures
                self.statements: list[str] = []

            def execute(self, sql: str) -> None:
                self.statements.append(sql)
                if sql == "BEGIN IMMEDIATE" and self.failures:
                    exc = sqlite3.OperationalError("database is locked")
                    exc.sqlite_errorcode = self.failures.pop(0)
                    raise exc

        busy = Connection([sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY])
        _engine.begin_write(busy)  # type: ignore[arg-type]
        assert busy.statements.count("BEGIN IMMEDIATE") == 3
        assert busy.statements[-1] == "PRAGMA busy_timeout = 30000"
        readonly = Connection([sqlite3.SQLITE_READONLY])
        with pytest.raises(sqlite3.OperationalError):
            _engine.begin_write(readonly)  # type: ignore[arg-type]
        assert readonly.statements.count("BEGIN IMMEDIATE") == 1
        assert readonly.statements[-1] == "PRAGMA busy_timeout = 30000"

    @pytest.mark.parametrize("path", ["file", ":memory:"])
    def test_only_a_files_long_sweep_pauses_for_writers(self, path: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
        """A sweep of a file that held the lock long pauses between batches; the trim of one session (as
        after each write) does not, nor does any sweep of an in-memory database (its engine runs on the
        event loop, and no other process writes it)."""
        pauses: list[float] = []
        monkeypatch.setattr(time, "sleep", pauses.append)
        engine = SqliteDocuments(tmp_path / "sweep.db" if path == "file" else path)
        try:
            engine.insert_many("p", [doc(f"s{n % 3}", i=n) for n in range(30)])
            engine.prune("p", RetentionPolicy(keep_last=5), session_id="s0")
            assert pauses == []
            monkeypatch.setattr(_engine, "_SWEEP_HOLD", 0.0)  # as if each batch held the lock long
            report = engine.prune("p", RetentionPolicy(keep_last=1), batch_size=2)
            assert report.documents == 4 + 9 + 9
            assert pauses == ([_engine._SWEEP_GAP] * len(pauses) if path == "file" else [])
            assert len(pauses) >= (5 if path == "file" else 0)
        finally:
            engine.close()
