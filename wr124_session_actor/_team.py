"""``Team``: runs an agent and persists its state after every message, through the session's mailbox."""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio.lowlevel
import structlog

from ._config import Config
from ._manager import SessionStateManager
from ._status import SessionStateStatus
from .agents import BuiltinAgent, ChatAgent, ChatCompletionClient

__all__ = ["Team"]

Status = SessionStateStatus
logger = structlog.get_logger("wr124_session_actor")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Team:
    """Runs one agent on one session and keeps the agent's state stored as it goes.

    In *actor mode* (the team entered with ``async with``, or given a manager from
    :meth:`ActorSystem.manager`) the agent's state is submitted after every message, fire-and-forget,
    and the session's actor coalesces the snapshots into few store writes; each task ends with a flush,
    so when ``async for`` over :meth:`execute_task` ends the task's final state is stored. In *direct
    mode* (a team used without ``async with`` and without a manager) there is no actor to submit to:
    the final state is uploaded once, awaited, at the end of each task.

    A task never fails because of the state service: store trouble is a logged status, and an agent
    whose ``save_state`` raises is logged and skipped. Errors of the agent's own run propagate.

    Args:
        model_client: the model client of the built-in agent made when ``agent`` is omitted.
        session_id: the session the states belong to; taken from ``manager`` when omitted there, and a
            fresh random id when both are omitted (``None``; an empty id is a ``ValueError``, as for the
            manager).
        agent: the agent to run (duck-typed like AutoGen's; an AutoGen ``AssistantAgent`` works); a
            :class:`~wr124_session_actor.agents.BuiltinAgent` named ``"assistant"`` over
            ``model_client`` when omitted.
        manager: the session's manager; the team makes (and owns) one when omitted, and runs it in
            actor mode, on a private :class:`ActorSystem`, while the team is entered.
        config: the configuration of the manager the team makes; from the environment when omitted.

    Raises:
        ValueError: neither ``agent`` nor ``model_client`` is given; both ``manager`` and ``config``
            are given; ``session_id`` differs from the manager's, or is not a session id (empty, say).
        ConfigError: the environment holds a malformed value (when the team makes its manager).
    """

    def __init__(
        self,
        model_client: ChatCompletionClient | None = None,
        session_id: str | None = None,
        agent: ChatAgent | None = None,
        manager: SessionStateManager | None = None,
        *,
        config: Config | None = None,
    ) -> None:
        if agent is None:
            if model_client is None:
                raise ValueError("Team needs a model_client (for the built-in agent) or an agent")
            agent = BuiltinAgent("assistant", model_client)
        if manager is None:
            if session_id is None:
                session_id = f"team-{uuid.uuid4().hex}"
            manager = SessionStateManager(session_id, config)
            self._owns_manager = True
        else:
            if config is not None:
                raise ValueError("pass config or manager, not both (the manager has its config)")
            if session_id is not None and session_id != manager.session_id:
                raise ValueError(f"session_id {session_id!r} differs from the manager's "
                                 f"{manager.session_id!r}")
            self._owns_manager = False
        self._agent = agent
        self._manager = manager
        self._state = _State.UNOPENED
        self._stack: AsyncExitStack | None = None
        # The seq of the state the agent was restored from: the next upload continues it (optimistic
        # concurrency: a newer state stored meanwhile by another process makes that upload a conflict).
        self._parent_seq: int | None = None

    @property
    def session_id(self) -> str:
        """The session the agent's states belong to."""
        return self._manager.session_id

    @property
    def manager(self) -> SessionStateManager:
        """The session's state manager."""
        return self._manager

    @property
    def agent(self) -> ChatAgent:
        """The agent the team runs."""
        return self._agent

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> Team:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"a Team cannot be entered twice (it is {self._state.value})")
        self._state = _State.OPEN
        stack = AsyncExitStack()
        if self._owns_manager:
            await stack.enter_async_context(self._manager)
        else:
            await anyio.lowlevel.checkpoint()
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._state = _State.CLOSED
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def aclose(self) -> None:
        """Close the store connections of a manager the team made and uses in direct mode."""
        if self._owns_manager and self._manager.mode == "direct":
            await self._manager.aclose()
        else:
            await anyio.lowlevel.checkpoint()

    # -- running tasks ----------------------------------------------------------------------------

    async def execute_task(self, task: str) -> AsyncIterator[Any]:
        """Run ``task`` on the agent and yield its messages; the agent's state is stored as it goes.

        Run one task at a time per team. When the loop over this generator ends, the task's final
        state is already stored (or its failure logged). A loop left early (``break``) skips that
        final flush; the snapshots submitted so far are still written by the actor. To stop early,
        wrap the generator in ``contextlib.aclosing`` so the agent's stream is closed at once.

        Args:
            task: the user's request.

        Yields:
            Whatever the agent's ``run_stream`` yields (messages, and for AutoGen agents events and a
            final ``TaskResult``).
        """
        agent = self._agent
        manager = self._manager
        persist = manager.enabled
        actor_mode = manager.mode == "actor"
        stream = agent.run_stream(task=task)
        try:
            async for message in stream:
                # The snapshot is taken before yielding: the consumer may take its time, and the actor
                # coalesces what arrives meanwhile, so a chatty agent costs a dict, not a request.
                if persist and actor_mode:
                    state = await self._save_state()
                    if state is not None:
                        manager.submit_session_state(state=state, task=task, agent_name=agent.name,
                                                     agent_description=agent.description,
                                                     parent_seq=self._take_parent_seq())
                yield message
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not persist:
            return
        if actor_mode:
            # Read-your-writes: the flush returns once the pending snapshot is written (or logged failed).
            await manager.flush()
            return
        # Direct mode has no actor to submit to: one awaited upload of the final state per task.
        state = await self._save_state()
        if state is not None:
            await manager.upload_session_state(state=state, task=task, agent_name=agent.name,
                                               agent_description=agent.description,
                                               parent_seq=self._take_parent_seq())

    def _take_parent_seq(self) -> int | None:
        parent_seq, self._parent_seq = self._parent_seq, None
        return parent_seq

    async def _save_state(self) -> Mapping[str, Any] | None:
        """The agent's snapshot, or ``None`` (logged) when ``save_state`` raises."""
        try:
            return await self._agent.save_state()
        except Exception as exc:
            logger.warning("session_state.save_state", status=Status.FAILED.value, session_id=self.session_id,
                           op="save_state", agent_name=self._agent.name,
                           error=f"{type(exc).__name__}: {exc}")
            return None

    # -- history and restore ----------------------------------------------------------------------

    async def download_session_history(
        self, limit: int = 10, agent_name: str | None = None
    ) -> tuple[Status, list[dict[str, Any]]]:
        """This session's state documents, newest first (of ``agent_name``, if given).

        Returns:
            ``(status, documents)``, each document with ``_id``, ``content`` and ``created_at``.
        """
        return await self._manager.download_session_states(limit=limit, agent_name=agent_name)

    async def restore_latest(self) -> tuple[Status, dict[str, Any] | None]:
        """Load the newest stored state of the team's agent (by its name) into the agent.

        Returns:
            ``(status, content)``: the document's content (agent_name, task, state, timestamp, ...),
            or ``(status, None)`` when nothing is stored, the store fails, or the agent rejects it.
        """
        status, content = await self._manager.restore_agent_session_state(self._agent.name)
        return await self._load(status, content)

    async def restore(self, doc_id: str) -> tuple[Status, dict[str, Any] | None]:
        """Load one of this session's stored states into the agent.

        Returns:
            ``(status, content)`` as :meth:`restore_latest`.
        """
        status, content = await self._manager.restore_session_state(doc_id)
        return await self._load(status, content)

    async def _load(
        self, status: Status, content: dict[str, Any] | None
    ) -> tuple[Status, dict[str, Any] | None]:
        """Load ``content["state"]`` into the agent; a state the agent rejects is logged and FAILED."""
        if status is not Status.SUCCESS or content is None:
            return status, None
        state = content.get("state")
        try:
            if not isinstance(state, Mapping):
                raise TypeError(f"the stored state is a {type(state).__name__}, not a mapping")
            await self._agent.load_state(state)
        except Exception as exc:
            logger.warning("session_state.load_state", status=Status.FAILED.value, session_id=self.session_id,
                           op="load_state", agent_name=self._agent.name, error=f"{type(exc).__name__}: {exc}")
            return Status.FAILED, None
        seq = content.get("seq")
        self._parent_seq = seq if isinstance(seq, int) else None
        return status, content
