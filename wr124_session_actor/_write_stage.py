"""The write stage: one per store, shared by every session actor of a system.

Actors hand it their due batches; it merges the batches of many sessions into one store write (one
transaction, one batch request), bounded by ``max_batch`` documents, and bounds the store writes in
flight. There are no worker tasks: the actor whose batch finds a free slot becomes the *leader* and
performs the write for every batch it takes from the queue, answering each through its callback. The
other actors hand their batch over and end their task (a session waiting for its write holds no
task); when a new write may start, the owner of the oldest queued batch is woken to lead it. So a
write always runs in some actor's task and inherits its cancel scope (the shielded flush on exit
included), and an idle stage costs nothing.

A new write starts while fewer than ``concurrency`` are in flight and either a full write's worth is
queued, or none is in flight (the store is idle) and the write is *paced*: the last write started at
least ``debounce`` ago (:data:`MAX_PACE` at most), or a caller waits for one of the queued batches (an
awaited upload, a flush, the final flush). Batches arriving while the store is busy therefore queue up
and leave together: under load, writes grow towards ``max_batch``; and sessions that trickle in (each
due on its own, a store faster than their arrival) share one write per pace instead of one write each.
The owner of the oldest queued batch stays to start a paced write when its time comes. Batches a
caller waits for (an awaited upload, the flush before an actor-mode read) are written before those
nobody waits for, each kind oldest first, so that a read is not queued behind thousands of submits.

Against a server without the batch endpoint merging saves no request (each document is a POST of its
own), so there a write starts whenever a slot is free, takes a few batches (``concurrency`` documents)
and writes and answers them one after another: the writes in flight are the POSTs in flight, and no
batch waits for another's POSTs. An HTTP store's first write finds out whether the endpoint exists
with its first ``concurrency`` documents alone (a single session's batch may hold hundreds), the only
write in flight until they are answered.

Time spent queued here is never a store failure: the store deadline starts with the write. A write that
fails for good and carried several batches is tried again batch by batch, and a batch of several
documents document by document, so that one refused document (a conflict, a rejected body) fails alone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain, islice
from time import monotonic
from typing import Final

import anyio
import structlog

from ._circuit import CircuitBreaker
from ._config import Config
from ._document import EncodedDocument, StateUpload, encode_documents
from ._exceptions import StoreError
from ._ops import StoreOutcome, call_store
from ._statistics import SystemCounters
from ._status import SessionStateStatus
from .stores import DocumentStore

__all__ = ["MAX_PACE", "Job", "WriteStage"]

logger = structlog.get_logger("wr124_session_actor")
Status = SessionStateStatus
#: Refusals that are about some document of a write (malformed, too large, a conflict), not the whole
#: store (auth, a missing route): the write is tried again in parts to find the refused document.
_DOCUMENT_REFUSALS: Final = frozenset({400, 409, 413, 422})
#: The longest pace (seconds) between two writes of an idle store that are neither full nor awaited: at
#: most 20 such writes a second, and no long wait for a batch handed over early (under pressure).
MAX_PACE: Final = 0.05


@dataclass(slots=True, eq=False)
class Job:
    """One session's batch waiting for (or in) a store write.

    ``done`` is called with the outcome, in the task that wrote it; ``wake`` is called when the job may
    lead a write and nobody waits on it (its actor handed it over and went idle). An ``urgent`` job has
    a caller waiting for it: it is written before the others, and an idle store writes it without pacing.
    """

    docs: list[EncodedDocument]
    done: Callable[[StoreOutcome], None] | None = None
    wake: Callable[[], None] | None = None
    urgent: bool = False
    result: StoreOutcome | None = None
    wakeup: anyio.Event | None = None

    def answer(self, result: StoreOutcome) -> None:
        self.result = result
        if self.done is not None:
            self.done(result)
        if self.wakeup is not None:
            self.wakeup.set()


class WriteStage:
    """Merges the due batches of many sessions into bounded store writes.

    Args:
        config: ``max_batch``, the call deadline and retries.
        store: returns the store (opened lazily).
        circuit: the store's circuit breaker.
        counters: the system's counters (store writes, write observers).
    """

    __slots__ = ("_circuit", "_closing", "_config", "_counters", "_encoding", "_in_flight", "_last_start",
                 "_queue", "_queued_docs", "_store", "_urgent", "concurrency")

    def __init__(self, config: Config, store: Callable[[], DocumentStore], circuit: CircuitBreaker,
                 counters: SystemCounters) -> None:
        self._config = config
        self._store = store
        self._circuit = circuit
        self._counters = counters
        #: Store writes in flight at most.
        self.concurrency = config.store_write_concurrency
        self._queue: deque[Job] = deque()  # jobs nobody waits for, oldest first
        self._urgent: deque[Job] = deque()  # jobs a caller waits for: written first, oldest first
        self._queued_docs = 0
        self._in_flight = 0
        self._last_start = -math.inf  # when the last write started (time.monotonic())
        self._encoding: anyio.Lock | None = None  # made on first use (in the event loop)
        self._closing = False

    @property
    def queued(self) -> int:
        """Session batches waiting for a write."""
        return len(self._urgent) + len(self._queue)

    def _jobs(self) -> Iterator[Job]:
        """The queued jobs in the order they are written: those a caller waits for first."""
        return chain(self._urgent, self._queue)

    def _may_lead(self) -> bool:
        """Whether a new write (of the oldest queued batches) may start now."""
        if not (self._urgent or self._queue) or self._in_flight >= self.concurrency:
            return False
        if self._in_flight and self._batch_support() is None:
            return False  # one write finds out whether the server has the batch endpoint
        if self._queued_docs >= self._config.max_batch or self._posts_singly():
            return True
        return self._in_flight == 0 and (bool(self._urgent) or self._closing or self._paced_at() <= monotonic())

    def _paced_at(self) -> float:
        """When an idle store may start a write that is neither full nor urgent."""
        return self._last_start + min(self._config.debounce, MAX_PACE)

    def _pacing(self) -> bool:
        """Whether the store is idle and its next write waits for its pace (its oldest job's owner times it)."""
        return bool(self._urgent or self._queue) and self._in_flight == 0 and not self._may_lead()

    def _batch_support(self) -> bool | None:
        """Whether the store writes many documents in one request: ``False`` for a server without the
        batch endpoint (a POST per document), ``None`` until an HTTP store's first write finds out."""
        return getattr(self._store(), "batch_supported", True)

    def _posts_singly(self) -> bool:
        """Whether the store sends one request per document (a server without the batch endpoint)."""
        return self._batch_support() is False

    def _poke(self) -> None:
        """When new writes may start, wake the waiters (or actors) of the oldest queued jobs: one per
        write that may start, so that two slots freed before a woken leader runs are both used. When
        the next write waits for its pace, wake the oldest job's owner to time it."""
        if self._may_lead():
            free = self.concurrency - self._in_flight
            writes = self.queued if self._posts_singly() else -(-self._queued_docs // self._config.max_batch)
            count = min(free, writes)
        elif self._pacing():
            count = 1
        else:
            return
        for job in islice(self._jobs(), count):
            if job.wakeup is not None:
                job.wakeup.set()
            elif job.wake is not None:
                job.wake()

    def submit(self, docs: list[EncodedDocument], done: Callable[[StoreOutcome], None],
               wake: Callable[[], None], *, urgent: bool = False) -> Job:
        """Queue one session's batch (all or none) without waiting: ``done`` gets its outcome, and
        ``wake`` is called when it may lead a write and nobody waits (see :meth:`wait`). ``urgent``: a
        caller waits for it (no pacing)."""
        job = Job(docs, done, wake, urgent)
        self._enqueue(job)
        return job

    def _enqueue(self, job: Job, *, first: bool = False) -> None:
        queue = self._urgent if job.urgent else self._queue
        if first:
            queue.appendleft(job)
        else:
            queue.append(job)
        self._queued_docs += len(job.docs)

    def hurry(self, job: Job) -> None:
        """A caller now waits for ``job``: if it is queued among the batches nobody waits for, it moves to
        the end of those a caller waits for."""
        if not job.urgent and job.result is None:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # in a write already
            job.urgent = True
            self._urgent.append(job)

    def close(self) -> None:
        """The system is closing: every queued batch is awaited (no pacing); wake the owners of the
        writes that may start (each write's end wakes the next ones, until the queue is empty)."""
        self._closing = True
        self._poke()

    def withdraw(self, job: Job) -> None:
        """Forget ``job``'s owner, who gave it up at the closing deadline: should a write still take it, its
        answer goes to nobody, and nobody is woken for it. (It stays queued: past the deadline no write
        starts, and taking it out of the queue would cost a scan for each of thousands of sessions.)"""
        job.done = job.wake = None

    def discard(self) -> None:
        """The system has closed, and every owner has given up its batch: forget what is still queued (so the
        ``write_queue`` gauge reads 0)."""
        self._urgent.clear()
        self._queue.clear()
        self._queued_docs = 0

    def needs_owner(self, job: Job) -> bool:
        """Whether ``job``'s owner should stay with it (:meth:`wait`) rather than leave it to the stage:
        it is not written yet, and a new write may start now (the owner leads it), or the store is idle
        and ``job`` is the oldest queued (the owner starts the paced write in time).

        Its own batch may already be in another leader's write: two slots freed at once wake two owners,
        and the one that runs first takes the oldest batch, maybe the other's."""
        return job.result is None and (self._may_lead() or (self._pacing() and next(self._jobs()) is job))

    async def wait(self, job: Job) -> StoreOutcome:
        """Wait until ``job`` is written, leading writes (of the oldest queued batches) while one may start,
        and starting the paced write of an idle store when its time comes."""
        try:
            while job.result is None:
                if self._may_lead():
                    await self._lead()
                    continue
                job.wakeup = anyio.Event()
                with anyio.move_on_after(self._paced_at() - monotonic() if self._pacing() else math.inf):
                    await job.wakeup.wait()
        finally:
            job.wakeup = None  # cancelled while queued, the job stays: the stage wakes its actor later
        assert job.result is not None
        return job.result

    async def encode(self, uploads: Sequence[StateUpload]) -> list[EncodedDocument | str]:
        """Encode a due batch; long encodings (those that yield to the loop) take turns across the system."""
        if self._encoding is None:
            self._encoding = anyio.Lock()
        return await encode_documents(uploads, self._encoding)

    def _take(self) -> list[Job]:
        """Take queued batches up to ``max_batch`` documents (at least one batch); up to ``concurrency``
        for single POSTs, and for an HTTP store's first write, which finds out whether they are."""
        jobs: list[Job] = []
        count = 0
        limit = self._config.max_batch if self._batch_support() else self.concurrency
        for queue in (self._urgent, self._queue):
            while queue and (not jobs or count + len(queue[0].docs) <= limit):
                job = queue.popleft()
                count += len(job.docs)
                jobs.append(job)
        self._queued_docs -= count
        return jobs

    async def _lead(self) -> None:
        jobs = self._take()
        self._in_flight += 1
        self._last_start = monotonic()
        try:
            await self._write(jobs)
        finally:
            self._in_flight -= 1
            unanswered = [job for job in jobs if job.result is None]
            for job in reversed(unanswered):  # this leader was cancelled mid-write: hand them back, in order
                self._enqueue(job, first=True)
            self._poke()

    async def _write(self, jobs: list[Job]) -> None:
        if len(jobs) > 1 and self._posts_singly():
            # Merging saves no request: each batch is written, and answered, in turn (the writes in flight
            # are then the store's POSTs in flight, and none waits past its deadline for a turn).
            for job in jobs:
                await self._write([job])
            return
        docs = [doc for job in jobs for doc in job.docs]
        if self._batch_support() is None and len(docs) > self.concurrency:
            # The store's first write finds out whether the server has the batch endpoint with its first
            # documents alone (one request's deadline); then other writes may start, and the rest goes with
            # the deadline the answer gives it (a POST each, for a server without the endpoint).
            result = await self._insert(docs[: self.concurrency])
            self._poke()
            if result.status is Status.SUCCESS:
                rest = await self._insert(docs[self.concurrency :])
                result = rest if rest.status is not Status.SUCCESS else StoreOutcome(
                    Status.SUCCESS, [*result.value, *rest.value], attempts=result.attempts + rest.attempts,
                    duration=result.duration + rest.duration)
        else:
            result = await self._insert(docs)
        if result.status_code in _DOCUMENT_REFUSALS and len(docs) > 1:
            # Refused for good: find what was refused, so that the rest is not lost with it.
            if len(jobs) > 1:
                for job in jobs:
                    await self._write([job])
                return
            await self._write_singly(jobs[0])
            return
        position = 0
        for job in jobs:
            count = len(job.docs)
            if result.status is Status.SUCCESS:
                ids = result.value[position : position + count] if len(result.value) == len(docs) else \
                    [d.id for d in job.docs]
                job.answer(StoreOutcome(Status.SUCCESS, ids, attempts=result.attempts, duration=result.duration))
            else:
                job.answer(result)
            position += count

    async def _insert(self, docs: list[EncodedDocument]) -> StoreOutcome:
        """One store write of ``docs``, with retries, observed."""
        store = self._store
        sessions = sorted({doc.session_id for doc in docs})

        def on_retry(attempt: int, error: StoreError, delay: float) -> None:
            logger.debug("session_state.retry", op="upload", session_ids=sessions, attempt=attempt, error=str(error),
                         delay_s=round(delay, 3), batch_size=len(docs), ids=[d.id for d in docs])

        result = await call_store(self._config, self._circuit, store, partial(_insert, store, docs),
                                  on_retry=on_retry, timeout=self._deadline(len(docs)))
        self._counters.observe_write(result.duration, len(docs), result.status)
        return result

    def _deadline(self, documents: int) -> float:
        """The store deadline of a write: ``timeout`` per request it takes.

        A batch-capable store takes a merged write in one request (per body-size chunk); a server
        without the batch endpoint takes one POST per document (a session's in order), so such a write
        gets the timeout once per document. (An HTTP store's first request, which finds out, carries at
        most ``concurrency`` documents, posted in parallel if need be: one round trip.)
        """
        requests = documents if self._posts_singly() else 1
        return self._config.timeout * requests

    async def _write_singly(self, job: Job) -> None:
        """Write a refused batch one document at a time: a document the store refuses (or that fails) fails
        alone, with its own outcome (a transient one is tried again later), and the others are answered as
        stored."""
        ids: list[str] = []
        refused: dict[int, StoreOutcome] = {}
        store = self._store
        for position, doc in enumerate(job.docs):
            single = await call_store(self._config, self._circuit, store, partial(_insert, store, [doc]))
            self._counters.observe_write(single.duration, 1, single.status)
            if single.status is Status.SUCCESS:
                ids.extend(single.value)
            else:
                refused[position] = single
                ids.append(doc.id)
        job.answer(StoreOutcome(Status.SUCCESS, ids, refused=refused or None))


async def _insert(store: Callable[[], DocumentStore], docs: list[EncodedDocument]) -> list[str]:
    return await store().insert_many(docs)
