"""``ActorSystem``: the public face of the actor runtime, where handles and actor-mode managers come from."""

from __future__ import annotations

from ._handle import SessionHandle
from ._manager import SessionStateManager
from ._runtime import ActorRuntime
from ._statistics import SystemStatistics, WriteObservation

__all__ = ["ActorSystem", "SystemStatistics", "WriteObservation"]


class ActorSystem(ActorRuntime):
    """Runs one actor per active session inside a task group it owns.

    Use it as ``async with ActorSystem(config) as system:``; get a session's mailbox handle with
    :meth:`handle` or an actor-mode manager with :meth:`manager`. Leaving the block flushes every
    pending upload within ``shutdown_timeout``, also when the leaving is a cancellation. The batches
    of all sessions go to the store through one write stage, which merges them into few writes.

    Args:
        config: the configuration; read from the environment when omitted.
        store: a store to use instead of the one ``config.api_url`` names (the system closes it).

    Raises:
        ConfigError: the environment holds a malformed value (when ``config`` is omitted).
        TypeError: ``config`` is neither a :class:`Config` nor ``None`` (a URL as text, say).
    """

    async def __aenter__(self) -> ActorSystem:
        await super().__aenter__()
        return self

    def handle(self, session_id: str) -> SessionHandle:
        """The mailbox handle of ``session_id`` (its actor starts on the first message).

        Raises:
            ValueError: ``session_id`` is not a non-empty string, or holds a NUL character.
        """
        return SessionHandle(self, session_id)

    def manager(self, session_id: str) -> SessionStateManager:
        """A :class:`SessionStateManager` for ``session_id`` in actor mode."""
        return SessionStateManager(session_id, self.config, handle=self.handle(session_id))
