"""The actor runtime: the task groups, the session actors, the write stage and the outbox of one store.

:class:`~wr124_session_actor.ActorSystem` is its public face; an actor-mode manager used on its own
(``async with SessionStateManager(...)``) runs a private one.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from time import monotonic
from types import TracebackType
from typing import Final

import anyio
import anyio.abc
import anyio.to_thread
import structlog

from ._actor import SessionActor
from ._circuit import CircuitBreaker
from ._config import Config, given_or_env
from ._ops import SessionOps
from ._outbox import Outbox
from ._statistics import SystemCounters, SystemStatistics, WriteObservation
from ._write_stage import WriteStage
from .stores import DocumentStore, open_store

__all__ = ["ActorRuntime"]

logger = structlog.get_logger("wr124_session_actor")
_ACTOR_TASK: Final = "session-actor"


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class ActorRuntime:
    """Runs the actors of the sessions of one store inside task groups it owns.

    Actors are virtual: one is made on a session's first message, its task runs only while it has
    work, and an actor idle for ``idle_timeout`` is forgotten by one housekeeping task (so an idle
    session costs no task). Leaving the ``async with`` block closes every mailbox; each actor writes
    what it holds within ``shutdown_timeout`` (also when the leaving is a cancellation), and the outbox
    replay of an earlier run is finished within the same budget.

    Args:
        config: the configuration; read from the environment when omitted.
        store: a store to use instead of the one ``config.api_url`` names (the runtime closes it).

    Raises:
        ConfigError: the environment holds a malformed value (when ``config`` is omitted).
    """

    def __init__(self, config: Config | None = None, *, store: DocumentStore | None = None) -> None:
        self.config = given_or_env(config)
        self._store = store
        self._state = _State.UNOPENED
        self._stack: AsyncExitStack | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._actors: dict[str, SessionActor] = {}
        # Oldest first. An OrderedDict, because the reaper takes from the front: a plain dict's first
        # item is found by skipping the slots of the items deleted before it (quadratic in a burst).
        self._idle: OrderedDict[str, tuple[float, SessionActor]] = OrderedDict()
        self._to_start: list[SessionActor] = []
        self._spawner_done = False  # the spawner task has ended (cancelled, or the system closed)
        self._spawner_wakeup: anyio.Event | None = None
        self._reaper_wakeup: anyio.Event | None = None
        self._running = 0
        self._close_deadline = 0.0
        self._counters = SystemCounters(full_write=self.config.max_batch,
                                        queued_are_documents=self.config.keep == "all")
        self._circuit = CircuitBreaker(self.config.circuit_threshold, self.config.circuit_cooldown)
        self._store_getter: Callable[[], DocumentStore] = lambda: self.store
        self._stage = WriteStage(self.config, self._store_getter, self._circuit, self._counters)
        #: The durable outbox when ``SESSION_STATE_SPOOL`` is set.
        self.outbox: Outbox | None = None
        if self.config.spool:
            self.outbox = Outbox(self.config.spool, self.config.spool_sync_interval,
                                 self.config.spool_max_documents)

    @property
    def store(self) -> DocumentStore:
        """The store every actor writes to (opened with the runtime)."""
        if self._store is None:
            self._store = open_store(self.config)
        return self._store

    @property
    def is_open(self) -> bool:
        """Whether the runtime accepts messages."""
        return self._state is _State.OPEN

    @property
    def counters(self) -> SystemCounters:
        """The live counters (internal to handles and actors)."""
        return self._counters

    # -- lifetime ---------------------------------------------------------------------------------

    async def __aenter__(self) -> ActorRuntime:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(f"an actor system cannot be entered twice (it is {self._state.value})")
        stack = AsyncExitStack()
        await stack.enter_async_context(self._lifetime())
        self._stack = stack
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[None]:
        if self.outbox is not None:
            # A spool path that cannot be one fails here, not at the exit. Not closed when this fails: a
            # cancelled open leaves its thread (abandoned) the spool's only user until it ends.
            await self.outbox.open()
        try:
            async with anyio.create_task_group() as services:
                if self.outbox is not None:
                    services.start_soon(self.outbox.run, name="session-outbox-sync")
                    services.start_soon(self._replay, name="session-outbox-replay")
                try:
                    async with anyio.create_task_group() as actors:
                        self._task_group = actors
                        self._state = _State.OPEN
                        actors.start_soon(self._spawn_actors, name="session-actor-spawner")
                        actors.start_soon(self._forget_idle_actors, name="session-actor-reaper")
                        try:
                            yield
                        finally:
                            self._close()
                finally:
                    self._task_group = None  # ended: nothing more can start in it
                    for actor in self._actors.values():
                        actor.give_up()  # a batch left in the stage at the deadline, its owner never woken
                    self._stage.discard()
                    self._actors.clear()
                    self._idle.clear()
                    services.cancel_scope.cancel()
                    if self.outbox is not None:
                        # What an earlier run left is finished like pending uploads: by the same deadline.
                        with anyio.CancelScope(shield=True, deadline=self._close_deadline):
                            await self.outbox.sync()  # superseded states leave the spool first
                            await self._replay()
        finally:
            with anyio.CancelScope(shield=True):
                if self.outbox is not None and self.outbox.is_open:
                    left = await self.outbox.aclose()  # a last sync: what is still unwritten stays spooled
                    if left:
                        logger.warning("session_state.outbox", status="failed", op="close", spooled=left,
                                       error=f"{left} uploads not written; they stay spooled for the next start")
                if self._store is not None:
                    await self._store.aclose()

    def _close(self) -> None:
        self._state = _State.CLOSED
        # One deadline bounds the leaving: the actors' last writes, those already in flight included (a
        # hanging server cannot hold the exit for a whole store deadline), and the outbox replay.
        self._close_deadline = deadline = anyio.current_time() + self.config.shutdown_timeout
        if self._task_group is not None:
            self._task_group.cancel_scope.deadline = deadline
        for actor in self._actors.values():
            actor.close(deadline)  # a running actor writes what it holds and ends
        self._stage.close()  # batches in the stage wake their owners as writes may start
        for event in (self._spawner_wakeup, self._reaper_wakeup):
            if event is not None:
                event.set()

    async def _replay(self) -> None:
        assert self.outbox is not None
        await self.outbox.replay(self.store, retry_backoff=self.config.retry_backoff,
                                 max_backoff=max(self.config.retry_backoff_max, self.config.retry_backoff),
                                 keep_latest=self.config.keep == "latest", counters=self._counters)

    # -- actors -----------------------------------------------------------------------------------

    def actor(self, session_id: str) -> SessionActor:
        """The actor of ``session_id``, made if it is not in memory (internal to handles).

        Raises:
            anyio.ClosedResourceError: the runtime is not open.
        """
        actor = self._actors.get(session_id)
        if actor is None:
            if self._state is not _State.OPEN:
                raise anyio.ClosedResourceError
            ops = SessionOps(session_id, self.config, self._store_getter, self._circuit)
            actor = self._actors[session_id] = SessionActor(ops, self._counters, self._stage, self, self.outbox)
        return actor

    def start(self, actor: SessionActor) -> None:
        """Start ``actor`` (internal to actors): by the spawner task, off the caller's path, so that a
        first submit stays as cheap as any."""
        self._counters.actors_started += 1
        self._running += 1
        self._idle.pop(actor.ops.session_id, None)
        if (self._state is not _State.OPEN or self._spawner_done) and self._task_group is not None:
            # Closing, or cancelled: the spawner has ended, or may have. An actor started now has a batch
            # in the write stage to wait for, an answer to act on, or an upload accepted in the caller's
            # shielded cleanup to write; start it here (started cancelled, it still drains its mailbox).
            self._task_group.start_soon(actor.run, name=_ACTOR_TASK)
            return
        self._to_start.append(actor)
        if self._spawner_wakeup is not None:
            self._spawner_wakeup.set()
            self._spawner_wakeup = None

    def on_idle(self, actor: SessionActor) -> None:
        """``actor``'s task ended (internal to actors): forget the actor after ``idle_timeout`` unless it
        has work by then."""
        self._running -= 1
        self.rest(actor)

    def rest(self, actor: SessionActor) -> None:
        """``actor`` has no task and no work (internal to actors): forget it after ``idle_timeout``."""
        session_id = actor.ops.session_id
        if self._actors.get(session_id) is actor:
            self._idle.pop(session_id, None)
            self._idle[session_id] = (monotonic(), actor)
            if self._reaper_wakeup is not None:
                self._reaper_wakeup.set()
                self._reaper_wakeup = None

    async def _spawn_actors(self) -> None:
        """Start the actors that messages woke, until the runtime closes (then start the last ones)."""
        assert self._task_group is not None
        try:
            while self._state is _State.OPEN:
                if not self._to_start:
                    self._spawner_wakeup = anyio.Event()
                    await self._spawner_wakeup.wait()
                self._start_waiting()
        finally:
            self._start_waiting()  # even when cancelled: an actor started cancelled still drains its mailbox
            self._spawner_done = True

    def _start_waiting(self) -> None:
        assert self._task_group is not None
        to_start, self._to_start = self._to_start, []
        start_soon = self._task_group.start_soon
        for actor in to_start:
            start_soon(actor.run, name=_ACTOR_TASK)

    async def _forget_idle_actors(self) -> None:
        """Forget actors idle for ``idle_timeout`` (oldest first: one sleep covers them all)."""
        idle = self._idle
        idle_timeout = self.config.idle_timeout
        while self._state is _State.OPEN:
            wait = float("inf")
            while idle:
                session_id, (since, actor) = next(iter(idle.items()))
                wait = since + idle_timeout - monotonic()
                if wait > 0:
                    break
                del idle[session_id]
                if not (actor.running or actor.pending or len(actor.mailbox)) \
                        and self._actors.get(session_id) is actor:
                    del self._actors[session_id]
            self._reaper_wakeup = event = anyio.Event()
            with anyio.move_on_after(wait):
                await event.wait()

    def idle_actor(self, session_id: str) -> SessionActor | None:
        """The actor of ``session_id`` if it is in memory and has nothing queued, pending or in progress."""
        actor = self._actors.get(session_id)
        if actor is None or actor.busy or actor.running or actor.pending or len(actor.mailbox):
            return None
        return actor

    # -- observing --------------------------------------------------------------------------------

    def statistics(self) -> SystemStatistics:
        """A snapshot of the counters."""
        c = self._counters
        actors = self._actors.values()
        return SystemStatistics(
            live_actors=len(self._actors),
            actors_started=c.actors_started,
            submitted=c.submitted,
            coalesced=c.coalesced,
            documents=c.documents,
            store_writes=c.store_writes,
            failed=c.failed,
            queued=sum(len(a.mailbox) for a in actors),
            pending=c.pending,
            unchanged=c.unchanged,
            failed_by_status=dict(c.failed_by_status),
            outbox_depth=0 if self.outbox is None else self.outbox.pending,
            circuit_state=self._circuit.state,
            running_actors=self._running,
            write_queue=self._stage.queued,
        )

    def add_write_observer(self, observer: Callable[[WriteObservation], None]) -> None:
        """Call ``observer`` after every store write (synchronously: keep it cheap, it must not raise)."""
        self._counters.write_observers.append(observer)

    def remove_write_observer(self, observer: Callable[[WriteObservation], None]) -> None:
        """Stop calling ``observer`` (added with :meth:`add_write_observer`); nothing if it is not there."""
        observers = self._counters.write_observers
        if observer in observers:
            observers.remove(observer)
