"""Scenario 3: the peer, LangGraph's ``AsyncSqliteSaver`` (``langgraph-checkpoint-sqlite``).

The same snapshots, written as checkpoints to one sqlite file by LangGraph's async saver (awaited
``aput`` per snapshot, as a graph does between steps) and by this library's embedded sqlite store
in actor mode with ``keep="all"`` (every snapshot stored, as LangGraph stores every checkpoint).
Skipped, with a note, when the optional ``bench`` extra is not installed.
"""

from __future__ import annotations

import importlib.util
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel

from bench._common import (
    Column,
    Params,
    ScenarioResult,
    Target,
    agent_state,
    alternate,
    count_documents,
    fmt_ratio,
    met,
    percentile,
    ratio,
)
from wr124_session_actor import ActorSystem, Config, SessionStateStatus

__all__ = ["available", "run"]

TASK: Final = "Plan the user's trip"
AGENT: Final = "assistant"

LABELS: Final = {
    "lg": "LangGraph AsyncSqliteSaver, awaited aput() (its defaults: synchronous=FULL)",
    "lg_normal": "LangGraph AsyncSqliteSaver, awaited aput(), synchronous=NORMAL (our durability)",
    "submit": "library, actor mode, sqlite store, keep='all', submit()",
    "upload": "library, actor mode, sqlite store, keep='all', awaited upload()",
}

COLUMNS: Final = [
    Column("snapshots_per_s", "snapshots/s", ",.0f"),
    Column("call_p50_us", "call p50 µs", ".1f"),
    Column("call_p99_us", "call p99 µs", ".1f"),
    Column("stored", "stored", ".0f"),
    Column("wall_s", "wall s", ".2f"),
]


def available() -> bool:
    """Whether ``langgraph-checkpoint-sqlite`` (and ``aiosqlite``) can be imported."""
    try:
        return importlib.util.find_spec("langgraph.checkpoint.sqlite.aio") is not None
    except ImportError:
        return False


async def _langgraph(db_path: str, sessions: int, snapshots: int, synchronous: str | None) -> dict[str, float]:
    import aiosqlite
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    latencies: list[int] = []
    clock = time.perf_counter_ns
    started = time.perf_counter()
    async with aiosqlite.connect(db_path) as conn:
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        if synchronous is not None:
            await conn.execute(f"PRAGMA synchronous={synchronous}")

        async def agent(index: int) -> None:
            thread: Any = {"configurable": {"thread_id": f"s{index}", "checkpoint_ns": ""}}
            for step in range(snapshots):
                checkpoint = empty_checkpoint()
                checkpoint["channel_values"] = {"state": agent_state(index, step), "task": TASK, "agent": AGENT}
                checkpoint["channel_versions"] = {"state": step + 1}
                metadata: Any = {"source": "loop", "step": step}
                t0 = clock()
                thread = await saver.aput(thread, checkpoint, metadata, {"state": step + 1})
                latencies.append(clock() - t0)
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for index in range(sessions):
                tg.start_soon(agent, index)
    wall = time.perf_counter() - started
    conn2 = sqlite3.connect(db_path)
    stored = conn2.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
    conn2.close()
    return _figures(latencies, stored, sessions * snapshots, wall)


async def _library(db_path: str, sessions: int, snapshots: int, awaited: bool) -> dict[str, float]:
    config = Config(api_url=f"sqlite:///{db_path}", keep="all", timeout=120.0)
    latencies: list[int] = []
    failures = 0
    clock = time.perf_counter_ns
    started = time.perf_counter()
    async with ActorSystem(config) as system:
        async def agent(index: int) -> None:
            nonlocal failures
            handle = system.handle(f"s{index}")
            for step in range(snapshots):
                state = agent_state(index, step)
                t0 = clock()
                if awaited:
                    status, _ = await handle.upload(state, TASK, AGENT)
                else:
                    status = handle.submit(state, TASK, AGENT)
                latencies.append(clock() - t0)
                failures += status is not SessionStateStatus.SUCCESS
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for index in range(sessions):
                tg.start_soon(agent, index)
    wall = time.perf_counter() - started
    stored = await anyio.to_thread.run_sync(count_documents, db_path)
    figures = _figures(latencies, stored, sessions * snapshots, wall)
    figures["failures"] = failures + system.statistics().failed
    return figures


def _figures(latencies: list[int], stored: int, snapshots: int, wall: float) -> dict[str, float]:
    return {
        "snapshots_per_s": stored / wall,
        "call_p50_us": percentile(latencies, 50) / 1e3,
        "call_p99_us": percentile(latencies, 99) / 1e3,
        "stored": stored,
        "snapshots": snapshots,
        "wall_s": wall,
    }


def run(params: Params) -> ScenarioResult:
    """Run the scenario (or report it skipped when LangGraph's saver is not installed)."""
    sessions, snapshots = params.pick((50, 100), (10, 40), (2, 3))
    result = ScenarioResult(
        name="langgraph",
        title="3. Peer: LangGraph AsyncSqliteSaver vs the library's embedded sqlite store",
        columns=COLUMNS,
        params={"sessions": sessions, "snapshots_per_session": snapshots, "state_bytes": "~2 KB",
                "reps": params.reps},
    )
    if not available():
        result.skipped = ("langgraph-checkpoint-sqlite is not installed (pip install -e '.[bench]' or"
                          " pip install langgraph-checkpoint-sqlite aiosqlite)")
        result.targets = [Target("≥ 5× LangGraph snapshots/s", "≥ 5×", "skipped", None)]
        return result
    for key, label in LABELS.items():
        result.add_row(key, label)

    with tempfile.TemporaryDirectory(prefix="wr124-bench-") as tmp:
        async def main() -> None:
            for rep, kind in alternate(list(LABELS), params.reps):
                db_path = str(Path(tmp) / f"{kind}-r{rep}.db")
                if kind == "lg":
                    figures = await _langgraph(db_path, sessions, snapshots, None)
                elif kind == "lg_normal":
                    figures = await _langgraph(db_path, sessions, snapshots, "NORMAL")
                else:
                    figures = await _library(db_path, sessions, snapshots, awaited=kind == "upload")
                result.record(kind, figures)

        anyio.run(main, backend="asyncio")

    result.notes += [
        "snapshots/s = snapshots stored ÷ wall time from the first snapshot until all are stored"
        " (LangGraph: the last aput() returned; library: ActorSystem exit, which flushes).",
        "each contender writes its own fresh sqlite file; the library's engine runs in WAL mode with"
        " synchronous=NORMAL, LangGraph's saver in WAL mode with sqlite's default synchronous=FULL"
        " (an fsync per commit), hence the extra LangGraph row at equal durability.",
        "the library's awaited upload() waits for its batch to be written: one debounce (50 ms) per call"
        " when an agent awaits each snapshot.",
    ]
    lib = result.median("submit", "snapshots_per_s")
    vs_lg = ratio(lib, result.median("lg", "snapshots_per_s"))
    vs_lg_normal = ratio(lib, result.median("lg_normal", "snapshots_per_s"))
    result.targets = [
        Target("vs LangGraph AsyncSqliteSaver", "≥ 5× its snapshots/s (submit vs its defaults)", fmt_ratio(vs_lg),
               met(vs_lg, lambda v: v >= 5)),
        Target("vs LangGraph, equal durability (info)", "≥ 5× (synchronous=NORMAL on both)",
               fmt_ratio(vs_lg_normal), met(vs_lg_normal, lambda v: v >= 5)),
    ]
    return result
