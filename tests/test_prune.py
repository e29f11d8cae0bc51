"""Pruning on demand: the server's prune endpoint and sweeps, ``HttpStore.prune`` and ``wr124-session prune``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from wr124_session_actor import Config, PruneReport, RetentionPolicy, StoreRejected
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor.cli import main
from wr124_session_actor.server import ServerThread
from wr124_session_actor.server._prune import _parse_body
from wr124_session_actor.stores import Query, SqliteDocuments, open_store

PROJECT = "default"


def seed(db_path: Path | str, sessions: int = 2, agents: int = 2, states: int = 6) -> None:
    """``states`` states of each agent of each session, straight into the database file."""
    engine = SqliteDocuments(db_path)
    for i in range(states):
        engine.insert_many(PROJECT, [encode_document(StateUpload(f"s{s}", {"i": i}, "t", f"a{a}"))
                                     for s in range(sessions) for a in range(agents)])
    engine.close()


def count(db_path: Path | str, session: str | None = None) -> int:
    engine = SqliteDocuments(db_path)
    try:
        return engine.query(PROJECT, Query(session_id=session, limit=1))[1]
    finally:
        engine.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerThread]:
    """A reference server (no retention of its own) over a seeded database."""
    seed(tmp_path / "served.db")
    with ServerThread(tmp_path / "served.db") as server:
        yield server


def prune_url(server: ServerThread) -> str:
    return f"{server.url}/{PROJECT}/json-documents/prune"


class TestEndpoint:
    def test_dry_run_then_prune(self, served: ServerThread) -> None:
        """The endpoint answers {sessions, documents, bytes, dry_run}; a dry run removes nothing and
        reports exactly what the real run removes."""
        dry = httpx.post(prune_url(served), json={"keep_last": 2, "dry_run": True})
        assert dry.status_code == 200, dry.text
        body = dry.json()
        assert set(body) == {"sessions", "documents", "bytes", "dry_run"}
        assert (body["sessions"], body["documents"], body["dry_run"]) == (0, 2 * 2 * 4, True)
        assert count(served.db_path) == 24
        real = httpx.post(prune_url(served), json={"keep_last": 2}).json()
        assert real == {**body, "dry_run": False}
        assert count(served.db_path) == 8

    def test_one_session_and_durations_as_text(self, served: ServerThread) -> None:
        """session_id limits the prune; durations read as 90s/15m/12h/7d."""
        resp = httpx.post(prune_url(served), json={"keep_last": 1, "max_age": "7d", "idle_ttl": "30d",
                                                   "session_id": "s1"})
        assert resp.json()["documents"] == 2 * 5
        assert (count(served.db_path, "s0"), count(served.db_path, "s1")) == (12, 2)

    @pytest.mark.parametrize(
        ("body", "status", "words"),
        [
            (b"{not json", 400, "JSON"),
            (b"[1, 2]", 422, "object"),
            (b'{"keep_last": -1}', 422, "keep_last"),
            (b'{"keep_last": "many"}', 422, "keep_last"),
            (b'{"max_age": "soon"}', 422, "max_age"),
            (b'{"idle_ttl": {"d": 1}}', 422, "idle_ttl"),
            (b'{"dry_run": "yes"}', 422, "dry_run"),
            (b'{"session_id": 7}', 422, "session_id"),
            (b'{"everything": true}', 422, "unknown"),
        ],
    )
    def test_bad_input_is_a_json_4xx(self, served: ServerThread, body: bytes, status: int, words: str) -> None:
        """Malformed bodies answer 400/422 with a JSON error naming the problem, never 500."""
        resp = httpx.post(prune_url(served), content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == status, resp.text
        assert words in resp.json()["error"]
        assert count(served.db_path) == 24

    def test_empty_body_uses_the_servers_policy(self) -> None:
        """Omitted fields are the server's own policy; null or 0 turns a rule off."""
        server_policy = RetentionPolicy(keep_last=3, idle_ttl=86400)
        assert _parse_body(b"", server_policy) == (server_policy, None, False)
        # Not JSON texts (schemathesis sends them as invalid bodies): JSON's whitespace alone too.
        for not_json in (b" \t\r\n", b"\x0c", b"\x0b", b" \x1f "):
            with pytest.raises(web.HTTPBadRequest):
                _parse_body(not_json, server_policy)
        assert _parse_body(b'{"keep_last": null, "dry_run": true}', server_policy) == (
            RetentionPolicy(idle_ttl=86400), None, True)
        assert _parse_body(b'{"idle_ttl": 0, "max_age": "1h"}', server_policy)[0] == RetentionPolicy(3, 3600.0)

    def test_needs_the_api_key_when_one_is_set(self, tmp_path: Path) -> None:
        """With an API key, prune answers 401 without it (whoever may delete documents may prune)."""
        seed(tmp_path / "k.db")
        with ServerThread(tmp_path / "k.db", api_key="sekret") as server:
            assert httpx.post(prune_url(server), json={"keep_last": 1}).status_code == 401
            wrong = httpx.post(prune_url(server), json={"keep_last": 1}, headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 401
            ok = httpx.post(prune_url(server), json={"keep_last": 1}, headers={"Authorization": "Bearer sekret"})
            assert ok.json()["documents"] == 2 * 2 * 5

    def test_project_header_must_match(self, served: ServerThread) -> None:
        """As on every route, X-Project-ID naming another project is 403."""
        resp = httpx.post(prune_url(served), json={}, headers={"X-Project-ID": "other"})
        assert resp.status_code == 403


class TestServerSweeps:
    async def test_keep_last_after_each_write(self, tmp_path: Path, anyio_backend: str) -> None:
        """A server with keep_last trims the sessions a request wrote, before it answers."""
        with ServerThread(tmp_path / "w.db", retention=RetentionPolicy(keep_last=2)) as server:
            store = open_store(Config(api_url=server.url, timeout=5.0))
            for i in range(3):
                await store.insert_many([encode_document(StateUpload("s", {"i": 2 * i + k}, "t", "a"))
                                         for k in range(2)])
                await store.insert_many([encode_document(StateUpload("s", {"i": 100 + i}, "t", "b"))])
            result = await store.query(Query(session_id="s", limit=100, sort_by="seq", sort_order=1))
            await store.aclose()
        kept = [(d["content"]["agent_name"], d["content"]["state"]["i"]) for d in result.data]
        assert kept == [("b", 101), ("a", 4), ("a", 5), ("b", 102)]

    def test_periodic_sweep_removes_idle_sessions(self, tmp_path: Path) -> None:
        """A server with an idle TTL sweeps on its own, every sweep_interval, for its lifetime."""
        seed(tmp_path / "p.db", sessions=1, agents=1, states=2)
        policy = RetentionPolicy(idle_ttl=0.2)
        with ServerThread(tmp_path / "p.db", retention=policy, sweep_interval=0.05):
            deadline = time.monotonic() + 10
            while count(tmp_path / "p.db") and time.monotonic() < deadline:
                time.sleep(0.05)
        assert count(tmp_path / "p.db") == 0


class TestHttpStore:
    async def test_prune_through_the_api(self, served: ServerThread, anyio_backend: str) -> None:
        """HttpStore.prune posts the policy and reads the report; None leaves the policy to the server."""
        store = open_store(Config(api_url=served.url, timeout=5.0))
        try:
            dry = await store.prune(RetentionPolicy(keep_last=4), dry_run=True)
            assert dry == PruneReport(0, 8, dry.bytes, dry_run=True)
            assert await store.prune(None) == PruneReport()  # the server has no policy of its own
            assert (await store.prune(RetentionPolicy(keep_last=4))).documents == 8
            with pytest.raises(ValueError, match="clock"):
                await store.prune(RetentionPolicy(keep_last=1), now=datetime.now(UTC))
        finally:
            await store.aclose()

    async def test_older_server_without_the_endpoint(self, served: ServerThread, anyio_backend: str) -> None:
        """A server that lacks the endpoint is a StoreRejected, not a crash."""
        store = open_store(Config(api_url=served.url + "/nowhere", timeout=5.0))
        try:
            with pytest.raises(StoreRejected):
                await store.prune(RetentionPolicy(keep_last=1))
        finally:
            await store.aclose()


class TestCommand:
    def test_sqlite_dry_run_then_real(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """prune --dry-run prints what would go and changes nothing; the real run removes exactly that."""
        seed(tmp_path / "c.db")
        url = f"sqlite:///{tmp_path / 'c.db'}"
        assert main(["prune", "--url", url, "--keep-last", "3", "--dry-run", "--json"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert (dry["documents"], dry["dry_run"]) == (12, True)
        assert count(tmp_path / "c.db") == 24
        assert main(["prune", "--url", url, "--keep-last", "3", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {**dry, "dry_run": False}
        assert count(tmp_path / "c.db") == 12
        assert main(["prune", "--url", url, "--keep-last", "3", "--max-age", "7d", "--idle-ttl", "30d"]) == 0
        assert capsys.readouterr().out.strip() == (
            "removed (keep_last=3 max_age=1w idle_ttl=30d): 0 sessions, 0 documents, 0 bytes")

    def test_against_the_server(self, served: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
        """Through an http:// URL the command uses the server's prune endpoint."""
        assert main(["prune", "--url", served.url, "--keep-last", "1", "--session", "s0", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("would remove (keep_last=1): 0 sessions, 10 documents, ")
        assert count(served.db_path) == 24

    def test_memory_and_no_rule(self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
        """memory:// works too; with no rule anywhere there is nothing to do, and the command says so."""
        for var in ("SESSION_STATE_KEEP_LAST", "SESSION_STATE_MAX_AGE", "SESSION_STATE_IDLE_TTL"):
            monkeypatch.delenv(var, raising=False)
        assert main(["prune", "--url", "memory://", "--keep-last", "2", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == PruneReport().as_dict()
        assert main(["prune", "--url", "memory://"]) == 0
        captured = capsys.readouterr()
        assert "no retention rule" in captured.err

    def test_environment_fills_the_rules(self, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """SESSION_STATE_KEEP_LAST is the default of --keep-last."""
        seed(tmp_path / "e.db")
        monkeypatch.setenv("SESSION_STATE_KEEP_LAST", "5")
        assert main(["prune", "--url", f"sqlite:///{tmp_path / 'e.db'}", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["documents"] == 4

    @pytest.mark.parametrize("args", [["--keep-last", "-1"], ["--max-age", "7x"], ["--idle-ttl", "soon"],
                                      ["--keep-last", "99999999999999999999999"], ["--session", ""]])
    def test_bad_options(self, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed option is a usage error naming it (a count past 64 bits was exit status 1 from a
        ValueError; an empty session was taken on sqlite and refused over HTTP)."""
        with pytest.raises(SystemExit) as exit_info:
            main(["prune", "--url", "memory://", *args])
        assert exit_info.value.code == 2
        assert args[0] in capsys.readouterr().err

    @pytest.mark.parametrize("command", [["prune", "--keep-last", "1"], ["ls", "s"], ["show", "d"], ["rm", "d"]])
    def test_a_sqlite_file_that_is_not_there_is_an_error_not_a_new_file(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
        """A misspelt sqlite URL is an error naming the file, and makes none (prune made an empty database,
        reported "removed 0" and exited 0)."""
        url = f"sqlite:///{tmp_path / 'typo.db'}"
        assert main([*command, "--url", url]) == 1
        assert "no sqlite database at" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []

    def test_unreachable_server(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A server that is not there is a short error and exit status 1."""
        assert main(["prune", "--url", "http://127.0.0.1:9", "--keep-last", "1"]) == 1
        assert capsys.readouterr().err.startswith("error: ")


def test_serve_takes_the_retention_options() -> None:
    """serve --keep-last --max-age --idle-ttl --sweep-interval parse into the server's policy."""
    from wr124_session_actor.cli import _parser, _policy

    args: Any = _parser().parse_args(["serve", "--keep-last", "5", "--max-age", "7d", "--idle-ttl", "30d",
                                      "--sweep-interval", "5m"])
    assert _policy(args) == RetentionPolicy(5, 7 * 86400.0, 30 * 86400.0)
    assert args.sweep_interval == 300.0
