"""The mailbox handle: how callers talk to a session's actor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, Unpack

import anyio
import anyio.lowlevel
import structlog

from ._actor import CLOSED_MESSAGE
from ._document import UploadDetails, check_session_id, encode_if_small
from ._mailbox import Call, Message, Reply, Upload
from ._ops import SessionOps, new_upload
from ._runtime import ActorRuntime
from ._status import SessionStateStatus

__all__ = ["SessionHandle"]

T = TypeVar("T")
Status = SessionStateStatus
logger = structlog.get_logger("wr124_session_actor")


class SessionHandle:
    """Sends one session's messages to its actor; the actor starts on demand.

    :meth:`submit` is the fire-and-forget upload: synchronous, never blocking, never raising. The
    awaited forms wait for the actor's reply within ``SESSION_STATE_TIMEOUT``. The manager's methods
    are built on these (:meth:`SessionStateManager` in actor mode).

    Raises:
        ValueError: ``session_id`` is not a non-empty string, or holds a NUL character.
    """

    __slots__ = ("_runtime", "session_id")

    def __init__(self, runtime: ActorRuntime, session_id: str) -> None:
        check_session_id(session_id)
        self._runtime = runtime
        self.session_id = session_id

    def submit(self, state: object, task: str = "", agent_name: str = "agent",
               **details: Unpack[UploadDetails]) -> Status:
        """Queue an upload and return at once: ``SUCCESS`` when accepted (the outcome is logged).

        Past the mailbox bound the upload replaces the queued one of the same agent instead of
        growing memory. With ``keep="all"`` a small state is encoded here, so that later changes to
        the caller's object do not reach the stored snapshot. Returns ``DISABLED`` when uploads are
        disabled, ``FAILED`` when the system is closed or the arguments are wrong.
        """
        runtime = self._runtime
        if not runtime.config.enabled:
            return Status.DISABLED
        upload = new_upload(self.session_id, "submit", state, task, agent_name, details)
        if isinstance(upload, str):
            return Status.FAILED
        try:
            if runtime.config.keep == "all":  # every snapshot is written: hold its bytes, not the caller's objects
                encode_if_small(upload)
            replaced = runtime.actor(self.session_id).submit(upload)
        except anyio.ClosedResourceError:
            logger.warning("session_state.submit", status=Status.FAILED.value, session_id=self.session_id,
                           op="submit", error=CLOSED_MESSAGE)
            return Status.FAILED
        runtime.counters.submitted += 1
        outbox = runtime.outbox
        if outbox is not None:
            outbox.add(upload)
            if replaced is not None:
                outbox.settle((replaced.doc_id,))
        return Status.SUCCESS

    async def _send(self, make: Callable[[Reply], Message], fallback: T,
                    accepted: Callable[[], None] | None = None, *, timed_out: T | None = None) -> tuple[Status, T]:
        """Send a message (``accepted`` runs once it is queued) and wait for its reply within the timeout.

        Answers ``fallback`` when the system is closed, and ``timed_out`` (if not ``None``, else ``fallback``)
        with ``TIMEOUT``."""
        runtime = self._runtime
        reply = Reply()
        timeout = runtime.config.timeout
        try:
            with anyio.move_on_after(timeout):
                try:
                    await runtime.actor(self.session_id).put(make(reply))
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
                       op="call", error=_timed_out(timeout))
        return Status.TIMEOUT, fallback if timed_out is None else timed_out

    async def upload(self, state: object, task: str = "", agent_name: str = "agent",
                     **details: Unpack[UploadDetails]) -> tuple[Status, str]:
        """Upload through the batch; returns the id of the document that holds this (or a newer) state."""
        runtime = self._runtime
        if not runtime.config.enabled:
            await anyio.lowlevel.checkpoint()
            return Status.DISABLED, "session state upload is disabled"
        upload = new_upload(self.session_id, "upload", state, task, agent_name, details)
        if isinstance(upload, str):
            await anyio.lowlevel.checkpoint()
            return Status.FAILED, upload

        def accepted() -> None:
            runtime.counters.submitted += 1
            if runtime.outbox is not None:
                runtime.outbox.add(upload)

        return await self._send(lambda reply: Upload(upload, reply), CLOSED_MESSAGE, accepted,
                                timed_out=_timed_out(runtime.config.timeout, "the upload stays queued and may"
                                                     " still be stored"))

    async def flush(self) -> tuple[Status, str]:
        """Write every pending upload of this session now."""
        return await self._send(lambda reply: Call(None, reply), CLOSED_MESSAGE,
                                timed_out=_timed_out(self._runtime.config.timeout, "pending uploads stay queued"))

    async def call(self, func: Callable[[SessionOps], Awaitable[tuple[Status, T]]], fallback: T) -> tuple[Status, T]:
        """Run ``func`` with the session's ops in the actor, after its pending uploads are written."""
        return await self._send(lambda reply: Call(func, reply), fallback)

    async def call_with_message(
        self, func: Callable[[SessionOps], Awaitable[tuple[Status, str]]]
    ) -> tuple[Status, str]:
        """:meth:`call` for an operation that answers a message: a closed system or a timeout says so."""
        return await self._send(lambda reply: Call(func, reply), CLOSED_MESSAGE,
                                timed_out=_timed_out(self._runtime.config.timeout))

    def cached_restore(self, doc_id: str) -> dict[str, Any] | None:
        """A cached restore of ``doc_id`` when the actor is idle (no write of this session can be missed)."""
        actor = self._runtime.idle_actor(self.session_id)
        return None if actor is None else actor.ops.cached_restore(doc_id)


def _timed_out(timeout: float, what_then: str = "") -> str:
    said = f"no reply within {timeout:g}s (SESSION_STATE_TIMEOUT)"
    return f"{said}; {what_then}" if what_then else said
