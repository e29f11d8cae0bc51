"""Core operations of one session: the single implementation that direct and actor modes share.

Policy lives here and nowhere else: the whole-call deadline, retries of transient store errors,
mapping store errors to statuses, the TTL read cache, session scoping of reads, and exactly one
structlog event per outcome. Nothing here raises for I/O trouble.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, TypeVar

import anyio
import anyio.to_thread
import structlog
from cachetools import TTLCache

from ._backoff import backoff_delay
from ._circuit import CircuitBreaker
from ._config import Config
from ._document import (
    STATE_TAG,
    EncodedDocument,
    StateUpload,
    UploadDetails,
    check_agent_name,
    check_upload,
    decode,
    encode,
    encode_documents,
    holds_at_most,
    normalize_timestamp,
)
from ._exceptions import (
    CircuitOpen,
    DocumentNotFound,
    StateEncodeError,
    StoreError,
    error_message,
    status_of,
)
from ._status import SessionStateStatus
from .stores import MAX_QUERY_LIMIT, Document, DocumentStore, HttpStore, Query

__all__ = ["Encoder", "PreparedWrite", "SessionOps", "StoreOutcome", "UploadOutcome", "call_store", "new_upload"]

T = TypeVar("T")
Status = SessionStateStatus
logger = structlog.get_logger("wr124_session_actor")

_SUMMARY_FIELDS: Final = ("name", "description", "created_at", "updated_at", "tags")
#: The most items (in all its lists and dicts) of a read the cache keeps: its copy is encoded on the loop when
#: it is kept, and decoded at each hit (a 10 MB state: two more holds of the loop of 20-60 ms each).
_CACHED_ELEMENTS: Final = 20_000


def _refused(session_id: str, op: str, reason: object) -> str:
    """Log a call refused for its arguments (no store is asked: the call is ``FAILED``); return what its
    caller is told."""
    message = f"bad arguments: {reason}"
    logger.warning(f"session_state.{op}", status=Status.FAILED.value, session_id=session_id, op=op, error=message)
    return message


def new_upload(session_id: str, op: str, state: object, task: str, agent_name: str,
               details: Mapping[str, Any]) -> StateUpload | str:
    """The upload a caller's arguments make, or why no store could take them (logged: the call is ``FAILED``).

    Nothing else is affected: the session, its actor and its other uploads never see a refused one.
    """
    try:
        if details and not details.keys() <= UploadDetails.__optional_keys__:  # (most uploads give none)
            unknown = details.keys() - UploadDetails.__optional_keys__
            raise TypeError(f"unknown argument(s) {', '.join(sorted(unknown))} (an upload takes"
                            f" {', '.join(sorted(UploadDetails.__optional_keys__))})")
        upload = StateUpload(session_id, state, task, agent_name, **details)
        check_upload(upload)
        return upload
    except (TypeError, ValueError) as exc:  # a wrong type, or a keyword the upload does not have
        return _refused(session_id, op, exc)


@dataclass(slots=True)
class UploadOutcome:
    """What became of one upload: its status and the id of the document holding it (or an error).

    Treat it as immutable (one is made per upload: not frozen, which would make it twice as costly).

    ``transient`` is true when trying again later may succeed (timeouts, unreachable store);
    ``unchanged`` when the state equals one stored already, whose id ``value`` names (no write).
    """

    status: SessionStateStatus
    value: str
    transient: bool = False
    unchanged: bool = False


def stored_before(doc: EncodedDocument | None) -> UploadOutcome | None:
    """``SUCCESS`` naming the document an earlier request of a write that failed as a whole stored (an HTTP
    store's ``stored_as``: the write's retry does not send it again), else ``None``."""
    if doc is None or doc.stored_as is None:
        return None
    return UploadOutcome(Status.SUCCESS, doc.stored_as)


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """The result of one store call with its retries: a status, the value or error message, and how it went."""

    status: SessionStateStatus
    value: Any
    transient: bool = False
    attempts: int = 1
    duration: float = 0.0
    #: The HTTP status of a refusal (a store error that carries one), else ``None``.
    status_code: int | None = None
    #: A write's documents that failed alone (by position) while the others were stored, with their outcomes.
    refused: Mapping[int, StoreOutcome] | None = None


RetryHook = Callable[[int, StoreError, float], None]


async def call_store(config: Config, circuit: CircuitBreaker, store: Callable[[], DocumentStore],
                     func: Callable[[], Awaitable[Any]], *, on_retry: RetryHook | None = None,
                     timeout: float | None = None) -> StoreOutcome:
    """Run ``func`` under the call deadline with retries and the circuit breaker; never raises but cancellation
    (a store error is its status, any other exception a logged ``FAILED``).

    Transient failures are tried again after :func:`backoff_delay` (at least ``Retry-After``) until the
    deadline (``timeout``, by default ``config.timeout``); ``on_retry(attempt, error, delay)`` hears of each.
    A failure that got part of the work done (:attr:`StoreError.progressed`) starts a new run of failures:
    the backoff and the ``retries`` bound count the failures in a row.
    """
    started = time.perf_counter()
    attempt = 0
    in_a_row = 0
    error: StoreError | None = None
    timeout = config.timeout if timeout is None else timeout
    with anyio.move_on_after(timeout) as scope:
        while True:
            attempt += 1
            in_a_row += 1
            try:
                await circuit.before_call(store())
                result = await func()
            except StoreError as exc:
                error = exc
                if exc.progressed:  # the store works: a new run of failures
                    in_a_row = 1
                    circuit.record_success()
                elif exc.transient and not isinstance(exc, CircuitOpen):
                    circuit.record_failure(str(exc))
                if not exc.transient or in_a_row > config.retries:
                    break
                delay = backoff_delay(in_a_row, config.retry_backoff, config.retry_backoff_max)
                retry_after = getattr(exc, "retry_after", None)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, timeout))
                if on_retry is not None:
                    on_retry(attempt, exc, delay)
                await anyio.sleep(delay)
                continue
            except Exception as exc:  # a fault nobody foresaw (a client library's own error): a status all the same
                message = error_message(exc)
                logger.error("session_state.unexpected_error", error=message, exc_info=exc)
                return StoreOutcome(Status.FAILED, message, attempts=attempt, duration=time.perf_counter() - started)
            circuit.record_success()
            return StoreOutcome(Status.SUCCESS, result, attempts=attempt, duration=time.perf_counter() - started)
    duration = time.perf_counter() - started
    if scope.cancelled_caught:
        message = f"timed out after {timeout:g}s (SESSION_STATE_TIMEOUT)"
        if error is not None:
            message += f"; last error: {error}"
        outcome = StoreOutcome(Status.TIMEOUT, message, True, attempt, duration)
    else:
        assert error is not None
        outcome = StoreOutcome(status_of(error), str(error), error.transient, attempt, duration,
                               getattr(error, "status_code", None))
    # The error's traceback holds this frame, and this frame the error: a cycle that kept the store (and a
    # dropped bare manager's HTTP client) alive until the garbage collector freed them together, before the
    # client's close guard could close it ("Unclosed client session" after failed calls).
    del error
    return outcome


#: Encodes uploads (each to its document, or to the message of why it cannot be encoded).
Encoder = Callable[[Sequence[StateUpload]], Awaitable[list[EncodedDocument | str]]]


@dataclass(slots=True)
class PreparedWrite:
    """Uploads encoded for one write: outcomes known before writing, and the documents to write."""

    outcomes: list[UploadOutcome | None]
    docs: list[EncodedDocument]
    #: The upload index of each document in ``docs``.
    uploads_of_docs: list[int]
    #: Upload index → index of the upload in this batch whose document holds an equal state.
    same_as: dict[int, int] | None = None


class SessionOps:
    """The operations of one session over a store.

    Args:
        session_id: the session every read and write is scoped to.
        config: the library configuration.
        store: returns the store to use (opened lazily by the caller's mode).
        circuit: the circuit breaker shared by the sessions of one store.
    """

    __slots__ = ("_cache", "_disabled_logged", "_invalidations", "_last_stored", "_refused", "_store", "circuit",
                 "config", "session_id")

    def __init__(self, session_id: str, config: Config, store: Callable[[], DocumentStore],
                 circuit: CircuitBreaker | None = None) -> None:
        self.session_id = session_id
        self.config = config
        self._store = store
        self.circuit = circuit or CircuitBreaker(config.circuit_threshold, config.circuit_cooldown)
        self._cache: TTLCache[tuple[Any, ...], bytes] | None = None
        # Counts :meth:`invalidate` calls: a read that began before one does not cache its (older) answer.
        self._invalidations = 0
        self._disabled_logged = False
        # agent → (state digest, id, when) of its last stored state: an equal state is not written again
        # while that is trusted (``trust_ttl``, as cached reads: another process may delete or supersede it).
        self._last_stored: dict[str, tuple[bytes, str, float]] | None = None
        # agent → the parent_seq of its state the store refused as a fork (a newer state was stored): its
        # later uploads that give none continue that refused state, and are refused too, until an upload
        # gives a parent_seq again (a restore).
        self._refused: dict[str, int] | None = None

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

    def _retry_hook(self, op: str, fields: dict[str, Any]) -> RetryHook:
        def on_retry(attempt: int, error: StoreError, delay: float) -> None:
            logger.debug("session_state.retry", op=op, session_id=self.session_id, attempt=attempt,
                         error=str(error), delay_s=round(delay, 3), **fields)

        return on_retry

    async def _call(self, op: str, func: Callable[[], Awaitable[T]], **fields: Any) -> StoreOutcome:
        """Run one store call (deadline, retries, circuit) and log its outcome once."""
        result = await call_store(self.config, self.circuit, self._store, func,
                                  on_retry=self._retry_hook(op, fields))
        self.log(op, result, **fields)
        return result

    def log(self, op: str, result: StoreOutcome, *, final: bool = True, **fields: Any) -> None:
        """Emit the one event of an outcome: debug for success, warning otherwise.

        A transient failure the caller will try again (``final`` false) is a debug retry event instead.
        """
        error = None if result.status is Status.SUCCESS else f"{op} {result.value}" \
            if result.status is Status.TIMEOUT else str(result.value)
        if result.transient and not final:
            logger.debug("session_state.retry", op=op, session_id=self.session_id, attempt=result.attempts,
                         error=error, **fields)
            return
        log = logger.debug if result.status is Status.SUCCESS else logger.warning
        log(f"session_state.{op}", status=result.status.value, session_id=self.session_id, op=op,
            duration_ms=round(result.duration * 1000, 3), attempt=result.attempts, error=error, **fields)

    def _cache_get(self, key: tuple[Any, ...]) -> Any:
        if self._cache is None:
            return None
        try:
            raw = self._cache[key]  # one lookup: TTLCache.get() checks the entry's time twice
        except KeyError:
            return None
        return decode(raw)

    async def _cache_hit(self, key: tuple[Any, ...]) -> Any:
        """The cached value of ``key`` (a copy), or ``None``. A hit is a checkpoint, as the store call it
        saves would have been: a loop of cached reads still lets other tasks run and can be cancelled."""
        cached = self._cache_get(key)
        if cached is not None:
            await anyio.lowlevel.checkpoint()
        return cached

    def _cache_put(self, key: tuple[Any, ...], value: object, invalidations: int) -> None:
        """Cache ``value``, read when :attr:`_invalidations` was ``invalidations``: unless a write or delete of
        this session has ended since (in direct mode reads and writes of one session can overlap)."""
        if self.config.trust_ttl <= 0 or invalidations != self._invalidations:
            return
        if not holds_at_most(value, _CACHED_ELEMENTS):  # its copy would hold the loop as long as the read did
            return
        try:
            copy = encode(value)
        except StateEncodeError:  # as deep as orjson encodes, in a list one level deeper: answered, not kept
            return
        if self._cache is None:
            self._cache = TTLCache(maxsize=self.config.cache_size, ttl=self.config.trust_ttl)
        self._cache[key] = copy

    def invalidate(self, doc_id: str | None = None) -> None:
        """Forget cached listings (this session wrote) and, with ``doc_id``, that document (deleted)."""
        self._invalidations += 1
        if self._cache:
            for key in [k for k in self._cache if k[0] != "restore" or k[1] == doc_id]:
                self._cache.pop(key, None)
        if doc_id is not None and self._last_stored:
            # A deleted state may not be the reference for "unchanged" any more.
            for agent in [a for a, (_, stored, _) in self._last_stored.items() if stored == doc_id]:
                del self._last_stored[agent]

    def _state_query(self, limit: int, agent_name: str | None = None, start: str | datetime | None = None,
                     end: str | datetime | None = None) -> Query:
        """The query of this session's states; ``ValueError`` names an argument no store could take (the
        store is not asked: a caller's mistake is neither retried nor counted against the store)."""
        if type(limit) is not int or limit < 0:
            raise ValueError(f"limit must be a whole number >= 0, got {limit!r}")
        if agent_name is not None:
            if not isinstance(agent_name, str):
                raise ValueError(f"agent_name must be a string or None, got {agent_name!r}")
            check_agent_name(agent_name)
        bounds: list[str | None] = []
        for name, value in (("start_date", start), ("end_date", end)):
            try:
                bounds.append(None if value is None else normalize_timestamp(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} is not a date: {exc}") from None
        return Query(session_id=self.session_id, tags=(STATE_TAG,) if agent_name is None else (STATE_TAG, agent_name),
                     created_after=bounds[0], created_before=bounds[1], limit=limit)

    def _is_own_state(self, doc: Document) -> bool:
        tags = doc.get("tags")
        return doc.get("session_id") == self.session_id and isinstance(tags, list) and STATE_TAG in tags

    # -- writes -----------------------------------------------------------------------------------

    def _continues_refused(self, uploads: Sequence[StateUpload]) -> list[tuple[int, int]]:
        """The indexes of ``uploads`` that continue a state the store refused as a fork (see :attr:`_refused`),
        each with that state's parent_seq; an upload that gives a ``parent_seq`` starts a new continuation of
        its agent."""
        refused = self._refused
        if not refused:
            return []
        stale: list[tuple[int, int]] = []
        for index, upload in enumerate(uploads):
            if upload.parent_seq is not None:
                refused.pop(upload.agent_name, None)
            elif (parent := refused.get(upload.agent_name)) is not None:
                stale.append((index, parent))
        return stale

    def _note_forks(self, docs: Sequence[EncodedDocument], refusals: Mapping[int, StoreOutcome]) -> None:
        """Remember the agents whose continuation (a document with a ``parent_seq``) the store refused (409)."""
        for position, outcome in refusals.items():
            doc = docs[position]
            if outcome.status_code == 409 and doc.parent_seq is not None and doc.agent is not None:
                if self._refused is None:
                    self._refused = {}
                self._refused[doc.agent] = doc.parent_seq

    async def _insert(self, docs: list[EncodedDocument]) -> StoreOutcome:
        """Direct mode's writer: the store itself, with retries."""
        return await call_store(self.config, self.circuit, self._store, lambda: self._store().insert_many(docs),
                                on_retry=self._retry_hook("upload", {"ids": [d.id for d in docs]}))

    async def prepare(self, uploads: Sequence[StateUpload], encode: Encoder = encode_documents) -> PreparedWrite:
        """Encode ``uploads``; answer at once those that cannot be encoded or that need no write."""
        stale = self._continues_refused(uploads)
        encoded = await encode(uploads)
        prepared = PreparedWrite([None] * len(uploads), [], [])
        for index, parent in stale:
            upload = uploads[index]
            message = (f"conflict: {upload.agent_name!r} continues its state seq {parent}, which the store refused"
                       " as a newer state exists; restore it to continue")
            prepared.outcomes[index] = UploadOutcome(Status.FAILED, message)
            logger.warning("session_state.upload", status=Status.FAILED.value, session_id=self.session_id,
                           op="upload", ids=[upload.doc_id], error=message, attempt=0)
        skip = self.config.skip_unchanged
        last = self._last_stored or {}
        trusted_since = time.monotonic() - self.config.trust_ttl
        in_batch: dict[str, tuple[bytes | None, int]] = {}
        for index, item in enumerate(encoded):
            if prepared.outcomes[index] is not None:
                continue
            if not isinstance(item, EncodedDocument):
                prepared.outcomes[index] = UploadOutcome(Status.FAILED, item)
                logger.warning("session_state.upload", status=Status.FAILED.value, session_id=self.session_id,
                               op="upload", ids=[uploads[index].doc_id], error=item, attempt=0)
                continue
            agent = uploads[index].agent_name
            if skip and item.state_hash is not None and item.parent_seq is None:  # a continuation: the store checks it
                earlier = in_batch.get(agent)
                if earlier is not None and earlier[0] == item.state_hash:
                    if prepared.same_as is None:
                        prepared.same_as = {}
                    prepared.same_as[index] = earlier[1]
                    continue
                stored = last.get(agent)
                if (earlier is None and stored is not None and stored[0] == item.state_hash
                        and stored[2] > trusted_since):
                    prepared.outcomes[index] = UploadOutcome(Status.SUCCESS, stored[1], unchanged=True)
                    continue
            in_batch[agent] = (item.state_hash, index)
            prepared.uploads_of_docs.append(index)
            prepared.docs.append(item)
        return prepared

    async def write(self, uploads: Sequence[StateUpload]) -> list[UploadOutcome]:
        """Encode ``uploads`` and store them in one write (direct mode); return one outcome per upload.

        A state that cannot be encoded fails alone (``FAILED`` naming the type); the rest are written. A
        state equal to the agent's last stored one (``skip_unchanged``) is not written: its outcome names
        the stored document. (Actors write through the write stage: :meth:`prepare`, the stage, then
        :meth:`finish`.)
        """
        prepared = await self.prepare(uploads)
        if prepared.docs:
            try:
                result = await self._insert(prepared.docs)
            except BaseException:  # the caller was cancelled: the store may still take the write
                self.invalidate()
                self._forget(prepared.docs)
                raise
        else:  # nothing to store (unchanged states, or none encodable): a checkpoint all the same
            result = None
            await anyio.lowlevel.checkpoint()
        return self.finish(prepared, result)

    def finish(self, prepared: PreparedWrite, result: StoreOutcome | None, *, coalesced: int = 0,
               final: bool = True) -> list[UploadOutcome]:
        """The outcomes of a prepared write once its documents' write ended with ``result`` (``None``:
        there were none to write); logs it and remembers what was stored (see :meth:`write`). ``final``
        false: the caller keeps transient failures for a later try (logged as retries)."""
        outcomes = prepared.outcomes
        if prepared.docs:
            assert result is not None
            docs = prepared.docs
            refused = result.refused or {}
            if len(refused) < len(docs):
                self.log("upload", result, final=final, ids=[d.id for p, d in enumerate(docs) if p not in refused],
                         batch_size=len(docs) - len(refused), coalesced=coalesced)
            for position, alone in refused.items():
                self.log("upload", alone, final=final, ids=[docs[position].id], batch_size=1)
            # Each document's failure: its own where the store took the others, else the write's.
            failures = refused if result.status is Status.SUCCESS else dict.fromkeys(range(len(docs)), result)
            self._note_forks(docs, failures)
            self.invalidate()  # whatever the outcome: a write that failed may have stored something
            if result.status is Status.SUCCESS:
                # The ids the store answered: ours when it honours client ids, its own when it does not.
                ids = [str(i) for i in result.value] if len(result.value) == len(docs) else [d.id for d in docs]
                stored = [p for p in range(len(docs)) if p not in refused] if refused else range(len(docs))
                self._remember([docs[p] for p in stored], [ids[p] for p in stored])
                for position in stored:
                    outcomes[prepared.uploads_of_docs[position]] = UploadOutcome(Status.SUCCESS, ids[position])
                for position, alone in refused.items():
                    outcomes[prepared.uploads_of_docs[position]] = UploadOutcome(
                        alone.status, _message("upload", alone), alone.transient)
            else:
                failure = UploadOutcome(result.status, _message("upload", result), result.transient)
                for doc, index in zip(docs, prepared.uploads_of_docs, strict=True):
                    outcomes[index] = stored_before(doc) or failure
            self._forget([docs[p] for p in failures])
        for index, earlier in (prepared.same_as or {}).items():
            same = outcomes[earlier]
            assert same is not None
            outcomes[index] = UploadOutcome(same.status, same.value, same.transient, same.status is Status.SUCCESS)
        return [o for o in outcomes if o is not None]

    def _forget(self, docs: Sequence[EncodedDocument]) -> None:
        """The agents of ``docs``, whose write failed or was cancelled, may have a newer state stored than the one
        remembered (a timed-out write the store took): none is trusted as their last for ``skip_unchanged``
        (the previous state sent again was answered "unchanged" and not written, leaving the newer one latest)."""
        if self._last_stored:
            for doc in docs:
                if doc.agent is not None:
                    self._last_stored.pop(doc.agent, None)

    def _remember(self, docs: Sequence[EncodedDocument], ids: Sequence[str]) -> None:
        if not self.config.skip_unchanged:
            return
        if self._last_stored is None:
            self._last_stored = {}
        now = time.monotonic()
        for doc, doc_id in zip(docs, ids, strict=True):
            if doc.agent is not None and doc.state_hash is not None:
                self._last_stored[doc.agent] = (doc.state_hash, doc_id, now)

    async def upload(self, upload: StateUpload) -> tuple[Status, str]:
        """Store one state now; return ``(status, document id or error message)``."""
        (outcome,) = await self.write([upload])
        return outcome.status, outcome.value

    async def delete(self, doc_id: str) -> tuple[Status, str]:
        """Delete one of this session's state documents."""
        try:
            doc_id = _document_id(doc_id)
        except ValueError as exc:
            message = _refused(self.session_id, "delete", exc)
            await anyio.lowlevel.checkpoint()
            return Status.FAILED, message

        async def delete() -> str:
            store = self._store()
            doc = await store.get(doc_id)
            if not self._is_own_state(doc):
                raise DocumentNotFound(f"document {doc_id!r} is not a state of session {self.session_id!r}")
            await store.delete(doc_id)
            return f"deleted {doc_id}"

        try:
            result = await self._call("delete", delete, ids=[doc_id])
        finally:
            self.invalidate(doc_id)  # whatever the outcome, a cancelled call's too: the document may be gone
        return result.status, _message("delete", result)

    # -- reads ------------------------------------------------------------------------------------

    def _matches(self, doc: Document, query: Query) -> bool:
        """Whether ``doc`` is what ``query`` asked for: a store may ignore a filter, we never do."""
        tags = doc.get("tags")
        if doc.get("session_id") != self.session_id or not isinstance(tags, list):
            return False
        if not all(tag in tags for tag in query.tags):
            return False
        if len(query.tags) > 1:  # (STATE_TAG, agent): the agent's tag may also be one of ours, or another's
            content = doc.get("content")
            if isinstance(content, dict) and content.get("agent_name", query.tags[1]) != query.tags[1]:
                return False
        if query.created_after is not None or query.created_before is not None:
            created = _created(doc)
            if created is None or (query.created_after is not None and created < query.created_after) or (
                    query.created_before is not None and created > query.created_before):
                return False
        return True

    async def _query_states(self, query: Query) -> list[Document]:
        """The documents of ``query``, newest first, each checked against it and each once.

        Pages on when a store ignored a filter, or its order (an older document before a newer one:
        then every page is read and the documents sorted here); a short page ends the reading unless
        the store's ``total`` says more follow (a store that caps ``limit``), or it gave none (then an empty
        page ends it); so does a page that brings nothing new (a store that ignores ``skip``)."""
        store = self._store()
        kept: list[Document] = []
        seen: set[str | int] = set()
        # Our engines answer newest first; an HTTP server's order is learned from its first page of two
        # dated documents (until then a lookup asks two at least, so that a limit of 1 shows it too).
        http = store if isinstance(store, HttpStore) else None
        known = True if http is None else http.newest_first
        newest_first = known is not False
        compared = False
        previous: tuple[str, str] | None = None
        page_query = query if known is not None else replace(query, limit=max(query.limit, 2))
        while True:  # bounded by the store's pages (and by the call's deadline: TIMEOUT, never a short answer)
            result = await store.query(page_query)
            page = result.data
            fresh = 0
            for doc in page:
                doc_id = doc.get("id", doc.get("_id"))
                if isinstance(doc_id, str | int):
                    if doc_id in seen:
                        continue
                    seen.add(doc_id)
                fresh += 1
                dated = _newest_first_key(doc)
                if dated[0]:
                    if previous is not None and dated != previous:  # a full tie shows no order
                        compared = True
                        newest_first = newest_first and dated < previous
                    previous = dated
                if self._matches(doc, query):
                    kept.append(doc)
            last = (len(page) < page_query.limit and result.total is not None
                    and page_query.skip + len(page) >= result.total)
            if last or not fresh or (newest_first and len(kept) >= query.limit):
                break
            # Fewer than asked so far: the store sent documents we did not ask for, or not newest first, or
            # a shorter page than asked (a server's own maximum) while its total says more follow. Read
            # further, in large pages.
            page_query = replace(query, skip=page_query.skip + len(page), limit=MAX_QUERY_LIMIT)
        if http is not None and known is None and compared:
            http.newest_first = newest_first
        if not newest_first:
            kept.sort(key=_newest_first_key, reverse=True)
        return kept[: query.limit]

    async def download(self, limit: int = 10, agent_name: str | None = None,
                       start_date: str | datetime | None = None,
                       end_date: str | datetime | None = None) -> tuple[Status, list[Document]]:
        """This session's state documents, newest first (whole documents)."""
        try:
            query = self._state_query(limit, agent_name, start_date, end_date)
        except ValueError as exc:
            _refused(self.session_id, "download", exc)
            await anyio.lowlevel.checkpoint()
            return Status.FAILED, []
        key = ("download", query)
        cached = await self._cache_hit(key)
        if cached is not None:
            return Status.SUCCESS, cached
        invalidations = self._invalidations
        result = await self._call("download", lambda: self._query_states(query), limit=limit,
                                  agent_name=agent_name)
        if result.status is not Status.SUCCESS:
            return result.status, []
        self._cache_put(key, result.value, invalidations)
        return result.status, result.value

    def cached_restore(self, doc_id: str) -> dict[str, Any] | None:
        """The cached content of ``doc_id`` (a copy), or ``None`` when it is not cached (or names nothing)."""
        if self._cache is None:
            return None
        try:
            key = ("restore", _document_id(doc_id))
        except ValueError:
            return None  # :meth:`restore` refuses it
        cached: dict[str, Any] | None = self._cache_get(key)
        return cached

    async def restore(self, doc_id: str) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of one of this session's state documents (with its ``seq`` when the store has one)."""
        try:
            doc_id = _document_id(doc_id)
        except ValueError as exc:
            _refused(self.session_id, "restore", exc)
            await anyio.lowlevel.checkpoint()
            return Status.FAILED, None
        key = ("restore", doc_id)
        cached = await self._cache_hit(key)
        if cached is not None:
            return Status.SUCCESS, cached

        async def run() -> dict[str, Any]:
            doc = await self._store().get(doc_id)
            if not self._is_own_state(doc):
                raise DocumentNotFound(f"document {doc_id!r} is not a state of session {self.session_id!r}")
            content = _content(doc)
            if content is None:
                raise DocumentNotFound(f"document {doc_id!r} has no state content")
            return content

        invalidations = self._invalidations
        result = await self._call("restore", run, ids=[doc_id])
        if result.status is not Status.SUCCESS:
            return result.status, None
        self._cache_put(key, result.value, invalidations)
        return result.status, result.value

    async def restore_latest(self, agent_name: str | None = None) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of this session's newest state document (of ``agent_name``, if given)."""
        status, docs = await self.download(limit=1, agent_name=agent_name)
        if status is not Status.SUCCESS:
            return status, None
        content = _content(docs[0]) if docs else None
        if content is None:
            who = f" of agent {agent_name!r}" if agent_name else ""
            logger.warning("session_state.restore", status=Status.FAILED.value, session_id=self.session_id,
                           op="restore", error=f"no state{who} in this session")
            return Status.FAILED, None
        return Status.SUCCESS, content

    async def list_available(self, limit: int = 10,
                             agent_name: str | None = None) -> tuple[Status, list[dict[str, Any]]]:
        """Summaries ``{id, name, description, created_at, updated_at, tags}`` of this session's states."""
        status, docs = await self.download(limit=limit, agent_name=agent_name)
        summaries = [
            {"id": doc.get("_id", doc.get("id")), **{k: doc.get(k) for k in _SUMMARY_FIELDS}} for doc in docs
        ]
        return status, summaries


def _document_id(doc_id: object) -> str:
    """``doc_id`` as the text every store names documents by: a non-empty string, or a number where a service
    numbers its documents (``"_id": 7``); ``ValueError`` for anything else."""
    if isinstance(doc_id, str) and doc_id:
        return doc_id
    if type(doc_id) is int:
        return str(doc_id)
    raise ValueError(f"doc_id must be a non-empty string or a number, got {doc_id!r}")


def _newest_first_key(doc: Document) -> tuple[str, str]:
    """What orders documents the store did not sort: ``created_at``, then the state's own timestamp (to the
    microsecond), which tells apart documents a store dated in the same second."""
    content = doc.get("content")
    stamp = content.get("timestamp") if isinstance(content, dict) else None
    return _created(doc) or "", stamp if isinstance(stamp, str) else ""


def _created(doc: Document) -> str | None:
    """The document's ``created_at`` in the UTC form that compares as text, or ``None`` without one."""
    raw = doc.get("created_at")
    if not isinstance(raw, str):
        return None
    try:
        return normalize_timestamp(raw)
    except ValueError:
        return None


def _content(doc: Document) -> dict[str, Any] | None:
    """A state document's ``content``, with the document's ``seq`` beside it when the store gave one."""
    content = doc.get("content")
    if not isinstance(content, dict):
        return None
    seq = doc.get("seq")
    return {**content, "seq": seq} if isinstance(seq, int) else content


def _message(op: str, result: StoreOutcome) -> str:
    """What a caller is told: the value, or the error with the operation named for a timeout."""
    return f"{op} {result.value}" if result.status is Status.TIMEOUT else str(result.value)
