"""Scenario 7: the cost of a session's whole life, against the floor of an anyio task.

A session here is born, lives and ends: its first ``submit`` makes the actor, the actor's task starts,
writes the upload (through the write stage, merged with other sessions' batches), ends, and the idle
actor is forgotten (``idle_timeout`` 0). The floor is what any per-session task costs at the least: an
anyio task with a memory stream and one message, created and ended. Both run in the same subprocess
per backend, alternated, on ``memory://``; the ratio is the figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.abc

from bench._common import Column, Params, ScenarioResult, Target, fmt_ratio, met, quiet_structlog, ratio, run_child
from wr124_session_actor import ActorSystem, Config
from wr124_session_actor.stores import reset_memory_stores

__all__ = ["run"]

BACKENDS: Final = ("asyncio", "trio")


async def _floor(sessions: int) -> float:
    """CPU seconds for ``sessions`` tasks, each with a memory stream and one message, created and ended."""

    async def receiver(stream: anyio.abc.ObjectReceiveStream[dict[str, Any]]) -> None:
        async with stream:
            await stream.receive()

    state = {"messages": [{"source": "user", "content": "hello"}]}
    started = time.process_time()
    async with anyio.create_task_group() as tg:
        for _ in range(sessions):
            send, receive = anyio.create_memory_object_stream[dict[str, Any]](1)
            tg.start_soon(receiver, receive)
            send.send_nowait(state)
            send.close()
    return time.process_time() - started


async def _sessions(sessions: int, name: str) -> tuple[float, dict[str, int]]:
    """CPU seconds from the first submit of ``sessions`` new sessions until every one is stored and gone."""
    config = Config(api_url=f"memory://{name}", debounce=0.0, idle_timeout=0.0, timeout=600.0)
    state = {"messages": [{"source": "user", "content": "hello"}]}
    async with ActorSystem(config) as system:
        await anyio.sleep(0.01)
        started = time.process_time()
        for index in range(sessions):
            system.handle(f"session-{index}").submit(state, "task", "agent")
        counters = system.counters
        while counters.documents + counters.failed < sessions or system.statistics().live_actors:  # noqa: ASYNC110
            await anyio.sleep(0.005)  # polling the counters the actors update
        took = time.process_time() - started
        stats = system.statistics()
    return took, {"store_writes": stats.store_writes, "documents": stats.documents, "failed": stats.failed}


async def _child(sessions: int, reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {"floor_us": [], "session_us": [], "store_writes": [], "documents": [], "failed": []}
    await _floor(min(sessions, 1000))  # warm up both paths
    await _sessions(min(sessions, 1000), "warmup")
    for rep in range(reps):
        out["floor_us"].append(await _floor(sessions) / sessions * 1e6)
        took, figures = await _sessions(sessions, f"rep{rep}")
        out["session_us"].append(took / sessions * 1e6)
        for key, value in figures.items():
            out[key].append(value)
        reset_memory_stores()
    return out


def child_main(argv: Sequence[str] | None = None) -> int:
    """Entry of the measuring subprocess: prints one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m bench.activation")
    parser.add_argument("--child", required=True, choices=BACKENDS)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--reps", type=int, required=True)
    args = parser.parse_args(argv)
    quiet_structlog()
    print(json.dumps(anyio.run(_child, args.sessions, args.reps, backend=args.child)), flush=True)
    return 0


def _spawn(backend: str, sessions: int, reps: int) -> dict[str, Any]:
    return run_child("bench.activation", backend, "--sessions", str(sessions), "--reps", str(reps))


def run(params: Params) -> ScenarioResult:
    """One subprocess per backend; floor and sessions alternate ``params.reps`` times inside it."""
    sessions = params.pick(20_000, 5_000, 500)
    result = ScenarioResult(
        name="activation",
        title="7. Activation: a session's first submit, actor, write and exit, against an anyio task",
        columns=[
            Column("floor_us", "floor µs/session", ".1f"),
            Column("session_us", "session µs/session", ".1f"),
            Column("ratio", "ratio to floor", ".2f"),
            Column("store_writes", "store writes", ".0f"),
        ],
        params={"sessions": sessions, "store": "memory://", "debounce": 0, "idle_timeout": 0, "reps": params.reps},
    )
    for backend in BACKENDS:
        result.add_row(backend, f"{backend} (fresh subprocess)")
    for backend in BACKENDS:
        figures = _spawn(backend, sessions, params.reps)
        for floor, session, writes in zip(figures["floor_us"], figures["session_us"], figures["store_writes"],
                                          strict=True):
            result.record(backend, {"floor_us": floor, "session_us": session, "ratio": ratio(session, floor),
                                    "store_writes": writes})
    result.notes += [
        "floor = an anyio task with a memory object stream and one message, created and ended, per session.",
        "both are CPU time of the measuring process (time.process_time), so that other load on the machine does"
        " not blur the ratio; the session side polls its counters every 5 ms, which is included.",
        "session = from the first submit of N new sessions until all N are stored (memory://) and their actors"
        " are forgotten (idle_timeout 0), per session; the write stage merges the sessions' batches.",
    ]
    for backend in BACKENDS:
        value = result.median(backend, "ratio")
        result.targets.append(Target(f"activation vs floor, {backend}", "≤ 2× the floor", fmt_ratio(value),
                                     met(value, lambda v: v <= 2.0)))
    return result


if __name__ == "__main__":
    raise SystemExit(child_main())
