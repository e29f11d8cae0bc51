"""Every status path of the public API, on asyncio and trio, over HTTP and sqlite."""

from __future__ import annotations

import dataclasses
import sqlite3
import sys
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import anyio
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, SessionStateManager
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor.stores._http import HttpStore

from .conftest import http_config, stored_states
from .faultserver import BrokenTransport, closed_port_url, fault_server
from .test_manager import BACKEND_CLIENTS, manager_in

pytestmark = pytest.mark.anyio


@dataclasses.dataclass
class Notes:
    """A dataclass in a state (orjson encodes it natively)."""

    by_id: dict[object, str]


class Opaque:
    """Something no JSON encoder knows."""


async def every_call(manager: SessionStateManager) -> dict[str, Any]:
    """Run each public operation once; return op → (status, value)."""
    return {
        "upload": await manager.upload_session_state({"a": 1}, "t", "agent"),
        "download": await manager.download_session_states(limit=5),
        "restore": await manager.restore_session_state("some-id"),
        "latest": await manager.restore_latest_session_state(),
        "agent": await manager.restore_agent_session_state("agent"),
        "list": await manager.list_available_session_states(),
        "delete": await manager.delete_session_state("some-id"),
    }


class TestDisabled:
    async def test_every_call_is_disabled_without_network(self) -> None:
        """ENABLE_SESSION_STATE_UPLOAD unset: DISABLED everywhere, nothing contacted, logged once (info)."""
        with fault_server("500") as (url, hits), capture_logs() as logs:
            manager = SessionStateManager("s", Config.from_env({"SESSION_API_URL": url}))
            results = await every_call(manager)
            assert manager.submit_session_state({"a": 1}) == S.DISABLED
        assert {op: r[0] for op, r in results.items()} == dict.fromkeys(results, S.DISABLED)
        assert results["download"][1] == []
        assert results["restore"][1] is None
        assert hits == []
        assert [(e["event"], e["log_level"]) for e in logs] == [("session_state.disabled", "info")]


    async def test_actor_mode_is_disabled_too_and_logs_once(self) -> None:
        """In actor mode every call and submit is DISABLED as well, with one info event."""
        config = Config.from_env({"SESSION_API_URL": "memory://"})
        with capture_logs() as logs:
            async with SessionStateManager("s", config) as manager:
                results = await every_call(manager)
                assert manager.submit_session_state({"a": 1}) == S.DISABLED
                assert (await manager.flush())[0] == S.DISABLED
        assert {r[0] for r in results.values()} == {S.DISABLED}
        assert [(e["event"], e["log_level"]) for e in logs] == [("session_state.disabled", "info")]


class TestNoClient:
    @pytest.mark.parametrize("anyio_backend", ["trio"])
    async def test_aiohttp_only_under_trio(self) -> None:
        """Only aiohttp allowed, under trio: NO_CLIENT (aiohttp needs asyncio)."""
        manager = SessionStateManager("s", http_config(closed_port_url(), "aiohttp"))
        results = await every_call(manager)
        assert {r[0] for r in results.values()} == {S.NO_CLIENT}
        assert "aiohttp runs only on asyncio (install httpx for trio" in results["upload"][1]

    async def test_no_async_client_importable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Neither aiohttp nor httpx importable and urllib not allowed: NO_CLIENT with a hint."""
        monkeypatch.setitem(sys.modules, "aiohttp", None)
        monkeypatch.setitem(sys.modules, "httpx", None)
        config = Config(api_url=closed_port_url(), http_clients=("aiohttp", "httpx"), timeout=5.0)
        manager = SessionStateManager("s", config)
        status, message = await manager.upload_session_state({"a": 1})
        assert status == S.NO_CLIENT
        assert message.startswith("no usable HTTP client")
        assert "aiohttp is not installed" in message or "aiohttp runs only on asyncio" in message  # under trio
        assert "httpx is not installed (pip install 'wr124-session-actor[httpx]')" in message

    async def test_urllib_is_the_last_resort(self, monkeypatch: pytest.MonkeyPatch, server: Any) -> None:
        """With no async client importable, the default order falls back to urllib and works."""
        monkeypatch.setitem(sys.modules, "aiohttp", None)
        monkeypatch.setitem(sys.modules, "httpx", None)
        manager = SessionStateManager("s", Config(api_url=server.url, timeout=5.0))
        assert (await manager.upload_session_state({"a": 1}))[0] == S.SUCCESS
        assert manager._direct_store().transport_name == "urllib"  # type: ignore[attr-defined]


class TestUnforeseenErrors:
    async def test_an_exception_nobody_mapped_is_a_failed_status(self) -> None:
        """A transport raising an exception that is not a store error: every public call and every
        submitted upload ends FAILED ("unexpected error", logged with its traceback), tried once, and
        leaving the system raises nothing (it used to raise out of every call, and out of the exit)."""
        transport = BrokenTransport()
        store = HttpStore("http://127.0.0.1:1", "p", lambda: transport)
        with capture_logs() as logs:
            config = Config(api_url="http://127.0.0.1:1", keep="all", timeout=2.0, retries=3)
            async with ActorSystem(config, store=store) as system:
                results = await every_call(system.manager("s"))
                requests = transport.requests
                for step in range(5):
                    assert system.handle("t").submit({"step": step}, "t", "agent") == S.SUCCESS
        assert {status for status, _ in results.values()} == {S.FAILED}
        assert results["upload"][1] == "unexpected error: RuntimeError: a client library's own bug"
        assert requests == len(results)  # one request each: not retried
        assert system.statistics().failed == 6  # the upload call, and the 5 submitted
        unexpected = [e for e in logs if e["event"] == "session_state.unexpected_error"]
        assert len(unexpected) == transport.requests and all(e["exc_info"] for e in unexpected)


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep (orjson encodes up to 254)."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class TestDeepStates:
    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_a_state_stored_at_the_encoders_depth_limit_is_read_back(self, sqlite_config: Config,
                                                                           mode: str) -> None:
        """A state nested as deep as orjson encodes is stored, and every read of it answers: the read cache's
        copy nests deeper (the document list), and encoding it raised out of the call; in actor mode it
        ended the actor and with it the whole system (another session's callers were cancelled)."""
        async with manager_in(mode, sqlite_config) as manager:
            for depth in (250, 252, 253, 254):
                status, doc_id = await manager.upload_session_state(nested(depth), "t", f"a{depth}")
                assert status == S.SUCCESS, doc_id
                status, content = await manager.restore_session_state(doc_id)
                assert status == S.SUCCESS
                assert content is not None and content["state"] == nested(depth)
                status, latest = await manager.restore_agent_session_state(f"a{depth}")
                assert (status, latest) == (S.SUCCESS, content)
                status, states = await manager.download_session_states(limit=10)
                assert status == S.SUCCESS and states[0]["content"]["state"] == nested(depth)
            status, content = await manager.restore_session_state(doc_id)  # again: not cached, read again
            assert status == S.SUCCESS and content is not None and content["state"] == nested(254)


@pytest.mark.parametrize(("anyio_backend", "client"), BACKEND_CLIENTS)
class TestHttpFaults:
    async def test_timeout_on_a_slow_server(self, server: Any, client: str) -> None:
        """A real server slower than SESSION_STATE_TIMEOUT: TIMEOUT, within the timeout."""
        server.delay = 10.0
        manager = SessionStateManager("s", http_config(server.url, client, timeout=0.3))
        with anyio.fail_after(5):
            status, message = await manager.upload_session_state({"a": 1})
        assert status == S.TIMEOUT
        assert "timed out" in message
        assert (await manager.download_session_states())[0] == S.TIMEOUT
        await manager.aclose()

    async def test_refused_connection(self, client: str) -> None:
        """Nothing listening: FAILED with a message, every call, no exception."""
        manager = SessionStateManager("s", http_config(closed_port_url(), client))
        results = await every_call(manager)
        assert {r[0] for r in results.values()} == {S.FAILED}
        assert results["upload"][1]
        await manager.aclose()

    async def test_server_error(self, client: str) -> None:
        """5xx: FAILED carrying the server's message."""
        with fault_server("500") as (url, _):
            manager = SessionStateManager("s", http_config(url, client))
            results = await every_call(manager)
            await manager.aclose()
        assert {r[0] for r in results.values()} == {S.FAILED}
        assert "HTTP 500: boom" in results["upload"][1]

    async def test_malformed_json(self, client: str) -> None:
        """A 2xx answer that is not JSON: FAILED, 'malformed JSON'."""
        with fault_server("bad-json") as (url, _):
            manager = SessionStateManager("s", http_config(url, client))
            results = await every_call(manager)
            await manager.aclose()
        assert {r[0] for r in results.values()} == {S.FAILED}
        assert "malformed JSON" in results["upload"][1]

    async def test_reset_connection(self, client: str) -> None:
        """The server resets the connection: FAILED."""
        with fault_server("reset") as (url, _):
            manager = SessionStateManager("s", http_config(url, client))
            results = await every_call(manager)
            await manager.aclose()
        assert {r[0] for r in results.values()} == {S.FAILED}

    async def test_unknown_id(self, server: Any, client: str) -> None:
        """Restore and delete of an id the server does not have: FAILED, message names the id."""
        manager = SessionStateManager("s", http_config(server.url, client))
        assert await manager.restore_session_state("nope") == (S.FAILED, None)
        status, message = await manager.delete_session_state("nope")
        assert status == S.FAILED
        assert "nope" in message
        await manager.aclose()

    async def test_unserializable_state(self, server: Any, client: str) -> None:
        """A state that cannot be encoded: FAILED naming the type; nothing is sent."""
        manager = SessionStateManager("s", http_config(server.url, client))
        status, message = await manager.upload_session_state({"x": Opaque()})
        assert status == S.FAILED
        assert "Opaque" in message
        assert (await manager.download_session_states())[1] == []
        await manager.aclose()


class TestSqliteFaults:
    async def test_unknown_id(self, sqlite_config: Config) -> None:
        """Restore and delete of an unknown id: FAILED."""
        manager = SessionStateManager("s", sqlite_config)
        assert await manager.restore_session_state("nope") == (S.FAILED, None)
        assert (await manager.delete_session_state("nope"))[0] == S.FAILED
        await manager.aclose()

    async def test_unserializable_state(self, sqlite_config: Config) -> None:
        """A state that cannot be encoded: FAILED naming the type."""
        manager = SessionStateManager("s", sqlite_config)
        status, message = await manager.upload_session_state({"x": Opaque()})
        assert (status, "Opaque" in message) == (S.FAILED, True)
        await manager.aclose()

    async def test_unopenable_file(self, tmp_path: Path) -> None:
        """A database path that is a directory: FAILED with sqlite's message, no exception."""
        manager = SessionStateManager("s", Config(api_url=f"sqlite:///{tmp_path}", timeout=2.0, retries=0))
        results = await every_call(manager)
        assert {r[0] for r in results.values()} == {S.FAILED}
        await manager.aclose()

    async def test_locked_database_times_out(self, sqlite_url: str) -> None:
        """Another writer holds the lock longer than the timeout: TIMEOUT, on time."""
        path = sqlite_url[len("sqlite:///"):]
        manager = SessionStateManager("s", Config(api_url=sqlite_url, timeout=0.3))
        assert (await manager.upload_session_state({"a": 1}))[0] == S.SUCCESS
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with anyio.fail_after(2):
                status, _ = await manager.upload_session_state({"a": 2})
            assert status == S.TIMEOUT
        finally:
            other.execute("ROLLBACK")
            other.close()
        await manager.aclose()


#: Upload arguments no document can hold, and the words the refusal names them by.
BAD_ARGUMENTS: list[tuple[dict[str, Any], str]] = [
    ({"task": None}, "task must be a string"),
    ({"task": 5}, "task must be a string"),
    ({"agent_name": None}, "agent_name must be a string"),
    ({"agent_name": ["coder"]}, "agent_name must be a string"),
    ({"agent_name": "co\0der"}, "agent_name must not contain NUL"),
    ({"agent_name": "a" * 257}, "agent_name must be at most 256 characters"),
    ({"agent_description": Opaque()}, "agent_description must be a string"),
    ({"agent_color": None}, "agent_color must be a string"),
    ({"description": 5}, "description must be a string or None"),
    ({"parent_seq": "1"}, "parent_seq must be a whole number"),
    ({"parent_seq": -1}, "parent_seq must be a whole number"),
    ({"tools_count": Opaque()}, "tools_count must be a number"),
]


def _call(arguments: dict[str, Any]) -> tuple[object, object, dict[str, Any]]:
    """(task, agent_name, the other keywords) of an upload with ``arguments`` changed."""
    values = {"task": "t", "agent_name": "coder", **arguments}
    return values.pop("task"), values.pop("agent_name"), values


class TestBadArguments:
    @pytest.mark.parametrize("keep", ["latest", "all"])
    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_each_wrong_argument_fails_alone(self, sqlite_config: Config, mode: str, keep: str) -> None:
        """An upload whose task, agent or details no document can hold is FAILED with a message naming the
        argument, in both modes (it crashed the session's actor, and the system's exit raised, or raised out of
        a direct-mode call); a good upload before and after is stored, and leaving raises nothing."""
        config = sqlite_config.replace(keep=keep)
        async with manager_in(mode, config) as manager:
            assert (await manager.upload_session_state({"n": 0}, "t", "coder"))[0] is S.SUCCESS
            for arguments, words in BAD_ARGUMENTS:
                task, agent, details = _call(arguments)
                status, message = await manager.upload_session_state({"n": -1}, task, agent, **details)  # type: ignore[arg-type]
                assert status is S.FAILED, arguments
                assert message.startswith("bad arguments: ") and words in message, (arguments, message)
            assert (await manager.upload_session_state({"n": 1}, "t", "coder"))[0] is S.SUCCESS
        assert [s["n"] for s in await stored_states(config, "s")] == [1, 0]

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_a_state_whose_keys_collide_in_json_fails(self, sqlite_config: Config, mode: str) -> None:
        """Keys 1 and "1" of one object are one key in JSON: such a state is FAILED naming them (it was stored as
        SUCCESS with one of the two values lost), also inside a large state encoded in pieces, and inside a
        dataclass (orjson writes its fields itself)."""
        large: dict[object, object] = {**{f"k{n}": n for n in range(300)}, 7: "int", "7": "text"}
        async with manager_in(mode, sqlite_config) as manager:
            for state in ({"n": 0, "d": {1: "int", "1": "text"}}, large, {"notes": Notes({1: "int", "1": "text"})}):
                status, message = await manager.upload_session_state(state, "t", "coder")
                assert status is S.FAILED and "keys" in message and "both" in message, message
            assert (await manager.upload_session_state({1: "int", 2: "two"}, "t", "coder"))[0] is S.SUCCESS
        assert [s for s in await stored_states(sqlite_config, "s")] == [{"1": "int", "2": "two"}]

    @pytest.mark.parametrize("keep", ["latest", "all"])
    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_a_tools_count_the_state_encoder_takes_is_stored(self, sqlite_config: Config, mode: str,
                                                                   keep: str) -> None:
        """A set (or anything else the state encoder takes) as tools_count is stored as encoded: it passed the
        argument check and raised TypeError at the write, out of a direct-mode call, or crashing the actor
        and the system with it."""
        async with manager_in(mode, sqlite_config.replace(keep=keep)) as manager:
            assert (await manager.upload_session_state({"n": 0}, "t", "coder", tools_count={"search"}))[0] is S.SUCCESS  # type: ignore[arg-type]
            if manager.handle is not None:
                assert manager.submit_session_state({"n": 1}, "t", "coder", tools_count={7}) is S.SUCCESS  # type: ignore[arg-type]
                assert (await manager.flush())[0] is S.SUCCESS
            status, documents = await manager.download_session_states()
        expected = [[7], ["search"]] if mode == "actor" else [["search"]]
        assert (status, [d["content"]["tools_count"] for d in documents]) == (S.SUCCESS, expected)

    async def test_submitted_wrong_arguments_are_refused_at_once(self, sqlite_config: Config) -> None:
        """``submit`` with such arguments answers FAILED at once and logs why; the session's other submits and
        the system are unaffected (the actor crashed at the write, and the system's exit raised)."""
        config = sqlite_config.replace(keep="all")
        with capture_logs() as logs:
            async with ActorSystem(config) as system:
                handle = system.handle("s")
                assert handle.submit({"n": 0}, "t", "coder") is S.SUCCESS
                for arguments, _ in BAD_ARGUMENTS:
                    task, agent, details = _call(arguments)
                    assert handle.submit({"n": -1}, task, agent, **details) is S.FAILED, arguments  # type: ignore[arg-type]
                assert handle.submit({"n": 1}, "t", "coder") is S.SUCCESS
        refused = [e for e in logs if e["event"] == "session_state.submit"]
        assert [words in e["error"] for e, (_, words) in zip(refused, BAD_ARGUMENTS, strict=True)] == \
            [True] * len(BAD_ARGUMENTS)
        assert system.statistics().failed == 0
        assert sorted(s["n"] for s in await stored_states(config, "s")) == [0, 1]

    async def test_a_handle_keyword_no_upload_takes_is_named(self, memory_config: Config) -> None:
        """A misspelt keyword of ``submit`` or ``upload`` (typed: mypy catches it) is FAILED naming it and the
        keywords an upload takes (the message named a private class's ``__init__``)."""
        async with ActorSystem(memory_config) as system:
            handle = system.handle("s")
            assert handle.submit({"n": 0}, "t", "a", agent_descripton="x") is S.FAILED  # type: ignore[call-arg]
            status, message = await handle.upload({"n": 0}, "t", "a", agent_descripton="x")  # type: ignore[call-arg]
        assert status is S.FAILED
        assert message == ("bad arguments: unknown argument(s) agent_descripton (an upload takes agent_color,"
                           " agent_description, description, parent_seq, tools_count)")

    @pytest.mark.parametrize("session_id", ["", 5, None, "a\0b", "s" * 257])
    async def test_session_ids_no_store_can_find_again_are_refused(self, memory_config: Config,
                                                                   session_id: Any) -> None:
        """An empty, non-string, NUL-holding or too long session id raises ValueError where the manager or
        handle is made (a handle took any, and its uploads were lost at exit, or stored where no read finds them;
        a long one was stored over HTTP and no read's request line got through)."""
        with pytest.raises(ValueError, match="session_id must"):
            SessionStateManager(session_id, memory_config)
        async with ActorSystem(memory_config) as system:
            with pytest.raises(ValueError, match="session_id must"):
                system.handle(session_id)
            with pytest.raises(ValueError, match="session_id must"):
                system.manager(session_id)

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_wrong_read_arguments_fail_without_asking_the_store(self, sqlite_config: Config, mode: str) -> None:
        """A read with a limit, agent or date no store can take is FAILED naming it, and the store is not asked:
        a caller's mistake is neither retried nor counted by the circuit breaker (a limit of 'x' was retried
        five times on sqlite and opened the circuit for every session of the store; -1 sliced off the
        oldest state)."""
        wrong: list[tuple[dict[str, Any], str]] = [
            ({"limit": "x"}, "limit must be"), ({"limit": -1}, "limit must be"), ({"limit": None}, "limit must be"),
            ({"limit": 2.5}, "limit must be"), ({"limit": True}, "limit must be"),
            ({"agent_name": 5}, "agent_name must be"), ({"agent_name": "co\0der"}, "agent_name must not"),
            ({"agent_name": "a" * 257}, "agent_name must be at most 256"),
            ({"start_date": "soon"}, "start_date is not a date"), ({"end_date": 5}, "end_date is not a date"),
        ]
        with capture_logs() as logs:
            async with manager_in(mode, sqlite_config) as manager:
                assert (await manager.upload_session_state({"n": 0}, "t", "coder"))[0] is S.SUCCESS
                calls = 0
                for arguments, _ in wrong * 2:
                    assert await manager.download_session_states(**arguments) == (S.FAILED, []), arguments
                    calls += 1
                    if "start_date" not in arguments and "end_date" not in arguments:
                        assert await manager.list_available_session_states(**arguments) == (S.FAILED, []), arguments
                        calls += 1
                status, states = await manager.download_session_states(limit=1)
        assert (status, [d["content"]["state"] for d in states]) == (S.SUCCESS, [{"n": 0}])
        refusals = [e["error"] for e in logs if e["event"] == "session_state.download" and e["status"] == "failed"]
        assert len(refusals) == calls
        assert all(refusal.startswith("bad arguments: ") for refusal in refusals), refusals
        assert {words for _, words in wrong} == {w for _, w in wrong if any(w in r for r in refusals)}
        assert not [e for e in logs if e["event"] in ("session_state.retry", "session_state.circuit")]

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_document_ids_that_name_nothing_are_refused(self, server: Any, mode: str) -> None:
        """restore and delete of an id that is not a non-empty string (or a number) are FAILED at once; a number
        names the document of that text, as a service numbering its documents gives them (it raised in the URL
        quoting: 'unexpected error: TypeError')."""
        async with manager_in(mode, Config(api_url=server.url, timeout=5.0)) as manager:
            nothing: list[Any] = [None, "", 2.5, ["d"]]
            for doc_id in nothing:
                assert await manager.restore_session_state(doc_id) == (S.FAILED, None), doc_id
                status, message = await manager.delete_session_state(doc_id)
                assert (status, message.startswith("bad arguments: doc_id must be")) == (S.FAILED, True), doc_id
            assert await manager.restore_session_state(5) == (S.FAILED, None)  # type: ignore[arg-type]
            status, message = await manager.delete_session_state(5)  # type: ignore[arg-type]
            assert (status, "no document" in message) == (S.FAILED, True), message

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_document_ids_that_name_nothing_are_refused_with_a_warm_cache(self, memory_config: Config,
                                                                                 mode: str) -> None:
        """The same refusal once the read cache holds a state and the actor is idle, the path that answers a
        cached restore without the mailbox (an unhashable id raised TypeError out of restore there)."""
        async with manager_in(mode, memory_config) as manager:
            _, doc_id = await manager.upload_session_state({"n": 1}, "t", "a")
            assert await manager.restore_session_state(doc_id) == (S.SUCCESS, ANY)  # now cached
            with anyio.fail_after(5):
                while manager.handle is not None and manager.handle.cached_restore(doc_id) is None:
                    await anyio.sleep(0.01)  # the actor is still busy
            nothing: list[Any] = [None, "", 2.5, ["d"], {"d": 1}, {"d"}]
            for doc_id_ in nothing:
                assert await manager.restore_session_state(doc_id_) == (S.FAILED, None), doc_id_
            assert (await manager.restore_session_state(doc_id))[1]["state"] == {"n": 1}  # type: ignore[index]
