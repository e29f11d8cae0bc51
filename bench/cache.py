"""Scenario 6: restore of a cached document vs a store round trip.

A few of one session's state documents are restored again and again: from the TTL cache (direct
mode, and actor mode through the mailbox), and with the cache off, from the reference server over
HTTP and from the embedded sqlite store.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Final

import anyio

from bench._common import (
    Column,
    Params,
    ScenarioResult,
    ServerProcess,
    Target,
    agent_state,
    alternate,
    met,
    percentile,
)
from wr124_session_actor import ActorSystem, Config, SessionStateManager, SessionStateStatus

__all__ = ["run"]

SESSION: Final = "cache-session"

LABELS: Final = {
    "direct": "cached restore, direct mode",
    "actor": "cached restore, actor mode (through the mailbox)",
    "http": "store round trip, HTTP reference server (cache off)",
    "sqlite": "store round trip, embedded sqlite (cache off)",
}

COLUMNS: Final = [
    Column("p50_us", "restore p50 µs", ".1f"),
    Column("p99_us", "restore p99 µs", ".1f"),
    Column("calls", "calls", ".0f"),
]


async def _seed(config: Config, count: int) -> list[str]:
    manager = SessionStateManager(SESSION, config)
    ids = []
    for step in range(count):
        status, doc_id = await manager.upload_session_state(agent_state(0, step), "task", "assistant")
        if status is not SessionStateStatus.SUCCESS:
            raise RuntimeError(f"seeding the cache scenario failed: {doc_id}")
        ids.append(doc_id)
    await manager.aclose()
    return ids


async def _timed(restore: object, ids: list[str], calls: int) -> dict[str, float]:
    latencies: list[int] = []
    clock = time.perf_counter_ns
    failures = 0
    func = restore  # an async callable taking a document id
    for doc_id in ids:  # warm: fills the cache (when on) and opens connections
        await func(doc_id)  # type: ignore[operator]
    for index in range(calls):
        doc_id = ids[index % len(ids)]
        t0 = clock()
        status, _ = await func(doc_id)  # type: ignore[operator]
        latencies.append(clock() - t0)
        failures += status is not SessionStateStatus.SUCCESS
    return {"p50_us": percentile(latencies, 50) / 1e3, "p99_us": percentile(latencies, 99) / 1e3,
            "calls": calls, "failures": failures}


def run(params: Params) -> ScenarioResult:
    """Run the scenario; contenders alternated, ``params.reps`` times."""
    cached_calls, store_calls = params.pick((20_000, 2_000), (5_000, 500), (200, 20))
    docs = 8
    result = ScenarioResult(
        name="cache",
        title="6. Cache: restore of a cached document vs a store round trip",
        columns=COLUMNS,
        params={"documents": docs, "state_bytes": "~2 KB", "cached_calls": cached_calls,
                "store_calls": store_calls, "reps": params.reps},
    )
    for key, label in LABELS.items():
        result.add_row(key, label)

    with tempfile.TemporaryDirectory(prefix="wr124-bench-") as tmp, \
            ServerProcess(Path(tmp) / "cache.db") as server:
        http = Config(api_url=server.url, project_id="cache", timeout=30.0)
        sqlite = Config(api_url=f"sqlite:///{Path(tmp) / 'embedded.db'}", project_id="cache", timeout=30.0)

        async def main() -> None:
            http_ids = await _seed(http, docs)
            sqlite_ids = await _seed(sqlite, docs)
            for _rep, kind in alternate(list(LABELS), params.reps):
                if kind == "actor":
                    async with ActorSystem(http) as system:
                        figures = await _timed(system.manager(SESSION).restore_session_state, http_ids, cached_calls)
                else:
                    config = {"direct": http, "http": http.replace(cache_ttl=0),
                              "sqlite": sqlite.replace(cache_ttl=0)}[kind]
                    manager = SessionStateManager(SESSION, config)
                    ids = sqlite_ids if kind == "sqlite" else http_ids
                    calls = cached_calls if kind == "direct" else store_calls
                    figures = await _timed(manager.restore_session_state, ids, calls)
                    await manager.aclose()
                result.record(kind, figures)

        anyio.run(main, backend="asyncio")

    result.notes.append("restore returns the document's content (~2.3 KB); a cached restore decodes the"
                        " cached bytes again so that callers never share a mutable dict.")
    for kind in ("direct", "actor"):
        p50 = result.median(kind, "p50_us")
        result.targets.append(Target(f"cached restore, {kind} mode", "≤ 10 µs (p50)", f"{p50:.1f} µs",
                                     met(p50, lambda v: v <= 10)))
    return result
