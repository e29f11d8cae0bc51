"""``SessionStateManager``: the original WR124 API, in direct mode or actor mode."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import datetime
from types import TracebackType
from typing import Any, Final, TypeVar

import anyio.lowlevel
import structlog

from ._config import Config, given_or_env
from ._document import check_session_id
from ._handle import SessionHandle
from ._ops import SessionOps, new_upload
from ._runtime import ActorRuntime
from ._status import SessionStateStatus
from .stores import DocumentStore, open_store

__all__ = ["SessionStateManager"]

Status = SessionStateStatus
T = TypeVar("T")
_DISABLED_MESSAGE: Final = "session state upload is disabled"
logger = structlog.get_logger("wr124_session_actor")


class _LazyStore:
    """The direct mode's store, opened on first call.

    Apart from the manager, so that the manager's operations hold no reference back to it: a manager
    its caller drops (the original usage never closes one) is then freed at once, its client's close
    guard first, where a reference cycle left it to the garbage collector, which finalizes a whole cycle
    together (aiohttp then warned "Unclosed client session" for many of 2,000 managers).
    """

    __slots__ = ("config", "store")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store: DocumentStore | None = None

    def __call__(self) -> DocumentStore:
        if self.store is None:
            self.store = open_store(self.config)
        return self.store

    def take(self) -> DocumentStore | None:
        """The store if one was opened, forgotten here (the next call opens a new one)."""
        store, self.store = self.store, None
        return store


class SessionStateManager:
    """Persists one session's agent states; every method returns ``(status, value)``.

    Used bare, the manager is in *direct mode*: each call goes straight to the store (with the read
    cache and logging, no batching). Used as ``async with SessionStateManager(...) as manager:``, or
    obtained from :meth:`ActorSystem.manager`, it is in *actor mode*: calls go through the session's
    mailbox and uploads are coalesced into batched writes. Results and statuses are the same.

    The constructor does no I/O.

    Args:
        session_id: the session every read and write is scoped to.
        config: the configuration; read from the environment (the original's variables) when omitted.
        handle: the session's mailbox handle (actor mode); given by :meth:`ActorSystem.manager`.

    Raises:
        ConfigError: the environment holds a malformed value; the message names the variable.
        TypeError: ``config`` is neither a :class:`Config` nor ``None`` (a URL as text, say).
        ValueError: ``session_id`` is not a non-empty string, or holds a NUL character.
    """

    def __init__(self, session_id: str, config: Config | None = None, *,
                 handle: SessionHandle | None = None) -> None:
        if handle is None:  # a handle checked its session id when it was made
            check_session_id(session_id)
        self.session_id = session_id
        self.config = given_or_env(config)
        self._handle = handle
        self._direct_store = _LazyStore(self.config)
        self._stack: AsyncExitStack | None = None  # a private actor runtime (``async with`` on its own)
        self._ops = SessionOps(session_id, self.config, self._direct_store)

    @property
    def enabled(self) -> bool:
        """Whether uploads are enabled (``ENABLE_SESSION_STATE_UPLOAD``)."""
        return self.config.enabled

    @property
    def mode(self) -> str:
        """``"actor"`` when calls go through a mailbox, else ``"direct"``."""
        return "direct" if self._handle is None else "actor"

    @property
    def handle(self) -> SessionHandle | None:
        """The session's mailbox handle in actor mode, else ``None``."""
        return self._handle

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> SessionStateManager:
        if self._handle is None:
            stack = AsyncExitStack()
            runtime = await stack.enter_async_context(ActorRuntime(self.config, store=self._direct_store()))
            self._stack = stack
            self._handle = SessionHandle(runtime, self.session_id)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            self._handle = None
            self._direct_store.take()  # the runtime closes the store it was given
            await stack.aclose()
            return
        await self.aclose()

    async def aclose(self) -> None:
        """Close the direct-mode store (connections); a later call opens a new one."""
        store = self._direct_store.take()
        if store is not None:
            await store.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    # -- the seam: every operation, direct or through the mailbox ---------------------------------

    async def _run(self, op: str, func: Callable[[SessionOps], Awaitable[tuple[Status, T]]], fallback: T,
                   *, via_mailbox: Callable[[SessionHandle], Awaitable[tuple[Status, T]]] | None = None,
                   ) -> tuple[Status, T]:
        """Run one operation: ``DISABLED`` when disabled, else ``func`` on the session's ops, directly
        (direct mode) or in the session's actor (actor mode; ``via_mailbox`` when it has its own message).
        """
        if self._ops.disabled(op):
            await anyio.lowlevel.checkpoint()
            return Status.DISABLED, fallback
        handle = self._handle
        if handle is None:
            return await func(self._ops)
        if via_mailbox is not None:
            return await via_mailbox(handle)
        return await handle.call(func, fallback)

    # -- the original API -------------------------------------------------------------------------

    async def upload_session_state(
        self,
        state: object,
        task: str = "",
        agent_name: str = "agent",
        *,
        agent_description: str = "",
        agent_color: str = "",
        tools_count: int = 0,
        description: str | None = None,
        parent_seq: int | None = None,
    ) -> tuple[Status, str]:
        """Store a state; return ``(status, document id)`` or ``(status, error message)``.

        In actor mode the upload joins the session's batch and the id may name the document that
        holds a newer state of the same agent (``keep="latest"``).

        ``parent_seq`` is the ``seq`` of this agent's state the new one continues (the one it was
        restored from): when a newer state of the agent is stored already, the store refuses the
        upload and the reply is ``FAILED`` with a message that says "conflict".
        """
        details: dict[str, Any] = {"agent_description": agent_description, "agent_color": agent_color,
                                   "tools_count": tools_count, "description": description, "parent_seq": parent_seq}

        async def upload(ops: SessionOps) -> tuple[Status, str]:
            made = new_upload(self.session_id, "upload", state, task, agent_name, details)
            if isinstance(made, str):
                await anyio.lowlevel.checkpoint()
                return Status.FAILED, made
            return await ops.upload(made)

        return await self._run("upload", upload, _DISABLED_MESSAGE,
                               via_mailbox=lambda handle: handle.upload(state, task, agent_name, **details))

    def submit_session_state(
        self,
        state: object,
        task: str = "",
        agent_name: str = "agent",
        *,
        agent_description: str = "",
        agent_color: str = "",
        tools_count: int = 0,
        description: str | None = None,
        parent_seq: int | None = None,
    ) -> Status:
        """Fire-and-forget upload: synchronous, never blocks, never raises; the outcome is logged.

        Returns ``SUCCESS`` when accepted (actor mode), ``DISABLED`` when disabled, and ``FAILED`` in
        direct mode, which has no actor to accept it.
        """
        if self._ops.disabled("submit"):
            return Status.DISABLED
        if self._handle is None:
            logger.warning("session_state.submit", status=Status.FAILED.value, session_id=self.session_id,
                           op="submit", error="submit needs actor mode: use 'async with SessionStateManager(...)'"
                           " or ActorSystem.manager()")
            return Status.FAILED
        return self._handle.submit(state, task, agent_name, agent_description=agent_description,
                                   agent_color=agent_color, tools_count=tools_count, description=description,
                                   parent_seq=parent_seq)

    async def flush(self) -> tuple[Status, str]:
        """Write every pending upload now (actor mode); direct mode has nothing pending."""

        async def nothing_pending(ops: SessionOps) -> tuple[Status, str]:
            await anyio.lowlevel.checkpoint()
            return Status.SUCCESS, "nothing pending"

        return await self._run("flush", nothing_pending, _DISABLED_MESSAGE, via_mailbox=SessionHandle.flush)

    async def download_session_states(
        self,
        limit: int = 10,
        agent_name: str | None = None,
        start_date: str | datetime | None = None,
        end_date: str | datetime | None = None,
    ) -> tuple[Status, list[dict[str, Any]]]:
        """This session's state documents, newest first, each with ``_id``, ``content``, ``created_at``."""
        return await self._run("download", lambda ops: ops.download(limit, agent_name, start_date, end_date), [])

    async def restore_session_state(self, doc_id: str) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` (agent_name, task, state, timestamp, ...) of one of this session's states.

        A document of another session, or one that is not a state document, does not restore.
        """
        if self.config.enabled:  # a cached state is answered here (in actor mode when the actor is idle)
            handle = self._handle
            hit = self._ops.cached_restore(doc_id) if handle is None else handle.cached_restore(doc_id)
            if hit is not None:
                await anyio.lowlevel.checkpoint()
                return Status.SUCCESS, hit
        return await self._run("restore", lambda ops: ops.restore(doc_id), None)

    async def restore_latest_session_state(self) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of this session's newest state."""
        return await self._run("restore", lambda ops: ops.restore_latest(), None)

    async def restore_agent_session_state(self, agent_name: str) -> tuple[Status, dict[str, Any] | None]:
        """The ``content`` of this session's newest state of ``agent_name``."""
        return await self._run("restore", lambda ops: ops.restore_latest(agent_name), None)

    async def list_available_session_states(
        self, limit: int = 10, agent_name: str | None = None
    ) -> tuple[Status, list[dict[str, Any]]]:
        """Summaries ``{id, name, description, created_at, updated_at, tags}`` of this session's states."""
        return await self._run("download", lambda ops: ops.list_available(limit, agent_name), [])

    async def delete_session_state(self, doc_id: str) -> tuple[Status, str]:
        """Delete one of this session's state documents; return a message."""
        def delete(ops: SessionOps) -> Awaitable[tuple[Status, str]]:
            return ops.delete(doc_id)

        return await self._run("delete", delete, _DISABLED_MESSAGE,
                               via_mailbox=lambda handle: handle.call_with_message(delete))
