"""Library metrics: a prometheus_client collector reading an ActorSystem at scrape time."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from wr124_session_actor import ActorSystem, Config, SessionStateStatus
from wr124_session_actor._demo import _run_team
from wr124_session_actor.metrics import PREFIX, register

from .faultserver import closed_port_url

pytestmark = pytest.mark.anyio


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of a scrape, keyed by name and labels (``name{k="v"}``)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


class TestSystemCollector:
    async def test_a_scrape_during_the_demo_shows_the_metrics_moving(self, sqlite_config: Config) -> None:
        """While chatty teams write, submitted > written > 0 and coalesced > 0; the histograms count writes."""
        registry = CollectorRegistry()
        async with ActorSystem(sqlite_config) as system:
            register(system, registry)
            before = scrape(registry)
            assert before[PREFIX + "submitted_total"] == 0
            async with anyio.create_task_group() as tg:
                for session in ("demo-1", "demo-2"):
                    for agent in ("planner", "coder"):
                        tg.start_soon(_run_team, system, session, agent, 30)
            during = scrape(registry)
        assert during[PREFIX + "submitted_total"] > during[PREFIX + "documents_written_total"] > 0
        assert during[PREFIX + "coalesced_total"] > 0
        writes = during[PREFIX + "store_writes_total"]
        assert writes > 0
        assert during[PREFIX + "write_seconds_count"] == writes
        assert during[PREFIX + "write_documents_count"] == writes
        assert during[PREFIX + "write_documents_sum"] == during[PREFIX + "documents_written_total"]
        assert during[PREFIX + 'circuit_state{state="closed"}'] == 1
        assert during[PREFIX + 'circuit_state{state="open"}'] == 0
        for gauge in ("live_actors", "running_actors", "write_queue", "queued_messages", "pending_uploads",
                      "outbox_depth"):
            assert PREFIX + gauge in during

    async def test_failures_are_counted_by_status(self, memory_config: Config) -> None:
        """failed_total has one series per status the system counted."""
        registry = CollectorRegistry()
        async with ActorSystem(memory_config) as system:
            register(system, registry)
            system.counters.fail(SessionStateStatus.TIMEOUT, 2)
            system.counters.fail(SessionStateStatus.FAILED)
            samples = scrape(registry)
        assert samples[PREFIX + 'failed_total{status="timeout"}'] == 2
        assert samples[PREFIX + 'failed_total{status="failed"}'] == 1

    async def test_an_outage_shows_in_write_failures_while_it_lasts(self) -> None:
        """Failed store writes are counted by status as they happen (failed_total counts an upload only once its
        batch is given up: an outage showed in no failure metric until the exit)."""
        registry = CollectorRegistry()
        config = Config(api_url=closed_port_url(), retries=0, timeout=0.5, retry_backoff=0.01,
                        retry_backoff_max=0.02, shutdown_timeout=0.2)
        async with ActorSystem(config) as system:
            register(system, registry)
            system.handle("s").submit({"n": 1}, "t", "a")
            with anyio.fail_after(10):
                while scrape(registry).get(PREFIX + 'write_failures_total{status="failed"}', 0) < 2:
                    await anyio.sleep(0.02)
            assert scrape(registry).get(PREFIX + 'failed_total{status="failed"}', 0) == 0  # not given up yet

    async def test_one_system_per_registry(self, memory_config: Config) -> None:
        """Registering a second system in the same registry is refused (and leaves nothing behind); unregistering
        and detaching works."""
        registry = CollectorRegistry()
        async with ActorSystem(memory_config) as first, ActorSystem(memory_config) as second:
            collector = register(first, registry)
            with pytest.raises(ValueError, match="Duplicated"):
                register(second, registry)
            # The refused collector does not go on observing the system's writes (it did, for nobody).
            assert second._counters.write_observers == []
            registry.unregister(collector)
            collector.detach()
            assert first._counters.write_observers == []
            register(second, registry)

    def test_names_follow_prometheus_conventions(self) -> None:
        """Every name has the prefix; counters end in _total; the duration histogram in _seconds."""
        from wr124_session_actor.metrics import _SCALARS

        for scalar in _SCALARS:
            assert (scalar.kind == "counter") == scalar.name.endswith("_total")

    def test_the_core_package_imports_without_prometheus_client(self) -> None:
        """``import wr124_session_actor`` does not import prometheus_client."""
        code = "import sys, wr124_session_actor; assert 'prometheus_client' not in sys.modules"
        subprocess.run([sys.executable, "-c", code], check=True)


def test_without_prometheus_client_the_import_names_the_extra() -> None:
    """Importing the metrics module where prometheus_client is not installed says which extra to install
    (it was a bare ModuleNotFoundError)."""
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "try:\n    import wr124_session_actor.metrics\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == ("wr124_session_actor.metrics needs prometheus_client:"
                           " pip install 'wr124-session-actor[metrics]'")
