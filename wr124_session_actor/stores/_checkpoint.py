"""WAL checkpoints of a sqlite file, run by a thread of their own instead of by the writer.

By default sqlite checkpoints inside the commit that takes the WAL past 1,000 pages: that writer copies
the WAL into the database and syncs both files (with ``synchronous=NORMAL``) while it holds the write
lock, so every few MB one write waits for two ``fsync`` calls and the writes behind it wait too. For
batched inserts that is about half the time of the insert itself.

Here the writer only pokes a :class:`Checkpointer` after each commit; its thread runs a PASSIVE
checkpoint (it copies what it can and never blocks readers or writers) on its own connection, at most
every :data:`CHECKPOINT_INTERVAL` seconds. sqlite's own checkpoint stays as the bound, at a higher mark
(:data:`INLINE_CHECKPOINT_PAGES`): should the thread fall behind, the writer checkpoints as before.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Final

import structlog

__all__ = ["CHECKPOINT_INTERVAL", "INLINE_CHECKPOINT_PAGES", "Checkpointer"]

logger = structlog.get_logger(__name__)

#: Least seconds between two background checkpoints (each syncs the WAL and the database file).
CHECKPOINT_INTERVAL: Final = 0.1
#: The WAL size, in pages, at which the writer checkpoints inline after all (sqlite's default: 1,000).
INLINE_CHECKPOINT_PAGES: Final = 16_000


class Checkpointer:
    """Checkpoints one sqlite file's WAL in a daemon thread, started by the first :meth:`poke` and
    ended (joined) by :meth:`close`; a later poke starts it again.

    Args:
        path: the database file (not ``":memory:"``, which has no WAL).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._due = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Ask for a checkpoint soon (called after a write commits; cheap when one is already due)."""
        if self._due.is_set():
            return
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="wr124-sqlite-checkpoint", daemon=True)
                    self._thread.start()
        self._due.set()

    def stop(self) -> None:
        """Tell the thread to end, without waiting for it, for good (the engine was dropped unclosed)."""
        self._stop.set()
        self._due.set()

    def close(self) -> None:
        """Stop the thread and wait for it (a checkpoint under way finishes first)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()  # no new thread until the old one has ended
        if thread is not None:
            self._due.set()
            thread.join()
        with self._lock:
            self._stop.clear()
            self._due.clear()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=True)
        except sqlite3.Error as exc:
            logger.warning("sqlite_checkpoint_failed", path=self.path, error=str(exc))
            return
        try:
            while True:
                self._due.wait()
                if self._stop.is_set():
                    return
                self._due.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:  # the writer's own checkpoint still bounds the WAL
                    logger.warning("sqlite_checkpoint_failed", path=self.path, error=str(exc))
                if self._stop.wait(CHECKPOINT_INTERVAL):
                    return
        finally:
            conn.close()
