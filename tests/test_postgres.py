"""PostgreSQL: the engine, the library on ``postgresql://`` (direct and actor mode, both loops), a database
that goes down and comes back, migrations from several processes, two processes continuing one session."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from wr124_session_actor import (
    ActorSystem,
    Config,
    ConfigError,
    RetentionPolicy,
    SessionStateManager,
    StoreRejected,
    StoreTimeout,
    StoreUnavailable,
)
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor.stores import PostgresDocuments, Query, SqliteDocuments, open_store
from wr124_session_actor.stores import _postgres as postgres_module

from .pgcluster import PgCluster, create_database, drop_database, free_port
from .test_manager import original_usage
from .test_status_paths import every_call

ROOT = Path(__file__).resolve().parent.parent


def doc(session: str = "s1", agent: str = "a", **state: object) -> Any:
    return encode_document(StateUpload(session, dict(state), "task", agent))


def pg_config(url: str, **changes: Any) -> Config:
    values: dict[str, Any] = {"timeout": 5.0, "pg_pool_size": 4, **changes}
    return Config(api_url=url, **values)


@pytest.fixture
def engine(postgres_db: str) -> Iterator[PostgresDocuments]:
    made = PostgresDocuments(postgres_db, pool_size=4, timeout=5.0)
    yield made
    made.close()


class TestConfig:
    def test_urls_and_settings(self) -> None:
        """postgresql:// and postgres:// are PostgreSQL stores; the pool settings come from SESSION_STATE_PG_*."""
        env = {"SESSION_API_URL": "postgres://u:p@127.0.0.1:5/db", "SESSION_STATE_PG_POOL_SIZE": "3",
               "SESSION_STATE_PG_MAX_LIFETIME": "60", "SESSION_STATE_PG_PREPARE_THRESHOLD": "none",
               "SESSION_STATE_MIGRATE": "false"}
        config = Config.from_env(env)
        assert config.store_kind == "postgresql"
        assert (config.pg_pool_size, config.pg_max_lifetime, config.pg_prepare_threshold, config.migrate) == (
            3, 60.0, None, False)
        assert Config(api_url="postgresql://h/db").store_kind == "postgresql"

    @pytest.mark.parametrize(("var", "value"), [("SESSION_STATE_PG_POOL_SIZE", "0"),
                                                ("SESSION_STATE_PG_MAX_LIFETIME", "0"),
                                                ("SESSION_STATE_PG_PREPARE_THRESHOLD", "-1"),
                                                ("SESSION_STATE_PG_PREPARE_THRESHOLD", "x"),
                                                ("SESSION_STATE_MIGRATE", "maybe")])
    def test_bad_values_name_the_variable(self, var: str, value: str) -> None:
        """A malformed setting is a ConfigError naming its variable."""
        with pytest.raises(ConfigError, match=var):
            Config.from_env({"SESSION_API_URL": "postgresql://h/db", var: value})


class TestEngine:
    def test_writers_of_one_session_get_distinct_increasing_seqs(self, engine: PostgresDocuments) -> None:
        """Threads writing one session at once: every seq distinct and dense, created_at in seq order,
        each thread's documents in its own write order."""
        def writer(name: str) -> None:
            for i in range(10):
                engine.insert_many("p", [doc("s", name, i=i), doc("s", name, i=i + 100)])

        threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        data, total = engine.query("p", Query(session_id="s", sort_by="seq", sort_order=1, limit=1000))
        assert total == 80
        assert [d["seq"] for d in data] == list(range(1, 81))
        assert [d["created_at"] for d in data] == sorted(d["created_at"] for d in data)
        for name in ("w0", "w1", "w2", "w3"):
            mine = [d["content"]["state"]["i"] for d in data if d["content"]["agent_name"] == name]
            assert mine == [i + k for i in range(10) for k in (0, 100)]

    def test_same_id_raced_from_two_connections_is_stored_once(self, engine: PostgresDocuments) -> None:
        """Two writers sending the same document at once (a retry through another replica): one row."""
        docs = [doc(i=i) for i in range(50)]
        results: list[list[tuple[str, bool]]] = []
        threads = [threading.Thread(target=lambda: results.append(engine.insert_many("p", docs))) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert engine.query("p", Query(limit=1000))[1] == 50
        assert sorted(created for r in results for _, created in r).count(True) == 50

    def test_dead_connections_are_replaced_before_use(self, engine: PostgresDocuments, postgres_db: str) -> None:
        """Every pooled connection killed by the server: the next call still succeeds at once (the pool's
        check finds the dead ones and connects anew)."""
        engine.insert_many("p", [doc(i=0)])
        with psycopg.connect(postgres_db, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        assert engine.query("p", Query())[1] == 1
        engine.insert_many("p", [doc(i=1)])

    def test_without_prepared_statements(self, postgres_db: str) -> None:
        """prepare_threshold=None (PgBouncer in transaction mode) works for every call."""
        made = PostgresDocuments(postgres_db, pool_size=1, prepare_threshold=None)
        try:
            for i in range(8):
                made.insert_many("p", [doc(i=i)])
                assert made.query("p", Query())[1] == i + 1
        finally:
            made.close()

    def test_a_session_begun_again_while_its_removal_commits_numbers_on(self, engine: PostgresDocuments,
                                                                        postgres_db: str) -> None:
        """A write of a session waits on its counter row while a sweep removes the session whole; the sweep
        commits (its counter gone, the floor raised), and the write makes the counter anew: above the raised
        floor, not the one its statement read before it waited (seq 2 was given again, and a stale
        continuation of seq 5 was stored)."""
        engine.insert_many("p", [doc("other", i=0)])
        engine.insert_many("p", [doc("A", i=i) for i in range(5)])
        later = datetime.now(UTC) + timedelta(hours=2)
        idle = RetentionPolicy(idle_ttl=3600)
        assert engine.prune("p", idle, session_id="other", now=later).sessions == 1  # the floor: 1
        done: dict[str, Any] = {}

        def waiting() -> int:
            with psycopg.connect(postgres_db, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                   " AND wait_event_type = 'Lock'").fetchone()
            return int(row[0]) if row else 0

        def wait_for(count: int) -> None:
            for _ in range(500):
                if waiting() >= count:
                    return
                time.sleep(0.01)
            raise AssertionError(f"{count} waiting transactions expected")

        with psycopg.connect(postgres_db) as holder:  # holds the floor row: the sweep stops after its delete
            holder.execute("SELECT floor FROM wr124_seq_floors WHERE project = 'p' FOR UPDATE")
            sweep = threading.Thread(target=lambda: done.update(sweep=engine.prune("p", idle, session_id="A",
                                                                                   now=later)))
            sweep.start()
            wait_for(1)
            write = threading.Thread(target=lambda: done.update(write=engine.insert_many("p", [doc("A", i=100)])))
            write.start()
            wait_for(2)  # the write waits on the session's counter row, which the sweep deleted
            holder.commit()
        sweep.join(10)
        write.join(10)
        assert done["sweep"].sessions == 1
        [new] = engine.query("p", Query(session_id="A"))[0]
        assert new["content"]["state"] == {"i": 100} and new["seq"] > 5
        stale = encode_document(StateUpload("A", {"i": 5}, "task", "a", parent_seq=5))
        with pytest.raises(StoreRejected, match="conflict"):
            engine.insert_many("p", [stale])

    @pytest.mark.parametrize("refusal", ["FATAL:  sorry, too many clients already",
                                         'FATAL:  too many connections for role "r"',
                                         "FATAL:  remaining connection slots are reserved for superuser"])
    def test_a_database_with_no_free_slot_is_waited_for(self, refusal: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """A connection refused for want of a free slot (the server's max_connections, a role's limit) is not a
        failure of the call: the pool's own connections come back to it (the server's "too many clients" made
        calls fail at once)."""
        def refused(*_args: object, **_kwargs: object) -> None:
            raise psycopg.OperationalError(f"connection failed: {refusal}")

        monkeypatch.setattr(psycopg, "connect", refused)
        PostgresDocuments("postgresql://postgres@127.0.0.1:1/x")._connect_once()  # no error: wait for the pool
        monkeypatch.setattr(psycopg, "connect", lambda *a, **k: (_ for _ in ()).throw(
            psycopg.OperationalError('FATAL:  database "x" does not exist')))
        with pytest.raises(StoreUnavailable, match='cannot connect: FATAL:  database "x" does not exist'):
            PostgresDocuments("postgresql://postgres@127.0.0.1:1/x")._connect_once()

    def test_a_string_jsonb_cannot_hold_is_rejected(self, engine: PostgresDocuments) -> None:
        """A state holding a NUL character (jsonb cannot store \\u0000): rejected for good, not transient."""
        with pytest.raises(StoreRejected, match="PostgreSQL"):
            engine.insert_many("p", [doc(text="a\x00b")])

    def test_unreachable_database(self) -> None:
        """Nothing listening: a transient store error, quickly."""
        made = PostgresDocuments(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=1.0)
        try:
            with pytest.raises((StoreUnavailable, StoreTimeout)):
                made.ping()
        finally:
            made.close()


@pytest.mark.anyio
class TestLibrary:
    async def test_original_usage_direct(self, postgres_db: str) -> None:
        """The original README's example on postgresql://, direct mode."""
        await original_usage(pg_config(postgres_db))

    async def test_postgres_scheme_and_actor_mode(self, postgres_db: str) -> None:
        """postgres:// in actor mode: uploads batched, read back newest first with their seq."""
        url = postgres_db.replace("postgresql://", "postgres://", 1)
        async with ActorSystem(pg_config(url, keep="all")) as system:
            manager = system.manager("s")
            for i in range(5):
                assert manager.submit_session_state({"i": i}, "t", "a") == S.SUCCESS
            status, states = await manager.download_session_states(limit=10)
        assert status == S.SUCCESS
        assert [d["content"]["state"]["i"] for d in states] == [4, 3, 2, 1, 0]
        assert [d["seq"] for d in states] == [5, 4, 3, 2, 1]

    async def test_parent_seq_conflict_is_failed(self, postgres_db: str) -> None:
        """An upload continuing an older state: FAILED with "conflict"; continuing the newest: SUCCESS."""
        manager = SessionStateManager("s", pg_config(postgres_db))
        await manager.upload_session_state({"n": 1}, "t", "a")
        _, states = await manager.download_session_states(limit=1)
        seq = states[0]["seq"]
        assert (await manager.upload_session_state({"n": 2}, "t", "a", parent_seq=seq))[0] == S.SUCCESS
        status, message = await manager.upload_session_state({"n": 3}, "t", "a", parent_seq=seq)
        assert status == S.FAILED
        assert "conflict" in message
        await manager.aclose()


class Opaque:
    """Something no JSON encoder knows."""


@pytest.mark.anyio
class TestStatusPaths:
    async def test_unknown_id_and_unserializable_state(self, postgres_db: str) -> None:
        """Unknown ids: FAILED; a state that cannot be encoded: FAILED naming the type, nothing stored."""
        manager = SessionStateManager("s", pg_config(postgres_db))
        assert await manager.restore_session_state("nope") == (S.FAILED, None)
        assert (await manager.delete_session_state("nope"))[0] == S.FAILED
        status, message = await manager.upload_session_state({"x": Opaque()})
        assert (status, "Opaque" in message) == (S.FAILED, True)
        assert await manager.download_session_states() == (S.SUCCESS, [])
        await manager.aclose()

    async def test_disabled_touches_no_database(self) -> None:
        """ENABLE_SESSION_STATE_UPLOAD unset with a postgresql:// URL: DISABLED everywhere, nothing opened."""
        config = Config.from_env({"SESSION_API_URL": f"postgresql://127.0.0.1:{free_port()}/x"})
        manager = SessionStateManager("s", config)
        results = await every_call(manager)
        assert {r[0] for r in results.values()} == {S.DISABLED}
        assert manager.submit_session_state({"a": 1}) == S.DISABLED
        await manager.aclose()

    async def test_without_psycopg_every_call_is_no_client(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """psycopg_pool not importable (the extra not installed): NO_CLIENT with a hint, no exception."""
        monkeypatch.setitem(sys.modules, "psycopg_pool", None)
        manager = SessionStateManager("s", pg_config(f"postgresql://127.0.0.1:{free_port()}/x", retries=0))
        results = await every_call(manager)
        assert {r[0] for r in results.values()} == {S.NO_CLIENT}
        assert "pip install" in results["upload"][1]
        await manager.aclose()


@pytest.mark.anyio
class TestDatabaseDown:
    async def test_down_then_restarted(self, own_postgres: PgCluster) -> None:
        """Database down: every call FAILED or TIMEOUT, never an exception, direct and actor mode;
        restarted: the next calls succeed on the same manager (dead connections replaced)."""
        config = pg_config(own_postgres.url, timeout=0.5, retries=1, shutdown_timeout=0.5)
        manager = SessionStateManager("s", config)
        assert (await manager.upload_session_state({"a": 0}, "t", "agent"))[0] == S.SUCCESS
        own_postgres.stop()
        try:
            results = await every_call(manager)
            assert {r[0] for r in results.values()} <= {S.FAILED, S.TIMEOUT}, results
            async with SessionStateManager("s", config) as actor:
                assert (await actor.upload_session_state({"a": 1}))[0] in (S.FAILED, S.TIMEOUT)
                assert (await actor.download_session_states())[0] in (S.FAILED, S.TIMEOUT)
        finally:
            own_postgres.start()
        with anyio.fail_after(30):
            while (await manager.upload_session_state({"a": 2}, "t", "agent"))[0] != S.SUCCESS:
                await anyio.sleep(0.2)
        status, states = await manager.download_session_states(limit=10)
        assert status == S.SUCCESS
        assert states[0]["content"]["state"]["a"] == 2
        await manager.aclose()

    async def test_a_call_waiting_through_a_long_outage_is_served_when_the_database_is_back(
            self, own_postgres: PgCluster, monkeypatch: pytest.MonkeyPatch) -> None:
        """A call that began during an outage longer than the pool's reconnect attempts (5 s; 1 s here) is
        served soon after the database is back: the pool had given up, and nothing tried again for a caller
        already waiting, who waited out its whole timeout (TIMEOUT after 30 s, the next call at once)."""
        monkeypatch.setattr(postgres_module, "_RECONNECT_TIMEOUT", 1.0)
        config = pg_config(own_postgres.url, timeout=30.0, retries=100)  # tried again until its timeout
        manager = SessionStateManager("s", config)
        assert (await manager.upload_session_state({"a": 0}, "t", "agent"))[0] == S.SUCCESS
        own_postgres.stop()
        answer: list[Any] = []
        restarted = False
        try:
            async with anyio.create_task_group() as tg:
                async def upload() -> None:
                    answer.append(await manager.upload_session_state({"a": 1}, "t", "agent"))
                    answer.append(time.monotonic())

                tg.start_soon(upload)
                await anyio.sleep(2.5)  # past the pool's reconnect_timeout: its attempts have given up
                assert answer == []
                own_postgres.start()
                restarted, back = True, time.monotonic()
        finally:
            if not restarted:
                own_postgres.start()
        (status, doc_id), served = answer
        assert status is S.SUCCESS, doc_id
        assert served - back < 15  # not the rest of the 30 s timeout
        await manager.aclose()

    async def test_connection_failures_name_their_cause(self, own_postgres: PgCluster) -> None:
        """A database that does not exist, a role that does not exist, nothing listening: the call's status
        says why, at once (every call was "timed out after 5s" with no cause, and the CLI said only
        "PoolTimeout")."""
        base = own_postgres.url.rsplit("/", 1)[0]
        cases = {
            f"{base}/no_such_db": 'database "no_such_db" does not exist',
            own_postgres.url.replace("postgres@", "nobody@"): 'role "nobody" does not exist',
            f"postgresql://postgres@127.0.0.1:{free_port()}/x": "Connection refused",
        }
        for url, cause in cases.items():
            manager = SessionStateManager("s", pg_config(url, timeout=3.0))
            status, message = await manager.upload_session_state({"a": 0}, "t", "agent")
            assert status in (S.FAILED, S.TIMEOUT) and cause in message, message
            await manager.aclose()


class TestMigrations:
    def test_five_processes_at_once_on_an_empty_database(self, postgres_url: str) -> None:
        """`wr124-session migrate` from 5 processes at once: all succeed, each version applied once."""
        url = create_database(postgres_url, "mig")
        try:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            command = [sys.executable, "-m", "wr124_session_actor.cli", "migrate", "--db", url]
            procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for _ in range(5)]
            outputs = [proc.communicate(timeout=60) for proc in procs]
            assert [proc.returncode for proc in procs] == [0] * 5, outputs
            assert sum("applied schema versions 1, 2, 3" in out for out, _ in outputs) == 1, outputs
            assert sum("up to date" in out for out, _ in outputs) == 4, outputs
            with psycopg.connect(url) as conn:
                rows = conn.execute("SELECT version FROM wr124_schema_migrations ORDER BY version").fetchall()
                indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'wr124_documents'").fetchone()
            assert rows == [(1,), (2,), (3,)]
            assert indexes is not None and indexes[0] == 7
        finally:
            drop_database(postgres_url, url)

    @pytest.mark.anyio
    async def test_a_restored_large_float_is_a_float_that_uploads_again(self, postgres_db: str) -> None:
        """A state holding 1e20 and 1e300, stored in jsonb (which prints them as digits alone), restores as floats
        and uploads again (it restored as ints past 64 bits: "Integer exceeds 64-bit range" on the next upload,
        a Team's continuation after restore_latest)."""
        manager = SessionStateManager("s", Config(api_url=postgres_db, timeout=10.0))
        try:
            assert (await manager.upload_session_state({"f": [1e20, 1e300]}, "t", "a"))[0] is S.SUCCESS
            status, content = await manager.restore_latest_session_state()
            assert status is S.SUCCESS and content is not None
            assert content["state"] == {"f": [1e20, 1e300]} and all(isinstance(x, float) for x in content["state"]["f"])
            assert (await manager.upload_session_state(content["state"], "t", "b"))[0] is S.SUCCESS
        finally:
            await manager.aclose()

    def test_migrate_off_leaves_the_database_alone(self, postgres_db: str) -> None:
        """migrate=False: nothing is created on first use; calls and the ping are unavailable (transient: what
        was accepted meanwhile is retried, not refused for good) until `migrate` runs."""
        made = PostgresDocuments(postgres_db, migrate=False)
        try:
            with pytest.raises(StoreUnavailable, match=r"wr124_documents.*run `wr124-session migrate --db URL` first"):
                made.query("p", Query())
            with pytest.raises(StoreUnavailable, match=r"the schema is at version 0 of 3: .*migrate --db URL"):
                made.ping()
            assert made.migrate() == [1, 2, 3]
            made.ping()
            assert made.query("p", Query()) == ([], 0)
        finally:
            made.close()

    def test_round_one_sqlite_file_is_migrated(self, tmp_path: Path) -> None:
        """A round-1 sqlite file (no agent column, no version) gains the agent column; seqs are kept."""
        import sqlite3

        from wr124_session_actor.stores._engine import _SCHEMA

        path = tmp_path / "round1.db"
        conn = sqlite3.connect(path)
        conn.executescript(_SCHEMA)
        old = doc("s", "alice", i=1)
        conn.execute("INSERT INTO documents (project, id, session_id, document_type, name, tags, created_at,"
                     " updated_at, body) VALUES ('p', ?, 's', 'user_data', ?, '[]', '2024-01-01', '2024-01-01', ?)",
                     (old.id, old.name, bytes(old.body)))
        conn.commit()
        conn.close()
        made = SqliteDocuments(path)
        try:
            assert made.migrate() == [2]
            assert made.get("p", old.id)["seq"] == 1  # type: ignore[index]
            parent = encode_document(StateUpload("s", {"i": 2}, "t", "alice", parent_seq=0))
            with pytest.raises(StoreRejected, match="conflict"):  # the agent of the old row is known
                made.insert_many("p", [parent])
        finally:
            made.close()
        assert SqliteDocuments(path).migrate() == []

    def test_cli_migrate_on_an_unreachable_database(self) -> None:
        """`migrate` against nothing: exit status 1 and a message, no traceback."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SESSION_STATE_TIMEOUT": "1"}
        result = subprocess.run([sys.executable, "-m", "wr124_session_actor.cli", "migrate", "--db",
                                 f"postgresql://postgres@127.0.0.1:{free_port()}/x"],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


CONTINUE = """
import logging, sys, anyio, structlog
from wr124_session_actor import Config, SessionStateManager

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

async def main() -> None:
    manager = SessionStateManager("shared", Config(api_url=sys.argv[1], timeout=10.0))
    status, states = await manager.download_session_states(limit=1)
    seq = states[0]["seq"]
    print("ready", flush=True)
    sys.stdin.readline()
    status, value = await manager.upload_session_state({"from": sys.argv[2]}, "t", "agent", parent_seq=seq)
    print(status.value, value, flush=True)

anyio.run(main)
"""


class TestConcurrentContinuations:
    def test_two_processes_continue_the_same_state(self, postgres_db: str) -> None:
        """Two processes restore the latest state and both upload a continuation: one stored, the
        other FAILED with "conflict"."""
        async def seed() -> None:
            manager = SessionStateManager("shared", pg_config(postgres_db))
            assert (await manager.upload_session_state({"from": "seed"}, "t", "agent"))[0] == S.SUCCESS
            await manager.aclose()

        anyio.run(seed)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ENABLE_SESSION_STATE_UPLOAD": "true"}
        procs = [subprocess.Popen([sys.executable, "-c", CONTINUE, postgres_db, name], env=env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE) for name in ("p1", "p2")]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        lines = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
        assert [line.split()[0] for line in lines] == ["failed", "success"], lines
        assert "conflict" in lines[0]

        async def stored() -> list[Any]:
            store = open_store(pg_config(postgres_db))
            result = await store.query(Query(session_id="shared", sort_by="seq", sort_order=1))
            await store.aclose()
            return result.data

        docs = anyio.run(stored)
        assert docs[0]["content"]["state"]["from"] == "seed"
        assert len(docs) == 2
