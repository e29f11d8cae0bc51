"""The in-process store (``memory://``): the sqlite engine on a private in-memory database.

Same semantics as the embedded store, with no file and no worker thread (nothing blocks: the
database is in memory). Stores are shared per URL within the process, so independent managers
(direct mode) see each other's writes, as they would with a server.
"""

from __future__ import annotations

import threading
from typing import Final

from .._retention import NO_RETENTION, RetentionPolicy
from ._adapter import EngineStore
from ._engine import SqliteDocuments

__all__ = ["MemoryStore", "reset_memory_stores"]

_ENGINES: Final[dict[str, SqliteDocuments]] = {}
_ENGINES_LOCK: Final = threading.Lock()


def _engine_for(name: str) -> SqliteDocuments:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(name)
        if engine is None:
            engine = _ENGINES[name] = SqliteDocuments(":memory:")
        return engine


class MemoryStore(EngineStore):
    """A :class:`DocumentStore` kept in this process's memory, shared by every store of the same name.

    Args:
        name: the part of the URL after ``memory://`` (empty for the default store).
        project: the project whose documents this store sees.
        retention: the retention policy the store enforces (see :class:`EngineStore`).
        sweep_interval: seconds between periodic sweeps.
    """

    def __init__(
        self, name: str = "", project: str = "default", *, retention: RetentionPolicy = NO_RETENTION,
        sweep_interval: float = 60.0,
    ) -> None:
        super().__init__(_engine_for(name), project, inline=True, owns_engine=False, retention=retention,
                         sweep_interval=sweep_interval)


def reset_memory_stores() -> None:
    """Forget every memory store's data (for tests)."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.close()
        _ENGINES.clear()
