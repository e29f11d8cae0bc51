"""Scenario 9: store growth of a chatty agent, with and without retention, next to LangGraph.

One agent writes a long run of snapshots (10,000 in the full run), every one kept (``keep="all"``,
as LangGraph keeps every checkpoint). Measured along the way: documents (checkpoints) stored, the
database file's size (after a WAL checkpoint, so the main file holds everything) and the bytes of
the stored bodies. Contenders: the library's embedded sqlite store without retention, the same with
``SESSION_STATE_KEEP_LAST`` (the store trims the session after each write), and LangGraph's
``AsyncSqliteSaver`` (which has no pruning: langgraph#8531). sqlite never shrinks a file on
delete; it reuses the freed pages, so with retention the file stops growing instead of shrinking.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel

from bench._common import Column, Params, ScenarioResult, Target, agent_state, met
from bench.langgraph_peer import available as langgraph_available
from wr124_session_actor import ActorSystem, Config, SessionStateStatus

__all__ = ["run"]

TASK: Final = "Answer the user, one message at a time"
AGENT: Final = "assistant"
SESSION: Final = "chatty"
KEEP_LAST: Final = 20
#: Snapshots between flushes (below the mailbox bound, so that keep="all" coalesces nothing).
FLUSH_EVERY: Final = 500

LABELS: Final = {
    "all": "library, sqlite store, keep='all', no retention",
    "keep": f"library, sqlite store, keep='all', SESSION_STATE_KEEP_LAST={KEEP_LAST}",
    "lg": "LangGraph AsyncSqliteSaver, aput() per snapshot (no pruning exists)",
}

COLUMNS: Final = [
    Column("documents", "documents / checkpoints at the end", ",.0f"),
    Column("file_mb_10", "file MB at 10%", ".2f"),
    Column("file_mb_50", "file MB at 50%", ".2f"),
    Column("file_mb", "file MB at the end", ".2f"),
    Column("live_mb", "stored bodies MB", ".2f"),
    Column("snapshots_per_s", "snapshots/s", ",.0f"),
]


def _file_bytes(db_path: str) -> int:
    """The database's size once the WAL is folded into it (what stays on disk)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return os.path.getsize(db_path)


def _stored(db_path: str, kind: str) -> tuple[int, int]:
    """Documents (or checkpoints) and the bytes of their stored bodies."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        if kind == "lg":
            row = conn.execute("SELECT count(*), coalesce(sum(length(checkpoint) + length(metadata)), 0)"
                               " FROM checkpoints").fetchone()
        else:
            row = conn.execute("SELECT count(*), coalesce(sum(length(body)), 0) FROM documents").fetchone()
        return int(row[0]), int(row[1])
    finally:
        conn.close()


def _sample(db_path: str, kind: str, step: int, samples: list[dict[str, int]]) -> None:
    documents, live = _stored(db_path, kind)
    samples.append({"snapshots": step, "documents": documents, "file_bytes": _file_bytes(db_path),
                    "live_bytes": live})


async def _library(db_path: str, snapshots: int, marks: set[int], keep_last: int) -> list[dict[str, int]]:
    config = Config(api_url=f"sqlite:///{db_path}", keep="all", keep_last=keep_last, timeout=120.0)
    samples: list[dict[str, int]] = []
    async with ActorSystem(config) as system:
        handle = system.handle(SESSION)
        for step in range(1, snapshots + 1):
            if handle.submit(agent_state(0, step), TASK, AGENT) is not SessionStateStatus.SUCCESS:
                raise RuntimeError("a submit was refused")
            await anyio.lowlevel.checkpoint()
            if step % FLUSH_EVERY == 0 or step in marks:
                status, message = await handle.flush()
                if status is not SessionStateStatus.SUCCESS:
                    raise RuntimeError(f"flush failed: {message}")
            if step in marks:
                await anyio.to_thread.run_sync(_sample, db_path, "lib", step, samples)
    return samples


async def _langgraph(db_path: str, snapshots: int, marks: set[int]) -> list[dict[str, int]]:
    import aiosqlite
    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    samples: list[dict[str, int]] = []
    async with aiosqlite.connect(db_path) as conn:
        saver = AsyncSqliteSaver(conn)
        await saver.setup()
        await conn.execute("PRAGMA synchronous=NORMAL")  # the library's durability: growth is what counts
        thread: Any = {"configurable": {"thread_id": SESSION, "checkpoint_ns": ""}}
        for step in range(1, snapshots + 1):
            checkpoint = empty_checkpoint()
            checkpoint["channel_values"] = {"state": agent_state(0, step), "task": TASK, "agent": AGENT}
            checkpoint["channel_versions"] = {"state": step}
            thread = await saver.aput(thread, checkpoint, {"source": "loop", "step": step}, {"state": step})
            if step in marks:
                await conn.commit()
                await anyio.to_thread.run_sync(_sample, db_path, "lg", step, samples)
    return samples


def run(params: Params) -> ScenarioResult:
    """Run the scenario once per contender (growth is deterministic; repetitions add nothing)."""
    snapshots = params.pick(10_000, 2_000, 200)
    marks = {snapshots // 10, snapshots // 2, snapshots}
    result = ScenarioResult(
        name="growth",
        title="9. Growth: one chatty agent's store, with and without retention, next to LangGraph",
        columns=COLUMNS,
        params={"snapshots": snapshots, "state_bytes": "~2 KB", "keep_last": KEEP_LAST, "reps": 1},
    )
    kinds = [k for k in LABELS if k != "lg" or langgraph_available()]
    for key in kinds:
        result.add_row(key, LABELS[key])
    growth: dict[str, list[dict[str, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="wr124-bench-") as tmp:
        for kind in kinds:
            db_path = str(Path(tmp) / f"growth-{kind}.db")
            started = time.perf_counter()
            if kind == "lg":
                samples = anyio.run(_langgraph, db_path, snapshots, marks, backend="asyncio")
            else:
                keep_last = KEEP_LAST if kind == "keep" else 0
                samples = anyio.run(_library, db_path, snapshots, marks, keep_last, backend="asyncio")
            wall = time.perf_counter() - started
            growth[kind] = samples
            by_step = {s["snapshots"]: s for s in samples}
            mb = 1024 * 1024
            result.record(kind, {
                "documents": by_step[snapshots]["documents"],
                "file_mb_10": by_step[snapshots // 10]["file_bytes"] / mb,
                "file_mb_50": by_step[snapshots // 2]["file_bytes"] / mb,
                "file_mb": by_step[snapshots]["file_bytes"] / mb,
                "live_mb": by_step[snapshots]["live_bytes"] / mb,
                "snapshots_per_s": snapshots / wall,
            })
    result.extra["growth"] = growth
    result.notes += [
        "file MB: the sqlite file after PRAGMA wal_checkpoint(TRUNCATE); stored bodies: the documents'"
        " JSON bodies (LangGraph: its serialized checkpoints and metadata).",
        f"the library flushes every {FLUSH_EVERY} snapshots and at each sample, so that keep='all' stores"
        " every snapshot; LangGraph runs with synchronous=NORMAL like the library.",
        "with retention the file stops growing once the freed pages are reused; VACUUM would shrink it.",
    ]
    if not langgraph_available():
        result.notes.append("LangGraph's row is missing: langgraph-checkpoint-sqlite is not installed.")
    kept = result.median("keep", "documents")
    result.targets = [
        Target("keep-last bounds growth", f"{KEEP_LAST} documents after {snapshots:,} snapshots", f"{kept:,.0f}",
               met(kept, lambda v: v == KEEP_LAST)),
    ]
    return result
