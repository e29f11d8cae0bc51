"""The session actor: one session's mailbox and pending batch, and the task that serves them."""

from __future__ import annotations

import math
from functools import partial
from time import monotonic
from typing import Final, Protocol

import anyio
import structlog

from ._batching import PendingBatch, PendingUpload
from ._document import StateUpload
from ._mailbox import Call, Mailbox, Message, Reply, Upload
from ._ops import PreparedWrite, SessionOps, StoreOutcome, UploadOutcome, stored_before
from ._outbox import Outbox
from ._statistics import SystemCounters
from ._status import SessionStateStatus
from ._write_stage import Job, WriteStage

__all__ = ["CLOSED_MESSAGE", "ActorHost", "SessionActor"]

logger = structlog.get_logger("wr124_session_actor")
CLOSED_MESSAGE: Final = "the actor system is closed"
Status = SessionStateStatus


class ActorHost(Protocol):
    """Where actors run: the runtime that starts their tasks and forgets them when idle."""

    def start(self, actor: SessionActor) -> None:
        """Start ``actor.run()`` in a task (the actor has a message and no running task)."""
        ...

    def on_idle(self, actor: SessionActor) -> None:
        """``actor.run()`` ended: nothing queued, and nothing pending but perhaps a batch in the stage."""
        ...

    def rest(self, actor: SessionActor) -> None:
        """``actor`` has no task, and its batch in the stage was answered with nothing left to do."""
        ...


class SessionActor:
    """Owns one session's mailbox and pending batch; see DESIGN.md "SessionActor".

    Times are ``time.monotonic()`` (only differences are passed to anyio), which is cheaper per call than
    asking the running event loop.

    Messages are handled in order by :meth:`run`, a task that runs only while there is work: the
    first message starts it (through ``start``), and it ends once the mailbox is empty and nothing is
    pending, or once its due batch is handed to the shared :class:`WriteStage` (which answers it through
    a callback, or wakes the actor to lead its write). An idle actor is then a few small objects, which
    the system forgets after ``idle_timeout`` (its read cache goes with it). Uploads wait in a
    :class:`PendingBatch` until due; at most one batch per session is in the stage at a time, so a
    session's writes stay in order.

    Args:
        ops: the session's core operations.
        counters: the system's counters.
        stage: the write stage of the store.
        host: starts :meth:`run` when a message arrives at an idle actor, and hears when it ends.
        outbox: the durable outbox, if the system has one.
    """

    __slots__ = ("_batch", "_deadline", "_failed", "_host", "_job", "_stage", "busy", "counters", "mailbox", "ops",
                 "outbox", "running")

    def __init__(self, ops: SessionOps, counters: SystemCounters, stage: WriteStage, host: ActorHost,
                 outbox: Outbox | None = None) -> None:
        config = ops.config
        self.ops = ops
        self.counters = counters
        self.outbox = outbox
        self.mailbox = Mailbox(config.mailbox_size, counters)
        self._stage = stage
        self._host = host
        # While the store fails the batch is bounded; with an outbox the bound is the outbox's, so an
        # accepted keep="all" state is never coalesced away before the outbox itself is full.
        self._batch: PendingBatch[Reply] = PendingBatch(
            config, bound=config.spool_max_documents if outbox is not None else config.max_batch)
        #: The batch handed to the write stage and not answered yet (at most one per session).
        self._job: Job | None = None
        #: True while the task runs (or is about to): a message then needs no new start.
        self.running = False
        #: True while the actor handles a message or writes (read by handles serving cache hits).
        self.busy = False
        #: When the last writes must end (``anyio.current_time()``), once the system closes.
        self._deadline = math.inf
        #: This session's uploads answered with a failure (what a flush reports of its own session).
        self._failed = 0

    @property
    def pending(self) -> int:
        """Uploads waiting in the batch."""
        return len(self._batch)

    def _wake(self) -> None:
        if not self.running:
            self.running = True
            self._host.start(self)

    def close(self, deadline: float) -> None:
        """Refuse new messages; the task writes what is held by ``deadline`` (``anyio.current_time()``) and
        ends. A batch in the stage needs no task: the stage wakes its owner to lead a write, answers it
        in the task that writes it, and :meth:`give_up` gives it up if nobody did by the deadline. (A
        task is started for messages queued behind it, which only it can drain.)"""
        self._deadline = deadline
        self.mailbox.close()
        if self._job is not None and len(self.mailbox):
            self._wake()

    def submit(self, upload: StateUpload) -> StateUpload | None:
        """Queue a fire-and-forget upload (coalescing past the bound); return the upload it replaced."""
        replaced = self.mailbox.submit(upload)
        if self._job is None:  # else it waits in the mailbox: the stage's answer wakes the actor
            self._wake()
        return replaced

    def put_nowait(self, message: Message) -> bool:
        """Queue a message if there is room; return whether it was queued."""
        queued = self.mailbox.put_nowait(message)
        if queued:
            self._wake()
        return queued

    async def put(self, message: Message) -> None:
        """Queue a message for the actor, waiting for room."""
        await self.mailbox.put(message)
        self._wake()

    async def run(self) -> None:
        """Serve the mailbox until it is empty with nothing pending, or closed; never leave work behind.

        A due batch is handed to the write stage, which answers it through :meth:`_written` in the task
        that writes it; meanwhile this task ends unless it may lead that write itself (a session
        waiting for its write then holds no task). Closed or cancelled, it waits for that answer.
        """
        mailbox = self.mailbox
        batch = self._batch
        stage = self._stage
        parked = False
        try:
            if self.outbox is not None:  # what an earlier run left of this session is stored first
                await self.outbox.wait_replayed(self.ops.session_id)
            while not mailbox.closed:
                if self._job is not None:
                    await self._make_room()
                message = mailbox.get_nowait()
                if message is not None:
                    self.busy = True
                    try:
                        await self._handle(message)
                    finally:
                        self.busy = False
                    continue
                job = self._job
                if job is not None:  # a batch in the stage: lead (or time) its write, or leave it to the stage
                    if stage.needs_owner(job):
                        await stage.wait(job)
                        continue
                    parked = True
                    return
                if not batch:
                    return
                now = monotonic()
                # A full store write's worth pending across the system: waiting for quiet gains nothing.
                due = batch.retry_at if self.counters.under_pressure else batch.due_at()
                # Until due, queued snapshots need no wake-up each: the actor reads them (and when each
                # came) once the wait ends, or sooner when enough are queued to fill a batch.
                quiet = min(self.ops.config.max_batch - len(batch), mailbox.max_size // 2)
                if due <= now or not await mailbox.wait(due - now, quiet_uploads=max(1, quiet)):
                    await self._hand_over()
        finally:
            # Closed or cancelled: take what is queued, write it under a shield by the system's closing
            # deadline (within shutdown_timeout when cancelled otherwise), and answer every waiting
            # caller. Nothing to do (the common case) costs no cancel scope.
            try:
                if not parked and (batch or len(mailbox)):
                    deadline = self._deadline
                    if deadline == math.inf:
                        deadline = anyio.current_time() + self.ops.config.shutdown_timeout
                    if deadline > anyio.current_time():  # started past the deadline: nothing to wait for
                        with anyio.CancelScope(shield=True, deadline=deadline):
                            await self._drain()
                    self.give_up()
            finally:
                self.running = False
                self._host.on_idle(self)

    async def _handle(self, message: Message) -> None:
        if isinstance(message, Upload):
            self._add(message)
            if self._batch.full and self._job is None and monotonic() >= self._batch.retry_at:
                await self._hand_over()
            return
        if message.reply.abandoned:
            return  # its caller gave up (timed out or cancelled): do not keep the session busy for nobody
        failed_before = self._failed
        await self._flush()
        if message.func is not None:
            message.reply.set(await message.func(self.ops))
        elif self._batch:
            message.reply.set((Status.FAILED, f"{len(self._batch)} uploads wait for the store to recover"))
        elif failed := self._failed - failed_before:
            message.reply.set((Status.FAILED, f"{failed} uploads were refused for good (see the log)"))
        else:
            message.reply.set((Status.SUCCESS, "flushed"))

    def _add(self, message: Upload) -> None:
        batch = self._batch
        before = len(batch)
        replaced, coalesced = batch.add(message.upload, message.reply, message.coalesced, message.at or monotonic())
        self.counters.pending += len(batch) - before
        self.counters.coalesced += coalesced
        if replaced is not None and self.outbox is not None:
            self.outbox.settle((replaced.doc_id,))

    async def _make_room(self) -> None:
        """While the batch in the stage fills the bound, wait for it (leading its write when it may):
        taking more uploads now would coalesce them."""
        if self._job is not None and self._batch.full:
            await self._stage.wait(self._job)

    async def _hand_over(self, *, urgent: bool = False) -> None:
        """Encode the due batch and queue it in the write stage (answered later, by :meth:`_written`);
        ``urgent`` (or a caller awaiting one of its uploads): the stage writes it without pacing."""
        batch = self._batch
        if not batch or self._job is not None:
            return
        items = batch.take()
        stage = self._stage
        prepared = await self.ops.prepare([p.upload for p in items], stage.encode)
        coalesced = sum(p.coalesced for p in items)
        if not prepared.docs:  # nothing to write (unchanged states, or none could be encoded)
            self._settle(items, self.ops.finish(prepared, None, coalesced=coalesced, final=False))
            return
        self._job = stage.submit(prepared.docs, partial(self._written, items, prepared, coalesced), self._wake,
                                 urgent=urgent or batch.awaited)

    def _written(self, items: list[PendingUpload[Reply]], prepared: PreparedWrite, coalesced: int,
                 result: StoreOutcome) -> None:
        """The stage's answer to the batch handed over (called in the task that wrote it)."""
        self._job = None
        self._settle(items, self.ops.finish(prepared, result, coalesced=coalesced, final=False))
        if self.running:
            return
        if self._batch or len(self.mailbox):
            self._wake()  # a retry to schedule, or uploads that came meanwhile
        else:
            self._host.rest(self)

    def _settle(self, items: list[PendingUpload[Reply]], outcomes: list[UploadOutcome]) -> None:
        before = len(self._batch)
        done = self._batch.settle(items, outcomes, monotonic())
        self.counters.pending -= before - len(self._batch)
        self._answer(done)

    async def _flush(self) -> None:
        """Write everything pending now and wait for it: the batch in the stage, then the rest, until a write
        fails (the batch then waits its backoff) or nothing is left (an agent's uploads after a continuation
        go in a write of their own)."""
        if self._job is not None:
            self._stage.hurry(self._job)
            await self._stage.wait(self._job)
        batch = self._batch
        while batch:
            before = len(batch)
            await self._hand_over(urgent=True)  # now, backoff or not
            if self._job is not None:
                await self._stage.wait(self._job)
            elif len(batch) == before:
                break
            if monotonic() < batch.retry_at:
                break  # that write failed: the batch waits its backoff

    def _answer(self, done: list[tuple[PendingUpload[Reply], UploadOutcome]]) -> None:
        counters = self.counters
        for pending, outcome in done:
            if outcome.unchanged:
                counters.unchanged += 1
            elif outcome.status is Status.SUCCESS:
                counters.documents += 1
            else:
                counters.fail(outcome.status)
                self._failed += 1
            for reply in pending.replies:
                reply.set((outcome.status, outcome.value))
        if self.outbox is not None:
            self.outbox.settle(p.upload.doc_id for p, _ in done)

    async def _drain(self) -> None:
        """Write what is queued and pending, and what comes meanwhile (a cancelled system's caller may still
        save a state in a shielded cleanup), until nothing is left; answer the calls as closed."""
        calls: list[Call] = []
        while True:
            while (message := self.mailbox.get_nowait()) is not None:
                if isinstance(message, Upload):
                    self._add(message)
                    if self._batch.full and monotonic() >= self._batch.retry_at:  # as while running
                        await self._flush()
                else:
                    calls.append(message)
                await self._make_room()
            if self._job is not None:
                await self._stage.wait(self._job)
            elif self._batch:
                await anyio.sleep(max(0.0, self._batch.retry_at - monotonic()))
                await self._flush()
            elif not len(self.mailbox):
                break
        for call in calls:
            call.reply.set((Status.FAILED, CLOSED_MESSAGE))

    def give_up(self) -> None:
        """Log (and answer) what could not be written before ``shutdown_timeout``; never drop silently.

        Called by the actor's task as it ends closed, and by the runtime once the system has closed for
        an actor whose batch the deadline left in the stage (it had no task). Uploads still queued join
        the batch given up; calls still queued are answered."""
        while (message := self.mailbox.get_nowait()) is not None:
            if isinstance(message, Upload):
                self._add(message)
            else:
                message.reply.set((Status.FAILED, CLOSED_MESSAGE))
        if self._job is not None:  # still in the stage: not to be written now, nor settled twice
            self._stage.withdraw(self._job)
            self._job = None
        last_error = self._batch.last_error
        left = self._batch.clear()
        self.counters.pending -= len(left)
        # Those a write stored before it failed part-way are stored: answered so, not lost.
        stored: list[tuple[PendingUpload[Reply], UploadOutcome]] = []
        unwritten: list[PendingUpload[Reply]] = []
        for pending in left:
            if (outcome := stored_before(pending.upload.encoded)) is not None:
                stored.append((pending, outcome))
            else:
                unwritten.append(pending)
        if stored:
            self._answer(stored)
        left = unwritten
        if not left:
            return
        self.counters.fail(Status.FAILED, len(left))
        if self.outbox is not None and self.outbox.sync_error is not None:
            reason = (f"not written before shutdown_timeout; the spool fails too ({self.outbox.sync_error}): kept for"
                      " the next start only if its last sync works (else logged as lost)")
        elif self.outbox is not None:
            reason = "not written before shutdown_timeout; kept in the outbox for the next start"
        else:
            reason = "not written before shutdown_timeout; lost (set SESSION_STATE_SPOOL to keep it)"
        if last_error is not None:  # the cause, which only the debug log's retries said
            reason += f"; its last write failed: {last_error}"
        logger.warning("session_state.upload", status=Status.FAILED.value, session_id=self.ops.session_id,
                       op="upload", ids=[p.upload.doc_id for p in left], batch_size=len(left), error=reason)
        for pending in left:
            for reply in pending.replies:
                reply.set((Status.FAILED, reason))
