"""Batching policy of one session: what is pending, when it is due, what coalesces, when to try again.

Plain synchronous code with no I/O and no clock of its own (callers pass ``now``), so it is tested
without an event loop; :class:`~wr124_session_actor._actor.SessionActor` is the task that drives it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._backoff import backoff_delay
from ._config import Config
from ._document import StateUpload
from ._ops import UploadOutcome
from ._status import SessionStateStatus

__all__ = ["PendingBatch", "PendingUpload"]

R = TypeVar("R")


@dataclass(slots=True)
class PendingUpload(Generic[R]):
    """An upload waiting in the batch, with every caller (reply slot) its outcome will answer."""

    upload: StateUpload
    #: The callers waiting for this upload's outcome (a list made for the first one: most have none).
    replies: list[R] | tuple[()] = ()
    coalesced: int = 0
    #: Taken for a write that has not been settled yet.
    writing: bool = False


def continue_lineage(newer: StateUpload, older: StateUpload) -> bool:
    """A newer state that replaces an older one continues what the older one continued (``parent_seq``);
    return whether ``newer`` took the older one's parent."""
    if newer.parent_seq is None and older.parent_seq is not None:
        newer.parent_seq = older.parent_seq
        return True
    return False


class PendingBatch(Generic[R]):
    """The uploads of one session waiting for their store write.

    Due when the session has been quiet for ``debounce``, ``max_delay`` after the first pending upload,
    at once while a caller awaits one of them, and never before the retry time after a failure. With
    ``keep="latest"`` a newer upload of an agent replaces its pending one (the older callers are
    answered with the newer document's id). While the store fails the batch stays bounded by ``bound``:
    a new upload then replaces the oldest pending one of its agent.

    Args:
        config: ``keep``, ``debounce``, ``max_delay``, ``max_batch``, ``retry_backoff`` and ``retry_backoff_max``.
        bound: the most uploads kept while the store fails.
    """

    __slots__ = ("_awaited", "_config", "_failures", "_first_at", "_items", "_last_at", "bound", "last_error",
                 "retry_at")

    def __init__(self, config: Config, *, bound: int) -> None:
        self._config = config
        self.bound = bound
        self._items: dict[str, PendingUpload[R]] = {}
        self._first_at = 0.0
        self._last_at = 0.0
        self._awaited = False
        self._failures = 0
        #: No write before this time (after a failed one).
        self.retry_at = 0.0
        #: Why the last write failed for a reason that may pass (``None`` after one that worked).
        self.last_error: str | None = None

    def __len__(self) -> int:
        return len(self._items)

    def add(self, upload: StateUpload, reply: R | None, coalesced: int, now: float) -> tuple[StateUpload | None, int]:
        """Add an upload; return the upload it replaced (if any) and how many uploads coalesced here."""
        items = self._items
        if not items:
            self._first_at = now
        self._last_at = now
        keep_latest = self._config.keep == "latest"
        key = self._key(upload)
        older = items.pop(key, None) if keep_latest else None
        if older is None and len(items) >= self.bound:
            older = self._pop_oldest_of(upload.agent_name)  # the store is failing: stay bounded
        pending: PendingUpload[R] = PendingUpload(upload, coalesced=coalesced)
        replaced = older is not None and not older.writing
        if older is not None:
            if older.writing:
                # Being written all the same (not coalesced): its callers are answered by its write, or by
                # this one's should it fail for now; this one's callers only by this one's. Its parent is not
                # taken: stored, the newer state needs no check (:meth:`settle` passes it on otherwise).
                pending.replies = list(older.replies) if older.replies else ()
            else:
                continue_lineage(upload, older.upload)
                pending.replies = older.replies
                pending.coalesced += older.coalesced + 1
        if reply is not None:
            if pending.replies:
                pending.replies.append(reply)  # non-empty: a list
            else:
                pending.replies = [reply]
            self._awaited = True
        items[key] = pending
        return (None if older is None else older.upload), coalesced + replaced

    def _key(self, upload: StateUpload) -> str:
        return upload.agent_name if self._config.keep == "latest" else upload.doc_id

    def _pop_oldest_of(self, agent_name: str) -> PendingUpload[R] | None:
        for key, pending in self._items.items():
            if pending.upload.agent_name == agent_name:
                return self._items.pop(key)
        return None

    @property
    def awaited(self) -> bool:
        """Whether a caller waits for one of the pending uploads."""
        return self._awaited

    @property
    def full(self) -> bool:
        """Whether ``max_batch`` uploads are pending."""
        return len(self._items) >= self._config.max_batch

    def due_at(self) -> float:
        """When the batch should be written (``inf`` when empty)."""
        if not self._items:
            return math.inf
        if self._awaited:
            return self.retry_at  # a caller is blocked: no reason to wait for quiet
        config = self._config
        return max(self.retry_at, min(self._last_at + config.debounce, self._first_at + config.max_delay))

    def take(self) -> list[PendingUpload[R]]:
        """The uploads to write now, oldest first (they stay pending until :meth:`settle`).

        An upload that continues a state (``parent_seq``) ends its agent's part of the write: the agent's
        later uploads wait for the next one, once the store has said whether it took the continuation (a
        refused one is not to be stored from its second state on).
        """
        items: list[PendingUpload[R]] = []
        continued: set[str] | None = None
        for pending in self._items.values():
            upload = pending.upload
            if continued is not None and upload.agent_name in continued:
                continue
            if upload.parent_seq is not None:
                if continued is None:
                    continued = set()
                continued.add(upload.agent_name)
            pending.writing = True
            items.append(pending)
        return items

    def settle(self, batch: list[PendingUpload[R]], outcomes: Iterable[UploadOutcome],
               now: float) -> list[tuple[PendingUpload[R], UploadOutcome]]:
        """Record a write's outcomes; return the uploads that are done (written, or failed for good).

        Uploads that failed for a transient reason stay pending, and the batch waits a backoff. Uploads
        added while the write was in flight stay pending, those that replaced a written one included.
        """
        for pending in batch:
            pending.writing = False
        answered = list(zip(batch, outcomes, strict=True))
        done = [(pending, outcome) for pending, outcome in answered
                if outcome.status is SessionStateStatus.SUCCESS or not outcome.transient]
        items = self._items
        for pending, _ in done:
            key = self._key(pending.upload)
            if items.get(key) is pending:  # else replaced meanwhile (by a newer state, or at the bound)
                del items[key]
        self._awaited = bool(items) and any(p.replies for p in items.values())
        if len(done) < len(batch):
            retried = [(pending, outcome) for pending, outcome in answered
                       if outcome.status is not SessionStateStatus.SUCCESS and outcome.transient]
            self._pass_on_continuations(pending for pending, _ in retried)
            self._failures += 1
            self.last_error = str(retried[0][1].value)
            config = self._config
            self.retry_at = now + backoff_delay(self._failures, config.retry_backoff, config.retry_backoff_max * 4)
        elif batch:
            self._failures = 0
            self.retry_at = 0.0
            self.last_error = None
        return done

    def _pass_on_continuations(self, failed: Iterable[PendingUpload[R]]) -> None:
        """A continuation (``parent_seq``) not stored yet whose newer state came while it was written: the newer
        one, which was not told the parent then (the continuation might be stored), continues it now."""
        items = self._items
        for pending in failed:
            newer = items.get(self._key(pending.upload))
            if newer is not None and newer is not pending and newer.upload.state is not None \
                    and continue_lineage(newer.upload, pending.upload):
                newer.upload.encoded = None  # encoded without it (by the spool's sync): encoded again

    def clear(self) -> list[PendingUpload[R]]:
        """Take every pending upload out (giving up on them)."""
        items = list(self._items.values())
        self._items.clear()
        return items
