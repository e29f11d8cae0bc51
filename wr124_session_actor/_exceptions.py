"""Every exception the library defines, in one place.

Hierarchy::

    ValueError
     └── ConfigError              a malformed setting; names the variable (raised at construction)
    Exception
     └── StoreError               the persistence boundary failed; core ops turn these into statuses
          ├── StoreUnavailable    outside cause, transient: refused/reset connection, 5xx, 429
          │    └── CircuitOpen    busy: we stopped calling a store that keeps failing (no network)
          ├── StoreTimeout        outside cause, transient: the store did not answer in time
          ├── StoreBadResponse    the store answered something that is not the API (bad JSON, wrong shape)
          ├── StoreRejected       the store refused this request for good (4xx other than 408/429)
          │    └── DocumentNotFound
          ├── StoreClosed         you closed it: an operation after ``aclose()``
          └── NoClientError       no usable HTTP client for the running async library
    TypeError
     └── StateEncodeError         a state that orjson cannot encode; names the offending type

Backends translate their own errors at the boundary (``raise StoreTimeout(...) from exc``) so that the
policy code above them sees only these types.
"""

from __future__ import annotations

from ._status import SessionStateStatus

__all__ = [
    "CircuitOpen",
    "ConfigError",
    "DocumentNotFound",
    "NoClientError",
    "SchemaBehind",
    "StateEncodeError",
    "StoreBadResponse",
    "StoreClosed",
    "StoreError",
    "StoreRejected",
    "StoreTimeout",
    "StoreUnavailable",
    "error_message",
    "status_of",
]


class ConfigError(ValueError):
    """A configuration value is malformed; the message names the variable."""


class StoreError(Exception):
    """Base class of every failure at the persistence boundary."""

    #: Whether retrying the same request later may succeed.
    transient: bool = False
    #: Whether the failed call got part of its work done first (a write of several requests stored some
    #: documents): its retry is then not one more failure in a row.
    progressed: bool = False


class StoreUnavailable(StoreError):
    """The store could not be reached or answered 5xx/429; retrying later may work."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds the server asked us to wait (``Retry-After``), if it said.
        self.retry_after = retry_after


class CircuitOpen(StoreUnavailable):
    """Not sent: the store failed too often in a row and the circuit breaker is open."""


class SchemaBehind(StoreUnavailable):
    """The database is reached, but its schema is older than this code's (``migrate`` off, and
    ``wr124-session migrate`` not run yet): nothing can be stored until it runs."""


class StoreTimeout(StoreError):
    """The store did not answer within the allowed time."""

    transient = True


class StoreBadResponse(StoreError):
    """The store answered, but not with what the API promises (malformed JSON, wrong shape)."""


class StoreRejected(StoreError):
    """The store refused the request for good (bad request, auth, conflict, too large)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status code, when the store is an HTTP API.
        self.status_code = status_code


class DocumentNotFound(StoreRejected):
    """No document has that id (in this project)."""


class StoreClosed(StoreError):
    """The store was used after ``aclose()``."""


class NoClientError(StoreError):
    """No HTTP client library usable under the running async library is importable."""


class StateEncodeError(TypeError):
    """A state holds a value that cannot be encoded as JSON."""


def error_message(exc: Exception) -> str:
    """What a failure is reported as: a store error's own message; any other exception (one nobody
    foresaw, such as a client library's own bug) as ``unexpected error: <type>: <text>``."""
    if isinstance(exc, StoreError):
        return str(exc)
    return f"unexpected error: {type(exc).__name__}: {exc}"


def status_of(exc: BaseException) -> SessionStateStatus:
    """The status an exception at the store boundary stands for."""
    if isinstance(exc, StoreTimeout | TimeoutError):
        return SessionStateStatus.TIMEOUT
    if isinstance(exc, NoClientError):
        return SessionStateStatus.NO_CLIENT
    return SessionStateStatus.FAILED
