"""The actor system: owns the task group in which every session actor runs."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from ._actor import SessionActor
from ._circuit import CircuitBreaker
from ._config import Config
from ._ops import SessionOps
from ._outbox import Outbox
from ._status import SessionStateStatus
from .stores import DocumentStore, open_store

if TYPE_CHECKING:
    from ._handle import SessionHandle
    from ._manager import SessionStateManager

__all__ = ["ActorSystem", "SystemStatistics", "WriteObservation"]


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class WriteObservation:
    """One store write, as observers registered with :meth:`ActorSystem.add_write_observer` see it.

    Attributes:
        duration_s: seconds the write took (retries included, queueing before it excluded).
        documents: documents in the write.
        status: its outcome.
    """

    duration_s: float
    documents: int
    status: SessionStateStatus


@dataclass(slots=True)
class SystemCounters:
    """Running totals the actors update (internal; read them through :meth:`ActorSystem.statistics`)."""

    submitted: int = 0
    coalesced: int = 0
    unchanged: int = 0
    documents: int = 0
    store_writes: int = 0
    failed: int = 0
    actors_started: int = 0
    failed_by_status: dict[str, int] = field(default_factory=dict)
    write_observers: list[Callable[[WriteObservation], None]] = field(default_factory=list)

    def fail(self, status: SessionStateStatus, count: int = 1) -> None:
        """Count ``count`` uploads that ended with ``status`` (not ``SUCCESS``)."""
        self.failed += count
        self.failed_by_status[status.value] = self.failed_by_status.get(status.value, 0) + count

    def observe_write(self, duration_s: float, documents: int, status: SessionStateStatus) -> None:
        """Count one store write and tell the observers."""
        self.store_writes += 1
        if self.write_observers:
            observation = WriteObservation(duration_s, documents, status)
            for observer in self.write_observers:
                observer(observation)


@dataclass(frozen=True, slots=True)
class SystemStatistics:
    """A snapshot of an actor system's counters.

    Attributes:
        live_actors: actors running now.
        actors_started: actors started so far (an idle actor that comes back counts again).
        submitted: uploads accepted (``submit`` and awaited ``upload``).
        coalesced: uploads replaced by a newer state of the same agent before being written.
        unchanged: uploads not written because they equal the agent's last stored state.
        documents: documents written.
        store_writes: store write calls (batches).
        failed: uploads whose write failed.
        queued: messages waiting in all mailboxes.
        pending: uploads waiting in actors' batches (the backlog behind the store write in flight).
        failed_by_status: ``failed`` split by status value (``"failed"``, ``"timeout"``, ...).
        outbox_depth: uploads held by the durable outbox, not yet confirmed by the store (0 without one).
        circuit_state: the store's circuit breaker: ``"closed"``, ``"open"`` or ``"half-open"``.
    """

    live_actors: int
    actors_started: int
    submitted: int
    coalesced: int
    documents: int
    store_writes: int
    failed: int
    queued: int
    pending: int
    unchanged: int = 0
    failed_by_status: dict[str, int] = field(default_factory=dict)
    outbox_depth: int = 0
    circuit_state: str = "closed"


class ActorSystem:
    """Runs one actor per active session inside a task group it owns.

    Use it as ``async with ActorSystem(config) as system:``; get a session's mailbox handle with
    :meth:`handle` or an actor-mode manager with :meth:`manager`. Leaving the block flushes every
    pending upload within ``shutdown_timeout``, also when the leaving is a cancellation.

    Args:
        config: the configuration; read from the environment when omitted.
        store: a store to use instead of the one ``config.api_url`` names (the system closes it).

    Raises:
        ConfigError: the environment holds a malformed value (when ``config`` is omitted).
    """

    def __init__(self, config: Config | None = None, *, store: DocumentStore | None = None) -> None:
        self.config = Config.from_env() if config is None else config
        self._store = store
        self._actors: dict[str, SessionActor] = {}
        self._to_start: list[SessionActor] = []
        self._spawn_wakeup: anyio.Event | None = None
        self._task_group: anyio.abc.TaskGroup | None = None  # the actors
        self._service_group: anyio.abc.TaskGroup | None = None  # outbox sync and replay, around the actors
        #: The durable outbox when ``SESSION_STATE_SPOOL`` is set.
        self.outbox: Outbox | None = None
        if self.config.spool:
            self.outbox = Outbox(self.config.spool, self.config.spool_sync_interval,
                                 self.config.spool_max_documents)
        self._state = _State.UNOPENED
        self._counters = SystemCounters()
        self._circuit = CircuitBreaker(self.config.circuit_threshold, self.config.circuit_cooldown)

    @property
    def store(self) -> DocumentStore:
        """The store every actor writes to (opened with the system)."""
        if self._store is None:
            self._store = open_store(self.config)
        return self._store

    @property
    def is_open(self) -> bool:
        """Whether the system accepts messages."""
        return self._state is _State.OPEN

    async def __aenter__(self) -> ActorSystem:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"an ActorSystem cannot be entered twice (it is {self._state.value})")
        if self.outbox is not None:
            self._service_group = anyio.create_task_group()
            await self._service_group.__aenter__()
            self._service_group.start_soon(self.outbox.run, name="session-outbox-sync")
            self._service_group.start_soon(self._replay, name="session-outbox-replay")
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._state = _State.OPEN
        self._task_group.start_soon(self._spawn_actors, name="session-actor-spawner")
        return self

    async def _replay(self) -> None:
        assert self.outbox is not None
        await self.outbox.replay(self.store, retry_backoff=self.config.retry_backoff,
                                 max_backoff=max(self.config.retry_backoff_max, self.config.retry_backoff))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._task_group is not None
        self._state = _State.CLOSED
        for actor in list(self._actors.values()):
            actor.mailbox.close()  # each actor drains, flushes within shutdown_timeout and exits
        if self._spawn_wakeup is not None:
            self._spawn_wakeup.set()
        try:
            suppress = await self._task_group.__aexit__(exc_type, exc, tb)
        finally:
            self._actors.clear()
            try:
                if self._service_group is not None:
                    self._service_group.cancel_scope.cancel()
                    await self._service_group.__aexit__(None, None, None)
            finally:
                with anyio.CancelScope(shield=True):
                    if self.outbox is not None:
                        await self.outbox.aclose()  # a last sync: what is still unwritten stays spooled
                    if self._store is not None:
                        await self._store.aclose()
        return suppress

    def actor(self, session_id: str) -> SessionActor:
        """The running actor of ``session_id``, started if it is not running (internal to handles)."""
        actor = self._actors.get(session_id)
        if actor is None:
            if self._state is not _State.OPEN:
                raise anyio.ClosedResourceError
            assert self._task_group is not None
            store = self.store
            ops = SessionOps(session_id, self.config, lambda: store, self._circuit)
            actor = self._actors[session_id] = SessionActor(ops, self._counters, self._forget, self.outbox)
            self._counters.actors_started += 1
            # Started by the spawner task, off the caller's path: a first submit stays as cheap as any.
            self._to_start.append(actor)
            if self._spawn_wakeup is not None:
                self._spawn_wakeup.set()
                self._spawn_wakeup = None
        return actor

    async def _spawn_actors(self) -> None:
        """Start the actors that handles created, until the system closes (then start the last ones)."""
        assert self._task_group is not None
        try:
            while self._state is _State.OPEN:
                if not self._to_start:
                    self._spawn_wakeup = anyio.Event()
                    await self._spawn_wakeup.wait()
                self._start_waiting()
        finally:
            self._start_waiting()  # even when cancelled: an actor started cancelled still drains its mailbox

    def _start_waiting(self) -> None:
        assert self._task_group is not None
        to_start, self._to_start = self._to_start, []
        for actor in to_start:
            self._task_group.start_soon(actor.run, name=f"session-actor:{actor.ops.session_id}")

    def idle_actor(self, session_id: str) -> SessionActor | None:
        """The actor of ``session_id`` if it runs and has nothing queued, pending or in progress."""
        actor = self._actors.get(session_id)
        if actor is None or actor.busy or actor.pending or len(actor.mailbox):
            return None
        return actor

    def _forget(self, actor: SessionActor) -> None:
        if self._actors.get(actor.ops.session_id) is actor:
            del self._actors[actor.ops.session_id]

    def handle(self, session_id: str) -> SessionHandle:
        """The mailbox handle of ``session_id`` (its actor starts on the first message)."""
        from ._handle import SessionHandle

        return SessionHandle(self, session_id)

    def manager(self, session_id: str) -> SessionStateManager:
        """A :class:`SessionStateManager` for ``session_id`` in actor mode."""
        from ._manager import SessionStateManager

        return SessionStateManager(session_id, self.config, handle=self.handle(session_id))

    def statistics(self) -> SystemStatistics:
        """A snapshot of the counters."""
        c = self._counters
        return SystemStatistics(
            live_actors=len(self._actors),
            actors_started=c.actors_started,
            submitted=c.submitted,
            coalesced=c.coalesced,
            documents=c.documents,
            store_writes=c.store_writes,
            failed=c.failed,
            queued=sum(len(a.mailbox) for a in self._actors.values()),
            pending=sum(a.pending for a in self._actors.values()),
            unchanged=c.unchanged,
            failed_by_status=dict(c.failed_by_status),
            outbox_depth=0 if self.outbox is None else self.outbox.pending,
            circuit_state=self._circuit.state,
        )

    def add_write_observer(self, observer: Callable[[WriteObservation], None]) -> None:
        """Call ``observer`` after every store write (synchronously: keep it cheap, it must not raise)."""
        self._counters.write_observers.append(observer)

    @property
    def counters(self) -> SystemCounters:
        """The live counters (internal to handles and actors)."""
        return self._counters
