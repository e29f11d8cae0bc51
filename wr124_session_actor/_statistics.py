"""The running totals of an actor system, the snapshot users read, and what write observers get."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._status import SessionStateStatus

__all__ = ["SystemCounters", "SystemStatistics", "WriteObservation"]


@dataclass(frozen=True, slots=True)
class WriteObservation:
    """One store write, as observers registered with ``ActorSystem.add_write_observer`` see it.

    Attributes:
        duration_s: seconds the write took (retries included, queueing before it excluded).
        documents: documents in the write (of every session it carried).
        status: its outcome.
    """

    duration_s: float
    documents: int
    status: SessionStateStatus


@dataclass(slots=True)
class SystemCounters:
    """Running totals the actors and the write stage update (read them through ``ActorSystem.statistics``)."""

    submitted: int = 0
    coalesced: int = 0
    unchanged: int = 0
    documents: int = 0
    store_writes: int = 0
    failed: int = 0
    actors_started: int = 0
    #: Uploads pending in all actors' batches, and queued in their mailboxes: with ``full_write`` (the
    #: documents of a full store write) they tell whether a full write's worth is waiting.
    pending: int = 0
    queued_uploads: int = 0
    full_write: int = 500
    #: Whether queued uploads become documents one for one (keep="all"); with keep="latest" they
    #: coalesce per agent, so only the pending batches tell how much a write would carry.
    queued_are_documents: bool = False
    failed_by_status: dict[str, int] = field(default_factory=dict)
    write_observers: list[Callable[[WriteObservation], None]] = field(default_factory=list)

    @property
    def under_pressure(self) -> bool:
        """Whether a full store write's worth of uploads waits across the system (no reason to wait for quiet)."""
        queued = self.queued_uploads if self.queued_are_documents else 0
        return self.pending + queued >= self.full_write

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
        live_actors: session actors in memory (running, or idle for less than ``idle_timeout``).
        actors_started: actors started so far (an idle actor that comes back counts again).
        submitted: uploads accepted (``submit`` and awaited ``upload``).
        coalesced: uploads replaced by a newer state of the same agent before being written.
        documents: documents written.
        store_writes: store write calls (one call may carry the batches of many sessions).
        failed: uploads whose write failed.
        queued: messages waiting in all mailboxes.
        pending: uploads waiting in actors' batches (the backlog behind the store write in flight).
        unchanged: uploads not written because they equal the agent's last stored state.
        failed_by_status: ``failed`` split by status value (``"failed"``, ``"timeout"``, ...).
        outbox_depth: uploads held by the durable outbox, not yet confirmed by the store (0 without one).
        circuit_state: the store's circuit breaker: ``"closed"``, ``"open"`` or ``"half-open"``.
        running_actors: actors whose task runs now (the others are idle and cost no task).
        write_queue: session batches waiting in the write stage for a store write.
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
    running_actors: int = 0
    write_queue: int = 0
