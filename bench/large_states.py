"""Scenario 5: large states. Event-loop lag while 1 MB and 10 MB states are uploaded.

One agent uploads a large state a few times, pausing briefly between snapshots as an agent would;
a ticker task measures how late the event loop wakes it meanwhile. Encoding a 10 MB state must not
stall the loop: the library encodes off the loop, the original client encoded on it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
import orjson

from bench._common import (
    Column,
    Params,
    ScenarioResult,
    ServerProcess,
    Target,
    alternate,
    lag_ticker,
    met,
    percentile,
)
from bench._original import OriginalSessionStateManager
from wr124_session_actor import ActorSystem, Config, SessionStateManager, SessionStateStatus

__all__ = ["big_state", "run"]

TASK: Final = "Review the whole repository"
AGENT: Final = "reviewer"
MB: Final = 1024 * 1024

LABELS: Final = {
    "a": "(a) original client (baseline)",
    "b": "(b) library, direct mode",
    "c": "(c) library, actor mode, awaited upload",
    "d": "(d) library, actor mode, submit()",
}

COLUMNS: Final = [
    Column("lag_p99_ms", "loop lag p99 ms", ".2f"),
    Column("lag_max_ms", "loop lag max ms", ".2f"),
    Column("call_p50_ms", "call p50 ms", ".3f"),
    Column("wall_s", "wall until stored s", ".2f"),
    Column("documents", "documents", ".0f"),
]


def big_state(size: int) -> dict[str, Any]:
    """An agent state of about ``size`` bytes of JSON: a long conversation with tool results."""
    messages = []
    index = 0
    total = 0
    while total < size:
        content = (f"message {index}: " + "the tool returned rows of results, " * 28)[:1000]
        messages.append({"source": "tool" if index % 3 else "assistant", "content": content,
                         "models_usage": {"prompt_tokens": index, "completion_tokens": 17}, "type": "TextMessage"})
        total += len(content) + 110
        index += 1
    return {"type": "AssistantAgentState", "version": "1.0.0", "llm_context": {"messages": messages}}


async def _one_run(kind: str, server: ServerProcess, project: str, state: dict[str, Any], uploads: int,
                   gap: float) -> dict[str, float]:
    latencies: list[int] = []
    failures = 0
    clock = time.perf_counter_ns
    config = Config(api_url=server.url, project_id=project, timeout=120.0)
    async with lag_ticker() as ticker:
        started = time.perf_counter()
        if kind in ("a", "b"):
            manager: Any = (OriginalSessionStateManager("big", server.url, project, timeout=120.0)
                            if kind == "a" else SessionStateManager("big", config))
            for _ in range(uploads):
                t0 = clock()
                status, _ = await manager.upload_session_state(state, TASK, AGENT)
                latencies.append(clock() - t0)
                failures += status not in ("success", SessionStateStatus.SUCCESS)
                await anyio.sleep(gap)
            if kind == "b":
                await manager.aclose()
        else:
            async with ActorSystem(config) as system:
                handle = system.handle("big")
                for _ in range(uploads):
                    t0 = clock()
                    if kind == "c":
                        status, _ = await handle.upload(state, TASK, AGENT)
                    else:
                        status = handle.submit(state, TASK, AGENT)
                    latencies.append(clock() - t0)
                    failures += status is not SessionStateStatus.SUCCESS
                    await anyio.sleep(gap)
            failures += system.statistics().failed
        wall = time.perf_counter() - started
    return {
        **ticker.figures(),
        "call_p50_ms": percentile(latencies, 50) / 1e6,
        "call_max_ms": max(latencies) / 1e6,
        "wall_s": wall,
        "documents": await server.documents(project),
        "failures": failures,
    }


def run(params: Params) -> ScenarioResult:
    """Run every size, contenders alternated, ``params.reps`` times."""
    sizes = params.pick((1 * MB, 10 * MB), (1 * MB, 10 * MB), (MB // 10, MB))
    uploads = params.pick(4, 2, 1)
    gap = 0.1  # the agent's own work between snapshots: longer than the debounce, so each is written
    result = ScenarioResult(
        name="large_states",
        title="5. Large states: event-loop lag during uploads",
        columns=COLUMNS,
        params={"sizes": "/".join(f"{s / MB:g} MB" for s in sizes), "uploads_per_run": uploads,
                "gap_between_snapshots_s": gap, "reps": params.reps},
    )
    states = {size: big_state(size) for size in sizes}
    encode_ms: dict[str, dict[str, float]] = {}
    for size, state in states.items():
        t0 = time.perf_counter()
        encoded = orjson.dumps(state)
        t1 = time.perf_counter()
        json.dumps(state, ensure_ascii=False)
        t2 = time.perf_counter()
        encode_ms[f"{size / MB:g} MB"] = {"bytes": len(encoded), "orjson_ms": (t1 - t0) * 1e3,
                                           "stdlib_json_ms": (t2 - t1) * 1e3}
    result.extra["encode_reference"] = encode_ms
    for size in sizes:
        for key, label in LABELS.items():
            result.add_row(f"{key}@{size}", f"{size / MB:g} MB · {label}")

    with tempfile.TemporaryDirectory(prefix="wr124-bench-") as tmp, \
            ServerProcess(Path(tmp) / "large.db") as server:
        async def main() -> None:
            for size in sizes:
                for rep, kind in alternate(list(LABELS), params.reps):
                    project = f"large-{kind}-{size}-r{rep}"
                    figures = await _one_run(kind, server, project, states[size], uploads, gap)
                    result.record(f"{kind}@{size}", figures)

        anyio.run(main, backend="asyncio")

    refs = "; ".join(f"{k}: orjson {v['orjson_ms']:.1f} ms, stdlib json {v['stdlib_json_ms']:.1f} ms"
                     for k, v in encode_ms.items())
    result.notes += [
        f"encoding one state on this machine (on the calling thread): {refs}.",
        "lag = how late a task sleeping 1 ms wakes up; the agent pauses 100 ms between snapshots.",
        "submit() with keep='latest' may store fewer documents than snapshots: a snapshot submitted while the"
        " previous 10 MB write is in flight replaces the one still pending (by design).",
    ]
    largest = max(sizes)
    for kind in ("b", "c", "d"):
        p99 = result.median(f"{kind}@{largest}", "lag_p99_ms")
        result.targets.append(Target(
            f"loop lag with {largest / MB:g} MB states, {LABELS[kind][4:]}", "p99 ≤ 5 ms", f"{p99:.2f} ms",
            met(p99, lambda v: v <= 5) if largest >= 10 * MB else None,
        ))
    return result
