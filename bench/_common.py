"""Shared helpers: quiet logging, percentiles, a loop-lag ticker, RSS, the server subprocess, results.

Every scenario module builds a :class:`ScenarioResult`: per contender, the figures of every
repetition; the report shows their median with the min–max range.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import json
import logging
import math
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio
import structlog

__all__ = [
    "BENCH_ROOT",
    "LOGGING_NOTE",
    "Column",
    "LagTicker",
    "Params",
    "ScenarioResult",
    "ServerProcess",
    "Target",
    "agent_state",
    "allocated_blocks",
    "alternate",
    "count_documents",
    "fmt_ratio",
    "idle_lag",
    "lag_ticker",
    "malloc_trim",
    "markdown_table",
    "met",
    "percentile",
    "quiet_structlog",
    "ratio",
    "render_scenario",
    "render_targets",
    "rss_bytes",
    "summarize",
]

#: The folder that holds the ``bench`` package (the repository root in a checkout).
BENCH_ROOT: Final = Path(__file__).resolve().parent.parent

LOGGING_NOTE: Final = ("structlog is configured to drop every event (a filtering bound logger at critical,"
                       " a level the library never uses)")


# --------------------------------------------------------------------------------------------------
# Logging


def _drop(_logger: Any, _name: str, _event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    raise structlog.DropEvent


def quiet_structlog() -> None:
    """Drop every structlog event, so that log rendering does not dominate the figures.

    A filtering bound logger at critical makes each of the library's calls a no-op, as an application that logs at
    warning makes the library's debug events; the processor is a second guard.
    """
    structlog.configure(processors=[_drop], wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
                        cache_logger_on_first_use=True)


# --------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linearly interpolated; NaN when empty."""
    if not values:
        return math.nan
    data = sorted(values)
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summarize(runs: Sequence[float]) -> dict[str, Any]:
    """Median, min and max of one figure over repetitions (and the repetitions themselves)."""
    finite = [r for r in runs if not math.isnan(r)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": list(runs)}
    return {
        "median": percentile(finite, 50),
        "min": min(finite),
        "max": max(finite),
        "runs": list(runs),
    }


def alternate(names: Sequence[str], reps: int) -> Iterator[tuple[int, str]]:
    """``(repetition, name)`` pairs, the order rotated every repetition so that no one always goes first."""
    for rep in range(reps):
        shift = rep % len(names)
        for name in [*names[shift:], *names[:shift]]:
            yield rep, name


# --------------------------------------------------------------------------------------------------
# Event-loop lag


class LagTicker:
    """Measures event-loop lag: a task sleeps ``interval`` again and again and records the overshoot."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lags: list[float] = []

    async def run(self) -> None:
        """Tick until cancelled."""
        interval = self.interval
        clock = time.perf_counter
        while True:
            start = clock()
            await anyio.sleep(interval)
            self.lags.append(max(0.0, clock() - start - interval))

    def figures(self) -> dict[str, float]:
        """p50, p99 and max lag in milliseconds."""
        return {
            "lag_p50_ms": percentile(self.lags, 50) * 1e3,
            "lag_p99_ms": percentile(self.lags, 99) * 1e3,
            "lag_max_ms": (max(self.lags) if self.lags else math.nan) * 1e3,
        }


@contextlib.asynccontextmanager
async def lag_ticker(interval: float = 0.001) -> AsyncIterator[LagTicker]:
    """Run a :class:`LagTicker` for the duration of the block."""
    ticker = LagTicker(interval)
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run, name="lag-ticker")
        try:
            yield ticker
        finally:
            tg.cancel_scope.cancel()


async def idle_lag(seconds: float = 0.3) -> dict[str, float]:
    """The lag figures of an otherwise idle loop (the ticker's own floor)."""
    async with lag_ticker() as ticker:
        await anyio.sleep(seconds)
    return ticker.figures()


# --------------------------------------------------------------------------------------------------
# Memory


def rss_bytes() -> int:
    """This process's resident set size (``VmRSS`` in ``/proc/self/status``), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def allocated_blocks() -> int:
    """Python objects' allocated memory blocks, after a full collection."""
    gc.collect()
    return sys.getallocatedblocks()


def malloc_trim() -> bool:
    """Ask glibc to give freed heap memory back to the OS; return whether it could be asked."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    return True


# --------------------------------------------------------------------------------------------------
# Workload


_FILLER: Final = (
    "The agent considered the user's request, looked up the relevant records, and drafted a reply "
    "that summarises what it found and what it will do next. "
)


@functools.lru_cache(maxsize=16)
def _conversation(size: int) -> tuple[dict[str, Any], ...]:
    messages: list[dict[str, Any]] = []
    budget = size - 160
    index = 0
    while budget > 0:
        text = _FILLER[: min(len(_FILLER), max(16, budget - 60))]
        messages.append({"source": "assistant" if index % 2 else "user", "content": text, "n": index})
        budget -= len(text) + 48
        index += 1
    return tuple(messages)


def agent_state(session: int, step: int, size: int = 2048) -> dict[str, Any]:
    """An agent ``save_state()``-like snapshot of about ``size`` bytes of JSON.

    Each call returns a new dict (as ``save_state()`` does); the messages in it are shared between
    calls, so that building snapshots costs the agent loop next to nothing.
    """
    return {
        "type": "AssistantAgentState",
        "version": "1.0.0",
        "session": session,
        "step": step,
        "llm_context": {"messages": list(_conversation(size))},
    }


def run_child(module: str, backend: str, *args: str) -> dict[str, Any]:
    """Run ``python -m module --child backend *args`` (a measurement in a fresh process); return the JSON
    figures it prints on its last line."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", module, "--child", backend, *args],
        capture_output=True, text=True, env=env, cwd=str(BENCH_ROOT), timeout=1800, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {backend} child of {module} failed:\n{proc.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return figures


# --------------------------------------------------------------------------------------------------
# The reference server in its own process


class ServerProcess:
    """The reference server (``bench._server``) in a subprocess on 127.0.0.1, over ``db_path``.

    The server counts the requests it receives per project (``GET /_bench/stats``): the honest
    count of store writes.
    """

    def __init__(self, db_path: str | os.PathLike[str], startup_timeout: float = 20.0) -> None:
        self.db_path = os.fspath(db_path)
        self.startup_timeout = startup_timeout
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        """The server process id."""
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> ServerProcess:
        """Start the server and wait until it listens."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH_ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench._server", "--db", self.db_path, "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(BENCH_ROOT),
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            if line.startswith("LISTENING "):
                self.url = line.split()[1]
                return self
        self.stop()
        raise RuntimeError("the bench server did not start")

    def stop(self) -> None:
        """Stop the server (closing its stdin tells it to exit) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _stats_sync(self) -> dict[str, dict[str, int]]:
        with urllib.request.urlopen(f"{self.url}/_bench/stats", timeout=10) as resp:
            stats: dict[str, dict[str, int]] = json.loads(resp.read())
        return stats

    async def requests(self, project: str) -> dict[str, int]:
        """``{"requests": n, "writes": n}`` the server received for ``project``."""
        stats = await anyio.to_thread.run_sync(self._stats_sync)
        return stats.get(project, {"requests": 0, "writes": 0})

    async def documents(self, project: str) -> int:
        """How many documents the server's database holds for ``project``."""
        return await anyio.to_thread.run_sync(count_documents, self.db_path, project)


def count_documents(db_path: str, project: str | None = None) -> int:
    """Documents in a json-documents sqlite file (of ``project``, when given)."""
    conn = sqlite3.connect(db_path, timeout=30)
    try:
        if project is None:
            row = conn.execute("SELECT count(*) FROM documents").fetchone()
        else:
            row = conn.execute("SELECT count(*) FROM documents WHERE project = ?", (project,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True, slots=True)
class Column:
    """A figure shown in a scenario's table: its key, header and number format."""

    key: str
    header: str
    fmt: str = ".1f"


@dataclass(frozen=True, slots=True)
class Target:
    """One of the issue's targets, with what was measured and whether it was met (None: not measured)."""

    name: str
    goal: str
    measured: str
    met: bool | None


@dataclass(frozen=True, slots=True)
class Params:
    """Sizes shared by every scenario's run, set by ``--quick``/``--smoke``."""

    mode: str  # "full", "quick" or "smoke"
    reps: int
    reps_given: bool = False  # --reps was given (scenarios that cap their repetitions honour it)

    @property
    def quick(self) -> bool:
        """Whether this is a shortened run."""
        return self.mode != "full"

    def pick(self, full: Any, quick: Any, smoke: Any) -> Any:
        """The value for this mode."""
        return {"full": full, "quick": quick, "smoke": smoke}[self.mode]


@dataclass(slots=True)
class ScenarioResult:
    """The figures of one scenario: per contender (row), per figure, one value per repetition."""

    name: str
    title: str
    columns: list[Column]
    params: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def add_row(self, key: str, label: str) -> None:
        """Declare a contender (row) in display order."""
        self.labels[key] = label
        self.runs.setdefault(key, {})

    def record(self, key: str, figures: dict[str, float]) -> None:
        """Add one repetition's figures of contender ``key``."""
        row = self.runs.setdefault(key, {})
        for name, value in figures.items():
            row.setdefault(name, []).append(float(value))

    def median(self, key: str, figure: str) -> float:
        """The median of a figure over repetitions (NaN when missing)."""
        return float(summarize(self.runs.get(key, {}).get(figure, []))["median"])

    def to_json(self) -> dict[str, Any]:
        """The figures as plain JSON data."""
        return {
            "title": self.title,
            "skipped": self.skipped,
            "params": self.params,
            "notes": self.notes,
            "contenders": {
                key: {
                    "label": self.labels.get(key, key),
                    "figures": {name: summarize(values) for name, values in self.runs.get(key, {}).items()},
                }
                for key in self.labels
            },
            "targets": [
                {"name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met} for t in self.targets
            ],
            "extra": self.extra,
        }


def _cell(values: Sequence[float] | None, fmt: str) -> str:
    if not values:
        return "–"
    s = summarize(values)
    if math.isnan(s["median"]):
        return "–"
    med = format(s["median"], fmt)
    if len(values) == 1 or s["min"] == s["max"]:
        return med
    return f"{med} ({format(s['min'], fmt)}–{format(s['max'], fmt)})"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def render_scenario(result: ScenarioResult) -> str:
    """One scenario as a markdown section: heading, parameters, table, notes."""
    out = [f"### {result.title}", ""]
    if result.skipped:
        out += [f"_Skipped: {result.skipped}_", ""]
        return "\n".join(out)
    if result.params:
        out += ["Parameters: " + ", ".join(f"{k}={v}" for k, v in result.params.items()), ""]
    headers = ["contender", *(c.header for c in result.columns)]
    rows = [
        [result.labels[key], *(_cell(result.runs.get(key, {}).get(c.key), c.fmt) for c in result.columns)]
        for key in result.labels
    ]
    out += [markdown_table(headers, rows), ""]
    out += [f"- {note}" for note in result.notes]
    if result.notes:
        out.append("")
    return "\n".join(out)


def render_targets(targets: Sequence[Target]) -> str:
    """The targets as a markdown table."""
    def verdict(met: bool | None) -> str:
        return "n/a" if met is None else ("met" if met else "**missed**")

    rows = [[t.name, t.goal, t.measured, verdict(t.met)] for t in targets]
    return markdown_table(["target", "goal", "measured (median)", "verdict"], rows)


def fmt_ratio(value: float) -> str:
    """A ratio for the targets table."""
    return "–" if math.isnan(value) or math.isinf(value) else f"{value:,.1f}×"


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is 0."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def met(value: float, check: Callable[[float], bool]) -> bool | None:
    """``check(value)``, or None when the value is missing."""
    return None if math.isnan(value) else bool(check(value))
