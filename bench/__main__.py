"""``python -m bench`` (and ``wr124-session bench``): run the benchmarks, print markdown, write JSON.

    python -m bench                 # the full run (a few minutes)
    python -m bench --quick         # every scenario, smaller, under a minute
    python -m bench --only chatty,cache --json /tmp/results.json
    python -m bench --quick --plot  # also PNG charts in bench/charts/ (matplotlib: the plot extra)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from bench._common import LOGGING_NOTE, Params, ScenarioResult, quiet_structlog, render_scenario, render_targets
from wr124_session_actor._progress import progress

__all__ = ["SCENARIOS", "main"]

#: Scenario name → module (each has ``run(params) -> ScenarioResult``), in running order.
SCENARIOS: Final = {
    "chatty": "bench.chatty",
    "keepall": "bench.keepall",
    "langgraph": "bench.langgraph_peer",
    "sessions": "bench.sessions",
    "large_states": "bench.large_states",
    "cache": "bench.cache",
    "activation": "bench.activation",
    "postgres": "bench.postgres",
    "growth": "bench.growth",
}

DEFAULT_JSON: Final = Path(__file__).resolve().parent / "results.json"
DEFAULT_CHARTS: Final = Path(__file__).resolve().parent / "charts"
_REPS: Final = {"full": 3, "quick": 3, "smoke": 1}
_PACKAGES: Final = ("wr124-session-actor", "anyio", "trio", "aiohttp", "httpx", "orjson", "structlog",
                    "langgraph-checkpoint-sqlite", "aiosqlite", "psycopg", "psycopg-pool")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of wr124-session-actor: prints a markdown report and writes the figures as JSON.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes: the whole run in under a minute")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition (the test suite's run)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, metavar="PATH",
                        help="where to write the figures (default: bench/results.json)")
    parser.add_argument("--only", default="", metavar="NAMES",
                        help=f"comma-separated scenarios to run, among: {', '.join(SCENARIOS)}")
    parser.add_argument("--plot", type=Path, nargs="?", const=DEFAULT_CHARTS, default=None, metavar="DIR",
                        help="also write a PNG chart per scenario (default folder: bench/charts; needs matplotlib)")
    parser.add_argument("--reps", type=int, default=0, metavar="N",
                        help="repetitions per scenario (default: 3, many-sessions 1; 1 with --smoke)")
    return parser


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _clean(value: Any) -> Any:
    """JSON without NaN/Infinity (they become null)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the exit code (2 for a usage error)."""
    parser = _parser()
    args = parser.parse_args(None if argv is None else list(argv))
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (choose among {', '.join(SCENARIOS)})")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:  # before a run of minutes
        parser.error("--plot needs matplotlib: pip install 'wr124-session-actor[plot]'")
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    reps = args.reps if args.reps > 0 else _REPS[mode]
    params = Params(mode=mode, reps=reps, reps_given=args.reps > 0)
    quiet_structlog()

    started = time.perf_counter()
    meta: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "reps": reps,
        "scenarios": names,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": _versions(),
        "logging": LOGGING_NOTE,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"## wr124-session-actor benchmarks ({mode} run, {reps} repetition(s))\n")
    print(f"Python {meta['python']} on {meta['platform']}, {meta['cpus']} CPUs. {LOGGING_NOTE}. Figures are"
          " medians over repetitions with (min–max); contenders of a scenario run alternately in one process.\n",
          flush=True)
    results: list[ScenarioResult] = []
    with progress(len(names), "benchmarks") as advance:
        for name in names:
            print(f"[bench] running {name} ...", file=sys.stderr, flush=True)
            advance(0, f"bench: {name}")
            t0 = time.perf_counter()
            module = importlib.import_module(SCENARIOS[name])
            result: ScenarioResult = module.run(params)
            result.extra["duration_s"] = time.perf_counter() - t0
            results.append(result)
            print(render_scenario(result), flush=True)
            advance()
    targets = [t for r in results for t in r.targets]
    print("### Targets\n")
    print(render_targets(targets))
    meta["duration_s"] = time.perf_counter() - started
    print(f"\n_{meta['duration_s']:.0f} s in all; figures written to {args.json}._", flush=True)
    document = {
        "meta": meta,
        "scenarios": {r.name: r.to_json() for r in results},
        "targets": [{"scenario": r.name, "name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met}
                    for r in results for t in r.targets],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_clean(document), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if args.plot is not None:
        from bench._plot import write_charts

        charts = write_charts(results, args.plot)
        print(f"_Charts: {', '.join(str(path) for path in charts)}._", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
