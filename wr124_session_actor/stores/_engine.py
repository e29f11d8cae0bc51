"""The synchronous sqlite document engine behind the embedded store, the memory store and the server.

Blocking by nature: async callers run it in a worker thread (:mod:`._sqlite`). One connection per
engine, serialized by a lock, WAL mode so readers in other processes (the CLI) are not blocked.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any, Final

import orjson

from .._document import EncodedDocument, utc_now_iso
from .._exceptions import StoreRejected
from ._base import Document, Query

__all__ = ["DocumentConflict", "SqliteDocuments"]

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

_BLOB_CHUNK: Final = 1024 * 1024
_ORDER: Final = {"created_at": "created_at", "updated_at": "updated_at", "name": "name"}


class DocumentConflict(StoreRejected):
    """A document with this id exists with a different body (HTTP 409)."""


class SqliteDocuments:
    """Documents in one sqlite file (or ``":memory:"``), partitioned by project.

    Args:
        path: the database file; ``":memory:"`` for a private in-memory database.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if self.path != ":memory:":
                parent = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(parent, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    def insert_many(self, project: str, docs: Sequence[EncodedDocument]) -> list[tuple[str, bool]]:
        """Insert ``docs`` in one transaction; return ``(id, created)`` per document.

        A document whose id exists with the same body is not inserted again (``created`` false).

        Raises:
            DocumentConflict: an id exists with a different body; nothing is inserted.
        """
        now = utc_now_iso()
        results: list[tuple[str, bool]] = []
        with self._lock:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for doc in docs:
                    row = conn.execute(
                        "SELECT body FROM documents WHERE project = ? AND id = ?", (project, doc.id)
                    ).fetchone()
                    if row is not None:
                        if bytes(row[0]) != doc.body:
                            raise DocumentConflict(
                                f"document {doc.id!r} exists with a different body", status_code=409
                            )
                        results.append((doc.id, False))
                        continue
                    large = len(doc.body) > _BLOB_CHUNK
                    cursor = conn.execute(
                        "INSERT INTO documents (project, id, session_id, document_type, name, tags,"
                        " created_at, updated_at, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
                        + (" zeroblob(?))" if large else " ?)"),
                        (project, doc.id, doc.session_id, doc.document_type, doc.name,
                         orjson.dumps(doc.tags).decode(), now, now, len(doc.body) if large else doc.body),
                    )
                    if large:
                        # Binding a blob copies it while holding the GIL; written in chunks, the event
                        # loop's thread gets the GIL back between them.
                        assert cursor.lastrowid is not None
                        view = memoryview(doc.body)
                        with conn.blobopen("documents", "body", cursor.lastrowid) as blob:
                            for start in range(0, len(view), _BLOB_CHUNK):
                                blob.write(view[start : start + _BLOB_CHUNK])
                    results.append((doc.id, True))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return results

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
        with self._lock:
            conn = self._connect()
            total = conn.execute(f"SELECT count(*) FROM documents WHERE {clause}", args).fetchone()[0]
            rows = conn.execute(
                f"SELECT id, created_at, updated_at, body FROM documents WHERE {clause}"
                f" ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, query.limit, query.skip],
            ).fetchall()
        return [_document(*row) for row in rows], int(total)

    def get(self, project: str, doc_id: str) -> Document | None:
        """Return the document with ``doc_id`` in ``project``, or ``None``."""
        with self._lock:
            row = self._connect().execute(
                "SELECT id, created_at, updated_at, body FROM documents WHERE project = ? AND id = ?",
                (project, doc_id),
            ).fetchone()
        return None if row is None else _document(*row)

    def delete(self, project: str, doc_id: str) -> bool:
        """Delete a document; return whether it existed."""
        with self._lock:
            cursor = self._connect().execute(
                "DELETE FROM documents WHERE project = ? AND id = ?", (project, doc_id)
            )
        return cursor.rowcount > 0

    def ping(self) -> None:
        """Open the database if needed and run a trivial statement."""
        with self._lock:
            self._connect().execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Close the connection (a later call opens it again)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _document(doc_id: str, created_at: str, updated_at: str, body: bytes) -> Document:
    doc: Document = orjson.loads(body)
    doc["_id"] = doc_id
    doc["id"] = doc_id
    doc["created_at"] = created_at
    doc["updated_at"] = updated_at
    return doc
