"""Scenario 7: PostgreSQL keep-all throughput, documents persisted per second.

The library with ``keep="all"`` in actor mode straight to ``postgresql://``, against the raw rate of
``executemany`` of pre-encoded rows into the same table (the floor of what any layer above can do),
and against the same library writing through one reference server and through three replicas over
the same database. Needs a PostgreSQL server: ``WR124_BENCH_POSTGRES_URL`` (or the tests'
``WR124_TEST_POSTGRES_URL``) names one the benchmark may create databases on; without it the scenario
is skipped.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import anyio
import anyio.lowlevel

from bench._common import Column, Params, ScenarioResult, ServerProcess, Target, agent_state, alternate, met, ratio
from wr124_session_actor import ActorSystem, Config, SessionStateStatus
from wr124_session_actor._document import EncodedDocument, StateUpload, encode_document
from wr124_session_actor.stores import PostgresDocuments

__all__ = ["run"]

TASK: Final = "Summarise the conversation so far"
AGENT: Final = "assistant"
MAX_BATCH: Final = 500

LABELS: Final = {
    "direct": "library, actor mode, keep='all', submit() → postgresql:// (no server)",
    "raw": "raw psycopg executemany of pre-encoded rows, one transaction per 500 (same table)",
    "engine": "library's PostgreSQL engine insert_many, 500 per call (same table, no actors)",
    "server1": "library → one reference server (serve --db postgresql://) → the same database",
    "server3": "library → three replicas (sessions spread over them) → the same database",
}

COLUMNS: Final = [
    Column("docs_per_s", "documents/s", ",.0f"),
    Column("documents", "documents stored", ".0f"),
    Column("wall_s", "wall s", ".2f"),
]

_RAW_INSERT: Final = (
    "INSERT INTO wr124_documents (project, id, session_id, seq, agent, document_type, name, tags, created_at,"
    " updated_at, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb)"
)


def _server_url() -> str | None:
    return os.environ.get("WR124_BENCH_POSTGRES_URL") or os.environ.get("WR124_TEST_POSTGRES_URL")


def _count(db_url: str, project: str) -> int:
    import psycopg

    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM wr124_documents WHERE project = %s", (project,)).fetchone()
    return int(row[0]) if row else 0


async def _library(urls: Sequence[str], db_url: str, project: str, sessions: int, snapshots: int) -> dict[str, float]:
    """Actor-mode keep-all uploads; session ``i`` goes through ``urls[i % len(urls)]``."""
    failures = 0
    started = time.perf_counter()
    async with anyio.create_task_group() as outer:
        for which, url in enumerate(urls):
            config = Config(api_url=url, project_id=project, keep="all", timeout=120.0, max_batch=MAX_BATCH)

            async def system_run(config: Config = config, which: int = which) -> None:
                nonlocal failures
                async with ActorSystem(config) as system:
                    async def agent(index: int) -> None:
                        nonlocal failures
                        handle = system.handle(f"s{index}")
                        for step in range(snapshots):
                            status = handle.submit(agent_state(index, step), TASK, AGENT)
                            failures += status is not SessionStateStatus.SUCCESS
                            await anyio.lowlevel.checkpoint()

                    async with anyio.create_task_group() as tg:
                        for index in range(which, sessions, len(urls)):
                            tg.start_soon(agent, index)
                failures += system.statistics().failed

            outer.start_soon(system_run)
    wall = time.perf_counter() - started
    documents = await anyio.to_thread.run_sync(_count, db_url, project)
    return {"docs_per_s": documents / wall, "documents": documents, "wall_s": wall, "failures": failures}


def _prepared(sessions: int, snapshots: int) -> list[EncodedDocument]:
    return [
        encode_document(StateUpload(f"s{index}", agent_state(index, step), TASK, AGENT))
        for index in range(sessions)
        for step in range(snapshots)
    ]


def _raw(db_url: str, project: str, docs: Sequence[EncodedDocument]) -> dict[str, float]:
    """executemany of ready rows (seq counted beforehand), one transaction per batch: the floor."""
    import psycopg

    now = datetime.now(UTC)
    seqs: dict[str, int] = {}
    rows = []
    for d in docs:
        seqs[d.session_id] = seqs.get(d.session_id, 0) + 1
        rows.append((project, d.id, d.session_id, seqs[d.session_id], d.agent, d.document_type, d.name,
                     list(d.tags), now, now, bytes(d.body).decode()))
    with psycopg.connect(db_url, autocommit=True) as conn:
        started = time.perf_counter()
        for offset in range(0, len(rows), MAX_BATCH):
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(_RAW_INSERT, rows[offset : offset + MAX_BATCH])
        wall = time.perf_counter() - started
    return {"docs_per_s": len(rows) / wall, "documents": len(rows), "wall_s": wall}


def _engine(db_url: str, project: str, docs: Sequence[EncodedDocument]) -> dict[str, float]:
    engine = PostgresDocuments(db_url, pool_size=1)
    try:
        engine.ping()
        started = time.perf_counter()
        for offset in range(0, len(docs), MAX_BATCH):
            engine.insert_many(project, docs[offset : offset + MAX_BATCH])
        wall = time.perf_counter() - started
    finally:
        engine.close()
    return {"docs_per_s": len(docs) / wall, "documents": len(docs), "wall_s": wall}


def run(params: Params) -> ScenarioResult:
    """Run the scenario; contenders alternated, ``params.reps`` times."""
    sessions, snapshots = params.pick((100, 100), (30, 40), (3, 5))
    result = ScenarioResult(
        name="postgres",
        title="8. PostgreSQL keep-all throughput (documents persisted per second)",
        columns=COLUMNS,
        params={"sessions": sessions, "snapshots_per_session": snapshots, "batch": MAX_BATCH, "reps": params.reps},
    )
    for key, label in LABELS.items():
        result.add_row(key, label)
    server_url = _server_url()
    if server_url is None:
        result.skipped = "no PostgreSQL: set WR124_BENCH_POSTGRES_URL (a server the benchmark may create databases on)"
        result.targets = [Target("PostgreSQL keep-all vs raw executemany", "≥ 50%", "skipped", None)]
        return result

    import psycopg

    name = f"wr124_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    db_url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        PostgresDocuments(db_url).migrate()
        with ServerProcess(db_url) as one, ServerProcess(db_url) as two, ServerProcess(db_url) as three:
            async def main() -> None:
                for rep, kind in alternate(list(LABELS), params.reps):
                    project = f"{kind}-r{rep}"
                    if kind == "direct":
                        figures = await _library([db_url], db_url, project, sessions, snapshots)
                    elif kind == "server1":
                        figures = await _library([one.url], db_url, project, sessions, snapshots)
                    elif kind == "server3":
                        figures = await _library([one.url, two.url, three.url], db_url, project, sessions, snapshots)
                    else:
                        docs = _prepared(sessions, snapshots)  # encoding is not part of the floor
                        insert = _raw if kind == "raw" else _engine
                        figures = await anyio.to_thread.run_sync(insert, db_url, project, docs)
                    result.record(kind, figures)

            anyio.run(main, backend="asyncio")
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    result.notes += [
        "documents/s = documents found in the database ÷ wall time from the first snapshot until the last"
        " one is stored; raw and engine rows are encoded before the clock starts.",
        "all contenders share one machine with the database and the servers (2 cores here), so the"
        " replicas compete with the database for CPU: the ratios say what the layers cost, not how far"
        " replicas on their own machines would scale.",
    ]
    direct = result.median("direct", "docs_per_s")
    vs_raw = ratio(direct, result.median("raw", "docs_per_s"))
    one_vs = ratio(result.median("server1", "docs_per_s"), direct)
    three_vs = ratio(result.median("server3", "docs_per_s"), direct)
    result.targets = [
        Target("PostgreSQL keep-all vs raw executemany", "≥ 50% of raw executemany (same table, same run)",
               f"{vs_raw:.0%}", met(vs_raw, lambda v: v >= 0.5)),
        Target("one reference server vs direct postgresql://", "a ratio (reported)", f"{one_vs:.2f}×", None),
        Target("three replicas vs direct postgresql://", "a ratio (reported)", f"{three_vs:.2f}×", None),
    ]
    return result
