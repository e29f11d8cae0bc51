"""The durable outbox (``SESSION_STATE_SPOOL``): accepted uploads survive a crash until the store has them.

Every accepted upload is noted in memory at once and written to a sqlite file by a sync task every
``spool_sync_interval`` (one transaction per sync, in a worker thread): a process killed with SIGKILL
loses at most the uploads of the last interval and of the sync in progress. An upload the store
confirmed, or one superseded by a newer state of its agent, is removed; the removal of a superseded
upload lands in the same transaction as, or after, the insert of the state that supersedes it, so no
state is ever left without a durable copy. Uploads that the store confirms before their first sync never touch the disk.

On the next start of a system with the same spool, what is left is replayed to the store in the order
it was accepted. Documents carry client-made ids, so a replayed write is not duplicated by a store that
honours ids (the embedded stores and the reference server do). Until that replay has ended, the sessions
it holds states of wait (:meth:`Outbox.wait_replayed`): their reads would miss those states, and their
new states would be stored before older ones.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Final

import anyio
import anyio.to_thread
import orjson
import structlog

from ._backoff import backoff_delay
from ._document import STATE_TAG, EncodedDocument, StateUpload, created_of_name, encode_documents
from ._exceptions import ConfigError, StoreError, error_message, status_of
from ._statistics import SystemCounters
from ._status import SessionStateStatus
from .stores import DocumentStore, Query
from .stores._engine import open_sqlite, write_transaction

__all__ = ["Outbox"]

logger = structlog.get_logger("wr124_session_actor")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    session_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    name TEXT NOT NULL,
    tags TEXT NOT NULL,
    document_type TEXT NOT NULL,
    body BLOB NOT NULL
);
"""
_REPLAY_PAGE: Final = 500


async def _insert(store: DocumentStore, docs: list[EncodedDocument], counters: SystemCounters | None) -> None:
    """One store write of ``docs``, counted as the write stage counts its own (documents, writes, and their
    observers: the metrics)."""
    started = time.perf_counter()
    try:
        await store.insert_many(docs)
    except StoreError as exc:
        if counters is not None:
            counters.observe_write(time.perf_counter() - started, len(docs), status_of(exc))
        raise
    if counters is not None:
        counters.observe_write(time.perf_counter() - started, len(docs), SessionStateStatus.SUCCESS)
        counters.documents += len(docs)


async def _insert_each(store: DocumentStore, docs: Iterable[EncodedDocument], counters: SystemCounters | None) -> None:
    """Store ``docs`` one by one; one the store refuses for good (a stale ``parent_seq``, a body it will not
    take) is logged and let go. A transient failure is raised: the page is tried again."""
    for doc in docs:
        try:
            await _insert(store, [doc], counters)
        except StoreError as exc:
            if exc.transient or _refuses_the_caller(exc):
                raise
            logger.warning("session_state.outbox", status="failed", op="replay", ids=[doc.id],
                           session_id=doc.session_id, error=error_message(exc))


#: Refusals of the caller (its key, its project), not of a document: the rows stay spooled, tried again.
_CALLER_REFUSALS: Final = frozenset({401, 403, 407})


def _refuses_the_caller(exc: StoreError) -> bool:
    """Whether ``exc`` refuses whoever asks, not the document (a server restarted with another API key):
    replaying on would let every spooled state go, each logged as refused."""
    return getattr(exc, "status_code", None) in _CALLER_REFUSALS


def _parent_seq(body: bytes) -> int | None:
    """The ``parent_seq`` a spooled document's body gives (the stores check it from the document's field, which
    the spool does not keep: a replayed stale continuation was stored over a newer state)."""
    if b'"parent_seq":' not in body:  # the common case, without decoding the body
        return None
    value = orjson.loads(body).get("parent_seq")
    return value if type(value) is int else None


class Outbox:
    """A sqlite spool of uploads accepted but not yet confirmed by the store.

    Args:
        path: the spool file (created with its folder).
        sync_interval: seconds between syncs: the most a SIGKILL can lose.
        max_documents: the most uploads kept; past it the oldest states of an agent that has newer
            ones are dropped first, then the oldest overall (each drop is logged).
    """

    def __init__(self, path: str, sync_interval: float = 0.1, max_documents: int = 100_000) -> None:
        self.path = path
        self.sync_interval = sync_interval
        self.max_documents = max_documents
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._unsynced: dict[str, StateUpload] = {}
        self._syncing: set[str] = set()
        self._synced: set[str] = set()
        self._settled: set[str] = set()
        #: The last row an earlier run left (read by :meth:`open`), the sessions of those rows, and how many of
        #: them are not replayed yet.
        self._earlier_last = 0
        self._earlier_sessions: set[str] = set()
        self._earlier_left = 0
        self._replayed: anyio.Event | None = None
        #: Why the last sync failed (``None`` after one that worked): what it held is not in the file.
        self.sync_error: str | None = None
        #: Uploads written to the spool file so far, and syncs made (for tests and benchmarks).
        self.spooled = 0
        self.syncs = 0

    # -- called by handles and actors (synchronous, cheap) -----------------------------------------

    def add(self, upload: StateUpload) -> None:
        """Note an accepted upload; the next sync makes it durable."""
        self._unsynced[upload.doc_id] = upload

    def settle(self, ids: Iterable[str]) -> None:
        """These uploads need no durable copy any more (stored, superseded, or failed for good)."""
        for doc_id in ids:
            if self._unsynced.pop(doc_id, None) is None and (doc_id in self._synced or doc_id in self._syncing):
                self._settled.add(doc_id)

    @property
    def pending(self) -> int:
        """Uploads held (in memory or in the file) that the store has not confirmed: this run's, and those an
        earlier run left that are not replayed yet."""
        return (len(self._unsynced) + len(self._syncing) + len(self._synced) - len(self._settled)
                + self._earlier_left)

    # -- the file ----------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_sqlite(self.path, _SCHEMA, synchronous="FULL")
        return self._conn

    @property
    def is_open(self) -> bool:
        """Whether the spool file is open (from :meth:`open` until :meth:`aclose`)."""
        return self._conn is not None

    async def open(self) -> None:
        """Open the spool file (creating it and its folder), so that a path that cannot be one fails at once.

        Raises:
            ConfigError: the path is a folder, not a sqlite file, or cannot be created; it names
                ``SESSION_STATE_SPOOL``.
        """
        try:
            # Abandoned on cancellation: a spool another process holds locked waits sqlite's busy timeout (30 s),
            # and a deadline around entering the system must still end it.
            self._earlier_last, self._earlier_sessions, self._earlier_left = await anyio.to_thread.run_sync(
                self._earlier, limiter=self._limiter, abandon_on_cancel=True)
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"SESSION_STATE_SPOOL: cannot use {self.path!r} as the spool: {exc}") from None
        self._replayed = anyio.Event()
        if not self._earlier_last:
            self._replayed.set()

    def _earlier(self) -> tuple[int, set[str], int]:
        """The last row an earlier run left, the sessions of those rows and their count; fails unless the file can
        be read and written (a corrupt or read-only spool would only fail at the exit, its replay retried until
        ``shutdown_timeout``)."""
        conn = self._connect()
        try:
            with write_transaction(conn):
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                conn.execute(f"PRAGMA user_version = {int(version)}")  # a write that changes nothing
            last, count = conn.execute("SELECT coalesce(max(seq), 0), count(*) FROM outbox").fetchone()
            sessions = {r[0] for r in conn.execute("SELECT DISTINCT session_id FROM outbox WHERE seq <= ?",
                                                   (last,))}
        except BaseException:
            self._conn = None  # not open: closed here, in its own thread, and never again
            conn.close()
            raise
        return int(last), sessions, int(count)

    async def wait_replayed(self, session_id: str) -> None:
        """Wait until the states an earlier run left of ``session_id`` are in the store (at once when none)."""
        replayed = self._replayed
        if replayed is not None and not replayed.is_set() and session_id in self._earlier_sessions:
            await replayed.wait()

    def _write(self, docs: list[tuple[EncodedDocument, str]], delete: list[str]) -> list[str]:
        """One transaction: insert ``docs``, delete ``delete``, enforce the bound; return dropped ids."""
        conn = self._connect()
        with write_transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (id, session_id, agent, name, tags, document_type, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(d.id, d.session_id, agent, d.name, orjson.dumps(d.tags).decode(), d.document_type, d.body)
                 for d, agent in docs],
            )
            conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in delete])
            dropped: list[str] = []
            (count,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
            if count > self.max_documents:
                excess = count - self.max_documents
                # Oldest states of agents that have newer ones first, then the oldest overall.
                dropped = [r[0] for r in conn.execute(
                    "SELECT id FROM outbox o WHERE EXISTS (SELECT 1 FROM outbox n WHERE n.session_id ="
                    " o.session_id AND n.agent = o.agent AND n.seq > o.seq) ORDER BY seq LIMIT ?", (excess,))]
                if len(dropped) < excess:
                    dropped += [r[0] for r in conn.execute(
                        "SELECT id FROM outbox WHERE id NOT IN (SELECT value FROM json_each(?))"
                        " ORDER BY seq LIMIT ?", (orjson.dumps(dropped).decode(), excess - len(dropped)))]
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in dropped])
        return dropped

    async def sync(self) -> None:
        """Make every upload noted so far durable, and forget the settled ones, in one transaction."""
        batch, self._unsynced = self._unsynced, {}
        settled, self._settled = self._settled, set()
        if not batch and not settled:
            return
        self._syncing.update(batch)
        try:
            # Encoded on the loop in short pieces (a C encoder in a thread would hold the GIL as long);
            # the store write reuses the same bytes.
            encoded = await encode_documents(batch.values())
            docs = [(d, batch[d.id].agent_name) for d in encoded if isinstance(d, EncodedDocument)]
            dropped = await anyio.to_thread.run_sync(self._write, docs, list(settled), limiter=self._limiter)
        except BaseException as exc:
            # Not written: everything stays in memory, for the next sync (also after a cancellation: the exit
            # cancels the periodic sync, and a batch it was encoding was lost before the last sync).
            self._unsynced = {**batch, **self._unsynced}
            self._settled |= settled
            if not isinstance(exc, sqlite3.Error | OSError):
                raise
            error = f"spool {self.path}: {exc}"
            # Said once while it lasts (a full disk failed every sync: ten warnings a second).
            log = logger.debug if error == self.sync_error else logger.warning
            self.sync_error = error
            log("session_state.outbox", status="failed", op="sync", error=error, batch_size=len(batch))
            return
        finally:
            self._syncing.difference_update(batch)
        if self.sync_error is not None:
            logger.info("session_state.outbox", status="success", op="sync", error=None, after=self.sync_error)
            self.sync_error = None
        self.syncs += 1
        self.spooled += len(docs)
        self._synced.difference_update(settled)
        # An upload settled while it was being written is in ``_settled`` already: the next sync deletes it.
        self._synced |= {d.id for d, _ in docs}
        if dropped:
            self._synced.difference_update(dropped)
            logger.warning("session_state.outbox", status="failed", op="bound", dropped=len(dropped),
                           error=f"outbox over SESSION_STATE_SPOOL_MAX_DOCUMENTS={self.max_documents}")

    async def run(self) -> None:
        """Sync every ``sync_interval`` until cancelled."""
        while True:
            await anyio.sleep(self.sync_interval)
            await self.sync()

    async def replay(self, store: DocumentStore, *, retry_backoff: float = 0.2, max_backoff: float = 5.0,
                     keep_latest: bool = False, counters: SystemCounters | None = None) -> int:
        """Write what an earlier run left in the spool to ``store``, oldest first; return how many.

        Only what was there when the spool was opened (:meth:`open`, here if not yet): this run's own
        uploads are its actors' to write. Retries while the store fails, until it takes everything or the
        caller is cancelled.

        ``keep_latest`` (``keep="latest"``): of each agent's spooled states only the newest is written, and
        not when the store holds a newer state of the agent already. (A process killed after a write, before
        its next sync, leaves the states that write superseded in the spool: written now, they were stored
        as newer than it.)

        Its writes count in ``counters`` as the write stage's do.
        """
        total = 0
        failures = 0
        while True:
            docs: list[EncodedDocument] = []
            try:
                if self._replayed is None:
                    await self.open()
                rows = await anyio.to_thread.run_sync(self._oldest, self._earlier_last, limiter=self._limiter)
                if not rows:
                    self._earlier_left = 0  # all replayed (or dropped by the bound, which logged them)
                    self._end_replay()
                    return total
                docs = await _newest_only(store, rows) if keep_latest else [doc for doc, _ in rows]
                if docs:
                    try:
                        await _insert(store, docs, counters)
                    except StoreError as exc:
                        if exc.transient or _refuses_the_caller(exc):
                            raise
                        await _insert_each(store, docs, counters)  # one refused document must not hold the others back
                # Stored (or refused for good): a spool that fails now keeps the rows, which the ids keep from
                # being stored twice.
                await anyio.to_thread.run_sync(self._write, [], [d.id for d, _ in rows], limiter=self._limiter)
                self._earlier_left = max(0, self._earlier_left - len(rows))
            except Exception as exc:  # the store's error or the spool file's, or one nobody foresaw: retried
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                    # Corrupt pages (a busy or failing disk is an OperationalError): no retry mends them.
                    logger.error("session_state.outbox", status="failed", op="replay",
                                 error=f"spool {self.path}: {exc}", hint="the spool file is damaged; its rows stay")
                    self._end_replay()
                    return total
                failures += 1
                delay = backoff_delay(failures, retry_backoff, max_backoff)
                error = f"spool {self.path}: {exc}" if isinstance(exc, sqlite3.Error) else error_message(exc)
                logger.warning("session_state.outbox", status="failed", op="replay", batch_size=len(docs),
                               error=error, retry_in_s=round(delay, 3))
                await anyio.sleep(delay)
                continue
            failures = 0
            total += len(docs)
            logger.info("session_state.outbox", status="success", op="replay", batch_size=len(docs))

    def _end_replay(self) -> None:
        """The sessions that waited for the replay go on (it ended, or gave up)."""
        if self._replayed is not None:
            self._replayed.set()
        self._earlier_sessions = set()

    def _oldest(self, last: int) -> list[tuple[EncodedDocument, str]]:
        rows = self._connect().execute(
            "SELECT id, session_id, agent, name, tags, document_type, body FROM outbox WHERE seq <= ?"
            " ORDER BY seq LIMIT ?",
            (last, _REPLAY_PAGE),
        ).fetchall()
        return [(EncodedDocument(r[0], r[1], r[3], tuple(orjson.loads(r[4])), bytes(r[6]), r[5], agent=r[2],
                                 parent_seq=_parent_seq(r[6])), r[2])
                for r in rows]

    def count(self) -> int:
        """Rows in the spool file (blocking; for tests and tools)."""
        return int(self._connect().execute("SELECT count(*) FROM outbox").fetchone()[0])

    async def aclose(self) -> int:
        """A last sync, then close the file; return how many uploads stay spooled for the next start (those
        this run holds, if the file cannot say). Uploads the last sync could not write are logged as lost."""
        await self.sync()
        if self._unsynced:  # neither stored nor in the file: gone with this process
            logger.error("session_state.outbox", status="failed", op="close", lost=len(self._unsynced),
                         ids=list(self._unsynced), error=f"{self.sync_error}: these uploads were neither stored"
                         " nor spooled, and are lost")
            self._unsynced.clear()  # gone: no longer held (outbox_depth)
        try:
            left = await anyio.to_thread.run_sync(self.count, limiter=self._limiter)
        except (sqlite3.Error, OSError) as exc:
            left = self.pending
            logger.warning("session_state.outbox", status="failed", op="close", error=f"spool {self.path}: {exc}")
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)
        return left


async def _newest_only(store: DocumentStore, rows: list[tuple[EncodedDocument, str]]) -> list[EncodedDocument]:
    """Of ``rows`` (oldest first), the newest of each session's agent, unless the store holds a newer one."""
    newest: dict[tuple[str, str], EncodedDocument] = {}
    for doc, agent in rows:
        newest[doc.session_id, agent] = doc
    kept = set()
    for (session_id, agent), doc in newest.items():
        if not await _stored_newer(store, session_id, agent, doc):
            kept.add(doc.id)
    return [doc for doc, _ in rows if doc.id in kept]


async def _stored_newer(store: DocumentStore, session_id: str, agent: str, doc: EncodedDocument) -> bool:
    """Whether the store's newest state of the agent was made after ``doc`` (by the times our documents carry)."""
    made = created_of_name(doc.name)
    if made is None:
        return False
    result = await store.query(Query(session_id=session_id, tags=(STATE_TAG, agent), limit=1))
    for stored in result.data:
        content = stored.get("content")
        if stored.get("session_id") == session_id and isinstance(content, dict) and content.get("agent_name") == agent:
            stamp = content.get("timestamp")
            if isinstance(stamp, str) and stamp[:26] > made[:26]:
                return True
    return False
