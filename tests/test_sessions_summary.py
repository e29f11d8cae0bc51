"""``DocumentEngine.sessions``: the browser view's list of sessions, on sqlite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor.stores import DocumentEngine, PostgresDocuments, SqliteDocuments


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DocumentEngine]:
    """Each engine, fresh."""
    made: DocumentEngine
    if request.param == "sqlite":
        made = SqliteDocuments(tmp_path / "s.db")
    else:
        made = PostgresDocuments(request.getfixturevalue("postgres_db"), pool_size=2)
    yield made
    made.close()


def write(engine: DocumentEngine, session: str, agent: str, project: str = "p") -> None:
    engine.insert_many(project, [encode_document(StateUpload(session, {"k": 1}, "task", agent))])
    time.sleep(0.002)  # distinct created_at


class TestSessions:
    def test_latest_activity_first_with_counts_and_agents(self, engine: DocumentEngine) -> None:
        """Sessions come newest activity first, with their document count, agents and newest seq."""
        for session, agent in (("alpha", "coder"), ("beta", "planner"), ("alpha", "planner"), ("gamma", "x")):
            write(engine, session, agent)
        write(engine, "other-project", "a", project="q")
        page, total = engine.sessions("p")
        assert total == 3
        assert [s["session_id"] for s in page] == ["gamma", "alpha", "beta"]
        alpha = page[1]
        assert alpha["documents"] == 2
        assert alpha["agents"] == ["coder", "planner"]
        assert alpha["last_seq"] > page[2]["last_seq"]  # alpha's newest was written after beta's
        assert alpha["first_at"] < alpha["last_at"]

    def test_search_and_pages(self, engine: DocumentEngine) -> None:
        """``search`` keeps ids containing it; ``limit``/``skip`` page through; total counts all matches."""
        for n in range(5):
            write(engine, f"run-{n}", "a")
        write(engine, "unrelated", "a")
        page, total = engine.sessions("p", search="run-", limit=2, skip=2)
        assert total == 5
        assert [s["session_id"] for s in page] == ["run-2", "run-1"]
        assert engine.sessions("p", search="nothing") == ([], 0)
