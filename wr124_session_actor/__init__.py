"""Persist LLM agent session state through per-session anyio actors.

The public surface is re-exported here; everything else lives in private modules.
"""

from __future__ import annotations

from ._config import Config as Config
from ._document import UploadDetails as UploadDetails
from ._exceptions import CircuitOpen as CircuitOpen
from ._exceptions import ConfigError as ConfigError
from ._exceptions import DocumentNotFound as DocumentNotFound
from ._exceptions import NoClientError as NoClientError
from ._exceptions import StateEncodeError as StateEncodeError
from ._exceptions import StoreBadResponse as StoreBadResponse
from ._exceptions import StoreClosed as StoreClosed
from ._exceptions import StoreError as StoreError
from ._exceptions import StoreRejected as StoreRejected
from ._exceptions import StoreTimeout as StoreTimeout
from ._exceptions import StoreUnavailable as StoreUnavailable
from ._handle import SessionHandle as SessionHandle
from ._manager import SessionStateManager as SessionStateManager
from ._retention import PruneReport as PruneReport
from ._retention import RetentionPolicy as RetentionPolicy
from ._status import SessionStateStatus as SessionStateStatus
from ._system import ActorSystem as ActorSystem
from ._system import SystemStatistics as SystemStatistics
from ._system import WriteObservation as WriteObservation
from ._team import Team as Team
from .stores import DocumentStore as DocumentStore
from .stores import Query as Query
from .stores import QueryResult as QueryResult

__version__ = "0.1.0"

__all__ = [
    "ActorSystem",
    "CircuitOpen",
    "Config",
    "ConfigError",
    "DocumentNotFound",
    "DocumentStore",
    "NoClientError",
    "PruneReport",
    "Query",
    "QueryResult",
    "RetentionPolicy",
    "SessionHandle",
    "SessionStateManager",
    "SessionStateStatus",
    "StateEncodeError",
    "StoreBadResponse",
    "StoreClosed",
    "StoreError",
    "StoreRejected",
    "StoreTimeout",
    "StoreUnavailable",
    "SystemStatistics",
    "Team",
    "UploadDetails",
    "WriteObservation",
]
