"""The persistence boundary: the :class:`DocumentStore` protocol and its query value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

from .._document import EncodedDocument

__all__ = ["MAX_QUERY_LIMIT", "SORT_FIELDS", "Document", "DocumentStore", "Query", "QueryResult"]

#: A stored document as returned by stores: the body plus ``_id``, ``id``, ``created_at``, ``updated_at``.
Document = dict[str, Any]

#: Fields a query may sort by.
SORT_FIELDS: Final = ("created_at", "updated_at", "name")
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
    sort_by: Literal["created_at", "updated_at", "name"] = "created_at"
    sort_order: Literal[1, -1] = -1


@dataclass(frozen=True, slots=True)
class QueryResult:
    """One page of documents and the number of all matching documents."""

    data: list[Document]
    total: int


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

    async def aclose(self) -> None:
        """Release the store's resources; later calls raise ``StoreClosed``."""
        ...
