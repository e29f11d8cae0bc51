"""A circuit breaker that stops hammering a store that keeps failing, and probes it with ``health()``."""

from __future__ import annotations

import anyio

from ._backoff import backoff_delay
from ._exceptions import CircuitOpen, StoreError
from .stores import DocumentStore

__all__ = ["CircuitBreaker"]


class CircuitBreaker:
    """Closed while calls succeed; open after ``threshold`` transient failures in a row.

    While open, calls fail at once with ``CircuitOpen`` (no network). When the cooldown has
    passed, the next caller probes the store with ``health()`` (one probe at a time): an answer closes
    the circuit, a transient failure opens it again for twice as long (capped at ``max_cooldown``).
    A refusal is an answer too: a server without a health route (404) is up.

    Args:
        threshold: transient failures in a row that open the circuit.
        cooldown: seconds the circuit stays open the first time.
        max_cooldown: the longest it stays open.
    """

    __slots__ = ("_base", "_failures", "_last_error", "_max", "_open_until", "_probing", "_trips", "threshold")

    def __init__(self, threshold: int = 5, cooldown: float = 0.5, max_cooldown: float = 30.0) -> None:
        self.threshold = threshold
        self._base = cooldown
        self._max = max_cooldown
        self._trips = 0
        self._failures = 0
        self._last_error = ""
        self._open_until = 0.0
        self._probing = False

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` (cooldown over, the next call probes)."""
        if self._failures < self.threshold:
            return "closed"
        return "open" if anyio.current_time() < self._open_until else "half-open"

    async def before_call(self, store: DocumentStore) -> None:
        """Return when a call may go to the store; raise ``CircuitOpen`` while the circuit is open."""
        if self._failures < self.threshold:
            return
        now = anyio.current_time()
        if now < self._open_until or self._probing:
            await anyio.lowlevel.checkpoint()
            last = f" (the last: {self._last_error})" if self._last_error else ""
            raise CircuitOpen(
                f"circuit open: the store failed {self._failures} times in a row{last};"
                f" next probe in {max(0.0, self._open_until - now):.2f}s"
            )
        self._probing = True
        try:
            await store.health()
        except StoreError as exc:
            if exc.transient:
                self._trip()
                raise CircuitOpen(f"circuit open: health probe failed: {exc}") from exc
        finally:
            self._probing = False
        self.record_success()

    def record_success(self) -> None:
        """A call succeeded: close the circuit."""
        self._failures = 0
        self._trips = 0

    def record_failure(self, error: str = "") -> None:
        """A call failed for a transient reason (``error`` says which: the open circuit's refusals name it);
        open the circuit at the threshold."""
        self._failures += 1
        self._last_error = error
        if self._failures == self.threshold:
            self._trip()

    def _trip(self) -> None:
        self._trips += 1
        self._open_until = anyio.current_time() + backoff_delay(self._trips, self._base, self._max, jitter=False)
