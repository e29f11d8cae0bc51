"""Document stores: ``memory://``, ``sqlite:///path`` and the json-documents HTTP API."""

from __future__ import annotations

from functools import partial

from .._config import Config
from ..transports import open_transport
from ._base import MAX_QUERY_LIMIT, Document, DocumentStore, Query, QueryResult
from ._engine import DocumentConflict, SqliteDocuments
from ._http import HttpStore
from ._memory import MemoryStore, reset_memory_stores
from ._retention import PruningEngine, RetentionSweeper
from ._sqlite import SqliteStore, sqlite_path_from_url

__all__ = [
    "MAX_QUERY_LIMIT",
    "Document",
    "DocumentConflict",
    "DocumentStore",
    "HttpStore",
    "MemoryStore",
    "PruningEngine",
    "Query",
    "QueryResult",
    "RetentionSweeper",
    "SqliteDocuments",
    "SqliteStore",
    "open_store",
    "reset_memory_stores",
]


def open_store(config: Config) -> DocumentStore:
    """Create the store ``config.api_url`` names. Does no I/O: connections open on first use."""
    kind = config.store_kind
    if kind == "memory":
        return MemoryStore(config.api_url[len("memory://") :], config.project_id)
    if kind == "sqlite":
        return SqliteStore(sqlite_path_from_url(config.api_url), config.project_id)
    return HttpStore(
        config.api_url,
        config.project_id,
        partial(open_transport, config.http_clients, timeout=config.timeout),
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
    )
