"""The synchronous sqlite document engine behind the embedded store, the memory store and the server.

Blocking by nature: async callers run it in a worker thread (:class:`~._adapter.EngineStore`). One
connection per engine, serialized by a lock, WAL mode so readers in other processes (the CLI) are not
blocked.

``seq`` is the table's ``INTEGER PRIMARY KEY AUTOINCREMENT``: one counter for the whole file, so it is
strictly increasing per session too (sqlite serializes writers), costs nothing on insert, and round 1's
files already have it. The schema's version is sqlite's ``user_version``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import orjson

from .._document import EncodedDocument, decode_exact, utc_now_iso
from .._exceptions import StoreError, StoreUnavailable
from .._retention import PRUNE_BATCH, PruneReport, RetentionPolicy
from ._base import Document, DocumentConflict, Inserted, Query, SessionSummary, session_summary
from ._checkpoint import INLINE_CHECKPOINT_PAGES, Checkpointer
from ._retention import SQLITE_DIALECT, prune_documents

__all__ = ["SqliteDocuments", "open_sqlite"]

T = TypeVar("T")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    id TEXT NOT NULL,
    session_id TEXT,
    document_type TEXT,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    body BLOB NOT NULL,
    UNIQUE (project, id)
);
CREATE INDEX IF NOT EXISTS documents_by_session ON documents (project, session_id, created_at);
"""

#: Schema versions after round 1's (version 1, :data:`_SCHEMA`), each a list of statements run in one
#: transaction. Version 2: the agent column (parent_seq checks, keep-last), filled from the bodies.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "ALTER TABLE documents ADD COLUMN agent TEXT",
        "UPDATE documents SET agent = json_extract(CAST(body AS TEXT), '$.content.agent_name')"
        " WHERE json_valid(CAST(body AS TEXT))",
        "CREATE INDEX IF NOT EXISTS documents_by_agent ON documents (project, session_id, agent, seq)",
    ),
)
#: The schema version this code writes.
SQLITE_SCHEMA_VERSION: Final = 1 + len(_MIGRATIONS)

_BLOB_CHUNK: Final = 1024 * 1024
_ORDER: Final = {"created_at": "created_at", "updated_at": "updated_at", "name": "name", "seq": "seq"}


#: How long a statement waits for a lock another connection holds (the connection's busy timeout).
_BUSY_TIMEOUT: Final = 30.0
#: How often a write transaction asks again for the write lock while another connection holds it.
#: sqlite's own busy handler backs off to one try per 100 ms, and so misses the short gaps between
#: another process's transactions: a writer waited out a whole sweep of many batches.
_BUSY_RETRY_MS: Final = 1
#: A sweep that has held the write lock this long (seconds, over its batches) pauses for
#: :data:`_SWEEP_GAP` before its next batch, and writers of other processes waiting for the lock take it.
#: (The short sweeps that trim a session after each write never hold it that long: they never pause.)
_SWEEP_HOLD: Final = 0.02
_SWEEP_GAP: Final = 0.002


def open_sqlite(path: str, schema: str, *, synchronous: str) -> sqlite3.Connection:
    """Open (creating its folder) a sqlite file in WAL mode, autocommit, usable from worker threads."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.executescript(schema)
    return conn


def begin_write(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``: take the write lock, asking again every millisecond while another connection
    holds it, for up to the busy timeout (then ``sqlite3.OperationalError``, "database is locked")."""
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_RETRY_MS}")
    try:
        deadline = time.monotonic() + _BUSY_TIMEOUT
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # Any kind of busy (the low byte: SQLITE_BUSY_RECOVERY, say, while another process
                # recovers the WAL) is worth another try.
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT * 1000)}")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (:func:`begin_write`): committed when the block ends, rolled back when it (or the
    commit) raises. The block's error is the one raised: sqlite ends some transactions itself on an error (a
    full disk: SQLITE_FULL), and a ROLLBACK then failed with "no transaction is active" in its place."""
    begin_write(conn)
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _migrate(conn: sqlite3.Connection) -> list[int]:
    """Bring the schema to :data:`SQLITE_SCHEMA_VERSION` (under sqlite's write lock); return the
    versions applied."""
    if conn.execute("PRAGMA user_version").fetchone()[0] >= SQLITE_SCHEMA_VERSION:
        return []
    applied: list[int] = []
    with write_transaction(conn):
        version = max(1, conn.execute("PRAGMA user_version").fetchone()[0])
        for number, statements in enumerate(_MIGRATIONS[version - 1 :], start=version + 1):
            for statement in statements:
                conn.execute(statement)
            applied.append(number)
        conn.execute(f"PRAGMA user_version = {SQLITE_SCHEMA_VERSION}")
    return applied


#: sqlite's primary result codes for a file that is not a database, or a damaged one.
_DAMAGED: Final = frozenset({sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT})


class SqliteDocuments:
    """Documents in one sqlite file (or ``":memory:"``), partitioned by project: a
    :class:`~wr124_session_actor.stores.DocumentEngine`.

    Args:
        path: the database file; ``":memory:"`` for a private in-memory database.
        exact_numbers: read integers past 64 bits back as stored (:func:`decode_exact`), for a service
            answering other clients; else as orjson reads them (floats), which costs nothing more.
    """

    def __init__(self, path: str | os.PathLike[str], *, exact_numbers: bool = False) -> None:
        self.path = os.fspath(path)
        self._decode: Callable[[bytes], Any] = decode_exact if exact_numbers else orjson.loads
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._applied: list[int] = []
        # A file's WAL is checkpointed by a thread, not by the writer (see ._checkpoint); an engine dropped
        # unclosed (a bare manager, as the original usage leaves it) ends that thread as it is freed.
        self._checkpointer = None if self.path == ":memory:" else Checkpointer(self.path)
        if self._checkpointer is not None:
            weakref.finalize(self, self._checkpointer.stop)

    @property
    def concurrency(self) -> int:
        """One connection: one call at a time."""
        return 1

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """The connection, opened (and migrated) on first use, held under the lock; sqlite's and the
        file system's errors become ``StoreUnavailable``."""
        with self._lock:
            try:
                if self._conn is None:
                    conn = open_sqlite(self.path, _SCHEMA, synchronous="NORMAL")
                    try:
                        if self._checkpointer is not None:
                            conn.execute(f"PRAGMA wal_autocheckpoint={INLINE_CHECKPOINT_PAGES}")
                        self._applied = _migrate(conn)
                    except BaseException:
                        conn.close()
                        raise
                    self._conn = conn
                yield self._conn
            except StoreError:
                raise
            except (sqlite3.Error, OSError) as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _DAMAGED:  # no retry mends it: not transient
                    raise StoreError(f"sqlite {self.path}: {exc}") from exc
                raise StoreUnavailable(f"sqlite {self.path}: {exc}") from exc

    def migrate(self) -> list[int]:
        """Open the database, bringing its schema up to date; return the versions this engine applied."""
        with self._connection():
            applied, self._applied = self._applied, []
        return applied

    def insert_many(self, project: str, docs: Sequence[EncodedDocument]) -> list[Inserted]:
        """Insert ``docs`` in one transaction; return ``(id, created)`` per document.

        A document whose id exists with the same body is not inserted again (``created`` false).

        Raises:
            DocumentConflict: an id exists with a different body, or a new document's ``parent_seq``
                is older than the newest state of its (session, agent) stored before this batch;
                nothing is inserted.
        """
        with self._connection() as conn, write_transaction(conn):
            # Taken under the write lock, so that created_at follows seq order across processes.
            now = utc_now_iso()
            _check_parents(conn, project, docs)
            # The common case: every id is new. Insert them all, ignoring ids that exist; if any was
            # ignored, undo and go through the batch again, checking each id. A batch sent again (its
            # first id exists) goes straight to the check.
            if docs and _exists(conn, project, docs[0].id):
                results = _insert_checked(conn, project, docs, now)
            else:
                conn.execute("SAVEPOINT insert_new")
                if _insert_new(conn, project, docs, now):
                    results = [(doc.id, True) for doc in docs]
                else:
                    conn.execute("ROLLBACK TO insert_new")
                    results = _insert_checked(conn, project, docs, now)
                conn.execute("RELEASE insert_new")
        self._wrote()
        return results

    def _wrote(self) -> None:
        """A write committed: the WAL grew, a checkpoint is due soon."""
        if self._checkpointer is not None:
            self._checkpointer.poke()

    def query(self, project: str, query: Query) -> tuple[list[Document], int]:
        """Return one page of matching documents and the count of all matches."""
        where = ["project = ?"]
        args: list[Any] = [project]
        if query.session_id is not None:
            where.append("session_id = ?")
            args.append(query.session_id)
        if query.document_type is not None:
            where.append("document_type = ?")
            args.append(query.document_type)
        for tag in query.tags:
            where.append("EXISTS (SELECT 1 FROM json_each(documents.tags) WHERE json_each.value = ?)")
            args.append(tag)
        if query.name_pattern:
            where.append("instr(name, ?) > 0")
            args.append(query.name_pattern)
        if query.created_after is not None:
            where.append("created_at >= ?")
            args.append(query.created_after)
        if query.created_before is not None:
            where.append("created_at <= ?")
            args.append(query.created_before)
        clause = " AND ".join(where)
        direction = "DESC" if query.sort_order < 0 else "ASC"
        order = f"{_ORDER[query.sort_by]} {direction}, seq {direction}"
        with self._connection() as conn:
            total = conn.execute(f"SELECT count(*) FROM documents WHERE {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT id, seq, created_at, updated_at, body FROM documents WHERE {clause}"
                f" ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, query.limit, query.skip],
            ).fetchall()
        return [_document(self._decode, *row) for row in rows], int(total)

    def sessions(
        self, project: str, search: str | None = None, limit: int = 20, skip: int = 0
    ) -> tuple[list[SessionSummary], int]:
        """One page of the project's sessions, latest activity first, and the count of all (see the protocol)."""
        where = "project = ? AND session_id IS NOT NULL AND session_id <> ''"
        args: list[Any] = [project]
        if search:
            where += " AND instr(session_id, ?) > 0"
            args.append(search)
        with self._connection() as conn:
            total = conn.execute(f"SELECT count(DISTINCT session_id) FROM documents WHERE {where}", args).fetchone()[0]
            rows = conn.execute(
                "SELECT session_id, count(*), json_group_array(DISTINCT agent) FILTER (WHERE agent IS NOT NULL),"
                f" min(created_at), max(created_at), max(seq) FROM documents WHERE {where}"
                " GROUP BY session_id ORDER BY max(created_at) DESC, session_id LIMIT ? OFFSET ?",
                [*args, limit, skip],
            ).fetchall()
        return [session_summary(sid, n, orjson.loads(agents), first, last, seq)
                for sid, n, agents, first, last, seq in rows], int(total)

    def get(self, project: str, doc_id: str) -> Document | None:
        """Return the document with ``doc_id`` in ``project``, or ``None``."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT id, seq, created_at, updated_at, body FROM documents WHERE project = ? AND id = ?",
                (project, doc_id),
            ).fetchone()
        return None if row is None else _document(self._decode, *row)

    def delete(self, project: str, doc_id: str) -> bool:
        """Delete a document; return whether it existed."""
        with self._connection() as conn, write_transaction(conn):
            cursor = conn.execute("DELETE FROM documents WHERE project = ? AND id = ?", (project, doc_id))
        self._wrote()
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
        """Remove (or count) what ``policy`` removes, one short write transaction per batch
        (:func:`~._retention.prune_documents`); the lock is free for writers between batches. A file's
        sweep pauses between batches now and then (:data:`_SWEEP_HOLD`), so that writers of other
        processes, asking every millisecond, get in. (Files only: the engine then runs in a worker
        thread, and no other process writes a private in-memory database.)"""
        held = 0.0  # seconds this sweep has held the write lock since its last pause
        pauses = self.path != ":memory:"

        def transact(work: Callable[[sqlite3.Connection], T]) -> T:
            nonlocal held
            if pauses and held >= _SWEEP_HOLD:
                time.sleep(_SWEEP_GAP)
                held = 0.0
            with self._connection() as conn:
                with write_transaction(conn):
                    locked = time.monotonic()
                    result = work(conn)
                held += time.monotonic() - locked
            self._wrote()
            return result

        return prune_documents(transact, SQLITE_DIALECT, project, policy, session_id=session_id, dry_run=dry_run,
                               now=now, batch_size=batch_size, time_budget=time_budget, start_after=start_after)

    def ping(self) -> None:
        """Open the database if needed and run a trivial statement."""
        with self._connection() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close the connection (a later call opens it again), after the checkpoint thread."""
        if self._checkpointer is not None:
            self._checkpointer.close()  # first: the last connection closed checkpoints the whole WAL
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_COLUMNS: Final = "(project, id, session_id, document_type, name, tags, agent, created_at, updated_at, body)"
_INSERT: Final = f"INSERT INTO documents {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
#: A run of documents in one statement: ?3 is their bodies end to end, ?4 a JSON array of
#: [id, session_id, document_type, name, tags, agent, body start, body size] per document.
_INSERT_RUN: Final = (
    f"INSERT OR IGNORE INTO documents {_COLUMNS}"
    " SELECT ?1, d ->> 0, d ->> 1, d ->> 2, d ->> 3, d ->> 4, d ->> 5, ?2, ?2, substr(?3, d ->> 6, d ->> 7)"
    " FROM (SELECT value AS d FROM json_each(?4) ORDER BY key)"
)
# The same for a body over _BLOB_CHUNK: bound is its size, its bytes are written after (_write_blob).
_INSERT_LARGE: Final = f"INSERT INTO documents {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, zeroblob(?))"
_INSERT_OR_IGNORE_LARGE: Final = (
    f"INSERT OR IGNORE INTO documents {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, zeroblob(?))"
)


def _row(project: str, doc: EncodedDocument, now: str, body: object) -> tuple[object, ...]:
    return (project, doc.id, doc.session_id, doc.document_type, doc.name, orjson.dumps(doc.tags).decode(),
            doc.agent, now, now, body)


def conflict_message(doc: EncodedDocument, newest: int) -> str:
    """The message of a ``parent_seq`` conflict (the same from every engine)."""
    return (f"conflict: document {doc.id!r} continues seq {doc.parent_seq} of agent {doc.agent!r} in session"
            f" {doc.session_id!r}, but seq {newest} is newer")


def _check_parents(conn: sqlite3.Connection, project: str, docs: Sequence[EncodedDocument]) -> None:
    """Raise :class:`DocumentConflict` when a new document's ``parent_seq`` is not its agent's newest state.

    Checked against what was stored before this batch: a batch's own documents continue each other.
    A document already stored (a retried write) is not checked again.
    """
    for doc in docs:
        if doc.parent_seq is None or _exists(conn, project, doc.id):
            continue
        row = conn.execute(
            "SELECT max(seq) FROM documents WHERE project = ? AND session_id = ? AND agent IS ?",
            (project, doc.session_id, doc.agent),
        ).fetchone()
        if row[0] is not None and row[0] > doc.parent_seq:
            raise DocumentConflict(conflict_message(doc, row[0]), status_code=409)


def _write_blob(conn: sqlite3.Connection, rowid: int | None, body: bytes | bytearray) -> None:
    """Fill the ``zeroblob`` body of row ``rowid`` with ``body``, ``_BLOB_CHUNK`` bytes at a time.

    Binding a blob copies it while holding the GIL; written in chunks, the event loop's thread
    gets the GIL back between them.
    """
    assert rowid is not None
    view = memoryview(body)
    with conn.blobopen("documents", "body", rowid) as blob:
        for start in range(0, len(view), _BLOB_CHUNK):
            blob.write(view[start : start + _BLOB_CHUNK])


def _exists(conn: sqlite3.Connection, project: str, doc_id: str) -> bool:
    row = conn.execute("SELECT 1 FROM documents WHERE project = ? AND id = ?", (project, doc_id)).fetchone()
    return row is not None


def _insert_new(conn: sqlite3.Connection, project: str, docs: Sequence[EncodedDocument], now: str) -> bool:
    """Insert ``docs`` in order with ``INSERT OR IGNORE``; return whether every one was inserted.

    Runs of small bodies (up to ``_BLOB_CHUNK`` bytes together) go in one statement
    (:data:`_INSERT_RUN`); a large body is inserted alone and written in chunks. Stops at the first
    large document that was ignored (its row is not the new one).
    """
    before = conn.total_changes
    run: list[EncodedDocument] = []
    run_bytes = 0
    for doc in docs:
        size = len(doc.body)
        if size <= _BLOB_CHUNK:
            if run_bytes + size > _BLOB_CHUNK:
                _insert_run(conn, project, run, now)
                run, run_bytes = [], 0
            run.append(doc)
            run_bytes += size
            continue
        if run:
            _insert_run(conn, project, run, now)
            run, run_bytes = [], 0
        changes = conn.total_changes
        cursor = conn.execute(_INSERT_OR_IGNORE_LARGE, _row(project, doc, now, size))
        if conn.total_changes == changes:
            return False
        _write_blob(conn, cursor.lastrowid, doc.body)
    if run:
        _insert_run(conn, project, run, now)
    return conn.total_changes - before == len(docs)


def _insert_run(conn: sqlite3.Connection, project: str, docs: Sequence[EncodedDocument], now: str) -> None:
    """``INSERT OR IGNORE`` a run of small documents in one statement, in order.

    The bodies travel as one blob and the other fields as one JSON array: sqlite then inserts the
    whole run in one step, without the GIL. (``executemany`` takes the GIL back for every row, and
    waits up to the interpreter's switch interval for it whenever another thread runs Python: a
    busy event loop thread made inserts 5-60x slower.)
    """
    fields: list[tuple[object, ...]] = []
    start = 1  # sqlite's substr() counts from 1
    for doc in docs:
        size = len(doc.body)
        fields.append((doc.id, doc.session_id, doc.document_type, doc.name, doc.tags, doc.agent, start, size))
        start += size
    conn.execute(_INSERT_RUN, (project, now, b"".join(doc.body for doc in docs), orjson.dumps(fields)))


def _insert_checked(
    conn: sqlite3.Connection, project: str, docs: Sequence[EncodedDocument], now: str
) -> list[tuple[str, bool]]:
    """Insert ``docs`` one by one, each id checked first: an existing one with the same body is
    skipped (``created`` false), with another body it raises :class:`DocumentConflict`."""
    results: list[tuple[str, bool]] = []
    for doc in docs:
        row = conn.execute("SELECT body FROM documents WHERE project = ? AND id = ?", (project, doc.id)).fetchone()
        if row is not None:
            if bytes(row[0]) != doc.body:
                raise DocumentConflict(id_conflict_message(doc.id), status_code=409)
            results.append((doc.id, False))
            continue
        if len(doc.body) > _BLOB_CHUNK:
            cursor = conn.execute(_INSERT_LARGE, _row(project, doc, now, len(doc.body)))
            _write_blob(conn, cursor.lastrowid, doc.body)
        else:
            conn.execute(_INSERT, _row(project, doc, now, doc.body))
        results.append((doc.id, True))
    return results


def id_conflict_message(doc_id: str) -> str:
    """The message of an id stored with another body (the same from every engine)."""
    return f"conflict: document {doc_id!r} exists with a different body"


def _document(decode: Callable[[bytes], Any], doc_id: str, seq: int, created_at: str, updated_at: str,
              body: bytes) -> Document:
    doc: Document = decode(body)
    doc["_id"] = doc_id
    doc["id"] = doc_id
    doc["seq"] = seq
    doc["created_at"] = created_at
    doc["updated_at"] = updated_at
    return doc
