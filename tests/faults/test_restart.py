"""The reference server killed and restarted mid-stream: every document arrives exactly once."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config
from wr124_session_actor import SessionStateStatus as S

from .tally import PublicCalls, report, tally

pytestmark = pytest.mark.anyio

SESSIONS = 50
SUBMITS_PER_SESSION = 200
TOTAL = SESSIONS * SUBMITS_PER_SESSION
#: Restart the server once this many submits have been accepted (so: mid-run, with writes in flight).
#: A stop can take up to 2 s (aiohttp lingers reading the body of a request it answered 503), so the
#: first restart starts early enough for the second to start before the last submit too.
RESTART_AT = (2_000, 5_000)
#: How long the server stays down each time (clients see refused connections meanwhile).
DOWNTIME = 0.25
#: Pause between rounds of one submit per session: the 10,000 submits take about 4 s.
ROUND_PAUSE = 0.02


def read_back(url: str) -> list[dict[str, Any]]:
    """Every document on the server, read through the API in pages of 1,000 (oldest first)."""
    docs: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as client:
        while True:
            page = client.get("/default/json-documents", params={
                "limit": 1000, "skip": len(docs), "sort_by": "created_at", "sort_order": 1}).json()
            docs.extend(page["data"])
            if len(docs) >= page["total"] or not page["data"]:
                return docs


async def test_two_restarts_during_50_sessions_x_200_submits(server: Any, anyio_backend: str) -> None:
    """Fault: the reference server is stopped (down 0.25 s) and started again twice while 50 sessions
    submit 200 states each (keep="all"); requests in flight at the stop get 503 or a closed connection,
    those sent while it is down are refused. Every one of the 10,000 states arrives exactly once, and
    each upload's outcome is logged once (a success), the failed attempts as debug retry events."""
    config = Config(api_url=server.url, keep="all", timeout=10.0, retries=8, retry_backoff=0.05,
                    retry_backoff_max=0.5, circuit_cooldown=0.1, debounce=0.02, max_delay=0.1,
                    shutdown_timeout=30.0)
    server.delay = 0.005  # every request spends a moment in the server: a stop finds writes in flight
    calls = PublicCalls()
    restarts: list[tuple[int, float]] = []  # (submits accepted when the restart began, its duration)
    sent: list[int] = []

    def restart() -> None:
        server.stop()
        time.sleep(DOWNTIME)
        server.start()

    with capture_logs() as logs:
        system = ActorSystem(config)
        try:
            async with system:

                async def restarter() -> None:
                    for threshold in RESTART_AT:
                        while system.statistics().submitted < threshold:
                            await anyio.sleep(0.005)
                        began = time.monotonic()
                        accepted = system.statistics().submitted
                        await anyio.to_thread.run_sync(restart)
                        restarts.append((accepted, time.monotonic() - began))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(restarter)
                    handles = [system.handle(f"restart-{n}") for n in range(SESSIONS)]
                    for round_ in range(SUBMITS_PER_SESSION):
                        for n, handle in enumerate(handles):
                            seq = round_ * SESSIONS + n
                            if calls.sync("submit", handle.submit, {"seq": seq}, "restart", "agent") == S.SUCCESS:
                                sent.append(seq)
                        await anyio.sleep(ROUND_PAUSE)
        except Exception as exc:  # leaving the system is a public call too
            calls.raised.append(f"ActorSystem exit: {exc!r}")
        stats = system.statistics()

    docs = await anyio.to_thread.run_sync(read_back, server.url)
    result = tally(sent, (d["content"]["state"]["seq"] for d in docs))
    retries = [e for e in logs if e["event"] == "session_state.retry"]
    outcomes = [e for e in logs if e["event"] == "session_state.upload"]
    logged_ids = [i for e in outcomes for i in e["ids"]]
    report(f"restart x2 ({anyio_backend})", result, restarts=restarts, retry_events=len(retries),
           outcome_events=len(outcomes), store_writes=stats.store_writes)

    assert calls.raised == []
    assert calls.statuses == {"submit:success": TOTAL}
    assert [accepted for accepted, _ in restarts] and len(restarts) == 2
    assert all(0 < accepted < TOTAL for accepted, _ in restarts), f"restarts not mid-run: {restarts}"
    assert retries, "the restarts never hit a write: nothing was tested"
    assert (result.sent, result.arrived, result.lost, result.duplicated, result.unexpected) == (
        TOTAL, TOTAL, 0, 0, 0), f"{result}; lost e.g. {result.lost_examples}"
    assert (stats.documents, stats.failed, stats.coalesced) == (TOTAL, 0, 0)
    assert [e for e in outcomes if e["status"] != "success"] == []
    assert len(logged_ids) == len(set(logged_ids)) == TOTAL  # each upload's outcome logged once
