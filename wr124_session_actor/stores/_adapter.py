"""One async :class:`DocumentStore` over any synchronous :class:`DocumentEngine`.

The memory store runs its engine's calls inline (an in-memory database never waits), except retention
sweeps and prunes, which take a while; the sqlite and PostgreSQL stores run them all in worker threads,
at most the engine's ``concurrency`` at once, so that the event loop never blocks, under asyncio and
trio alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from .._document import EncodedDocument
from .._exceptions import DocumentNotFound, StoreClosed
from .._retention import NO_RETENTION, PruneReport, RetentionPolicy
from ._base import Document, DocumentEngine, Query, QueryResult
from ._retention import RetentionSweeper

__all__ = ["EngineStore"]

T = TypeVar("T")


class EngineStore:
    """A :class:`DocumentStore` for one project over a :class:`DocumentEngine`.

    Args:
        engine: the engine the documents live in.
        project: the project whose documents this store sees.
        inline: run the engine's calls on the event loop (only for engines that never wait: memory).
        owns_engine: close the engine on :meth:`aclose` (``False`` when it is shared).
        retention: the policy this store keeps its project to: after each write the sessions written
            are trimmed to ``keep_last``, and every ``sweep_interval`` seconds a write is followed by a
            sweep of the whole policy (bounded in time; no background task).
        sweep_interval: seconds between those periodic sweeps.
    """

    def __init__(
        self,
        engine: DocumentEngine,
        project: str = "default",
        *,
        inline: bool = False,
        owns_engine: bool = True,
        retention: RetentionPolicy = NO_RETENTION,
        sweep_interval: float = 60.0,
    ) -> None:
        self.engine = engine
        self.retention = RetentionSweeper(engine, retention, interval=sweep_interval)
        self.project = project
        self._inline = inline
        self._owns_engine = owns_engine
        self._limiter = anyio.CapacityLimiter(max(1, engine.concurrency))
        self._closed = False

    async def _run(self, func: Callable[..., T], *args: object, inline: bool | None = None) -> T:
        if self._closed:
            raise StoreClosed(f"the {type(self).__name__} is closed")
        if self._inline if inline is None else inline:
            await anyio.lowlevel.checkpoint()
            return func(*args)
        # Abandoned on cancel: the call's deadline returns TIMEOUT even while the database waits on a
        # lock or a connection; the thread finishes on its own and a redone write is harmless (ids are
        # idempotent).
        return await anyio.to_thread.run_sync(func, *args, limiter=self._limiter, abandon_on_cancel=True)

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Insert all documents in one transaction; return their ids."""
        results = await self._run(self.engine.insert_many, self.project, docs)
        if self.retention.policy.enabled:  # in a worker thread even for an inline engine: a sweep takes a while
            await self._run(self.retention.after_insert, self.project, docs, inline=False)
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

    async def prune(
        self,
        policy: RetentionPolicy | None = None,
        *,
        session_id: str | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """Remove (or count) what ``policy`` (default: this store's own) removes from the project."""
        chosen = self.retention.policy if policy is None else policy
        prune = partial(self.engine.prune, self.project, chosen, session_id=session_id, dry_run=dry_run, now=now)
        return await self._run(prune, inline=False)

    async def health(self) -> None:
        """Reach the database (opening it on first use) and run a trivial statement."""
        await self._run(self.engine.ping)

    async def aclose(self) -> None:
        """Close the engine when this store owns it; later calls raise ``StoreClosed``."""
        if self._closed:
            await anyio.lowlevel.checkpoint()
            return
        self._closed = True
        if not self._owns_engine:
            await anyio.lowlevel.checkpoint()
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.engine.close, limiter=self._limiter)
