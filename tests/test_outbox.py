"""The durable outbox: spooled before the store has it, settled after, replayed on the next start."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, ConfigError, Query, StoreRejected
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor._outbox import Outbox
from wr124_session_actor.stores import MemoryStore

from .faultserver import closed_port_url, fault_server

pytestmark = pytest.mark.anyio


def uploads(n: int, agent: str = "a") -> list[StateUpload]:
    return [StateUpload("s", {"n": i}, "t", agent) for i in range(n)]


class TestOutbox:
    async def test_sync_spools_and_settle_removes(self, tmp_path: Path) -> None:
        """Noted uploads reach the file at the next sync; settled ones leave it at the one after."""
        outbox = Outbox(str(tmp_path / "o.db"))
        items = uploads(3)
        for u in items:
            outbox.add(u)
        await outbox.sync()
        assert outbox.count() == 3
        outbox.settle([items[0].doc_id, items[1].doc_id])
        await outbox.sync()
        assert outbox.count() == 1
        await outbox.aclose()

    async def test_settled_before_sync_never_touches_the_disk(self, tmp_path: Path) -> None:
        """An upload the store confirms before the next sync is never written to the spool."""
        outbox = Outbox(str(tmp_path / "o.db"))
        (u,) = uploads(1)
        outbox.add(u)
        outbox.settle([u.doc_id])
        await outbox.sync()
        assert (outbox.spooled, outbox.pending) == (0, 0)
        await outbox.aclose()

    async def test_bound_drops_older_states_of_an_agent_first(self, tmp_path: Path) -> None:
        """Past max_documents the oldest states of an agent with newer ones go first."""
        outbox = Outbox(str(tmp_path / "o.db"), max_documents=3)
        a_states, b_state = uploads(4, "a"), uploads(1, "b")[0]
        outbox.add(b_state)
        for u in a_states:
            outbox.add(u)
        await outbox.sync()
        store = MemoryStore("bound")
        await outbox.replay(store)
        stored = (await store.query(Query(limit=10))).data
        assert sorted((d["content"]["agent_name"], d["content"]["state"]["n"]) for d in stored) == [
            ("a", 2), ("a", 3), ("b", 0)]
        await outbox.aclose()

    async def test_replay_takes_only_what_was_there_when_the_spool_was_opened(self, tmp_path: Path) -> None:
        """Rows another live system adds to a shared spool are not replayed by this one, at its exit neither (they
        were written to this system's store, perhaps another store than theirs, and taken from the spool)."""
        path = str(tmp_path / "o.db")
        earlier = Outbox(path)
        earlier.add(uploads(1, "earlier")[0])
        await earlier.aclose()
        mine, other = Outbox(path), Outbox(path)
        await mine.open()
        other.add(uploads(1, "other")[0])
        await other.sync()
        store = MemoryStore("mine")
        assert await mine.replay(store) == 1
        assert await mine.replay(store) == 0  # as at its exit
        stored = (await store.query(Query(limit=10))).data
        assert [d["content"]["agent_name"] for d in stored] == ["earlier"] and mine.count() == 1
        await mine.aclose()
        await other.aclose()

    @pytest.mark.parametrize("keep", ["latest", "all"])
    async def test_keep_latest_replays_no_state_older_than_the_agents_newest(self, tmp_path: Path,
                                                                           keep: str) -> None:
        """keep="latest": of an agent's spooled states only the newest is replayed, and not when the store holds a
        newer one (a process killed after a write, before its next sync, left the states it superseded in the
        spool: replayed, they were stored as newer, and restored as the latest). keep="all" replays them all."""
        path = str(tmp_path / "o.db")
        earlier = Outbox(path)
        a_states, b_state = uploads(3, "a"), uploads(1, "b")[0]
        for upload in [*a_states, b_state]:
            earlier.add(upload)
        await earlier.aclose()
        store = MemoryStore("replay-latest")
        await store.insert_many([encode_document(StateUpload("s", {"n": 9}, "t", "a"))])  # made after them
        replayed = await Outbox(path).replay(store, keep_latest=keep == "latest")
        stored = (await store.query(Query(limit=10, sort_order=1))).data
        expected = [("a", 9), ("b", 0)] if keep == "latest" else [("a", 9), ("a", 0), ("a", 1), ("a", 2), ("b", 0)]
        assert [(d["content"]["agent_name"], d["content"]["state"]["n"]) for d in stored] == expected
        assert replayed == len(expected) - 1 and Outbox(path).count() == 0

    async def test_a_refused_continuation_in_the_spool_holds_no_other_row_back(self, tmp_path: Path) -> None:
        """A spooled continuation (parent_seq) of a state the store has since superseded is refused, with the
        parent_seq kept through the spool (it was dropped, and the stale state stored over the newer one); the
        other rows of its page, another session's, are stored, and the spool empties (no endless retry)."""
        path = str(tmp_path / "o.db")
        store = MemoryStore("replay-conflict")
        await store.insert_many([encode_document(StateUpload("a", {"n": n}, "t", "x")) for n in range(2)])
        old_seq = (await store.query(Query(session_id="a", sort_order=1, limit=1))).data[0]["seq"]
        spool = Outbox(path)
        spool.add(StateUpload("a", {"n": "stale"}, "t", "x", parent_seq=old_seq))
        for n in range(3):
            spool.add(StateUpload("b", {"n": n}, "t", "y"))
        await spool.aclose()
        with anyio.fail_after(5):
            replayed = await Outbox(path).replay(store)
        states = [(d["session_id"], d["content"]["state"]["n"])
                  for d in (await store.query(Query(limit=10, sort_order=1))).data]
        assert states == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
        assert replayed == 4 and Outbox(path).count() == 0

    async def test_a_replay_refused_for_its_key_keeps_the_rows_and_goes_on_later(self, tmp_path: Path) -> None:
        """The store refuses the caller (401: a server restarted with another API key): the spooled rows stay and
        the replay tries again, and stores them all once the key is right (each was let go as refused for good,
        logged, and lost)."""
        path = str(tmp_path / "o.db")
        spool = Outbox(path)
        for u in uploads(5):
            spool.add(u)
        await spool.aclose()
        store = MemoryStore("replay-key")
        refusals = 0
        insert_many = store.insert_many

        async def wrong_key_at_first(docs: Any) -> Any:
            nonlocal refusals
            if refusals < 3:
                refusals += 1
                raise StoreRejected("HTTP 401: wrong API key", status_code=401)
            return await insert_many(docs)

        store.insert_many = wrong_key_at_first  # type: ignore[method-assign]
        with anyio.fail_after(5):
            assert await Outbox(path).replay(store, retry_backoff=0.01) == 5
        assert refusals == 3 and Outbox(path).count() == 0
        result = await store.query(Query(limit=10, sort_order=1))
        assert [d["content"]["state"]["n"] for d in result.data] == list(range(5))

    async def test_replay_writes_in_order_and_empties(self, tmp_path: Path) -> None:
        """What a previous run spooled is written on the next start, oldest first, once."""
        path = str(tmp_path / "o.db")
        first = Outbox(path)
        for u in uploads(700):
            first.add(u)
        await first.aclose()
        second = Outbox(path)
        store = MemoryStore("replay")
        assert await second.replay(store) == 700
        assert second.count() == 0
        result = await store.query(Query(limit=1000, sort_order=1))
        assert [d["content"]["state"]["n"] for d in result.data] == list(range(700))
        assert await second.replay(store) == 0
        await second.aclose()


class TestSystemWithSpool:
    async def test_store_down_at_exit_then_replayed_on_next_start(self, tmp_path: Path, sqlite_url: str) -> None:
        """Uploads that could not reach a down store are replayed by the next system with the same spool."""
        spool = str(tmp_path / "outbox.db")
        down = Config(api_url=closed_port_url(), spool=spool, keep="all", retries=0, timeout=0.5,
                      shutdown_timeout=0.3, spool_sync_interval=0.01)
        async with ActorSystem(down) as system:
            for n in range(20):
                system.handle(f"s{n % 4}").submit({"n": n}, "t", "a")
        assert system.statistics().failed == 20
        up = down.replace(api_url=sqlite_url)
        async with ActorSystem(up) as system:
            with anyio.fail_after(10):
                while system.outbox is not None and system.outbox.count() > 0:
                    await anyio.sleep(0.02)
            stored = await system.store.query(Query(limit=100))
        assert sorted(d["content"]["state"]["n"] for d in stored.data) == list(range(20))

    async def test_what_an_earlier_run_left_is_in_the_depth_and_its_replay_in_the_counts(
            self, tmp_path: Path, sqlite_url: str) -> None:
        """``outbox_depth`` counts the rows an earlier run left until they are replayed (it read 0 while the spool
        held them), and their replay counts as documents and store writes, for the write observers (the
        metrics) too (it counted nothing)."""
        spool = str(tmp_path / "outbox.db")
        down = Config(api_url=closed_port_url(), spool=spool, keep="all", retries=0, timeout=0.5,
                      shutdown_timeout=0.3, spool_sync_interval=0.01, retry_backoff=0.05)
        async with ActorSystem(down) as system:
            for n in range(12):
                system.handle(f"s{n % 3}").submit({"n": n}, "t", "a")
        async with ActorSystem(down) as system:  # the store still down: the rows wait, and are counted
            assert system.statistics().outbox_depth == 12
            system.handle("s9").submit({"n": 12}, "t", "a")
            assert system.statistics().outbox_depth == 13
        observed: list[int] = []
        system = ActorSystem(down.replace(api_url=sqlite_url))
        system.add_write_observer(lambda observation: observed.append(observation.documents))
        async with system:
            with anyio.fail_after(10):
                while system.statistics().outbox_depth:
                    await anyio.sleep(0.02)
            stats = system.statistics()
            assert system.outbox is not None and system.outbox.count() == 0
        assert (stats.documents, stats.store_writes, sum(observed)) == (13, len(observed), 13)

    async def test_sessions_wait_for_what_an_earlier_run_left_of_them(self, tmp_path: Path, sqlite_url: str) -> None:
        """Right after the next start, a session whose states an earlier run left in the spool reads them, and
        its new states are stored after them (a read answered "no state" and cached that for cache_ttl, and a
        Team then began a new conversation above the replayed one); another session is not held."""
        spool = str(tmp_path / "outbox.db")
        down = Config(api_url=closed_port_url(), spool=spool, retries=0, timeout=0.5, shutdown_timeout=0.3,
                      spool_sync_interval=0.01)
        async with ActorSystem(down) as system:
            for n in range(5):
                system.handle("s").submit({"n": n}, "t", "a")
                system.handle("s").submit({"other": n}, "t", "b")
        up = down.replace(api_url=sqlite_url, timeout=10.0)
        async with ActorSystem(up) as system:
            manager = system.manager("s")
            status, content = await manager.restore_latest_session_state()
            assert (status, content and content["state"]) == (S.SUCCESS, {"other": 4})
            assert manager.submit_session_state({"n": 99}, "t", "a") is S.SUCCESS
            assert (await system.manager("t").download_session_states()) == (S.SUCCESS, [])
        async with ActorSystem(up) as system:
            status, content = await system.manager("s").restore_agent_session_state("a")
            assert (status, content and content["state"]) == (S.SUCCESS, {"n": 99})
            status, docs = await system.manager("s").download_session_states(limit=20, agent_name="b")
            assert [d["content"]["state"] for d in docs] == [{"other": 4}]  # keep="latest": the older coalesced

    async def test_a_hanging_server_holds_the_exit_no_longer_than_shutdown_timeout(
            self, tmp_path: Path, sqlite_url: str) -> None:
        """Writes already in flight to a server that never answers end at the closing deadline, not at
        their own (a 30 s store deadline here): the exit takes about ``shutdown_timeout``, and what was
        in flight or queued stays spooled, for the next start to store once."""
        spool = str(tmp_path / "outbox.db")
        with fault_server("hang") as (url, hits), capture_logs() as logs:
            hanging = Config(api_url=url, spool=spool, keep="all", retries=0, timeout=30.0, debounce=0.01,
                             shutdown_timeout=0.5, spool_sync_interval=0.01)
            async with ActorSystem(hanging) as system:
                for n in range(40):
                    system.handle(f"s{n % 8}").submit({"n": n}, "t", "a")
                with anyio.fail_after(10):
                    while not hits:  # a write is in flight
                        await anyio.sleep(0.01)
                leaving = time.monotonic()
        assert time.monotonic() - leaving < 5.0  # was 30 s: the in-flight write's own deadline
        assert system.statistics().failed == 40
        kept = [e for e in logs if e["event"] == "session_state.upload" and e["status"] == "failed"]
        assert sum(e["batch_size"] for e in kept) == 40
        assert all("kept in the outbox" in e["error"] for e in kept)
        async with ActorSystem(hanging.replace(api_url=sqlite_url)) as system:
            with anyio.fail_after(10):
                while system.outbox is not None and system.outbox.count() > 0:
                    await anyio.sleep(0.02)
            stored = await system.store.query(Query(limit=100))
        assert sorted(d["content"]["state"]["n"] for d in stored.data) == list(range(40))

    async def test_healthy_store_leaves_the_spool_empty(self, tmp_path: Path, sqlite_config: Config) -> None:
        """With the store up, everything is settled and the spool ends empty."""
        config = sqlite_config.replace(spool=str(tmp_path / "outbox.db"), spool_sync_interval=0.01)
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            for n in range(100):
                handle.submit({"n": n}, "t", "a")
                if n % 10 == 0:
                    await anyio.sleep(0.01)
            await handle.flush()
            outbox = system.outbox
        assert outbox is not None
        reopened = Outbox(outbox.path)
        assert reopened.count() == 0
        await reopened.aclose()


class TestSpoolFaults:
    @pytest.mark.parametrize("kind", ["folder", "not sqlite"])
    async def test_a_spool_path_that_cannot_be_one_fails_at_entry(self, tmp_path: Path, kind: str) -> None:
        """SESSION_STATE_SPOOL naming a folder or a file that is not sqlite is a ConfigError naming it where the
        system is entered (the system started, accepted uploads, and its exit raised sqlite3's error)."""
        path = tmp_path / "spool"
        if kind == "folder":
            path.mkdir()
        else:
            path.write_text("notes, not a database")
        with pytest.raises(ConfigError, match="SESSION_STATE_SPOOL: cannot use"):
            async with ActorSystem(Config(api_url="memory://", spool=str(path))):
                pass

    @pytest.mark.parametrize("kind", ["corrupt", "read-only"])
    async def test_a_spool_that_cannot_be_read_or_written_fails_at_entry(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
    ) -> None:
        """A spool whose pages are corrupt, or that cannot be written (a read-only file in a writable folder),
        is a ConfigError at entry too (the system started, and every exit retried its replay until
        shutdown_timeout: 30 s for an empty enter and leave)."""
        path = tmp_path / "spool.db"
        config = Config(api_url="memory://", spool=str(path), shutdown_timeout=0.2, spool_sync_interval=0.01)
        async with ActorSystem(config.replace(api_url=closed_port_url(), retries=0, timeout=0.2)) as system:
            for n in range(300):
                system.handle(f"s{n}").submit({"n": n, "pad": "x" * 200}, "t", "a")
        if kind == "corrupt":
            with sqlite3.connect(path) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            data = path.read_bytes()
            path.write_bytes(data[:100] + random.Random(7).randbytes(len(data) - 100))  # past sqlite's header
        else:
            from wr124_session_actor import _outbox

            def read_only(path: str, schema: str, **options: Any) -> sqlite3.Connection:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
                return conn

            monkeypatch.setattr(_outbox, "open_sqlite", read_only)
        with pytest.raises(ConfigError, match="SESSION_STATE_SPOOL: cannot use"):
            async with ActorSystem(config):
                pass

    async def test_a_replay_that_finds_corrupt_pages_gives_up_at_once(self, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """Pages found corrupt during the replay (where entry's checks did not read) end it at once with an
        error, the rows left as they are: retrying cannot mend them (every exit took shutdown_timeout)."""
        path = str(tmp_path / "outbox.db")
        earlier = Outbox(path)
        earlier.add(uploads(1)[0])
        await earlier.aclose()

        def corrupt(self: Outbox, last: int) -> Any:
            raise sqlite3.DatabaseError("database disk image is malformed")

        monkeypatch.setattr(Outbox, "_oldest", corrupt)
        outbox = Outbox(path)
        with capture_logs() as logs:
            with anyio.fail_after(2):
                assert await outbox.replay(MemoryStore("corrupt"), retry_backoff=1.0) == 0
                await outbox.wait_replayed("s")  # its sessions go on
        assert [(e["op"], e["log_level"]) for e in logs] == [("replay", "error")]
        assert "malformed" in logs[0]["error"]

    async def test_a_spool_that_fails_during_the_run_is_logged_and_retried(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A spool file that fails while an earlier run's rows are replayed (a disk error, say), and when it
        is counted at the exit, is logged and retried, not raised: the rows are replayed once it reads
        again, and leaving raises nothing (the replay task's error ended the system's exit before)."""
        path = str(tmp_path / "outbox.db")
        earlier = Outbox(path)
        for u in uploads(30):
            earlier.add(u)
        await earlier.aclose()
        faults = {"_oldest": 2, "count": 1}

        def failing(name: str) -> Any:
            real = getattr(Outbox, name)

            def method(self: Outbox, *args: Any) -> Any:
                if faults[name] > 0:
                    faults[name] -= 1
                    raise sqlite3.OperationalError("disk I/O error")
                return real(self, *args)

            return method

        for name in faults:
            monkeypatch.setattr(Outbox, name, failing(name))
        config = Config(api_url="memory://spool-faults", spool=path, keep="all", retry_backoff=0.01,
                        retry_backoff_max=0.02)
        with capture_logs() as logs:
            async with ActorSystem(config) as system:
                with anyio.fail_after(10):
                    while ((await system.store.query(Query(limit=100))).total or 0) < 30:
                        await anyio.sleep(0.01)
        assert faults == {"_oldest": 0, "count": 0}
        events = [(e["op"], e["status"], e.get("error")) for e in logs if e["event"] == "session_state.outbox"]
        assert events.count(("replay", "failed", f"spool {path}: disk I/O error")) == 2, events
        assert ("close", "failed", f"spool {path}: disk I/O error") in events
        assert sum(e.get("batch_size", 0) for e in logs if e.get("op") == "replay" and e["status"] == "success") == 30

    async def test_a_full_disk_names_its_cause_and_what_was_lost(self, tmp_path: Path) -> None:
        """A spool that cannot grow (a full disk: SQLITE_FULL) while the store is down: the sync's error is
        sqlite's own ("database or disk is full", it read "cannot rollback - no transaction is active"), the
        uploads given up at the exit are not said to be kept, and those the last sync could not write are
        logged as lost (they were logged as "kept in the outbox", and the file held none)."""
        path = str(tmp_path / "outbox.db")
        config = Config(api_url=closed_port_url(), spool=path, keep="all", retries=0, timeout=0.5,
                        shutdown_timeout=0.3, spool_sync_interval=0.01)
        with capture_logs() as logs:
            async with ActorSystem(config) as system:
                assert system.outbox is not None
                conn = system.outbox._connect()
                (pages,) = conn.execute("PRAGMA page_count").fetchone()
                conn.execute(f"PRAGMA max_page_count = {pages + 2}")  # room for a few rows, not for 200
                for n in range(200):
                    system.handle(f"s{n % 4}").submit({"n": n, "pad": "x" * 2000}, "t", f"a{n}")
        syncs = [e["error"] for e in logs if e.get("op") == "sync"]
        assert syncs and all(error == f"spool {path}: database or disk is full" for error in syncs), syncs
        # Said once while it lasts (every sync was a warning: ten a second).
        assert [e["log_level"] for e in logs if e.get("op") == "sync"].count("warning") == 1
        given_up = [e for e in logs if e["event"] == "session_state.upload" and e["status"] == "failed"]
        assert sum(e["batch_size"] for e in given_up) == 200
        assert all("the spool fails too (spool " in e["error"] and "kept in the outbox" not in e["error"]
                   for e in given_up), given_up
        (lost,) = [e for e in logs if e.get("op") == "close" and "lost" in e]
        assert lost["log_level"] == "error" and "neither stored nor spooled" in lost["error"]
        with sqlite3.connect(path) as check:
            (spooled,) = check.execute("SELECT count(*) FROM outbox").fetchone()
        assert lost["lost"] + spooled == 200 and lost["lost"] > 150
        assert system.statistics().outbox_depth == spooled  # the lost ones are not held any more

    async def test_a_deadline_ends_the_entry_while_another_process_locks_the_spool(self, tmp_path: Path) -> None:
        """Entering a system whose spool another connection holds locked waits for it, but a deadline around
        the entry ends the wait (it held until sqlite's 30 s busy timeout)."""
        path = str(tmp_path / "outbox.db")
        await Outbox(path).aclose()
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            started = time.monotonic()
            with anyio.move_on_after(0.3) as scope:
                async with ActorSystem(Config(api_url="memory://locked-spool", spool=path)):
                    pass
            assert scope.cancelled_caught
            assert time.monotonic() - started < 5
        finally:
            locker.execute("ROLLBACK")
            locker.close()

    async def test_a_sync_cancelled_while_encoding_loses_nothing(self, tmp_path: Path) -> None:
        """A sync cancelled while it encodes (the exit cancels the periodic sync; a large state yields to the loop
        while encoded) keeps its batch for the next sync (it was dropped from memory: uploads logged as kept in
        the outbox at the exit were not in it)."""
        outbox = Outbox(str(tmp_path / "outbox.db"))
        await outbox.open()
        pad = "x" * 300_000  # past the encoder's 256 KB step
        for n in range(3):
            outbox.add(StateUpload("s", {"n": n, "pad": pad}, "t", f"a{n}"))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await outbox.sync()
        assert outbox.pending == 3
        await outbox.sync()
        assert (outbox.pending, outbox.count()) == (3, 3)
        await outbox.aclose()
