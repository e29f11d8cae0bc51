"""Stateless replicas: three ``wr124-session serve`` processes over one PostgreSQL database, four writer
processes, one replica SIGKILLed and restarted mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from .pgcluster import free_port

ROOT = Path(__file__).resolve().parent.parent
SESSIONS = 50
STATES = 8

WRITER = """
import json, logging, sys, anyio, structlog
from wr124_session_actor import ActorSystem, Config, SessionStateStatus

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
url, writer, sessions, states = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
acked = []

async def main() -> None:
    config = Config(api_url=url, keep="all", timeout=30.0, retries=60, retry_backoff_max=0.3,
                    circuit_threshold=10_000)
    async with ActorSystem(config) as system:
        async def session(index: int) -> None:
            manager = system.manager(f"s{index}")
            for k in range(states):
                status, value = await manager.upload_session_state({"writer": writer, "k": k}, "t", writer)
                if status is SessionStateStatus.SUCCESS:
                    acked.append([f"s{index}", k, value])

        async with anyio.create_task_group() as tg:
            for index in range(sessions):
                tg.start_soon(session, index)
    print(json.dumps(acked))

anyio.run(main)
"""


def _serve(url: str, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "wr124_session_actor.cli", "serve", "--db", url,
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_healthy(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"replica on port {port} did not become healthy")


@pytest.mark.slow
def test_replicas_with_one_killed_mid_run(postgres_db: str) -> None:
    """Every acknowledged state is stored exactly once, and per session each writer's states have
    strictly increasing seq in its submit order, though a replica died mid-run."""
    ports = [free_port() for _ in range(3)]
    replicas = [_serve(postgres_db, port) for port in ports]
    writers: list[subprocess.Popen[str]] = []
    try:
        for port in ports:
            _wait_healthy(port)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "ENABLE_SESSION_STATE_UPLOAD": "true"}
        for n in range(4):
            url = f"http://127.0.0.1:{ports[n % 3]}"
            writers.append(subprocess.Popen([sys.executable, "-c", WRITER, url, f"w{n}", str(SESSIONS), str(STATES)],
                                            env=env, stdout=subprocess.PIPE, text=True))
        with psycopg.connect(postgres_db) as conn:  # kill once writes flow
            end = time.monotonic() + 60
            while (at_kill := conn.execute("SELECT count(*) FROM wr124_documents").fetchone()) is None \
                    or at_kill[0] < 100:
                assert time.monotonic() < end, "no writes arrived"
                time.sleep(0.05)
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait()
        time.sleep(0.3)
        replicas[0] = _serve(postgres_db, ports[0])
        _wait_healthy(ports[0])
        acked: list[list[object]] = []
        for writer in writers:
            out, _ = writer.communicate(timeout=180)
            assert writer.returncode == 0
            acked.extend(json.loads(out))
    finally:
        procs: list[subprocess.Popen[Any]] = [*writers, *replicas]
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    with psycopg.connect(postgres_db) as conn:
        rows = conn.execute(
            "SELECT id, session_id, seq, body->'content'->'state'->>'writer', (body->'content'->'state'->>'k')::int"
            " FROM wr124_documents"
        ).fetchall()
    assert at_kill is not None and at_kill[0] < len(rows) / 2, "the replica died mid-run"
    assert len(acked) >= 4 * SESSIONS * STATES * 0.9, "most uploads are acknowledged"
    by_id = {row[0]: row for row in rows}
    assert len(by_id) == len(rows)
    for session, k, doc_id in acked:
        assert doc_id in by_id and (by_id[doc_id][1], by_id[doc_id][4]) == (session, k)
    # Exactly once: no state stored twice under two ids.
    states = [(row[1], row[3], row[4]) for row in rows]
    assert len(states) == len(set(states))
    per_writer: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for _, session, seq, writer, k in rows:
        per_writer[(session, writer)].append((seq, k))
    for pairs in per_writer.values():
        ks = [k for _, k in sorted(pairs)]
        assert ks == sorted(ks)
    for session in {row[1] for row in rows}:
        seqs = sorted(row[2] for row in rows if row[1] == session)
        assert seqs == list(range(1, len(seqs) + 1))
