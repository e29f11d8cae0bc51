"""Core operations of one session: the single implementation that direct and actor modes share.

Policy lives here and nowhere else: the whole-call deadline, retries of transient store errors,
mapping store errors to statuses, the TTL read cache, session scoping of reads, and exactly one
structlog event per outcome. Nothing here raises for I/O trouble.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import structlog
from cachetools import TTLCache

from ._circuit import CircuitBreaker
from ._config import Config
from ._document import (
    STATE_TAG,
    EncodedDocument,
    StateUpload,
    decode,
    encode,
    encode_documents,
    normalize_timestamp,
)
from ._exceptions import CircuitOpen, DocumentNotFound, NoClientError, StoreError, StoreTimeout
from ._status import SessionStateStatus
from .stores import Document, DocumentStore, Query

__all__ = ["SessionOps", "UploadOutcome", "status_of"]

T = TypeVar("T")
Status = SessionStateStatus
logger = structlog.get_logger("wr124_session_actor")

_SUMMARY_FIELDS: Final = ("name", "description", "created_at", "updated_at", "tags")


def status_of(exc: BaseException) -> SessionStateStatus:
    """The status an exception at the store boundary stands for."""
    if isinstance(exc, StoreTimeout | TimeoutError):
        return Status.TIMEOUT
    if isinstance(exc, NoClientError):
        return Status.NO_CLIENT
    return Status.FAILED


@dataclass(frozen=True, slots=True)
class UploadOutcome:
    """What became of one upload: its status and the id of the document holding it (or an error).

    ``transient`` is true when trying again later may succeed (timeouts, unreachable store).
    """

    status: SessionStateStatus
    value: str
    transient: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: SessionStateStatus
    value: Any
    transient: bool = False


class SessionOps:
    """The operations of one session over a store.

    Args:
        session_id: the session every read and write is scoped to.
        config: the library configuration.
        store: returns the store to use (opened lazily by the caller's mode).
    """

    __slots__ = ("_cache", "_disabled_logged", "_store", "circuit", "config", "session_id", "store_writes")

    def __init__(self, session_id: str, config: Config, store: Callable[[], DocumentStore],
                 circuit: CircuitBreaker | None = None) -> None:
        self.session_id = session_id
        self.config = config
        self._store = store
        self.circuit = circuit or CircuitBreaker(config.circuit_threshold, config.circuit_cooldown)
        self._cache: TTLCache[tuple[Any, ...], bytes] | None = None
        self._disabled_logged = False
        #: Store write calls made (one per batch); benchmarks and tests read it.
        self.store_writes = 0

    # -- plumbing ---------------------------------------------------------------------------------

    def disabled(self, op: str) -> bool:
        """Whether uploads are disabled; logs that once (info) per session ops."""
        if self.config.enabled:
            return False
        if not self._disabled_logged:
            self._disabled_logged = True
            logger.info("session_state.disabled", session_id=self.session_id, op=op,
                        status=Status.DISABLED.value, hint="set ENABLE_SESSION_STATE_UPLOAD=true")
        return True

    async def _call(self, op: str, func: Callable[[], Awaitable[T]], *, final: bool = True,
                    **fields: Any) -> _Outcome:
        """Run ``func`` under the call deadline with retries and the circuit breaker; log the outcome once.

        With ``final`` false the caller tries again later after a transient failure, so that failure is
        logged as a retry (debug) and the caller logs the final outcome.
        """
        config = self.config
        circuit = self.circuit
        started = time.perf_counter()
        attempt = 0
        error: StoreError | None = None
        with anyio.move_on_after(config.timeout) as scope:
            while True:
                attempt += 1
                try:
                    await circuit.before_call(self._store())
                    result = await func()
                except StoreError as exc:
                    error = exc
                    if exc.transient and not isinstance(exc, CircuitOpen):
                        circuit.record_failure()
                    if not exc.transient or attempt > config.retries:
                        break
                    delay = min(config.retry_backoff_max, config.retry_backoff * 2 ** (attempt - 1))
                    delay *= random.uniform(0.5, 1.0)  # jitter: sessions failing together retry apart
                    retry_after = getattr(exc, "retry_after", None)
                    if retry_after is not None:
                        delay = max(delay, min(retry_after, config.timeout))
                    logger.debug("session_state.retry", op=op, session_id=self.session_id, attempt=attempt,
                                 error=str(exc), delay_s=round(delay, 3), **fields)
                    await anyio.sleep(delay)
                    continue
                circuit.record_success()
                self._log(op, Status.SUCCESS, time.perf_counter() - started, attempt, None, fields)
                return _Outcome(Status.SUCCESS, result)
        duration = time.perf_counter() - started
        if scope.cancelled_caught:
            status, transient = Status.TIMEOUT, True
            message = f"{op} timed out after {config.timeout:g}s (SESSION_STATE_TIMEOUT)"
            if error is not None:
                message += f"; last error: {error}"
        else:
            assert error is not None
            status, message, transient = status_of(error), str(error), error.transient
        if transient and not final:
            logger.debug("session_state.retry", op=op, session_id=self.session_id, attempt=attempt,
                         error=message, **fields)
        else:
            self._log(op, status, duration, attempt, message, fields)
        return _Outcome(status, message, transient)

    def _log(self, op: str, status: Status, duration: float, attempt: int, error: str | None,
             fields: dict[str, Any]) -> None:
        log = logger.debug if status is Status.SUCCESS else logger.warning
        log(f"session_state.{op}", status=status.value, session_id=self.session_id, op=op,
            duration_ms=round(duration * 1000, 3), attempt=attempt, error=error, **fields)

    def _cache_get(self, key: tuple[Any, ...]) -> Any:
        if self._cache is None:
            return None
        raw = self._cache.get(key)
        return None if raw is None else decode(raw)

    def _cache_put(self, key: tuple[Any, ...], value: object) -> None:
        if self.config.cache_ttl <= 0:
            return
        if self._cache is None:
            self._cache = TTLCache(maxsize=self.config.cache_size, ttl=self.config.cache_ttl)
        self._cache[key] = encode(value)

    def invalidate(self, doc_id: str | None = None) -> None:
        """Forget cached listings (this session wrote) and, with ``doc_id``, that document (deleted)."""
        if self._cache:
            for key in [k for k in self._cache if k[0] != "restore" or k[1] == doc_id]:
                self._cache.pop(key, None)

    def _state_query(self, limit: int, agent_name: str | None = None, start: str | datetime | None = None,
                     end: str | datetime | None = None) -> Query:
        tags = (STATE_TAG,) if agent_name is None else (STATE_TAG, agent_name)
        return Query(
            session_id=self.session_id,
            tags=tags,
            created_after=None if start is None else normalize_timestamp(start),
            created_before=None if end is None else normalize_timestamp(end),
            limit=limit,
        )

    def _is_own_state(self, doc: Document) -> bool:
        tags = doc.get("tags")
        return doc.get("session_id") == self.session_id and isinstance(tags, list) and STATE_TAG in tags

    # -- writes -----------------------------------------------------------------------------------

    async def write(self, uploads: Sequence[StateUpload], *, coalesced: int = 0,
                    final: bool = True) -> list[UploadOutcome]:
        """Encode ``uploads`` and store them in one write; return one outcome per upload, in order.

        A state that cannot be encoded fails alone (``FAILED`` naming the type); the rest are written.
        ``final`` false: the caller keeps transient failures for a later try (logged as retries).
        """
        if self.disabled("upload"):
            return [UploadOutcome(Status.DISABLED, "session state upload is disabled")] * len(uploads)
        encoded = await encode_documents(uploads)
        outcomes: list[UploadOutcome | None] = [None] * len(uploads)
        docs: list[EncodedDocument] = []
        for index, item in enumerate(encoded):
            if isinstance(item, EncodedDocument):
                docs.append(item)
            else:
                outcomes[index] = UploadOutcome(Status.FAILED, item)
                logger.warning("session_state.upload", status=Status.FAILED.value, session_id=self.session_id,
                               op="upload", ids=[uploads[index].doc_id], error=item, attempt=0)
        if docs:
            self.store_writes += 1
            result = await self._call(
                "upload", lambda: self._store().insert_many(docs), final=final,
                ids=[d.id for d in docs], batch_size=len(docs), coalesced=coalesced,
            )
            if result.status is Status.SUCCESS:
                self.invalidate()
                # The ids the store answered: ours when it honours client ids, its own when it does not.
                stored = iter(result.value if len(result.value) == len(docs) else [d.id for d in docs])
            for index in range(len(outcomes)):
                if outcomes[index] is None:
                    if result.status is Status.SUCCESS:
                        outcomes[index] = UploadOutcome(Status.SUCCESS, str(next(stored)))
                    else:
                        outcomes[index] = UploadOutcome(result.status, str(result.value), result.transient)
        return [o for o in outcomes if o is not None]

    async def upload(self, upload: StateUpload) -> tuple[Status, str]:
        """Store one state now; return ``(status, document id or error message)``."""
        (outcome,) = await self.write([upload])
        return outcome.status, outcome.value

    async def delete(self, doc_id: str) -> tuple[Status, str]:
        """Delete one of this session's state documents."""
        if self.disabled("delete"):
            return Status.DISABLED, "session state upload is disabled"

        async def delete() -> str:
            store = self._store()
            doc = await store.get(doc_id)
            if not self._is_own_state(doc):
                raise DocumentNotFound(f"document {doc_id!r} is not a state of session {self.session_id!r}")
            await store.delete(doc_id)
            return f"deleted {doc_id}"

        result = await self._call("delete", delete, ids=[doc_id])
        self.invalidate(doc_id)  # whatever the outcome: the document may be gone
        return result.status, str(result.value)

    # -- reads ------------------------------------------------------------------------------------

    async def download(self, limit: int = 10, agent_name: str | None = None,
                       start_date: str | datetime | None = None,
                       end_date: str | datetime | None = None) -> tuple[Status, list[Document]]:
        """This session's state documents, newest first (whole documents)."""
        if self.disabled("download"):
            return Status.DISABLED, []
        try:
            query = self._state_query(limit, agent_name, start_date, end_date)
        except (TypeError, ValueError) as exc:
            logger.warning("session_state.download", status=Status.FAILED.value, session_id=self.session_id,
                           op="download", error=f"bad date: {exc}")
            return Status.FAILED, []
        key = ("download", query)
        cached = self._cache_get(key)
        if cached is not None:
            return Status.SUCCESS, cached

        async def run() -> list[Document]:
            return (await self._store().query(query)).data

        result = await self._call("download", run, limit=limit, agent_name=agent_name)
        if result.status is not Status.SUCCESS:
            return result.status, []
        self._cache_put(key, result.value)
        return result.status, result.value

    def cached_restore(self, doc_id: str) -> dict[str, Any] | None:
        """The cached content of ``doc_id`` (a copy), or ``None`` when it is not cached."""
        cached: dict[str, Any] | None = self._cache_get(("restore", doc_id))
        return cached

    async def restore(self, doc_id: str) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of one of this session's state documents."""
        if self.disabled("restore"):
            return Status.DISABLED, None
        key = ("restore", doc_id)
        cached = self._cache_get(key)
        if cached is not None:
            return Status.SUCCESS, cached

        async def run() -> dict[str, Any]:
            doc = await self._store().get(doc_id)
            if not self._is_own_state(doc):
                raise DocumentNotFound(f"document {doc_id!r} is not a state of session {self.session_id!r}")
            content = doc.get("content")
            if not isinstance(content, dict):
                raise DocumentNotFound(f"document {doc_id!r} has no state content")
            return content

        result = await self._call("restore", run, ids=[doc_id])
        if result.status is not Status.SUCCESS:
            return result.status, None
        self._cache_put(key, result.value)
        return result.status, result.value

    async def restore_latest(self, agent_name: str | None = None) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of this session's newest state document (of ``agent_name``, if given)."""
        status, docs = await self.download(limit=1, agent_name=agent_name)
        if status is not Status.SUCCESS:
            return status, None
        if not docs:
            who = f" of agent {agent_name!r}" if agent_name else ""
            logger.warning("session_state.restore", status=Status.FAILED.value, session_id=self.session_id,
                           op="restore", error=f"no state{who} in this session")
            return Status.FAILED, None
        content = docs[0].get("content")
        return (Status.SUCCESS, content) if isinstance(content, dict) else (Status.FAILED, None)

    async def list_available(self, limit: int = 10,
                             agent_name: str | None = None) -> tuple[Status, list[dict[str, Any]]]:
        """Summaries ``{id, name, description, created_at, updated_at, tags}`` of this session's states."""
        status, docs = await self.download(limit=limit, agent_name=agent_name)
        summaries = [
            {"id": doc.get("_id", doc.get("id")), **{k: doc.get(k) for k in _SUMMARY_FIELDS}} for doc in docs
        ]
        return status, summaries
