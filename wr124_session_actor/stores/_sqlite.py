"""The embedded store: documents in a local sqlite file, every call run in a worker thread."""

from __future__ import annotations

import os

from .._retention import NO_RETENTION, RetentionPolicy
from ._adapter import EngineStore
from ._engine import SqliteDocuments

__all__ = ["SqliteStore", "sqlite_path_from_url"]


def sqlite_path_from_url(url: str) -> str:
    """Map a SQLAlchemy-style URL to a path: ``sqlite:///rel.db`` → ``rel.db``, ``sqlite:////abs.db`` → ``/abs.db``."""
    return url[len("sqlite:///") :]


class SqliteStore(EngineStore):
    """A :class:`DocumentStore` over a sqlite file; blocking work runs in one worker thread at a time.

    Args:
        path: the database file (created on first use, with its folder).
        project: the project whose documents this store sees.
        retention: the retention policy the store enforces (see :class:`EngineStore`).
        sweep_interval: seconds between periodic sweeps.
    """

    def __init__(
        self, path: str | os.PathLike[str], project: str = "default", *, retention: RetentionPolicy = NO_RETENTION,
        sweep_interval: float = 60.0,
    ) -> None:
        super().__init__(SqliteDocuments(path), project, retention=retention, sweep_interval=sweep_interval)
