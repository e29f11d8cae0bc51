"""The mailbox handle: how callers talk to a session's actor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import structlog

from ._actor import CLOSED_MESSAGE
from ._document import StateUpload
from ._mailbox import Call, Message, Reply, Upload
from ._ops import SessionOps
from ._status import SessionStateStatus

if TYPE_CHECKING:
    from ._system import ActorSystem

__all__ = ["SessionHandle"]

T = TypeVar("T")
Status = SessionStateStatus
logger = structlog.get_logger("wr124_session_actor")


class SessionHandle:
    """Sends one session's operations to its actor; the actor starts on demand.

    The awaited methods return what the manager's methods return. :meth:`submit` is the
    fire-and-forget upload: synchronous, never blocking, never raising.
    """

    __slots__ = ("_system", "session_id")

    def __init__(self, system: ActorSystem, session_id: str) -> None:
        self._system = system
        self.session_id = session_id

    def submit(self, state: object, task: str = "", agent_name: str = "agent", **details: Any) -> Status:
        """Queue an upload and return at once: ``SUCCESS`` when accepted (the outcome is logged).

        Past the mailbox bound the upload replaces the queued one of the same agent instead of
        growing memory. Returns ``DISABLED`` when uploads are disabled, ``FAILED`` when the system is
        closed or the arguments are wrong.
        """
        system = self._system
        if not system.config.enabled:
            return Status.DISABLED
        try:
            upload = StateUpload(self.session_id, state, task, agent_name, **details)
            replaced = system.actor(self.session_id).mailbox.submit(upload)
        except anyio.ClosedResourceError:
            logger.warning("session_state.submit", status=Status.FAILED.value, session_id=self.session_id,
                           op="submit", error=CLOSED_MESSAGE)
            return Status.FAILED
        except TypeError as exc:
            logger.warning("session_state.submit", status=Status.FAILED.value, session_id=self.session_id,
                           op="submit", error=f"bad arguments: {exc}")
            return Status.FAILED
        system.counters.submitted += 1
        outbox = system.outbox
        if outbox is not None:
            outbox.add(upload)
            if replaced is not None:
                outbox.settle((replaced.doc_id,))
        return Status.SUCCESS

    async def _send(self, make: Callable[[Reply], Message], fallback: T,
                    accepted: Callable[[], None] | None = None) -> tuple[Status, T]:
        """Send a message (``accepted`` runs once it is queued) and wait for its reply within the timeout."""
        system = self._system
        reply = Reply()
        timeout = system.config.timeout
        try:
            with anyio.move_on_after(timeout):
                try:
                    await system.actor(self.session_id).mailbox.put(make(reply))
                except anyio.ClosedResourceError:
                    await anyio.lowlevel.checkpoint()
                    return Status.FAILED, fallback
                if accepted is not None:
                    accepted()
                result: tuple[Status, T] = await reply.wait()
                return result
        finally:
            reply.abandoned = not reply.is_set()
        logger.warning("session_state.call", status=Status.TIMEOUT.value, session_id=self.session_id,
                       op="call", error=f"no reply within {timeout:g}s (SESSION_STATE_TIMEOUT)")
        return Status.TIMEOUT, fallback

    async def _call(self, func: Callable[[SessionOps], Awaitable[tuple[Status, T]]], fallback: T) -> tuple[Status, T]:
        if not self._system.config.enabled:
            await anyio.lowlevel.checkpoint()
            return Status.DISABLED, fallback
        return await self._send(lambda reply: Call(func, reply), fallback)

    async def upload(self, state: object, task: str = "", agent_name: str = "agent",
                     **details: Any) -> tuple[Status, str]:
        """Upload through the batch; returns the id of the document that holds this (or a newer) state."""
        if not self._system.config.enabled:
            await anyio.lowlevel.checkpoint()
            return Status.DISABLED, "session state upload is disabled"
        upload = StateUpload(self.session_id, state, task, agent_name, **details)
        system = self._system

        def accepted() -> None:
            system.counters.submitted += 1
            if system.outbox is not None:
                system.outbox.add(upload)

        return await self._send(lambda reply: Upload(upload, reply), CLOSED_MESSAGE, accepted)

    async def flush(self) -> tuple[Status, str]:
        """Write every pending upload of this session now."""
        return await self._send(lambda reply: Call(None, reply), CLOSED_MESSAGE)

    async def download(self, limit: int = 10, agent_name: str | None = None,
                       start_date: str | datetime | None = None,
                       end_date: str | datetime | None = None) -> tuple[Status, list[dict[str, Any]]]:
        """This session's state documents, newest first, pending uploads included."""
        return await self._call(lambda ops: ops.download(limit, agent_name, start_date, end_date), [])

    async def restore(self, doc_id: str) -> tuple[Status, dict[str, Any] | None]:
        """The content of one of this session's state documents.

        A cache hit is served here, without a trip through the mailbox, when the actor is idle (nothing
        queued, pending or being written: no write of this session can be missed).
        """
        actor = self._system.idle_actor(self.session_id)
        if actor is not None and self._system.config.enabled:
            hit = actor.ops.cached_restore(doc_id)
            if hit is not None:
                await anyio.lowlevel.checkpoint()
                return Status.SUCCESS, hit
        return await self._call(lambda ops: ops.restore(doc_id), None)

    async def restore_latest(self, agent_name: str | None = None) -> tuple[Status, dict[str, Any] | None]:
        """The content of this session's newest state (of ``agent_name``, if given)."""
        return await self._call(lambda ops: ops.restore_latest(agent_name), None)

    async def list_available(self, limit: int = 10,
                             agent_name: str | None = None) -> tuple[Status, list[dict[str, Any]]]:
        """Summaries of this session's state documents."""
        return await self._call(lambda ops: ops.list_available(limit, agent_name), [])

    async def delete(self, doc_id: str) -> tuple[Status, str]:
        """Delete one of this session's state documents."""
        return await self._call(lambda ops: ops.delete(doc_id), CLOSED_MESSAGE)
