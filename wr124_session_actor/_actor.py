"""The session actor: one anyio task per session that batches uploads and serializes store access."""

from __future__ import annotations

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
    from ._system import SystemCounters

__all__ = ["SessionActor"]

logger = structlog.get_logger("wr124_session_actor")
CLOSED_MESSAGE: Final = "the actor system is closed"


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
    """

    __slots__ = ("_first_at", "_last_at", "_on_exit", "_pending", "counters", "mailbox", "ops")

    def __init__(self, ops: SessionOps, counters: SystemCounters, on_exit: Callable[[SessionActor], None]) -> None:
        self.ops = ops
        self.counters = counters
        self.mailbox = Mailbox(ops.config.mailbox_size)
        self._on_exit = on_exit
        self._pending: dict[str, _Pending] = {}
        self._first_at = 0.0
        self._last_at = 0.0

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
                        now = anyio.current_time()
                        due = min(self._last_at + config.debounce, self._first_at + config.max_delay)
                        if due <= now or not await mailbox.wait(due - now):
                            await self._flush()
                        continue
                    if not await mailbox.wait(config.idle_timeout) and not mailbox.closed:
                        break  # idle: the next message starts a fresh actor
                    continue
                await self._handle(message)
        finally:
            # Leave nothing behind, even when cancelled: take what is queued, write it under a shield
            # within shutdown_timeout, and answer every waiting caller.
            mailbox.close()
            self._on_exit(self)
            with anyio.CancelScope(shield=True), anyio.move_on_after(config.shutdown_timeout):
                await self._drain_on_exit()
            self._fail_pending("could not be written before shutdown_timeout")

    async def _handle(self, message: Upload | Call) -> None:
        if isinstance(message, Upload):
            self._add(message)
            if len(self._pending) >= self.ops.config.max_batch:
                await self._flush()
            return
        await self._flush()
        if message.func is None:
            message.reply.set((SessionStateStatus.SUCCESS, "flushed"))
        else:
            message.reply.set(await message.func(self.ops))

    def _add(self, message: Upload) -> None:
        upload = message.upload
        self.counters.coalesced += message.coalesced
        now = anyio.current_time()
        if not self._pending:
            self._first_at = now
        self._last_at = now
        key = upload.agent_name if self.ops.config.keep == "latest" else upload.doc_id
        older = self._pending.get(key)
        pending = _Pending(upload, coalesced=message.coalesced)
        if older is not None:  # keep="latest": the newer state takes the older one's place
            pending.replies = older.replies
            pending.coalesced += older.coalesced + 1
            self.counters.coalesced += 1
        if message.reply is not None:
            pending.replies.append(message.reply)
        self._pending[key] = pending

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        coalesced = sum(p.coalesced for p in batch)
        writes_before = self.ops.store_writes
        outcomes = await self.ops.write([p.upload for p in batch], coalesced=coalesced)
        self.counters.store_writes += self.ops.store_writes - writes_before
        # Cleared only once written: a flush cancelled mid-write is redone (ids make that idempotent).
        self._pending.clear()
        self._answer(batch, outcomes)

    def _answer(self, batch: list[_Pending], outcomes: list[UploadOutcome]) -> None:
        counters = self.counters
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome.status is SessionStateStatus.SUCCESS:
                counters.documents += 1
            else:
                counters.failed += 1
            for reply in pending.replies:
                reply.set((outcome.status, outcome.value))

    async def _drain_on_exit(self) -> None:
        calls: list[Call] = []
        while (message := self.mailbox.get_nowait()) is not None:
            if isinstance(message, Upload):
                self._add(message)
            else:
                calls.append(message)
        await self._flush()
        for call in calls:
            call.reply.set((SessionStateStatus.FAILED, CLOSED_MESSAGE))

    def _fail_pending(self, reason: str) -> None:
        if not self._pending:
            return
        batch = list(self._pending.values())
        self._pending.clear()
        self.counters.failed += len(batch)
        logger.warning("session_state.upload", status=SessionStateStatus.FAILED.value,
                       session_id=self.ops.session_id, op="upload", ids=[p.upload.doc_id for p in batch],
                       batch_size=len(batch), error=reason)
        for pending in batch:
            for reply in pending.replies:
                reply.set((SessionStateStatus.FAILED, reason))
