"""Misbehaving servers: hanging, random 500s, random resets, malformed JSON, 429/5xx and permanent 4xx.

Each test names the fault in its docstring, counts what was sent against what arrived, and checks
that no public call raised. Over the in-memory :class:`DocServer` the count is exact: it stores
documents by id and records every write request it saw.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, SessionStateManager
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor.stores._http import HttpStore

from ..faultserver import BrokenTransport, closed_port_url, fault_server
from .docserver import doc_server
from .tally import PublicCalls, report, spool_rows, tally

pytestmark = pytest.mark.anyio


def retry_events(logs: Sequence[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The ``session_state.retry`` events: one per failed attempt that will be tried again."""
    return [e for e in logs if e["event"] == "session_state.retry"]


def outcome_events(logs: Sequence[MutableMapping[str, Any]], op: str = "upload") -> list[MutableMapping[str, Any]]:
    """The final outcome event of each call of ``op``."""
    return [e for e in logs if e["event"] == f"session_state.{op}"]


async def every_call(manager: SessionStateManager, calls: PublicCalls) -> dict[str, Any]:
    """Each public operation once, through ``calls`` (so an exception is recorded, not raised)."""
    return {
        "upload": await calls.call("upload", manager.upload_session_state, {"a": 1}, "t", "agent"),
        "download": await calls.call("download", manager.download_session_states, limit=5),
        "restore": await calls.call("restore", manager.restore_session_state, "some-id"),
        "latest": await calls.call("latest", manager.restore_latest_session_state),
        "agent": await calls.call("agent", manager.restore_agent_session_state, "agent"),
        "list": await calls.call("list", manager.list_available_session_states),
        "delete": await calls.call("delete", manager.delete_session_state, "some-id"),
    }


async def submit_paced(system: ActorSystem, calls: PublicCalls, sessions: int, per_session: int,
                       pause: float = 0.005) -> list[int]:
    """Submit ``sessions`` × ``per_session`` states ``{"seq": n}``, a round at a time; return the accepted."""
    handles = [system.handle(f"s{n}") for n in range(sessions)]
    sent = []
    for round_ in range(per_session):
        for n, handle in enumerate(handles):
            seq = round_ * sessions + n
            if calls.sync("submit", handle.submit, {"seq": seq}, "t", "agent") == S.SUCCESS:
                sent.append(seq)
        await anyio.sleep(pause)
    return sent


async def every_call_one(manager: SessionStateManager, calls: PublicCalls, op: str) -> Any:
    """One public operation, by name, through ``calls``."""
    if op == "upload":
        return await calls.call(op, manager.upload_session_state, {"a": 1})
    if op == "download":
        return await calls.call(op, manager.download_session_states)
    if op == "restore":
        return await calls.call(op, manager.restore_session_state, "some-id")
    if op == "list":
        return await calls.call(op, manager.list_available_session_states)
    return await calls.call(op, manager.delete_session_state, "some-id")


class TestHangingServer:
    async def test_every_call_times_out_within_the_timeout(self) -> None:
        """Fault: a server that accepts the connection and never answers. Every public call (retries
        allowed) returns TIMEOUT within SESSION_STATE_TIMEOUT, without raising."""
        calls = PublicCalls()
        timeout = 0.25
        with fault_server("hang") as (url, hits):
            manager = SessionStateManager("s", Config(api_url=url, timeout=timeout, retries=5))
            took = {}
            for op in ("upload", "download", "restore", "list", "delete"):
                started = time.monotonic()
                with anyio.fail_after(5):
                    result = await every_call_one(manager, calls, op)
                took[op] = time.monotonic() - started
                assert result is not None and result[0] == S.TIMEOUT, (op, result)
            await manager.aclose()
        assert calls.raised == []
        assert all(timeout * 0.9 <= t < timeout + 1.0 for t in took.values()), took
        assert hits, "the server saw no request"

    async def test_actor_mode_keeps_everything_in_the_outbox(self, tmp_path: Path, anyio_backend: str) -> None:
        """Fault: the server hangs for the whole run (actor mode, with a spool). Awaited uploads return
        TIMEOUT on time; at exit the submitted states are kept in the outbox, and the next start against
        a working server writes every one exactly once: nothing lost, nothing duplicated."""
        calls = PublicCalls()
        spool = str(tmp_path / "outbox.db")
        config = Config(keep="all", timeout=0.4, retries=2, shutdown_timeout=0.5, spool=spool,
                        spool_sync_interval=0.02, retry_backoff=0.05)
        with fault_server("hang") as (url, _):
            system = ActorSystem(config.replace(api_url=url))
            started = time.monotonic()
            async with system:
                sent = await submit_paced(system, calls, sessions=5, per_session=20, pause=0.001)
                upload = await calls.call("upload", system.handle("s0").upload, {"seq": -1}, "t", "agent")
                assert upload is not None and upload[0] == S.TIMEOUT
            exit_took = time.monotonic() - started
        spooled = spool_rows(spool)
        with doc_server("ok") as good:
            async with ActorSystem(config.replace(api_url=good.url)):
                with anyio.fail_after(10):
                    while await anyio.to_thread.run_sync(spool_rows, spool) > 0:
                        await anyio.sleep(0.02)
            stored = [s["seq"] for s in good.stored_states()]
        result = tally([*sent, -1], stored)
        report(f"hang, outbox replayed at next start ({anyio_backend})", result, spooled=spooled,
               exit_s=round(exit_took, 2))
        assert calls.raised == []
        assert calls.statuses["submit:success"] == len(sent) == 100
        assert spooled == len(sent) + 1  # everything accepted, kept across the exit
        assert exit_took < 0.4 + 0.5 + 1.5  # the upload's timeout, then shutdown_timeout, plus slack
        assert (result.lost, result.duplicated, result.unexpected) == (0, 0, 0), str(result)

    async def test_exit_within_shutdown_timeout_after_abandoned_calls(self) -> None:
        """Fault: a hanging server; one upload is pending and three reads have timed out on the caller's
        side. Leaving the system takes about shutdown_timeout: a read whose caller gave up is not run."""
        calls = PublicCalls()
        with fault_server("hang") as (url, hits):
            system = ActorSystem(Config(api_url=url, timeout=0.3, retries=0, shutdown_timeout=0.3))
            async with system:
                manager = system.manager("s")
                calls.sync("submit", manager.submit_session_state, {"a": 1})
                for _ in range(3):
                    result = await calls.call("download", manager.download_session_states)
                    assert result is not None and result[0] == S.TIMEOUT
                leaving = time.monotonic()
            exit_took = time.monotonic() - leaving
            requests = len(hits)
        assert calls.raised == []
        assert exit_took < 0.3 + 0.5, f"exit took {exit_took:.2f} s with shutdown_timeout=0.3 ({requests} requests)"


FLAKY_CONFIG = Config(keep="all", timeout=10.0, retries=12, retry_backoff=0.005, retry_backoff_max=0.05,
                      circuit_threshold=1_000_000, debounce=0.01, max_delay=0.05)


@pytest.mark.parametrize("fault", ["flaky-500", "flaky-reset"])
class TestRandomFailures:
    async def test_every_document_arrives_exactly_once(self, fault: Any, anyio_backend: str) -> None:
        """Fault: half the write requests fail at random (seeded): answered 500, or the connection reset,
        half of them *after* the server stored the batch. With retries, each of 20 × 50 states arrives
        exactly once; every retry is logged once and every write call's outcome exactly once."""
        calls = PublicCalls()
        seed = 20240 + (0 if anyio_backend == "asyncio" else 1)
        with capture_logs() as logs, doc_server(fault, rate=0.5, seed=seed) as server:
            system = ActorSystem(FLAKY_CONFIG.replace(api_url=server.url))
            try:
                async with system:
                    sent = await submit_paced(system, calls, sessions=20, per_session=50)
            except Exception as exc:
                calls.raised.append(f"ActorSystem exit: {exc!r}")
            stored = [s["seq"] for s in server.stored_states()]
            writes = server.writes()
            resent = sum(1 for n in server.received.values() if n > 1)
        stats = system.statistics()
        retries, outcomes = retry_events(logs), outcome_events(logs)
        injected = sum(1 for w in writes if w.outcome != "ok")
        after_store = sum(1 for w in writes if w.outcome.endswith("-after-store"))
        result = tally(sent, stored)
        report(f"{fault} ({anyio_backend})", result, write_requests=len(writes), injected=injected,
               after_store=after_store, ids_resent=resent, retry_events=len(retries),
               outcome_events=len(outcomes))

        assert calls.raised == []
        assert (result.sent, result.arrived, result.lost, result.duplicated, result.unexpected) == (
            1000, 1000, 0, 0, 0), str(result)
        assert injected > 0 and after_store > 0 and resent > 0  # the faults happened, stored writes were redone
        # Every failed attempt is one debug retry event; every upload's outcome is logged once (success).
        assert len(retries) == injected
        assert all(e["log_level"] == "debug" for e in retries)
        assert [e for e in outcomes if e["status"] != "success"] == []
        logged_ids = [i for e in outcomes for i in e["ids"]]
        assert len(logged_ids) == len(set(logged_ids)) == 1000
        assert len(writes) == len(retries) + stats.store_writes  # one request per attempt of each write
        assert (stats.documents, stats.failed) == (1000, 0)


class TestRandomFailuresWithoutTheBatchEndpoint:
    async def test_a_long_batch_of_single_posts_gets_through(self, anyio_backend: str) -> None:
        """Fault: no batch endpoint, and 5% of the POSTs answer 500 (half after storing). One session's 200
        states, one POST each: a failed POST is sent again, and only it (every retry sent the whole batch
        again, so a try succeeded only if its 200 POSTs all did: none was answered, and all 200 were lost at
        exit, while the server held most of them)."""
        seed = 777 + (0 if anyio_backend == "asyncio" else 1)
        with doc_server("flaky-500", rate=0.05, seed=seed, batch=False) as server:
            async with ActorSystem(FLAKY_CONFIG.replace(api_url=server.url, shutdown_timeout=20.0)) as system:
                handle = system.handle("s")
                for n in range(200):
                    assert handle.submit({"n": n}, "t", "a") is S.SUCCESS
            posts = [w for w in server.writes() if not w.path.endswith("/batch")]
            injected = sum(1 for w in posts if w.outcome != "ok")
            stored = sorted(s["n"] for s in server.stored_states())
        stats = system.statistics()
        assert stored == list(range(200))
        assert (stats.documents, stats.failed) == (200, 0)
        assert injected > 0 and len(posts) == 200 + injected  # each failed POST sent once more, nothing else


class TestActorRetries:
    async def test_retained_batch_logs_retry_events_and_one_outcome(self) -> None:
        """Fault: the first two batch writes answer 503, the third succeeds (actor mode, retries=0: the
        actor's own backoff does the retrying). Each failed attempt is a debug ``session_state.retry``
        event and the upload's outcome is logged once (success)."""
        with capture_logs() as logs, doc_server("status", status=503, fail_first=2) as server:
            async with ActorSystem(Config(api_url=server.url, keep="all", timeout=5.0, retries=0,
                                          retry_backoff=0.01)) as system:
                status, _ = await system.handle("s").upload({"seq": 0}, "t", "agent")
            stored = [s["seq"] for s in server.stored_states()]
            writes = server.writes()
        assert status == S.SUCCESS
        assert stored == [0]
        assert [w.outcome for w in writes] == ["503", "503", "ok"]
        events = [(e["event"], e["log_level"], e.get("status")) for e in logs
                  if e["event"].startswith("session_state.")]
        assert events == [("session_state.retry", "debug", None), ("session_state.retry", "debug", None),
                          ("session_state.upload", "debug", "success")]


class TestServerDown:
    async def test_outbox_keeps_every_keep_all_state_of_a_long_outage(self, tmp_path: Path) -> None:
        """Fault: the server refuses connections while one session submits 1,000 states (keep="all", with
        an outbox; twice max_batch), then the system exits; the next start has a working server. All
        1,000 states arrive, once: none was coalesced away while the store was down."""
        calls = PublicCalls()
        spool = str(tmp_path / "outbox.db")
        config = Config(keep="all", timeout=1.0, retries=0, retry_backoff=0.01, spool=spool,
                        spool_sync_interval=0.02, shutdown_timeout=0.3)
        sent = []
        async with ActorSystem(config.replace(api_url=closed_port_url())) as system:
            handle = system.handle("s")
            for seq in range(1000):
                if calls.sync("submit", handle.submit, {"seq": seq}, "t", "agent") == S.SUCCESS:
                    sent.append(seq)
                if seq % 50 == 0:
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)
        spooled = spool_rows(spool)
        with doc_server("ok") as good:
            async with ActorSystem(config.replace(api_url=good.url)):
                with anyio.fail_after(10):
                    while await anyio.to_thread.run_sync(spool_rows, spool) > 0:
                        await anyio.sleep(0.02)
            result = tally(sent, [s["seq"] for s in good.stored_states()])
        report("server down, 1,000 > max_batch states, outbox replayed", result, spooled=spooled)
        assert calls.raised == []
        assert spooled == 1000
        assert (result.sent, result.arrived, result.lost, result.duplicated) == (1000, 1000, 0, 0), str(result)


def _spooling_config(spool: str) -> Config:
    return Config(keep="all", timeout=1.0, retries=0, retry_backoff=0.01, spool=spool, spool_sync_interval=0.02,
                  shutdown_timeout=0.3)


async def _spool_while_down(config: Config, calls: PublicCalls, sessions: int) -> list[int]:
    """One state ``{"seq": n}`` for each of ``sessions`` sessions, submitted while the server is down (they
    stay spooled); return the accepted."""
    sent = []
    async with ActorSystem(config.replace(api_url=closed_port_url())) as system:
        for seq in range(sessions):
            if calls.sync("submit", system.handle(f"s{seq}").submit, {"seq": seq}, "t", "agent") == S.SUCCESS:
                sent.append(seq)
    assert spool_rows(config.spool or "") == sessions
    return sent


class TestReplayWithoutBatchEndpoint:
    async def test_replay_that_meets_failed_posts_retries_and_raises_nothing(self, tmp_path: Path) -> None:
        """Fault: 20 sessions' states are spooled while the server is down; the next start replays them
        to a server without the batch endpoint whose first 3 POSTs answer 503 (several sessions' POSTs in
        flight at once). Leaving the system raises nothing (the failed write used to escape the replay as
        an exception group, out of the system's exit) and every state arrives once."""
        calls = PublicCalls()
        spool = str(tmp_path / "outbox.db")
        config = _spooling_config(spool)
        sent = await _spool_while_down(config, calls, 20)
        with capture_logs() as logs, doc_server("status", status=503, fail_first=3, batch=False) as flaky:
            async with ActorSystem(config.replace(api_url=flaky.url, shutdown_timeout=10.0)):
                with anyio.fail_after(10):
                    while await anyio.to_thread.run_sync(spool_rows, spool) > 0:
                        await anyio.sleep(0.02)
            result = tally(sent, [s["seq"] for s in flaky.stored_states()])
        assert calls.raised == []
        assert flaky.injected() == 3
        assert any(e["event"] == "session_state.outbox" and e.get("op") == "replay" and e["status"] == "failed"
                   for e in logs)
        assert (result.sent, result.arrived, result.lost, result.duplicated) == (20, 20, 0, 0), str(result)


class TestReplayMeetingAnUnforeseenError:
    async def test_the_rows_stay_spooled_and_the_exit_raises_nothing(self, tmp_path: Path) -> None:
        """Fault: the store's client raises an exception that is not a store error while the spool is
        replayed. The replay logs it as failed and tries again; leaving the system raises nothing and
        every row stays spooled for the next start."""
        calls = PublicCalls()
        spool = str(tmp_path / "outbox.db")
        config = _spooling_config(spool)
        await _spool_while_down(config, calls, 5)
        store = HttpStore("http://127.0.0.1:1", "p", BrokenTransport)
        with capture_logs() as logs:
            async with ActorSystem(config.replace(api_url="http://127.0.0.1:1"), store=store):
                await anyio.sleep(0.2)
        replays = [e for e in logs if e["event"] == "session_state.outbox" and e.get("op") == "replay"]
        assert replays and all(e["status"] == "failed" for e in replays)
        assert replays[0]["error"] == "unexpected error: RuntimeError: a client library's own bug"
        assert calls.raised == []
        assert spool_rows(spool) == 5


class TestMalformedJson:
    @pytest.mark.parametrize("fault", ["bad-json", "not-object"])
    async def test_failed_and_no_exception(self, fault: Any) -> None:
        """Fault: a 2xx answer whose body is not JSON (or not an object). Every public call returns
        FAILED with a message, nothing raises, and the write is not retried (the answer will not
        improve): exactly one request per upload."""
        calls = PublicCalls()
        with capture_logs() as logs, fault_server(fault) as (url, hits):
            manager = SessionStateManager("s", Config(api_url=url, timeout=5.0, retries=5))
            results = await every_call(manager, calls)
            await manager.aclose()
            upload_requests = sum(1 for h in hits if h.startswith("POST"))
        assert calls.raised == []
        assert {op: r[0] for op, r in results.items()} == dict.fromkeys(results, S.FAILED)
        assert ("malformed JSON" if fault == "bad-json" else "expected a JSON object") in results["upload"][1]
        assert upload_requests == 1
        assert retry_events(logs) == []
        assert [e["status"] for e in outcome_events(logs)] == ["failed"]

    async def test_actor_mode_reports_every_upload_failed(self) -> None:
        """Fault: malformed JSON in answer to batch writes (actor mode). Every awaited upload returns
        FAILED: nothing is reported stored that the server did not confirm, nothing raises, and
        each batch is sent once."""
        calls = PublicCalls()
        with fault_server("bad-json") as (url, hits):
            system = ActorSystem(Config(api_url=url, keep="all", timeout=5.0, retries=5))
            async with system:
                handle = system.handle("s")
                async with anyio.create_task_group() as tg:
                    for n in range(10):
                        tg.start_soon(calls.call, "upload", handle.upload, {"seq": n}, "t", "agent")
                status = await calls.call("flush", handle.flush)
            batches = sum(1 for h in hits if h.startswith("POST"))
        assert calls.raised == []
        assert calls.statuses["upload:failed"] == 10
        assert status is not None
        assert batches == system.statistics().store_writes
        assert system.statistics().failed == 10


class TestRetryAfter:
    @pytest.mark.parametrize("status", [429, 503])
    async def test_retry_waits_at_least_retry_after(self, status: int, anyio_backend: str) -> None:
        """Fault: the first write answers 429 (or 503) with Retry-After: 1. The retry comes at least 1 s
        later (measured on the server), then succeeds; one retry event, one final outcome event."""
        calls = PublicCalls()
        with capture_logs() as logs, doc_server("status", status=status, retry_after=1, fail_first=1) as server:
            manager = SessionStateManager("s", Config(api_url=server.url, timeout=5.0, retries=3,
                                                      retry_backoff=0.01, circuit_threshold=100))
            result = await calls.call("upload", manager.upload_session_state, {"seq": 0})
            await manager.aclose()
            writes = server.writes()
            stored = [s["seq"] for s in server.stored_states()]
        waited = writes[1].at - writes[0].at
        report(f"{status} Retry-After: 1 ({anyio_backend})", tally([0], stored), waited_s=round(waited, 3))
        assert calls.raised == []
        assert result is not None and result[0] == S.SUCCESS
        assert [w.outcome for w in writes] == [str(status), "ok"]
        assert waited >= 0.98, f"the retry came {waited:.3f} s after a Retry-After of 1 s"
        (retry,) = retry_events(logs)
        assert (retry["attempt"], retry["delay_s"] >= 1.0) == (1, True)
        (outcome,) = outcome_events(logs)
        assert (outcome["status"], outcome["attempt"]) == ("success", 2)
        assert stored == [0]

    async def test_retry_after_past_the_timeout_gives_timeout_on_time(self) -> None:
        """Fault: 429 with Retry-After: 30 and a 0.5 s timeout. The call returns TIMEOUT after about
        0.5 s (the timeout bounds the whole call), not after 30 s."""
        with doc_server("status", status=429, retry_after=30) as server:
            manager = SessionStateManager("s", Config(api_url=server.url, timeout=0.5, retries=3))
            started = time.monotonic()
            status, _ = await manager.upload_session_state({"seq": 0})
            took = time.monotonic() - started
            await manager.aclose()
            assert len(server.writes()) == 1
        assert status == S.TIMEOUT
        assert took < 1.5


class TestNoHealthRoute:
    async def test_the_circuit_closes_when_a_server_without_health_answers(self, anyio_backend: str) -> None:
        """A server with no /health route (404) fails three writes with 503, which opens the circuit: after
        the cooldown the probe's 404 is an answer, so the circuit closes and the next write is stored."""
        client = ("aiohttp",) if anyio_backend == "asyncio" else ("httpx",)
        config = Config(timeout=5.0, retries=0, circuit_threshold=3, circuit_cooldown=0.05, http_clients=client)
        with doc_server("status", status=503, fail_first=3, health=False) as server:
            manager = SessionStateManager("s", config.replace(api_url=server.url))
            try:
                for n in range(3):
                    assert (await manager.upload_session_state({"seq": n}))[0] is S.FAILED
                assert (await manager.upload_session_state({"seq": 3}))[0] is S.FAILED  # open: no request
                await anyio.sleep(0.1)
                status, _ = await manager.upload_session_state({"seq": 4})
            finally:
                await manager.aclose()
            assert status is S.SUCCESS
            assert [s["seq"] for s in server.stored_states()] == [4]
            assert [w.outcome for w in server.writes()] == ["503", "503", "503", "ok"]


class TestStatusCodes:
    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
    async def test_transient_status_is_retried(self, status: int) -> None:
        """Fault: the first two writes answer a transient status. Retried with backoff: three requests,
        two retry events (attempts 1 and 2), one final SUCCESS event (attempt 3), stored once."""
        with capture_logs() as logs, doc_server("status", status=status, fail_first=2) as server:
            manager = SessionStateManager("s", Config(api_url=server.url, timeout=5.0, retries=4,
                                                      retry_backoff=0.01, circuit_threshold=100))
            result = await manager.upload_session_state({"seq": 0})
            await manager.aclose()
            writes = server.writes()
            stored = [s["seq"] for s in server.stored_states()]
        assert result[0] == S.SUCCESS
        assert [w.outcome for w in writes] == [str(status), str(status), "ok"]
        assert [e["attempt"] for e in retry_events(logs)] == [1, 2]
        assert [(e["status"], e["attempt"]) for e in outcome_events(logs)] == [("success", 3)]
        assert tally([0], stored).duplicated == 0 and stored == [0]

    @pytest.mark.parametrize("status", [400, 401, 403, 409, 413, 422])
    async def test_permanent_status_is_not_retried(self, status: int) -> None:
        """Fault: every write answers a permanent 4xx. FAILED with the server's message after exactly one
        request (for 409, a repeated id, the batch is posted again document by document to look each 409
        up), no retry event, exactly one final outcome event (a warning)."""
        with capture_logs() as logs, doc_server("status", status=status) as server:
            manager = SessionStateManager("s", Config(api_url=server.url, timeout=5.0, retries=5))
            status_, message = await manager.upload_session_state({"seq": 0})
            await manager.aclose()
            writes = server.writes()
        assert status_ == S.FAILED
        assert f"HTTP {status}" in message
        assert [w.path.endswith("/batch") for w in writes] == ([True, False] if status == 409 else [True])
        assert retry_events(logs) == []
        assert [(e["status"], e["log_level"], e["attempt"]) for e in outcome_events(logs)] == [
            ("failed", "warning", 1)]

    async def test_permanent_status_in_actor_mode_is_not_retried_later(self, anyio_backend: str) -> None:
        """Fault: 422 to every batch write (actor mode). The batch is answered FAILED and dropped from
        the pending batch: its write, then one request per document to find which one was refused
        (a refusal about a document must not lose the others), and nothing retried by the actor's
        backoff either."""
        with doc_server("status", status=422) as server:
            system = ActorSystem(Config(api_url=server.url, keep="all", timeout=5.0, retries=5,
                                        retry_backoff=0.01))
            async with system:
                handle = system.handle("s")
                for n in range(5):
                    assert handle.submit({"seq": n}, "t", "agent") == S.SUCCESS
                await handle.flush()
                await anyio.sleep(0.3)  # time enough for any (wrong) backoff retry
            writes = server.writes()
        assert [len(w.ids) for w in writes] == [5, 1, 1, 1, 1, 1]
        assert (system.statistics().failed, system.statistics().documents) == (5, 0)


SWEEP_FAULTS = ["hang", "500", "503-retry-after", "bad-json", "not-object", "reset", "404-batch", "refused"]
STATUSES = {s.value for s in S}


class TestNoPublicCallRaises:
    async def test_every_public_call_under_every_fault(self) -> None:
        """Fault: each misbehaving server of tests/faultserver.py, and a refused connection. Every public
        call, in direct mode and in actor mode (submit, flush and leaving the system included), returns a
        status and never raises. The faults run side by side, each against its own server."""
        calls = PublicCalls()
        took: dict[str, float] = {}
        config = Config(timeout=0.1, retries=2, retry_backoff=0.01, shutdown_timeout=0.1, keep="all")

        async def sweep(fault: Any) -> None:
            started = time.monotonic()
            with contextlib.ExitStack() as stack:
                url = closed_port_url() if fault == "refused" else stack.enter_context(fault_server(fault))[0]
                cfg = config.replace(api_url=url)
                direct = SessionStateManager("s", cfg)
                await every_call(direct, calls)
                await direct.aclose()
                try:
                    async with ActorSystem(cfg) as system:
                        actor = system.manager("s")
                        calls.sync("submit", actor.submit_session_state, {"a": 1}, "t", "agent")
                        await every_call(actor, calls)
                        await calls.call("flush", actor.flush)
                except Exception as exc:
                    calls.raised.append(f"ActorSystem exit ({fault}): {exc!r}")
                async with SessionStateManager("s", cfg) as private:  # actor mode with a private system
                    await every_call(private, calls)
            took[fault] = time.monotonic() - started

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for fault in SWEEP_FAULTS:
                    tg.start_soon(sweep, fault)
        assert calls.raised == []
        assert {key.partition(":")[2] for key in calls.statuses} <= STATUSES
        print("sweep took", {k: round(v, 2) for k, v in took.items()})
        assert sum(calls.statuses.values()) == len(SWEEP_FAULTS) * (7 * 3 + 2)
        assert "upload:success" not in calls.statuses
