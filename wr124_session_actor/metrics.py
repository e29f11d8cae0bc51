"""Prometheus metrics of an :class:`ActorSystem` (the ``metrics`` extra: ``prometheus_client``).

:func:`register` adds a collector to a ``prometheus_client`` registry; it reads the system's
:meth:`~ActorSystem.statistics` at every scrape, so it costs nothing between scrapes. The library
never serves HTTP itself: expose the registry from your own application, e.g.::

    from prometheus_client import start_http_server
    from wr124_session_actor.metrics import register

    async with ActorSystem(config) as system:
        register(system)            # the default registry
        start_http_server(9464)     # or mount prometheus_client.make_asgi_app() in your web app

The core package never imports this module, so it works without ``prometheus_client``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised with the module hidden
    raise ImportError("wr124_session_actor.metrics needs prometheus_client:"
                      " pip install 'wr124-session-actor[metrics]'") from exc

from ._statistics import SystemStatistics, WriteObservation
from ._status import SessionStateStatus
from ._system import ActorSystem

__all__ = ["PREFIX", "SystemCollector", "register"]

#: Every metric name starts with this.
PREFIX: Final = "wr124_session_"

#: Write latency buckets, in seconds (a local sqlite write is ~1 ms, a remote batch up to seconds).
_LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Documents-per-write buckets (``max_batch`` is 500 by default).
_BATCH_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)
#: The circuit breaker's states, each a series of ``circuit_state`` (1 for the current one).
_CIRCUIT_STATES: Final = ("closed", "open", "half-open")


@dataclass(frozen=True, slots=True)
class _Scalar:
    """One :class:`SystemStatistics` field exposed as one metric."""

    field: str
    name: str
    kind: Literal["counter", "gauge"]
    help: str


# The statistics fields read by name: fields added to SystemStatistics later are simply not exposed
# until listed here, and a field that disappears is skipped rather than failing the scrape.
_SCALARS: Final = (
    _Scalar("live_actors", "live_actors", "gauge", "Session actors in memory (running, or idle for a while)."),
    _Scalar("running_actors", "running_actors", "gauge", "Session actors whose task runs now."),
    _Scalar("write_queue", "write_queue", "gauge", "Session batches waiting in the write stage for a store write."),
    _Scalar("queued", "queued_messages", "gauge", "Messages waiting in all session mailboxes."),
    _Scalar("pending", "pending_uploads", "gauge", "Uploads waiting in actors' batches, not yet written."),
    _Scalar("outbox_depth", "outbox_depth", "gauge", "Uploads held by the durable outbox, not yet confirmed."),
    _Scalar("actors_started", "actors_started_total", "counter", "Session actors started (restarts count)."),
    _Scalar("submitted", "submitted_total", "counter", "Uploads accepted (submitted or awaited)."),
    _Scalar("coalesced", "coalesced_total", "counter", "Uploads replaced by a newer state before being written."),
    _Scalar("unchanged", "unchanged_total", "counter", "Uploads skipped because they equal the last stored state."),
    _Scalar("documents", "documents_written_total", "counter", "Documents written to the store."),
    _Scalar("store_writes", "store_writes_total", "counter", "Store write calls (batches)."),
)


class SystemCollector(Collector):
    """A ``prometheus_client`` collector reading one :class:`ActorSystem` at scrape time.

    Args:
        system: the actor system to read.
    """

    def __init__(self, system: ActorSystem) -> None:
        self._system = system
        # Unregistered histograms, fed by the system's write observer and yielded by collect().
        self._latency = Histogram(
            PREFIX + "write_seconds", "Store write duration, retries included.",
            buckets=_LATENCY_BUCKETS, registry=None,
        )
        self._batch = Histogram(
            PREFIX + "write_documents", "Documents per store write.", buckets=_BATCH_BUCKETS, registry=None
        )
        #: Store write calls that failed (retries included), by status: an outage shows at once, where
        #: ``failed_total`` counts uploads only once their batch is given up.
        self._write_failures: dict[str, int] = {}
        system.add_write_observer(self._observe)

    def detach(self) -> None:
        """Stop observing the system's writes (after ``registry.unregister(collector)``, say)."""
        self._system.remove_write_observer(self._observe)

    def _observe(self, observation: WriteObservation) -> None:
        self._latency.observe(observation.duration_s)
        self._batch.observe(observation.documents)
        if observation.status is not SessionStateStatus.SUCCESS:
            status = observation.status.value
            self._write_failures[status] = self._write_failures.get(status, 0) + 1

    def describe(self) -> Iterator[Metric]:
        """Yield the metrics (names only matter): registries use them to refuse duplicate names."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield every metric from a fresh statistics snapshot."""
        stats: SystemStatistics = self._system.statistics()
        for scalar in _SCALARS:
            value = getattr(stats, scalar.field, None)
            if value is None:
                continue
            family = CounterMetricFamily if scalar.kind == "counter" else GaugeMetricFamily
            yield family(PREFIX + scalar.name, scalar.help, value=value)
        yield _by_status("failed_total", "Uploads whose write failed, by status.",
                         getattr(stats, "failed_by_status", {}))
        yield _by_status("write_failures_total", "Store write calls that failed (after their retries), by status.",
                         dict(self._write_failures))  # a copy: the loop thread adds to it
        circuit = GaugeMetricFamily(
            PREFIX + "circuit_state", "The store's circuit breaker: 1 for the current state.", labels=["state"]
        )
        current = getattr(stats, "circuit_state", "closed")
        for state in _CIRCUIT_STATES:
            circuit.add_metric([state], 1.0 if state == current else 0.0)
        yield circuit
        yield from self._latency.collect()
        yield from self._batch.collect()


def _by_status(name: str, help_text: str, counts: dict[str, int]) -> CounterMetricFamily:
    """A counter family with one series per status in ``counts``."""
    family = CounterMetricFamily(PREFIX + name, help_text, labels=["status"])
    for status, count in sorted(counts.items()):
        family.add_metric([status], count)
    return family


def register(system: ActorSystem, registry: CollectorRegistry | None = None) -> SystemCollector:
    """Register a collector of ``system``'s metrics with ``registry`` (the default registry when ``None``).

    One system per registry: a second registration in the same registry raises ``ValueError``
    (duplicate metric names); use one :class:`~prometheus_client.CollectorRegistry` per system.

    Args:
        system: the actor system to expose.
        registry: where to register; ``prometheus_client.REGISTRY`` by default.

    Returns:
        The collector (``registry.unregister(collector)``, then ``collector.detach()``, removes it).
    """
    collector = SystemCollector(system)
    try:
        (REGISTRY if registry is None else registry).register(collector)
    except ValueError:
        collector.detach()  # not registered: it must not go on observing the system's writes
        raise
    return collector
