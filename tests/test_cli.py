"""The ``wr124-session`` command and the examples, run as a user would."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from wr124_session_actor import cli
from wr124_session_actor._document import EncodedDocument
from wr124_session_actor.cli import main
from wr124_session_actor.stores import SqliteDocuments

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wr124_session_actor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


class TestDemo:
    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_demo_on_the_embedded_default(self, tmp_path: Path, backend: str) -> None:
        """``demo`` writes chatty teams to a local sqlite file, lists history, restores, prints the figures."""
        result = run_cli("demo", "--sessions", "2", "--messages", "20", "--backend", backend, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "store: sqlite:///wr124_sessions.db" in out
        assert "restored the latest state of demo-1" in out
        figures = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("states", "store w")))
        submitted = int(figures["states submitted"])
        writes = int(figures["store writes"].split()[0])
        assert submitted == 2 * 2 * 21
        assert 1 <= writes < submitted
        assert (tmp_path / "wr124_sessions.db").exists()


    @pytest.mark.parametrize("backend", ["asyncio", "trio"])
    def test_a_store_that_is_down_counts_what_was_lost(self, backend: str, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
        """Against a store that is down, the figures count the states the final flush gave up as failed, and an
        ``error:`` line says so (it printed "failed: 0", read before the flush, and no error line)."""
        for variable, value in (("SESSION_STATE_TIMEOUT", "0.5"), ("SESSION_STATE_SHUTDOWN_TIMEOUT", "0.5"),
                                ("SESSION_STATE_RETRY_BACKOFF", "0.05")):
            monkeypatch.setenv(variable, value)
        code = main(["demo", "--url", "http://127.0.0.1:9", "--sessions", "1", "--agents", "1", "--messages", "1",
                     "--backend", backend])
        captured = capsys.readouterr()
        assert code == 1
        figures = {name: int(value) for name, value in (line.split(":", 1) for line in captured.out.splitlines()
                                                             if line.startswith(("states", "failed", "coalesced")))}
        assert figures["failed"] == figures["states submitted"] - figures["coalesced (replaced)"] > 0
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert errors[0] == (f"error: {figures['failed']} states were not stored in http://127.0.0.1:9"
                             " (the log says why)")
        assert errors[1].startswith("error: ") and "could not restore the latest state of demo-1" in errors[1]
        given_up = [line for line in captured.err.splitlines() if "not written before shutdown_timeout" in line]
        assert given_up and all("its last write failed: " in line and "POST http://127.0.0.1:9/" in line
                                for line in given_up)  # the cause, without -v (only the retries' debug said it)

    def test_trio_without_trio_is_an_error_line(self, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
        """`demo --backend trio` where trio is not installed: one error line naming the extra, exit 1 (it was
        a 43-line traceback from anyio)."""
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "trio" else find_spec(name, *a))
        assert main(["demo", "--backend", "trio"]) == 1
        assert capsys.readouterr().err.strip() == (
            "error: --backend trio needs trio: pip install 'wr124-session-actor[trio]'")


class TestDatabaseUrls:
    @pytest.mark.parametrize("command", ["migrate", "serve"])
    @pytest.mark.parametrize("url", ["mysql://db/x", "postgresq://postgres@127.0.0.1:1/p"])
    def test_a_url_of_another_kind_is_refused(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], command: str, url: str) -> None:
        """``--db`` with a URL that is neither PostgreSQL nor sqlite (or a misspelt one) is an error naming it, and
        makes no file (it became a new sqlite file, './mysql:/db/x', and a server ran on it as if on PostgreSQL)."""
        monkeypatch.chdir(tmp_path)
        assert main([command, "--db", url, *(["--port", "0"] if command == "serve" else [])]) == 1
        assert f"got {url!r}" in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []


class TestServe:
    def test_a_port_in_use_is_an_error_line_not_a_traceback(self, tmp_path: Path) -> None:
        """serve on a port another socket holds: one "error:" line and exit status 1 (29 lines of traceback)."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            result = run_cli("serve", "--port", str(port), "--db", str(tmp_path / "s.db"), cwd=tmp_path)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{port}")


class TestInspect:
    def test_ls_show_rm(self, tmp_path: Path) -> None:
        """ls lists a session's states (text and JSON), show prints one, rm deletes it."""
        assert run_cli("demo", "--sessions", "1", "--messages", "3", cwd=tmp_path).returncode == 0
        listed = run_cli("ls", "demo-1", "--json", cwd=tmp_path)
        docs = json.loads(listed.stdout)
        assert len(docs) == 2
        doc_id = docs[0]["_id"]
        text = run_cli("ls", "demo-1", cwd=tmp_path).stdout
        assert doc_id in text
        shown = run_cli("show", doc_id, cwd=tmp_path)
        assert f"id:         {doc_id}" in shown.stdout
        assert json.loads(run_cli("show", doc_id, "--json", cwd=tmp_path).stdout)["_id"] == doc_id
        assert run_cli("rm", doc_id, cwd=tmp_path).stdout.strip() == f"deleted {doc_id}"
        missing = run_cli("show", doc_id, cwd=tmp_path)
        assert missing.returncode == 1
        assert "failed: no document" in missing.stderr

    def test_documents_of_another_client_are_listed(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """``ls`` and ``show`` print documents another json-documents client stored with fields of other types
        (an agent name null or a list, a size that is an object, a tag that is a number): ``ls`` raised
        TypeError from its format string, with a traceback; control characters are escaped (an escape
        sequence in another client's task cleared the terminal)."""
        engine = SqliteDocuments(tmp_path / "other.db")
        contents = [{"agent_name": None, "task": 7}, {"agent_name": ["a", "b"]},
                    {"agent_name": "ok", "task": "t\x1b[2Jx"}, {"agent_name": "x", "task": "\u202eevil\x9b"}]
        ids = ["d0", "d1", "d2", "d3\x1b]0;title\x07"]
        docs = [EncodedDocument(ids[n], "s", "session_state", ("session_state",), orjson.dumps(
            {"name": "session_state", "content": content, "session_id": "s", "tags": ["session_state", 5],
             "metadata": {"state_size": {"n": 1}}, "document_type": "session_state"}))
            for n, content in enumerate(contents)]
        engine.insert_many("default", docs)
        engine.close()
        url = f"sqlite:///{tmp_path / 'other.db'}"
        assert main(["ls", "s", "--url", url]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 4
        assert {line.split()[0] for line in lines} == {"d0", "d1", "d2", "d3\\x1b]0;title\\x07"}
        assert any('["a","b"]' in line for line in lines) and all('{"n":1} B' in line for line in lines)
        assert any("t\\x1b[2Jx" in line for line in lines) and any("\\u202eevil\\x9b" in line for line in lines)
        assert not any(char in line for line in lines for char in "\x1b\x07\u202e\x9b")
        assert main(["show", "d0", "--url", url]) == 0
        shown = capsys.readouterr().out
        assert "agent:      \n" in shown and "task:       7\n" in shown and "tags:       session_state, 5\n" in shown
        assert main(["show", "d3\x1b]0;title\x07", "--url", url, "--json"]) == 0
        shown = capsys.readouterr().out
        assert '"task": "\\u202eevil\\u009b"' in shown and "\x1b" not in shown and "\u202e" not in shown

    def test_a_file_that_is_not_a_database_fails_at_once(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
        """``ls`` on a file that is not a sqlite database says so without retrying (it retried "file is not a
        database" as a transient failure, five times over 1.2 s with the default backoff; 4 s here)."""
        (tmp_path / "notes.db").write_bytes(b"these are notes, not a database " * 100)
        monkeypatch.setenv("SESSION_STATE_RETRY_BACKOFF", "4")
        started = time.monotonic()
        assert main(["ls", "s", "--url", f"sqlite:///{tmp_path / 'notes.db'}"]) == 1
        assert time.monotonic() - started < 3
        assert "file is not a database" in capsys.readouterr().err

    def test_unreachable_server_is_a_status_not_a_traceback(self, tmp_path: Path) -> None:
        """ls against a server that is not there prints a short error and exits 1."""
        result = run_cli("ls", "s", "--url", "http://127.0.0.1:9", cwd=tmp_path)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert "failed" in result.stderr

    def test_malformed_environment_names_the_variable(self, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
        """A malformed variable is reported by name, exit status 1."""
        monkeypatch.setenv("SESSION_STATE_TIMEOUT", "never")
        assert main(["ls", "s", "--url", "memory://"]) == 1
        assert "SESSION_STATE_TIMEOUT" in capsys.readouterr().err

    @pytest.mark.parametrize("value", ["", " ", "localhost:8000"])
    def test_the_store_given_replaces_the_environments(self, tmp_path: Path, value: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
        """``--url`` is used whatever SESSION_API_URL holds, and ``migrate --db`` does not read it (an empty or
        malformed SESSION_API_URL failed every command, even with ``--url`` or ``--db`` given); with neither, an
        empty one is the default and a malformed one is named."""
        monkeypatch.setenv("SESSION_API_URL", value)
        monkeypatch.chdir(tmp_path)
        assert main(["ls", "s", "--url", "memory://"]) == 0
        assert main(["migrate", "--db", str(tmp_path / "m.db")]) == 0
        assert capsys.readouterr().err == ""
        if value.strip():
            assert main(["ls", "s"]) == 1
            assert "SESSION_API_URL must be" in capsys.readouterr().err
        else:  # the command line's default: the local sqlite file, which a listing does not make
            assert main(["ls", "s"]) == 1
            assert "no sqlite database at 'wr124_sessions.db'" in capsys.readouterr().err

    @pytest.mark.parametrize("option", ["--api-key", "--metrics-key"])
    def test_a_key_of_blanks_is_a_usage_error(self, option: str, capsys: pytest.CaptureFixture[str]) -> None:
        """``serve --api-key '   '``: a usage error (the server ran with no key required at all, silently)."""
        with pytest.raises(SystemExit) as info:
            main(["serve", option, "   "])
        assert info.value.code == 2
        assert f"argument {option}: expected a key, got only blanks" in capsys.readouterr().err

    @pytest.mark.parametrize("session_id", ["", "a\0b", "s" * 257])
    def test_a_session_id_no_store_holds_is_a_usage_error(self, session_id: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
        """``ls`` and ``prune --session`` with an empty, NUL-holding or overlong session id: a usage error
        (exit 2) saying why, as for every malformed option (``ls ""`` exited 1 with a ValueError's text)."""
        for args in (["ls", session_id], ["prune", "--session", session_id]):
            with pytest.raises(SystemExit) as info:
                main([*args, "--url", "memory://"])
            assert info.value.code == 2
            assert "expected a session id: session_id must" in capsys.readouterr().err

    @pytest.mark.parametrize("args", [["ls", "bench"], ["show", "bench"], ["rm", "bench"], ["-v", "ls", "bench"]])
    def test_a_session_or_document_named_bench_is_not_the_bench_command(
            self, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        """"bench" as a session or document id is that id (it ran the whole benchmark instead); only the command
        word is the bench command."""
        ran: list[list[str]] = []

        def bench(rest: list[str]) -> int:
            ran.append(list(rest))
            return 0

        monkeypatch.setattr(cli, "_bench", bench)
        main([*args, "--url", "memory://"])
        assert ran == []
        assert main(["bench", "--quick"]) == 0 and ran == [["--quick"]]
        assert main(["-v", "bench"]) == 0 and ran == [["--quick"], []]

    @pytest.mark.parametrize("args", [
        ["serve", "--port", "99999"], ["serve", "--port", "-1"], ["demo", "--sessions", "0"],
        ["demo", "--agents", "0"], ["demo", "--messages", "0"], ["ls", "s", "--limit", "-2"],
        ["prune", "--keep-last", "x"], ["ls", "s", "--limit", "0"],
    ])
    def test_a_number_out_of_range_is_a_usage_error(self, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        """A port past 65535, no sessions, agents or messages for the demo, or a negative limit is a usage error
        naming the option (exit status 2), not a traceback (serve raised OverflowError from bind(), demo an
        IndexError or an ExceptionGroup)."""
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {args[-2]}: expected a whole number" in err and "Traceback" not in err


class TestExamples:
    @pytest.mark.parametrize("example", ["session_state_usage_example.py", "team_example.py"])
    def test_examples_run_offline(self, example: str, tmp_path: Path) -> None:
        """Both examples run to completion with no server and no LLM."""
        result = subprocess.run([sys.executable, str(ROOT / "examples" / example)], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "success" in result.stdout
