"""The PostgreSQL document engine: psycopg 3's synchronous pool, called from worker threads.

psycopg's async API runs only under asyncio; its synchronous API in worker threads runs under any
event loop (trio too), so the engine is synchronous like the sqlite one and shares its async adapter.
Every call takes its own connection from a :class:`psycopg_pool.ConnectionPool`: no lock is shared
across connections, so as many calls run at once as the pool has connections.

Order across processes: ``seq`` comes from one counter row per (project, session), incremented by an
``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` in the transaction that stores the documents. The
row stays locked until that transaction ends, so writers of one session take turns, and ``seq`` is
strictly increasing in commit order. The batch's ``created_at`` (one for the whole batch, as in sqlite)
is read from the database's clock once every counter row of the batch is locked, and is never earlier
than those sessions' last one, so the two orders agree. Writers of different sessions do not wait
for each other.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from .._config import Config
from .._document import EncodedDocument
from .._exceptions import NoClientError, SchemaBehind, StoreError, StoreRejected, StoreTimeout, StoreUnavailable
from .._retention import PRUNE_BATCH, PruneReport, RetentionPolicy
from ._base import Document, DocumentConflict, Inserted, Query, SessionSummary, session_summary
from ._engine import conflict_message, id_conflict_message
from ._pg_schema import PG_SCHEMA_VERSION, current_version, migrate
from ._retention import POSTGRES_DIALECT, prune_documents

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

__all__ = ["PostgresDocuments", "close_shared_postgres", "shared_postgres"]

T = TypeVar("T")

_ORDER: Final = {"created_at": "created_at", "updated_at": "updated_at", "name": 'name COLLATE "C"', "seq": "seq"}
#: Seconds the pool keeps retrying a failed connection attempt (backoff 1 s, 2 s, ...) before it gives
#: up; the next call then starts a new attempt at once. Short, so that a database back from a restart
#: is used within seconds rather than after a long backoff.
_RECONNECT_TIMEOUT: Final = 5.0
#: What PostgreSQL says when it refuses a connection only for want of a free slot (max_connections, a
#: role's connection limit): a wait for one of the pool's connections is the answer, not a failure.
_NO_FREE_SLOT: Final = ("too many connections", "too many clients already", "remaining connection slots are reserved")
#: Attempts of a batch that raced another writer inserting the same id (the retry sees it stored).
_INSERT_ATTEMPTS: Final = 3


class _Raced(Exception):
    """Another transaction stored one of this batch's ids meanwhile: undo and try again."""


class PostgresDocuments:
    """Documents in a PostgreSQL database, partitioned by project: a
    :class:`~wr124_session_actor.stores.DocumentEngine`.

    The pool opens on first use; the schema is migrated then unless ``migrate`` is false (see
    :mod:`._pg_schema`). Dead connections are found by the pool's check when taken (a round trip)
    and replaced.

    Args:
        url: ``postgresql://user:pass@host:port/db`` (``postgres://`` too, and any libpq parameters).
        pool_size: the most connections (and calls at once).
        max_lifetime: seconds after which a connection is closed and replaced.
        prepare_threshold: executions of a statement before psycopg prepares it; ``None`` never
            prepares (PgBouncer in transaction mode).
        timeout: seconds to wait for a connection (to connect, or for a free one) before ``StoreTimeout``.
        migrate: bring the schema up to date on first use.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_lifetime: float = 3600.0,
        prepare_threshold: int | None = 5,
        timeout: float = 10.0,
        migrate: bool = True,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.max_lifetime = max_lifetime
        self.prepare_threshold = prepare_threshold
        self.timeout = timeout
        self.auto_migrate = migrate
        self._pool: ConnectionPool[Any] | None = None
        # Taken only while the pool is being opened (once), never around a call's queries.
        self._open_lock = threading.Lock()
        self._applied: list[int] = []
        # The pool's failed connection attempts when a caller last got a connection (see _pooled).
        self._errors_seen = 0

    @classmethod
    def from_config(cls, config: Config, url: str | None = None) -> PostgresDocuments:
        """The engine for ``url`` (default: ``config.api_url``) with the configuration's pool settings."""
        return cls(
            url or config.api_url,
            pool_size=config.pg_pool_size,
            max_lifetime=config.pg_max_lifetime,
            prepare_threshold=config.pg_prepare_threshold,
            timeout=config.timeout,
            migrate=config.migrate,
        )

    @property
    def concurrency(self) -> int:
        """As many calls as the pool has connections."""
        return self.pool_size

    # ----------------------------------------------------------------------------------------------
    # Connections and errors

    def _open(self) -> ConnectionPool[Any]:
        pool = self._pool
        if pool is not None:
            return pool
        with self._open_lock:
            if self._pool is None:
                try:
                    from psycopg_pool import ConnectionPool
                except ImportError:
                    raise NoClientError(
                        "postgresql:// needs psycopg 3 and psycopg_pool: pip install 'wr124-session-actor[postgres]'"
                    ) from None
                self._connect_once()  # a database that cannot be reached says why now, not after a timeout
                made: ConnectionPool[Any] = ConnectionPool(
                    self.url,
                    min_size=1,
                    max_size=self.pool_size,
                    open=False,
                    kwargs={
                        "autocommit": True,
                        "prepare_threshold": self.prepare_threshold,
                        "connect_timeout": max(2, math.ceil(self.timeout)),
                    },
                    check=ConnectionPool.check_connection,
                    max_lifetime=self.max_lifetime,
                    timeout=self.timeout,
                    reconnect_timeout=_RECONNECT_TIMEOUT,
                    reconnect_failed=_ask_again,
                    name="wr124-session-actor",
                )
                made.open(wait=False)
                try:
                    if self.auto_migrate:
                        with self._pooled(made) as conn:
                            self._applied = migrate(conn)
                except BaseException:
                    made.close()
                    raise
                self._pool = made
            return self._pool

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (autocommit; use ``conn.transaction()`` for writes); psycopg's errors
        become the library's typed store errors."""
        try:
            with self._pooled(self._open()) as conn:
                yield conn
        except StoreError:
            raise
        except Exception as exc:
            raise _store_error(exc) from exc

    @contextlib.contextmanager
    def _pooled(self, pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
        """A connection of ``pool`` for the block (as ``pool.connection()``: callers are served first come,
        first served, within ``timeout``).

        When the pool failed to connect since a caller last got a connection, one attempt of our own first
        tells why, at once (a refused connection, a wrong password, a database that does not exist),
        rather than a bare ``PoolTimeout`` at the end of the wait."""
        if pool.get_stats().get("connections_errors", 0) > self._errors_seen:
            self._connect_once()
        conn = pool.getconn()
        self._errors_seen = pool.get_stats().get("connections_errors", 0)
        try:
            with conn:
                yield conn
        finally:
            pool.putconn(conn)

    def _connect_once(self) -> None:
        """Connect outside the pool and disconnect; raise ``StoreUnavailable`` with psycopg's reason if that
        fails (transient all the same: a database restarting says so too, and a spooled state must wait for
        it rather than be given up), unless the database only has no free connection slot: the pool's own
        connections then come back to the caller waiting for one."""
        import psycopg

        try:
            psycopg.connect(self.url, autocommit=True, connect_timeout=max(2, math.ceil(self.timeout))).close()
        except psycopg.Error as exc:
            message = str(exc).strip()
            if not any(busy in message for busy in _NO_FREE_SLOT):
                raise StoreUnavailable(f"PostgreSQL: cannot connect: {message}") from exc

    def migrate(self) -> list[int]:
        """Bring the schema up to date (under an advisory lock); return the versions this call applied."""
        with self._connection() as conn:  # opening may have applied them already (auto_migrate)
            applied = migrate(conn)
        on_open, self._applied = self._applied, []
        return [*on_open, *applied]

    # ----------------------------------------------------------------------------------------------
    # The engine interface

    def insert_many(self, project: str, docs: Sequence[EncodedDocument]) -> list[Inserted]:
        """Insert ``docs`` in one transaction; return ``(id, created)`` per document.

        A document whose id exists with the same body is not inserted again (``created`` false); two
        writers racing with the same id store it once.

        Raises:
            DocumentConflict: an id exists with a different body, or a new document's ``parent_seq``
                is older than its (session, agent)'s newest state stored before this batch.
        """
        if not docs:
            return []
        with self._connection() as conn:
            for attempt in range(_INSERT_ATTEMPTS):
                try:
                    with conn.transaction():
                        return _insert(conn, project, docs)
                except _Raced:
                    if attempt == _INSERT_ATTEMPTS - 1:
                        raise StoreUnavailable("PostgreSQL: the batch kept racing another writer") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def query(self, project: str, query: Query) -> tuple[list[Document], int]:
        """Return one page of matching documents and the count of all matches."""
        where = ["project = %s"]
        args: list[Any] = [project]
        if query.session_id is not None:
            where.append("session_id = %s")
            args.append(query.session_id)
        if query.document_type is not None:
            where.append("document_type = %s")
            args.append(query.document_type)
        if query.tags:
            where.append("tags @> %s::text[]")
            args.append(list(query.tags))
        if query.name_pattern:
            where.append("name LIKE %s")
            args.append("%" + _escape_like(query.name_pattern) + "%")
        if query.created_after is not None:
            where.append("created_at >= %s::timestamptz")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at <= %s::timestamptz")
            args.append(query.created_before)
        clause = " AND ".join(where)
        direction = "DESC" if query.sort_order < 0 else "ASC"
        order = f"{_ORDER[query.sort_by]} {direction}, pos {direction}"
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT id, seq, created_at, updated_at, body::text, count(*) OVER ()"
                f" FROM wr124_documents WHERE {clause} ORDER BY {order} LIMIT %s OFFSET %s",
                [*args, query.limit, query.skip],
            ).fetchall()
            if rows:
                total = int(rows[0][5])
            else:
                row = conn.execute(f"SELECT count(*) FROM wr124_documents WHERE {clause}", args).fetchone()
                total = int(row[0]) if row else 0
        return [_document(*row[:5]) for row in rows], total

    def get(self, project: str, doc_id: str) -> Document | None:
        """Return the document with ``doc_id`` in ``project``, or ``None``."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT id, seq, created_at, updated_at, body::text FROM wr124_documents"
                " WHERE project = %s AND id = %s",
                (project, doc_id),
            ).fetchone()
        return None if row is None else _document(*row)

    def sessions(
        self, project: str, search: str | None = None, limit: int = 20, skip: int = 0
    ) -> tuple[list[SessionSummary], int]:
        """One page of the project's sessions, latest activity first, and the count of all (see the protocol)."""
        where = "project = %s AND session_id <> ''"
        args: list[Any] = [project]
        if search:
            where += " AND strpos(session_id, %s) > 0"
            args.append(search)
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT session_id, count(*), coalesce(array_agg(DISTINCT agent) FILTER (WHERE agent IS NOT NULL),"
                " '{}'), min(created_at), max(created_at), max(seq), count(*) OVER ()"
                f" FROM wr124_documents WHERE {where} GROUP BY session_id"
                " ORDER BY max(created_at) DESC, session_id LIMIT %s OFFSET %s",
                [*args, limit, skip],
            ).fetchall()
            if rows:
                total = int(rows[0][6])
            else:
                row = conn.execute(
                    f"SELECT count(DISTINCT session_id) FROM wr124_documents WHERE {where}", args
                ).fetchone()
                total = int(row[0]) if row else 0
        return [session_summary(sid, n, agents, _iso(first), _iso(last), seq)
                for sid, n, agents, first, last, seq, _ in rows], total

    def delete(self, project: str, doc_id: str) -> bool:
        """Delete a document; return whether it existed."""
        with self._connection() as conn:
            cursor = conn.execute("DELETE FROM wr124_documents WHERE project = %s AND id = %s", (project, doc_id))
            return cursor.rowcount > 0

    def prune(
        self,
        project: str | None,
        policy: RetentionPolicy,
        *,
        session_id: str | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
        batch_size: int = PRUNE_BATCH,
        time_budget: float | None = None,
        start_after: tuple[str, str] | None = None,
    ) -> PruneReport:
        """Remove (or count) what ``policy`` removes, one short transaction per batch
        (:func:`~._retention.prune_documents`)."""

        def transact(work: Callable[[psycopg.Connection[Any]], T]) -> T:
            with self._connection() as conn, conn.transaction():
                return work(conn)

        return prune_documents(transact, POSTGRES_DIALECT, project, policy, session_id=session_id, dry_run=dry_run,
                               now=now, batch_size=batch_size, time_budget=time_budget, start_after=start_after)

    def ping(self) -> None:
        """Open the pool (and migrate) if needed, and check on a live connection that the schema is this code's.

        Raises:
            StoreUnavailable: the database cannot be reached.
            SchemaBehind: its schema is older than this code's (with ``migrate`` off, before
                ``wr124-session migrate`` ran): nothing could be stored yet.
        """
        with self._connection() as conn:
            version = current_version(conn)
        if version < PG_SCHEMA_VERSION:
            raise SchemaBehind(f"PostgreSQL: the schema is at version {version} of {PG_SCHEMA_VERSION}:"
                               f" {_MIGRATE_HINT}")

    def close(self) -> None:
        """Close the pool's connections (a later call opens a new pool)."""
        with self._open_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


# --------------------------------------------------------------------------------------------------
# One pool per database and settings in a process

_SHARED: Final[dict[tuple[object, ...], PostgresDocuments]] = {}
_SHARED_LOCK: Final = threading.Lock()


def shared_postgres(config: Config) -> PostgresDocuments:
    """The process's engine for ``config.api_url`` and its pool settings, made on first use.

    Stores share it, as an application shares one connection pool: a bare manager per session (the
    original usage, never closed) costs no connections of its own. Closed at interpreter exit.
    """
    key = (config.api_url, config.pg_pool_size, config.pg_max_lifetime, config.pg_prepare_threshold,
           config.timeout, config.migrate)
    with _SHARED_LOCK:
        engine = _SHARED.get(key)
        if engine is None:
            engine = _SHARED[key] = PostgresDocuments.from_config(config)
        return engine


@atexit.register
def close_shared_postgres() -> None:
    """Close every shared engine's pool (at exit; tests call it between tests)."""
    with _SHARED_LOCK:
        engines = list(_SHARED.values())
        _SHARED.clear()
    for engine in engines:
        engine.close()


def _ask_again(pool: ConnectionPool[Any]) -> None:
    """The pool's ``reconnect_failed``: its attempts to connect gave up (after ``_RECONNECT_TIMEOUT``).
    psycopg_pool then tries again only for a new request, and a caller already waiting would wait out its
    whole timeout though the database came back: while callers wait, a thread asks for a connection,
    which starts a new attempt (a connection made goes to the oldest waiting caller first)."""
    if not pool.get_stats().get("requests_waiting", 0):
        return

    def ask() -> None:
        try:
            conn = pool.getconn(timeout=_RECONNECT_TIMEOUT)
        except Exception:  # timed out (its own give-up asks again), or the pool closed
            return
        pool.putconn(conn)

    threading.Thread(target=ask, name="wr124-pg-ask-again", daemon=True).start()


# --------------------------------------------------------------------------------------------------
# The insert transaction

# A session's counter starts above the project's floor: the last seq of every session removed whole (its
# counter with it), so that a session begun again never gives a seq it gave before (a stale parent_seq
# would continue the new states). The floor is read once (a CTE used twice is materialized), and returned
# with whether the row is new (xmax = 0: no transaction updated it), see _store_new.
_FLOOR: Final = "SELECT coalesce(max(floor), 0) AS floor FROM wr124_seq_floors WHERE project = %s"
_UPSERT_COUNTERS: Final = f"""
WITH f AS ({_FLOOR})
INSERT INTO wr124_session_seqs AS c (project, session_id, last_seq, last_created)
SELECT %s, s.session_id, s.n + f.floor, '-infinity'
FROM unnest(%s::text[], %s::bigint[]) AS s(session_id, n), f
ORDER BY s.session_id
ON CONFLICT (project, session_id) DO UPDATE SET last_seq = c.last_seq + excluded.last_seq - (SELECT floor FROM f)
RETURNING session_id, last_seq, c.xmax = 0, (SELECT floor FROM f)
"""
_RAISE_COUNTERS: Final = ("UPDATE wr124_session_seqs SET last_seq = last_seq + %s"
                          " WHERE project = %s AND session_id = ANY(%s)")

# Run once every counter row of the batch is locked: one created_at for the whole batch (as sqlite
# has), never earlier than any of its sessions' last one. The scalar subquery reads the clock once.
_STAMP_COUNTERS: Final = """
UPDATE wr124_session_seqs AS c SET last_created = b.ts
FROM (SELECT greatest((SELECT clock_timestamp()), max(last_created)) AS ts
      FROM wr124_session_seqs WHERE project = %s AND session_id = ANY(%s)) AS b
WHERE c.project = %s AND c.session_id = ANY(%s)
RETURNING b.ts
"""

# executemany: psycopg sends the rows in one pipeline (no round trip per row); ``rowcount`` is their sum.
_INSERT_ROW: Final = """
INSERT INTO wr124_documents
    (project, id, session_id, seq, agent, document_type, name, tags, created_at, updated_at, body)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (project, id) DO NOTHING
"""


def _insert(conn: psycopg.Connection[Any], project: str, docs: Sequence[EncodedDocument]) -> list[Inserted]:
    """The body of :meth:`PostgresDocuments.insert_many`, inside its transaction."""
    # Repeats within the batch: the first is the one stored, later ones must have the same body.
    first: dict[str, EncodedDocument] = {}
    for doc in docs:
        seen = first.setdefault(doc.id, doc)
        if seen is not doc and bytes(seen.body) != bytes(doc.body):
            raise DocumentConflict(id_conflict_message(doc.id), status_code=409)
    ids = list(first)
    stored = {row[0] for row in conn.execute(
        "SELECT id FROM wr124_documents WHERE project = %s AND id = ANY(%s)", (project, ids)
    )}
    for doc_id in stored:  # a retried write: the same body is fine, another is a conflict
        same = conn.execute(
            "SELECT body = %s::jsonb FROM wr124_documents WHERE project = %s AND id = %s",
            (bytes(first[doc_id].body).decode(), project, doc_id),
        ).fetchone()
        if not (same and same[0]):
            raise DocumentConflict(id_conflict_message(doc_id), status_code=409)
    new = [doc for doc_id, doc in first.items() if doc_id not in stored]
    if new:
        _store_new(conn, project, new)
    created: set[str] = {doc.id for doc in new}
    results: list[Inserted] = []
    for doc in docs:
        results.append((doc.id, doc.id in created))
        created.discard(doc.id)
    return results


_NEWEST_OF_AGENT: Final = "SELECT max(seq) FROM wr124_documents WHERE project = %s AND session_id = %s AND agent = %s"
_NEWEST_OF_NO_AGENT: Final = ("SELECT max(seq) FROM wr124_documents WHERE project = %s AND session_id = %s"
                              " AND agent IS NULL")


def _store_new(conn: psycopg.Connection[Any], project: str, new: Sequence[EncodedDocument]) -> None:
    counts: dict[str, int] = {}
    for doc in new:
        counts[doc.session_id] = counts.get(doc.session_id, 0) + 1
    sessions = sorted(counts)
    # Locks each session's counter row (in one order: no deadlock between batches) until commit.
    counters = conn.execute(_UPSERT_COUNTERS, (project, project, sessions, [counts[s] for s in sessions])).fetchall()
    top: dict[str, int] = {session: last for session, last, _, _ in counters}
    made = [session for session, _, new, _ in counters if new]
    if made:
        # A counter made anew after waiting on a sweep that removed its session (and raised the floor) was
        # numbered from the floor the statement read before it waited: read it again (a new statement sees
        # what that sweep committed) and move the new counters above it.
        row = conn.execute(_FLOOR, (project,)).fetchone()
        raise_by = (row[0] if row else 0) - counters[0][3]
        if raise_by > 0:
            conn.execute(_RAISE_COUNTERS, (raise_by, project, made))
            for session in made:
                top[session] += raise_by
    stamp = conn.execute(_STAMP_COUNTERS, (project, sessions, project, sessions)).fetchone()
    assert stamp is not None
    created_at: datetime = stamp[0]
    for doc in new:
        if doc.parent_seq is not None:
            # Two statements: a NULL parameter in "agent IS NULL AND %s IS NULL" has no type PostgreSQL can
            # infer (IndeterminateDatatype: such a document was refused with 422).
            if doc.agent is None:
                row = conn.execute(_NEWEST_OF_NO_AGENT, (project, doc.session_id)).fetchone()
            else:
                row = conn.execute(_NEWEST_OF_AGENT, (project, doc.session_id, doc.agent)).fetchone()
            if row and row[0] is not None and row[0] > doc.parent_seq:
                raise DocumentConflict(conflict_message(doc, row[0]), status_code=409)
    next_seq = {session: last - counts[session] + 1 for session, last in top.items()}
    rows: list[tuple[object, ...]] = []
    for doc in new:
        seq = next_seq[doc.session_id]
        next_seq[doc.session_id] = seq + 1
        rows.append((project, doc.id, doc.session_id, seq, doc.agent, doc.document_type, doc.name, list(doc.tags),
                     created_at, created_at, bytes(doc.body).decode()))
    with conn.cursor() as cursor:
        cursor.executemany(_INSERT_ROW, rows)
        if cursor.rowcount != len(new):
            raise _Raced


# --------------------------------------------------------------------------------------------------
# Helpers


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _document(doc_id: str, seq: int, created_at: datetime, updated_at: datetime, body: str) -> Document:
    # orjson, not decode_exact: jsonb holds numbers as numeric and prints 1e20 as 100000000000000000000,
    # which would read back as an int (not a float, and past what orjson can send again).
    doc: Document = orjson.loads(body)
    doc["_id"] = doc_id
    doc["id"] = doc_id
    doc["seq"] = seq
    doc["created_at"] = _iso(created_at)
    doc["updated_at"] = _iso(updated_at)
    return doc


_MIGRATE_HINT: Final = "with SESSION_STATE_MIGRATE off, run `wr124-session migrate --db URL` first"


def _store_error(exc: Exception) -> StoreError:
    """Translate a psycopg or pool error into the library's typed store errors."""
    import psycopg
    from psycopg_pool import PoolTimeout

    message = f"PostgreSQL: {type(exc).__name__}: {exc}".strip()
    if isinstance(exc, PoolTimeout | psycopg.errors.QueryCanceled):
        return StoreTimeout(message)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        # Refused, reset or lost connections, server shutdown, serialization failures, deadlocks.
        return StoreUnavailable(message)
    if isinstance(exc, psycopg.errors.UndefinedTable) and "wr124_" in str(exc):
        # An operator's step not yet taken, not a refused document: transient, so that what was accepted
        # meanwhile is retried and stays spooled until the schema is there.
        return SchemaBehind(f"PostgreSQL: {str(exc).splitlines()[0]}: the schema is not there; {_MIGRATE_HINT}")
    if isinstance(exc, psycopg.errors.UntranslatableCharacter):  # the message would quote the whole row
        return StoreRejected("PostgreSQL cannot store the character U+0000 (NUL) in a JSON string (jsonb)",
                             status_code=422)
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError | psycopg.ProgrammingError):
        # The data itself was refused (a value out of range, a constraint).
        return StoreRejected(message, status_code=422)
    return StoreUnavailable(message)
