"""Scenario 4: many sessions. RSS per live session actor, activation cost, and idle release.

Each backend (asyncio, trio) is measured in a fresh subprocess (``python -m bench.sessions --child``)
so that one measurement's heap does not pollute the next. The child opens an ``ActorSystem`` over a
store that discards what it is given (so that stored documents do not count as actor memory),
activates sessions with one ``submit`` each up to 10k and then 100k live actors, reads its RSS, then
waits for every actor to exit idle and reads it again.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import anyio
import anyio.lowlevel

from bench._common import (
    Column,
    Params,
    ScenarioResult,
    Target,
    allocated_blocks,
    alternate,
    malloc_trim,
    quiet_structlog,
    rss_bytes,
    run_child,
)
from wr124_session_actor import ActorSystem, Config, PruneReport, RetentionPolicy
from wr124_session_actor._document import EncodedDocument
from wr124_session_actor.stores import Document, Query, QueryResult

__all__ = ["NullStore", "child_main", "run"]

MIB: Final = 1024 * 1024
GIB: Final = 1024 * MIB


class NullStore:
    """A ``DocumentStore`` that keeps nothing: writes succeed at once, reads find nothing."""

    def __init__(self) -> None:
        self.documents = 0

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Count the documents and return their ids."""
        await anyio.lowlevel.checkpoint()
        self.documents += len(docs)
        return [d.id for d in docs]

    async def query(self, query: Query) -> QueryResult:
        """Nothing matches."""
        await anyio.lowlevel.checkpoint()
        return QueryResult([], 0)

    async def get(self, doc_id: str) -> Document:
        """Nothing is found."""
        from wr124_session_actor import DocumentNotFound

        await anyio.lowlevel.checkpoint()
        raise DocumentNotFound(doc_id)

    async def delete(self, doc_id: str) -> None:
        """Nothing is found."""
        await self.get(doc_id)

    async def health(self) -> None:
        """Always healthy."""
        await anyio.lowlevel.checkpoint()

    async def prune(self, policy: RetentionPolicy | None = None, *, session_id: str | None = None,
                    dry_run: bool = False, now: datetime | None = None) -> PruneReport:
        """Nothing is kept, so nothing is removed."""
        await anyio.lowlevel.checkpoint()
        return PruneReport(dry_run=dry_run)

    async def aclose(self) -> None:
        """Nothing to release."""
        await anyio.lowlevel.checkpoint()


async def _wait_until(predicate: Any, timeout: float, poll: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(poll)
    return True


async def _child(counts: list[int], idle_timeout: float) -> dict[str, Any]:
    """Activate sessions up to each of ``counts``; return the figures."""
    store = NullStore()
    # debounce 0: an actor writes its first upload at once, so "activated" is observable.
    config = Config(api_url="memory://", debounce=0.0, idle_timeout=idle_timeout, timeout=600.0)
    state = {"messages": [{"source": "user", "content": "hello"}]}
    out: dict[str, Any] = {"steps": []}
    base_blocks = allocated_blocks()
    base_rss = rss_bytes()
    async with ActorSystem(config, store=store) as system:
        await anyio.lowlevel.checkpoint()
        out["rss_open"] = open_rss = rss_bytes()
        open_blocks = allocated_blocks()
        started = 0
        activation_started = time.perf_counter()
        for target in counts:
            t0 = time.perf_counter()
            for index in range(started, target):
                system.handle(f"session-{index}").submit(state, "task", "agent")
            submit_s = time.perf_counter() - t0
            ok = await _wait_until(lambda target=target: store.documents >= target, timeout=600)
            active_s = time.perf_counter() - t0
            new = target - started
            started = target
            stats = system.statistics()
            rss = rss_bytes()
            out["steps"].append({
                "sessions": target,
                "live_actors": stats.live_actors,
                "activated": ok,
                "submit_us_per_session": submit_s / new * 1e6,
                "activation_us_per_session": active_s / new * 1e6,
                "rss": rss,
                "rss_per_live_actor": (rss - open_rss) / max(1, stats.live_actors),
            })
        peak_blocks = allocated_blocks()
        out["rss_peak"] = rss_bytes()
        # Idle release: every actor exits after idle_timeout without messages.
        remaining = idle_timeout - (time.perf_counter() - activation_started) + idle_timeout
        out["idle_exit"] = await _wait_until(lambda: system.statistics().live_actors == 0,
                                             timeout=max(remaining, idle_timeout) + 60, poll=0.1)
        out["live_after_idle"] = system.statistics().live_actors
        idle_blocks = allocated_blocks()
        out["rss_after_idle"] = rss_bytes()
        malloc_trim()
        out["rss_after_trim"] = rss_bytes()
        grown = peak_blocks - open_blocks
        out["blocks_released_fraction"] = (peak_blocks - idle_blocks) / grown if grown > 0 else 1.0
    out["rss_base"] = base_rss
    out["blocks"] = {"base": base_blocks, "open": open_blocks, "peak": peak_blocks, "idle": idle_blocks}
    return out


def child_main(argv: Sequence[str] | None = None) -> int:
    """Entry of the measuring subprocess: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.sessions")
    parser.add_argument("--child", required=True, choices=["asyncio", "trio"])
    parser.add_argument("--counts", required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    quiet_structlog()
    counts = [int(c) for c in args.counts.split(",")]
    figures = anyio.run(_child, counts, args.idle_timeout, backend=args.child)
    print(json.dumps(figures), flush=True)
    return 0


def _spawn(backend: str, counts: list[int], idle_timeout: float) -> dict[str, Any]:
    return run_child("bench.sessions", backend, "--counts", ",".join(map(str, counts)),
                     "--idle-timeout", str(idle_timeout))


def run(params: Params) -> ScenarioResult:
    """Run one child per backend, alternated; once unless ``--reps`` says otherwise.

    Each child waits for its 100k actors to exit idle (about a minute), and its figures repeat to
    within 0.1% from run to run, so one run per backend is the default.
    """
    counts = params.pick([10_000, 100_000], [1_000, 10_000], [100, 500])
    # Longer than activating every session takes, so that none exits before the last one is counted.
    idle_timeout = params.pick(45.0, 5.0, 1.5)
    reps = params.reps if params.reps_given else 1
    small, large = counts
    columns = [
        Column(f"rss_per_actor_{small}", f"RSS/actor @{small:,} B", ",.0f"),
        Column(f"rss_per_actor_{large}", f"RSS/actor @{large:,} B", ",.0f"),
        Column(f"rss_mib_{large}", f"RSS growth @{large:,} MiB", ",.0f"),
        Column("submit_us", "first submit µs/session", ".1f"),
        Column("activation_us", "activation µs/session", ".1f"),
        Column("live_after_idle", "live after idle", ".0f"),
        Column("blocks_released_pct", "Python blocks released %", ".0f"),
        Column("rss_idle_mib", "RSS after idle MiB", ",.0f"),
        Column("rss_trim_mib", "RSS after malloc_trim MiB", ",.0f"),
    ]
    result = ScenarioResult(
        name="sessions",
        title="4. Many sessions: memory per live actor, activation, idle release",
        columns=columns,
        params={"sessions": f"{small:,} then {large:,}", "idle_timeout_s": idle_timeout, "reps": reps},
    )
    result.add_row("asyncio", "asyncio (fresh subprocess)")
    result.add_row("trio", "trio (fresh subprocess)")
    for _rep, backend in alternate(["asyncio", "trio"], reps):
        figures = _spawn(backend, counts, idle_timeout)
        result.extra.setdefault(backend, []).append(figures)
        steps = {step["sessions"]: step for step in figures["steps"]}
        growth = steps[large]["rss"] - figures["rss_open"]
        result.record(backend, {
            f"rss_per_actor_{small}": steps[small]["rss_per_live_actor"],
            f"rss_per_actor_{large}": steps[large]["rss_per_live_actor"],
            f"rss_mib_{large}": growth / MIB,
            f"rss_total_mib_{large}": steps[large]["rss"] / MIB,
            f"live_{large}": steps[large]["live_actors"],
            "submit_us": steps[large]["submit_us_per_session"],
            "activation_us": steps[large]["activation_us_per_session"],
            "live_after_idle": figures["live_after_idle"],
            "blocks_released_pct": figures["blocks_released_fraction"] * 100,
            "rss_open_mib": figures["rss_open"] / MIB,
            "rss_idle_mib": figures["rss_after_idle"] / MIB,
            "rss_trim_mib": figures["rss_after_trim"] / MIB,
        })
    result.notes += [
        "RSS/actor = (RSS with N live actors − RSS of the open, empty ActorSystem) ÷ live actors; the store"
        " discards documents, so only actors are counted.",
        "activation = time from the first submit of a batch of new sessions until each has written its first"
        " upload (debounce 0), per session; first submit = the synchronous submit() that starts an actor.",
        "idle release: every actor exits after idle_timeout; 'Python blocks released' compares"
        " sys.getallocatedblocks() at the peak and after the exits; RSS is also read after malloc_trim(0)"
        " (the interpreter keeps freed arenas for reuse otherwise).",
        "one child per backend unless --reps is given: each waits about idle_timeout for the idle exits, and"
        " RSS per actor repeated to within 0.1% between runs when measured twice.",
    ]
    for backend in ("asyncio", "trio"):
        total = result.median(backend, f"rss_total_mib_{large}")
        live = result.median(backend, f"live_{large}")
        result.targets.append(Target(
            f"{large:,} live sessions, {backend}", "≤ 1 GiB RSS",
            f"{total:,.0f} MiB ({live:,.0f} live)",
            None if large < 100_000 or math.isnan(total) else total * MIB <= GIB and live >= large,
        ))
        released = result.median(backend, "blocks_released_pct")
        after = result.median(backend, "live_after_idle")
        result.targets.append(Target(
            f"idle actors release memory, {backend}", "0 live after idle, ≥ 90% of Python blocks freed",
            f"{after:.0f} live, {released:.0f}% freed",
            None if math.isnan(released) else released >= 90 and after == 0,
        ))
    return result


if __name__ == "__main__":
    raise SystemExit(child_main())
