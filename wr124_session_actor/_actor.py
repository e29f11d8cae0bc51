"""The session actor: one anyio task per session that batches uploads and serializes store access."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import anyio
import structlog

from ._mailbox import Call, Mailbox, Reply, Upload
from ._ops import SessionOps, UploadOutcome
from ._status import SessionStateStatus

if TYPE_CHECKING:
    from ._document import StateUpload
    from ._outbox import Outbox
    from ._system import SystemCounters

__all__ = ["SessionActor"]

logger = structlog.get_logger("wr124_session_actor")
CLOSED_MESSAGE: Final = "the actor system is closed"
Status = SessionStateStatus


@dataclass(slots=True)
class _Pending:
    """An upload waiting in the batch, with every caller whose reply it will answer."""

    upload: StateUpload
    replies: list[Reply] = field(default_factory=list)
    coalesced: int = 0


class SessionActor:
    """Owns one session's mailbox and pending batch; see DESIGN.md "SessionActor".

    Uploads wait in the pending batch, flushed when the session has been quiet for ``debounce``,
    ``max_delay`` after the first pending upload, at ``max_batch`` documents, and before any read,
    flush or stop (read-your-writes). One batch is one store write; at most one write is in flight
    because the actor does one thing at a time.

    A batch that fails for a transient reason stays pending and is tried again after a backoff
    (the system's circuit breaker keeps a failing store from being hammered). While it waits, the
    batch is bounded: past ``max_batch`` a new upload replaces the oldest pending one of its agent.
    Callers awaiting such an upload get their reply when it is finally written (or their own call
    times out first).
    """

    __slots__ = (
        "_awaited",
        "_failures",
        "_first_at",
        "_last_at",
        "_on_exit",
        "_pending",
        "_pending_bound",
        "_retry_at",
        "busy",
        "counters",
        "mailbox",
        "ops",
        "outbox",
    )

    def __init__(self, ops: SessionOps, counters: SystemCounters, on_exit: Callable[[SessionActor], None],
                 outbox: Outbox | None = None) -> None:
        self.ops = ops
        self.counters = counters
        self.outbox = outbox
        self.mailbox = Mailbox(ops.config.mailbox_size)
        self._on_exit = on_exit
        self._pending: dict[str, _Pending] = {}
        self._first_at = 0.0
        self._last_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._awaited = False  # a caller awaits a pending upload: no reason to wait for quiet
        # While the store fails the batch is bounded; with an outbox the bound is the outbox's, so an
        # accepted keep="all" state is never coalesced away before the outbox itself is full.
        config = ops.config
        self._pending_bound = config.spool_max_documents if outbox is not None else config.max_batch
        #: True while the actor handles a message or writes (read by handles serving cache hits).
        self.busy = False

    @property
    def pending(self) -> int:
        """Uploads waiting in the batch."""
        return len(self._pending)

    async def run(self) -> None:
        """Serve the mailbox until it is closed or idle; always flush what is pending on the way out."""
        config = self.ops.config
        mailbox = self.mailbox
        try:
            while True:
                message = mailbox.get_nowait()
                if message is None:
                    if mailbox.closed:
                        break
                    if self._pending:
                        # Debounce coalesces fire-and-forget snapshots; an awaited upload's caller is
                        # blocked, so once the mailbox is empty its batch goes at once.
                        now = anyio.current_time()
                        due = self._retry_at if self._awaited else max(
                            self._retry_at, min(self._last_at + config.debounce, self._first_at + config.max_delay))
                        if due <= now or not await mailbox.wait(due - now):
                            await self._flush()
                        continue
                    if not await mailbox.wait(config.idle_timeout) and not mailbox.closed:
                        break  # idle: the next message starts a fresh actor
                    continue
                self.busy = True
                try:
                    await self._handle(message)
                finally:
                    self.busy = False
        finally:
            # Leave nothing behind, even when cancelled: take what is queued, write it under a shield
            # within shutdown_timeout, and answer every waiting caller.
            mailbox.close()
            self._on_exit(self)
            with anyio.CancelScope(shield=True), anyio.move_on_after(config.shutdown_timeout):
                await self._drain_on_exit()
            self._give_up()

    async def _handle(self, message: Upload | Call) -> None:
        if isinstance(message, Upload):
            self._add(message)
            if len(self._pending) >= self.ops.config.max_batch and anyio.current_time() >= self._retry_at:
                await self._flush()
            return
        if message.reply.abandoned:
            return  # its caller gave up (timed out or cancelled): do not keep the session busy for nobody
        failed_before = self.counters.failed
        await self._flush()
        if message.func is None:
            failed = self.counters.failed - failed_before
            if self._pending:
                message.reply.set((Status.FAILED, f"{len(self._pending)} uploads wait for the store to recover"))
            elif failed:
                message.reply.set((Status.FAILED, f"{failed} uploads were refused for good (see the log)"))
            else:
                message.reply.set((Status.SUCCESS, "flushed"))
        else:
            message.reply.set(await message.func(self.ops))

    def _add(self, message: Upload) -> None:
        upload = message.upload
        self.counters.coalesced += message.coalesced
        now = anyio.current_time()
        if not self._pending:
            self._first_at = now
        self._last_at = now
        keep_latest = self.ops.config.keep == "latest"
        key = upload.agent_name if keep_latest else upload.doc_id
        older = self._pending.pop(key, None) if keep_latest else None
        if older is None and len(self._pending) >= self._pending_bound:
            older = self._oldest_of(upload.agent_name)  # the store is failing: bound the batch
        pending = _Pending(upload, coalesced=message.coalesced)
        if older is not None:  # the newer state takes the older one's place
            pending.replies = older.replies
            pending.coalesced += older.coalesced + 1
            self.counters.coalesced += 1
            if self.outbox is not None:
                self.outbox.settle((older.upload.doc_id,))
        if message.reply is not None:
            pending.replies.append(message.reply)
            self._awaited = True
        self._pending[key] = pending

    def _oldest_of(self, agent_name: str) -> _Pending | None:
        for key, pending in self._pending.items():
            if pending.upload.agent_name == agent_name:
                return self._pending.pop(key)
        return None

    async def _flush(self) -> None:
        if not self._pending:
            return
        self.busy = True
        try:
            await self._write()
        finally:
            self.busy = False

    async def _write(self) -> None:
        batch = list(self._pending.items())
        self._awaited = False
        coalesced = sum(p.coalesced for _, p in batch)
        writes_before = self.ops.store_writes
        started = anyio.current_time()
        outcomes = await self.ops.write([p.upload for _, p in batch], coalesced=coalesced, final=False)
        if self.ops.store_writes != writes_before:
            written = [o for o in outcomes if o.status is Status.SUCCESS]
            status = Status.SUCCESS if written else next(o.status for o in outcomes)
            self.counters.observe_write(anyio.current_time() - started, len(batch), status)
        # Pending is cleared only once written: a flush cancelled mid-write is redone (ids make that
        # idempotent), and uploads that failed for a transient reason stay for the next try.
        self._pending = {key: p for (key, p), o in zip(batch, outcomes, strict=True)
                         if o.status is not Status.SUCCESS and o.transient}
        self._awaited = any(p.replies for p in self._pending.values())
        self._answer([(p, o) for (_, p), o in zip(batch, outcomes, strict=True)
                      if o.status is Status.SUCCESS or not o.transient])
        if self._pending:
            self._failures += 1
            backoff = min(self.ops.config.retry_backoff_max * 4, self.ops.config.retry_backoff * 2 ** self._failures)
            self._retry_at = anyio.current_time() + backoff * random.uniform(0.5, 1.0)
        else:
            self._failures = 0
            self._retry_at = 0.0

    def _answer(self, done: list[tuple[_Pending, UploadOutcome]]) -> None:
        counters = self.counters
        for pending, outcome in done:
            if outcome.status is Status.SUCCESS:
                counters.documents += 1
            else:
                counters.fail(outcome.status)
            for reply in pending.replies:
                reply.set((outcome.status, outcome.value))
        if self.outbox is not None:
            self.outbox.settle(p.upload.doc_id for p, _ in done)

    async def _drain_on_exit(self) -> None:
        calls: list[Call] = []
        while (message := self.mailbox.get_nowait()) is not None:
            if isinstance(message, Upload):
                self._add(message)
            else:
                calls.append(message)
        while True:
            await self._flush()
            if not self._pending:
                break
            await anyio.sleep(max(0.0, self._retry_at - anyio.current_time()))
        for call in calls:
            call.reply.set((Status.FAILED, CLOSED_MESSAGE))

    def _give_up(self) -> None:
        """Log (and answer) what could not be written before ``shutdown_timeout``; never drop silently."""
        if not self._pending:
            return
        batch = list(self._pending.values())
        self._pending.clear()
        self.counters.fail(Status.FAILED, len(batch))
        if self.outbox is not None:
            reason = "not written before shutdown_timeout; kept in the outbox for the next start"
        else:
            reason = "not written before shutdown_timeout; lost (set SESSION_STATE_SPOOL to keep it)"
        logger.warning("session_state.upload", status=Status.FAILED.value, session_id=self.ops.session_id,
                       op="upload", ids=[p.upload.doc_id for p in batch], batch_size=len(batch), error=reason)
        for pending in batch:
            for reply in pending.replies:
                reply.set((Status.FAILED, reason))
