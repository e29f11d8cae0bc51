"""The circuit breaker in front of a failing store."""

from __future__ import annotations

import anyio
import pytest

from wr124_session_actor import CircuitOpen, Config, SessionStateManager, StoreRejected, StoreUnavailable
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._circuit import CircuitBreaker
from wr124_session_actor._ops import call_store
from wr124_session_actor.stores import MemoryStore

from .faultserver import fault_server

pytestmark = pytest.mark.anyio


class FlakyHealth(MemoryStore):
    """A memory store whose health() fails while ``down`` is set, counting probes."""

    def __init__(self) -> None:
        super().__init__("flaky")
        self.down = True
        self.probes = 0

    async def health(self) -> None:
        self.probes += 1
        await anyio.lowlevel.checkpoint()
        if self.down:
            raise StoreUnavailable("still down")


class NoHealthRoute(FlakyHealth):
    """A store whose health() is refused for good, as a server without the route answers it."""

    async def health(self) -> None:
        self.probes += 1
        await anyio.lowlevel.checkpoint()
        raise StoreRejected("HTTP 404: Not Found", status_code=404)


class TestCircuitBreaker:
    async def test_opens_after_threshold_and_fails_fast(self) -> None:
        """After ``threshold`` transient failures calls fail at once with CircuitOpen, without a probe."""
        circuit, store = CircuitBreaker(threshold=3, cooldown=10), FlakyHealth()
        for _ in range(3):
            await circuit.before_call(store)
            circuit.record_failure()
        assert circuit.state == "open"
        with pytest.raises(CircuitOpen):
            await circuit.before_call(store)
        assert store.probes == 0

    async def test_half_open_probes_with_health(self) -> None:
        """After the cooldown one health() probe decides: failure re-opens for longer, success closes."""
        circuit, store = CircuitBreaker(threshold=1, cooldown=0.01), FlakyHealth()
        circuit.record_failure()
        await anyio.sleep(0.02)
        assert circuit.state == "half-open"
        with pytest.raises(CircuitOpen, match="health probe failed"):
            await circuit.before_call(store)
        assert (store.probes, circuit.state) == (1, "open")
        store.down = False
        await anyio.sleep(0.03)  # the second cooldown is twice the first
        await circuit.before_call(store)
        assert (store.probes, circuit.state) == (2, "closed")

    async def test_a_refused_probe_is_an_answer(self) -> None:
        """A probe refused for good (a server without a health route answers 404) shows the store is up:
        the circuit closes."""
        circuit, store = CircuitBreaker(threshold=1, cooldown=0.01), NoHealthRoute()
        circuit.record_failure()
        await anyio.sleep(0.02)
        await circuit.before_call(store)
        assert (store.probes, circuit.state) == (1, "closed")

    async def test_stops_hammering_a_failing_server(self) -> None:
        """A manager calling a store that answers 500 sends far fewer requests once the circuit is open."""
        config = Config(retries=0, timeout=2, circuit_threshold=3, circuit_cooldown=30)
        with fault_server("500") as (url, hits):
            manager = SessionStateManager("s", config.replace(api_url=url))
            statuses = [(await manager.upload_session_state({"n": n}))[0] for n in range(20)]
            await manager.aclose()
        assert set(statuses) == {S.FAILED}
        assert len(hits) == 3


class TestRetriesCountFailuresInARow:
    async def test_a_failure_that_got_work_done_starts_a_new_run(self) -> None:
        """A write of many requests that fails after storing some of its documents (``progressed``) is tried
        again past ``retries`` while each try gets further, without a longer backoff or opening the circuit;
        a failure that got nothing done counts as before (a 200-document write with 5% of its POSTs failing
        gave up after 5 tries, each with a longer backoff)."""
        config = Config(api_url="memory://", retries=2, retry_backoff=0.001, retry_backoff_max=0.002)
        circuit = CircuitBreaker(threshold=3, cooldown=10)
        tries: list[int] = []

        async def write() -> str:
            tries.append(len(tries))
            await anyio.lowlevel.checkpoint()
            if len(tries) <= 6:  # six tries each store a part, then fail
                error = StoreUnavailable("HTTP 503")
                error.progressed = True
                raise error
            return "done"

        outcome = await call_store(config, circuit, lambda: MemoryStore("x"), write)
        assert (outcome.status, outcome.value, outcome.attempts, circuit.state) == (S.SUCCESS, "done", 7, "closed")

        async def fail() -> str:
            await anyio.lowlevel.checkpoint()
            raise StoreUnavailable("HTTP 503")

        outcome = await call_store(config, circuit, lambda: MemoryStore("x"), fail)
        assert (outcome.status, outcome.attempts, circuit.state) == (S.FAILED, 3, "open")
