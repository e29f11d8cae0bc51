"""Document stores: ``memory://``, ``sqlite:///path``, ``postgresql://...`` and the json-documents HTTP API.

The memory, sqlite and PostgreSQL stores are one async adapter (:class:`EngineStore`) over a
synchronous :class:`DocumentEngine` (:class:`SqliteDocuments`, :class:`PostgresDocuments`); the
reference server runs on the same engines.
"""

from __future__ import annotations

import os
from functools import partial

from .._config import Config
from ..transports import open_transport
from ._adapter import EngineStore
from ._base import (
    MAX_QUERY_LIMIT,
    SORT_FIELDS,
    Document,
    DocumentConflict,
    DocumentEngine,
    DocumentStore,
    Inserted,
    Query,
    QueryResult,
    SortField,
)
from ._engine import SqliteDocuments
from ._http import HttpStore
from ._memory import MemoryStore, reset_memory_stores
from ._postgres import PostgresDocuments, close_shared_postgres, shared_postgres
from ._retention import RetentionSweeper
from ._sqlite import SqliteStore, sqlite_path_from_url

__all__ = [
    "MAX_QUERY_LIMIT",
    "SORT_FIELDS",
    "Document",
    "DocumentConflict",
    "DocumentEngine",
    "DocumentStore",
    "EngineStore",
    "HttpStore",
    "Inserted",
    "MemoryStore",
    "PostgresDocuments",
    "Query",
    "QueryResult",
    "RetentionSweeper",
    "SortField",
    "SqliteDocuments",
    "SqliteStore",
    "close_shared_postgres",
    "is_postgres_url",
    "open_engine",
    "open_store",
    "reset_memory_stores",
    "sqlite_path_from_url",
]


def is_postgres_url(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return url.partition(":")[0].lower() in ("postgresql", "postgres") and "://" in url


def open_engine(target: str | os.PathLike[str], config: Config | None = None, *,
                exact_numbers: bool = False) -> DocumentEngine:
    """The engine for a database: a ``postgresql://``/``postgres://`` URL, a ``sqlite:///`` URL or a
    sqlite file path. Does no I/O.

    Args:
        target: where the documents live.
        config: PostgreSQL pool settings, timeout and ``migrate`` (default: read from the environment).
        exact_numbers: a sqlite engine reads integers past 64 bits back as stored (the reference server's);
            PostgreSQL's ``jsonb`` holds them as numbers, read as floats.

    Raises:
        ValueError: ``target`` is a URL of another kind (``mysql://``, a misspelt ``postgresql://``), which
            would otherwise be taken for a file path and quietly become a new sqlite file.
    """
    text = os.fspath(target)
    if is_postgres_url(text):
        return PostgresDocuments.from_config(config or Config.from_env(api_url=text), text)
    if text.startswith("sqlite:///"):
        text = sqlite_path_from_url(text)
    elif "://" in text:
        raise ValueError(f"the database must be a postgresql:// or sqlite:/// URL, or a sqlite file path; got {text!r}")
    return SqliteDocuments(text, exact_numbers=exact_numbers)


def open_store(config: Config) -> DocumentStore:
    """Create the store ``config.api_url`` names. Does no I/O: connections open on first use."""
    kind = config.store_kind
    # Local engines enforce the configured retention themselves; an HTTP store leaves it to its server.
    policy, interval = config.retention, config.sweep_interval
    if kind == "memory":
        name = config.api_url[len("memory://") :]
        return MemoryStore(name, config.project_id, retention=policy, sweep_interval=interval)
    if kind == "sqlite":
        path = sqlite_path_from_url(config.api_url)
        return SqliteStore(path, config.project_id, retention=policy, sweep_interval=interval)
    if kind == "postgresql":
        engine = shared_postgres(config)
        return EngineStore(engine, config.project_id, owns_engine=False, retention=policy, sweep_interval=interval)
    return HttpStore(
        config.api_url,
        config.project_id,
        partial(open_transport, config.http_clients, timeout=config.timeout),
        api_key=config.api_key,
        max_body_bytes=config.max_body_bytes,
        concurrency=config.store_write_concurrency,
    )
