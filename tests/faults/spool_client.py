"""A client process for the SIGKILL test: numbered states through an ActorSystem with a durable outbox.

Usage::

    python spool_client.py run URL SPOOL BACKEND RATE SESSIONS
    python spool_client.py replay URL SPOOL BACKEND

``run`` prints ``ready``, then submits ``{"seq": n}`` (n = 0, 1, 2, ...) at RATE per second spread over
SESSIONS sessions, and every few milliseconds prints ``accepted N T``: every seq below N has been
accepted (``submit`` returned SUCCESS), T being ``time.monotonic()`` (system-wide on Linux, so the
test can compare it with its own clock). It runs until it is killed (60 s at most).

``replay`` enters an ActorSystem on the same spool and leaves it at once, submitting nothing (a
short-lived process: a job, a CLI call); leaving must finish the replay. It prints ``replayed R`` (R: rows
found) when the spool is empty afterwards.
Anything else it prints starts with ``error``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import time

import anyio
import structlog

from wr124_session_actor import ActorSystem, Config
from wr124_session_actor import SessionStateStatus as S

SYNC_INTERVAL = 0.1


def config(url: str, spool: str) -> Config:
    """The configuration both runs share (the outbox syncs every 0.1 s)."""
    return Config(api_url=url, spool=spool, spool_sync_interval=SYNC_INTERVAL, keep="all", debounce=0.02,
                  max_delay=0.1, timeout=2.0, retries=2, retry_backoff=0.05, retry_backoff_max=0.3,
                  circuit_cooldown=0.1, shutdown_timeout=5.0)


def spool_rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


async def run(url: str, spool: str, rate: float, sessions: int) -> None:
    async with ActorSystem(config(url, spool)) as system:
        handles = [system.handle(f"kill-{n}") for n in range(sessions)]
        print("ready", flush=True)
        started = time.monotonic()
        seq = 0
        while time.monotonic() - started < 60:
            due = int((time.monotonic() - started) * rate)
            while seq < due:
                status = handles[seq % sessions].submit({"seq": seq}, "sigkill", "agent")
                if status != S.SUCCESS:
                    print(f"error submit {seq} returned {status}", flush=True)
                seq += 1
            print(f"accepted {seq} {time.monotonic():.6f}", flush=True)
            await anyio.sleep(0.004)


async def replay(url: str, spool: str) -> None:
    found = await anyio.to_thread.run_sync(spool_rows, spool)
    async with ActorSystem(config(url, spool)):
        pass  # only enter and leave: leaving finishes the replay (within shutdown_timeout)
    left = await anyio.to_thread.run_sync(spool_rows, spool)
    print(f"replayed {found}" if left == 0 else f"error {left} rows left in the spool", flush=True)


def main(argv: list[str]) -> None:
    # The library never configures structlog; this process sends warnings to stderr (stdout is the protocol).
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    command, url, spool, backend = argv[:4]
    if command == "run":
        anyio.run(run, url, spool, float(argv[4]), int(argv[5]), backend=backend)
    else:
        anyio.run(replay, url, spool, backend=backend)


if __name__ == "__main__":
    main(sys.argv[1:])
