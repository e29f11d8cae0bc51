"""The in-process store (``memory://``): the sqlite engine on a private in-memory database.

Same semantics as the embedded store, with no file and no worker thread (nothing blocks: the
database is in memory). Stores are shared per URL within the process, so independent managers
(direct mode) see each other's writes, as they would with a server.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Final

import anyio.lowlevel

from .._document import EncodedDocument
from .._exceptions import DocumentNotFound, StoreClosed
from ._base import Document, Query, QueryResult
from ._engine import SqliteDocuments

__all__ = ["MemoryStore"]

_ENGINES: Final[dict[str, SqliteDocuments]] = {}
_ENGINES_LOCK: Final = threading.Lock()


def _engine_for(name: str) -> SqliteDocuments:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(name)
        if engine is None:
            engine = _ENGINES[name] = SqliteDocuments(":memory:")
        return engine


class MemoryStore:
    """A :class:`DocumentStore` kept in this process's memory, shared by every store of the same name.

    Args:
        name: the part of the URL after ``memory://`` (empty for the default store).
        project: the project whose documents this store sees.
    """

    def __init__(self, name: str = "", project: str = "default") -> None:
        self.engine = _engine_for(name)
        self.project = project
        self._closed = False

    async def _enter(self) -> None:
        await anyio.lowlevel.checkpoint()
        if self._closed:
            raise StoreClosed("the memory store is closed")

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Insert all documents at once; return their ids."""
        await self._enter()
        return [doc_id for doc_id, _ in self.engine.insert_many(self.project, docs)]

    async def query(self, query: Query) -> QueryResult:
        """Return one page of matching documents."""
        await self._enter()
        data, total = self.engine.query(self.project, query)
        return QueryResult(data, total)

    async def get(self, doc_id: str) -> Document:
        """Return one document; raises ``DocumentNotFound``."""
        await self._enter()
        doc = self.engine.get(self.project, doc_id)
        if doc is None:
            raise DocumentNotFound(f"no document {doc_id!r}", status_code=404)
        return doc

    async def delete(self, doc_id: str) -> None:
        """Delete one document; raises ``DocumentNotFound``."""
        await self._enter()
        if not self.engine.delete(self.project, doc_id):
            raise DocumentNotFound(f"no document {doc_id!r}", status_code=404)

    async def health(self) -> None:
        """Always healthy while open."""
        await self._enter()

    async def aclose(self) -> None:
        """Mark this store closed (the shared data stays for other stores of the same name)."""
        self._closed = True
        await anyio.lowlevel.checkpoint()


def reset_memory_stores() -> None:
    """Forget every memory store's data (for tests)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.close()
        _ENGINES.clear()
