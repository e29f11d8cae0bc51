"""The embedded store: documents in a local sqlite file, every call run in a worker thread."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from .._document import EncodedDocument
from .._exceptions import DocumentNotFound, StoreClosed, StoreError, StoreUnavailable
from ._base import Document, Query, QueryResult
from ._engine import SqliteDocuments

__all__ = ["SqliteStore", "sqlite_path_from_url"]

T = TypeVar("T")


def sqlite_path_from_url(url: str) -> str:
    """Map a SQLAlchemy-style URL to a path: ``sqlite:///rel.db`` → ``rel.db``, ``sqlite:////abs.db`` → ``/abs.db``."""
    return url[len("sqlite:///") :]


class SqliteStore:
    """A :class:`DocumentStore` over a sqlite file; blocking work runs in one worker thread at a time.

    Args:
        path: the database file (created on first use, with its folder).
        project: the project whose documents this store sees.
    """

    def __init__(self, path: str | os.PathLike[str], project: str = "default") -> None:
        self.engine = SqliteDocuments(path)
        self.project = project
        self._limiter = anyio.CapacityLimiter(1)
        self._closed = False

    async def _run(self, func: Callable[..., T], *args: object) -> T:
        if self._closed:
            raise StoreClosed("the sqlite store is closed")
        try:
            # Abandoned on cancel: the call's deadline returns TIMEOUT even while sqlite waits on a lock;
            # the thread finishes on its own and a redone write is harmless (ids are idempotent).
            return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter, abandon_on_cancel=True)
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"sqlite {self.engine.path}: {exc}") from exc

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Insert all documents in one transaction; return their ids."""
        results = await self._run(self.engine.insert_many, self.project, docs)
        return [doc_id for doc_id, _ in results]

    async def query(self, query: Query) -> QueryResult:
        """Return one page of matching documents."""
        data, total = await self._run(self.engine.query, self.project, query)
        return QueryResult(data, total)

    async def get(self, doc_id: str) -> Document:
        """Return one document; raises ``DocumentNotFound``."""
        doc = await self._run(self.engine.get, self.project, doc_id)
        if doc is None:
            raise DocumentNotFound(f"no document {doc_id!r}", status_code=404)
        return doc

    async def delete(self, doc_id: str) -> None:
        """Delete one document; raises ``DocumentNotFound``."""
        if not await self._run(self.engine.delete, self.project, doc_id):
            raise DocumentNotFound(f"no document {doc_id!r}", status_code=404)

    async def health(self) -> None:
        """Open the file and run a trivial statement."""
        await self._run(self.engine.ping)

    async def aclose(self) -> None:
        """Close the connection; later calls raise ``StoreClosed``."""
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.engine.close, limiter=self._limiter)
