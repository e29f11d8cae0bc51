"""A session actor's mailbox: a bounded FIFO whose timed receive never loses a message.

Why not ``anyio.create_memory_object_stream``: a receive that times out under asyncio can be
cancelled after a sender already handed it an item, and that item is gone. Here messages stay in a
deque and the event only wakes the consumer, so a timed-out wait loses nothing. The mailbox also
coalesces: past its bound, a fire-and-forget upload replaces the queued upload of the same agent
instead of growing the queue (memory stays bounded by ``max_size`` plus one upload per agent).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from time import monotonic
from typing import Any

import anyio
import anyio.lowlevel

from ._document import StateUpload
from ._statistics import SystemCounters

__all__ = ["Call", "Mailbox", "Message", "Reply", "Upload"]


class Reply:
    """A one-shot slot a caller awaits and the actor fills."""

    __slots__ = ("_event", "abandoned", "value")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self.value: Any = None
        #: The caller stopped waiting (timed out or cancelled): a read or delete need not run any more.
        self.abandoned = False

    def set(self, value: object) -> None:
        """Fill the slot and wake the caller (a second call is ignored)."""
        if not self._event.is_set():
            self.value = value
            self._event.set()

    def is_set(self) -> bool:
        """Whether the value has been given."""
        return self._event.is_set()

    async def wait(self) -> Any:
        """Wait for the value."""
        await self._event.wait()
        return self.value


@dataclass(slots=True)
class Upload:
    """An upload message; ``coalesced`` counts older uploads it replaced while queued, ``at`` is when it
    was queued (``time.monotonic()``; 0 when unknown)."""

    upload: StateUpload
    reply: Reply | None
    coalesced: int = 0
    at: float = 0.0


@dataclass(slots=True)
class Call:
    """Run ``func`` with the session's ops after flushing pending uploads; ``func`` None is a plain flush."""

    func: Callable[[Any], Awaitable[Any]] | None
    reply: Reply


Message = Upload | Call


class Mailbox:
    """A bounded FIFO of messages for one consumer."""

    __slots__ = ("_by_agent", "_items", "_load", "_quiet_until", "_readable", "_writable", "closed", "max_size")

    def __init__(self, max_size: int, load: SystemCounters | None = None) -> None:
        self.max_size = max_size
        self._load = load  # the system's counters: uploads queued everywhere, and pressure
        self._items: deque[Message] | None = None  # made on first use: idle sessions stay small
        # The newest queued fire-and-forget upload of each agent: what an overflow coalesces into (made
        # when the mailbox first holds several messages: a session's first message needs none).
        self._by_agent: dict[str, Upload] | None = None
        self._readable: anyio.Event | None = None
        self._writable: anyio.Event | None = None
        self._quiet_until = 0
        self.closed = False

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def _append(self, message: Message) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(message)
        load = self._load
        if isinstance(message, Upload):
            if load is not None:
                load.queued_uploads += 1
            if message.reply is None:
                if self._by_agent is None:
                    self._by_agent = {}
                self._by_agent[message.upload.agent_name] = message
        readable = self._readable
        # A consumer waiting for quiet sleeps through fire-and-forget uploads until enough are queued
        # here, or a full store write's worth waits across the system.
        if readable is not None and (message.__class__ is not Upload or message.reply is not None
                                     or len(self._items) >= self._quiet_until
                                     or (load is not None and load.under_pressure)):
            readable.set()
            self._readable = None

    def put_nowait(self, message: Message) -> bool:
        """Queue ``message`` if there is room; return whether it was queued."""
        if self.closed:
            raise anyio.ClosedResourceError
        if len(self) >= self.max_size:
            return False
        self._append(message)
        return True

    def submit(self, upload: StateUpload) -> StateUpload | None:
        """Queue a fire-and-forget upload, coalescing when full; return the upload it replaced, if any."""
        if self.closed:
            raise anyio.ClosedResourceError
        if len(self) >= self.max_size and self._by_agent is not None:
            queued = self._by_agent.get(upload.agent_name)
            if queued is not None:
                replaced, queued.upload = queued.upload, upload
                queued.coalesced += 1
                queued.at = monotonic()
                return replaced
        self._append(Upload(upload, None, at=monotonic()))
        return None

    async def put(self, message: Message) -> None:
        """Queue ``message``, waiting for room."""
        await anyio.lowlevel.checkpoint()
        while not self.put_nowait(message):
            if self._writable is None:
                self._writable = anyio.Event()
            await self._writable.wait()

    def get_nowait(self) -> Message | None:
        """Take the oldest message, or ``None`` when empty."""
        if not self._items:
            return None
        message = self._items.popleft()
        if not self._items:
            self._items = None  # an idle session keeps no queue
        if isinstance(message, Upload):
            if self._load is not None:
                self._load.queued_uploads -= 1
            by_agent = self._by_agent
            if by_agent and by_agent.get(message.upload.agent_name) is message:
                del by_agent[message.upload.agent_name]
        if self._writable is not None:
            self._writable.set()
            self._writable = None
        return message

    async def wait(self, timeout: float, *, quiet_uploads: int = 0) -> bool:
        """Wait until a message is queued or the mailbox closes, at most ``timeout`` seconds.

        With ``quiet_uploads`` N, fire-and-forget uploads do not end the wait until N are queued (a
        consumer waiting for quiet has nothing to do for each one: it reads their ``at`` later).
        Returns whether a message is ready (a cancelled or timed-out wait loses nothing).
        """
        if not self._items and not self.closed:
            if self._readable is None:
                self._readable = anyio.Event()
            self._quiet_until = quiet_uploads
            try:
                with anyio.move_on_after(timeout):
                    await self._readable.wait()
            finally:
                self._quiet_until = 0
        return bool(self._items)

    def close(self) -> None:
        """Refuse new messages and wake the consumer; queued messages stay readable."""
        self.closed = True
        if self._readable is not None:
            self._readable.set()
            self._readable = None
        if self._writable is not None:
            self._writable.set()
            self._writable = None
