"""The persistence boundary: the :class:`DocumentStore` protocol and its query value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, Protocol, runtime_checkable

from .._document import EncodedDocument
from .._exceptions import StoreRejected
from .._retention import PRUNE_BATCH, PruneReport, RetentionPolicy

__all__ = [
    "MAX_QUERY_LIMIT",
    "SORT_FIELDS",
    "Document",
    "DocumentConflict",
    "DocumentEngine",
    "DocumentStore",
    "Inserted",
    "Query",
    "QueryResult",
    "SessionSummary",
    "SortField",
    "session_summary",
]

#: A stored document as returned by stores: the body plus ``_id``, ``id``, ``created_at``, ``updated_at``.
Document = dict[str, Any]

#: What a query may sort by.
SortField = Literal["created_at", "updated_at", "name", "seq"]
#: Fields a query may sort by.
SORT_FIELDS: Final[tuple[SortField, ...]] = ("created_at", "updated_at", "name", "seq")
#: The most documents one query returns (the server caps ``limit`` at this too).
MAX_QUERY_LIMIT: Final = 1000


@dataclass(frozen=True, slots=True)
class Query:
    """A document query, as the json-documents API's query parameters.

    ``tags`` matches documents carrying *all* the given tags; ``name_pattern`` is a substring of the
    name; ``created_after``/``created_before`` are inclusive bounds in normalized UTC ISO-8601.
    """

    session_id: str | None = None
    document_type: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    name_pattern: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    limit: int = 10
    skip: int = 0
    sort_by: SortField = "created_at"
    sort_order: Literal[1, -1] = -1


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One page of documents and the number of all matching documents (``None``: the store did not say, as a
    server that sends no ``total``)."""

    data: list[Document]
    total: int | None


#: What an engine's ``insert_many`` says per document: its id and whether it was created (``False``: the
#: same document was stored before, and is not duplicated).
Inserted = tuple[str, bool]


class DocumentConflict(StoreRejected):
    """The write conflicts with what is stored (HTTP 409); nothing of the batch is stored.

    Either an id exists with a different body, or a document continues (``parent_seq``) a state of its
    agent that is no longer the newest. The message contains "conflict".
    """


class DocumentEngine(Protocol):
    """A synchronous document engine (sqlite, PostgreSQL): what the stores and the server run on.

    Every method blocks: async callers run them in worker threads (at most :attr:`concurrency` at
    once), except for an in-memory engine whose calls are quick. Every method raises only
    :class:`~wr124_session_actor.StoreError` subclasses: transient ones (``StoreUnavailable``,
    ``StoreTimeout``) when the database cannot be reached, :class:`DocumentConflict` for conflicts.

    Documents are partitioned by project. Every stored document gets a ``seq``: an integer, per
    (project, session) strictly increasing across all writers, assigned in the transaction that stores
    it; within a session, ``created_at`` order agrees with it. Returned documents are the stored body
    plus ``_id``, ``id``, ``seq``, ``created_at`` and ``updated_at``.
    """

    @property
    def concurrency(self) -> int:
        """How many calls may usefully run at once (worker threads an async adapter should allow)."""
        ...

    def insert_many(self, project: str, docs: Sequence[EncodedDocument]) -> list[Inserted]:
        """Store ``docs`` in one transaction, all or none; return ``(id, created)`` per document.

        Raises:
            DocumentConflict: an id exists with another body, or a document's ``parent_seq`` is older
                than the newest stored state of its (session, agent); nothing is stored.
        """
        ...

    def query(self, project: str, query: Query) -> tuple[list[Document], int]:
        """Return one page of matching documents and the count of all matches."""
        ...

    def get(self, project: str, doc_id: str) -> Document | None:
        """Return the document with ``doc_id`` in ``project``, or ``None``."""
        ...

    def sessions(
        self, project: str, search: str | None = None, limit: int = 20, skip: int = 0
    ) -> tuple[list[SessionSummary], int]:
        """One page of ``project``'s sessions, latest activity first, and the count of all.

        Each is a :func:`session_summary`; ``search`` keeps the sessions whose id contains it.
        """
        ...

    def delete(self, project: str, doc_id: str) -> bool:
        """Delete a document; return whether it existed."""
        ...

    def ping(self) -> None:
        """Return when the database is usable (opening and migrating it on first use); raise when not."""
        ...

    def migrate(self) -> list[int]:
        """Bring the database's schema up to date (safe with other processes at once); return the schema
        versions this engine applied."""
        ...

    def close(self) -> None:
        """Release connections (a later call opens them again)."""
        ...

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
        """Remove (or with ``dry_run`` count) what ``policy`` removes, in batches of ``batch_size`` rows.

        Args:
            project: the project; ``None`` for every project.
            policy: the retention policy.
            session_id: only this session.
            dry_run: count, remove nothing.
            now: the time ages are measured from (default: now).
            batch_size: the most rows one transaction deletes.
            time_budget: stop after about this many seconds (the report says ``complete=False``, and
                ``resume_after`` where it stopped).
            start_after: begin after this ``(project, session_id)`` (an earlier report's ``resume_after``),
                going round to the sessions before it.
        """
        ...


#: One session as :meth:`DocumentEngine.sessions` lists it.
SessionSummary = dict[str, Any]


def session_summary(
    session_id: str, documents: int, agents: Sequence[str], first_at: str, last_at: str, last_seq: int
) -> SessionSummary:
    """A session's summary: its document count, agents (sorted), first and last write, and newest ``seq``."""
    return {"session_id": session_id, "documents": int(documents), "agents": sorted(agents),
            "first_at": first_at, "last_at": last_at, "last_seq": int(last_seq)}


@runtime_checkable
class DocumentStore(Protocol):
    """Where documents live. Every method raises only :class:`~wr124_session_actor.StoreError` subclasses."""

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Store all of ``docs`` (all or none) and return their ids; an id stored before is not duplicated."""
        ...

    async def query(self, query: Query) -> QueryResult:
        """Return the documents matching ``query``."""
        ...

    async def get(self, doc_id: str) -> Document:
        """Return one document; raises ``DocumentNotFound``."""
        ...

    async def delete(self, doc_id: str) -> None:
        """Delete one document; raises ``DocumentNotFound``."""
        ...

    async def health(self) -> None:
        """Return when the store is usable; raise a ``StoreError`` when it is not."""
        ...

    async def prune(
        self,
        policy: RetentionPolicy | None = None,
        *,
        session_id: str | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """Remove (or with ``dry_run`` count) what ``policy`` removes from this store's project.

        ``None`` means the store's own policy: the configuration's ``keep_last``/``max_age``/``idle_ttl``,
        or for an HTTP store the server's. ``now`` (tests) is the time ages are measured from.
        """
        ...

    async def aclose(self) -> None:
        """Release the store's resources; later calls raise ``StoreClosed``."""
        ...
