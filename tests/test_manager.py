"""SessionStateManager in direct mode: the original usage on every store and transport."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from wr124_session_actor import ActorSystem, Config, SessionStateManager
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import MAX_NAME_CHARS
from wr124_session_actor._exceptions import StoreUnavailable

from .conftest import http_config
from .faultserver import closed_port_url

pytestmark = pytest.mark.anyio

#: Every HTTP client with every async library it runs under (aiohttp needs asyncio).
BACKEND_CLIENTS = [("asyncio", "aiohttp"), ("asyncio", "httpx"), ("asyncio", "urllib"),
                   ("trio", "httpx"), ("trio", "urllib")]

#: Trio closes the client of a manager dropped during the run (its close guard, an async generator, is
#: finalized in a trio system task) and says so with a ResourceWarning of its own: expected, not a leak.
TRIO_CLOSES_A_DROPPED_GUARD = pytest.mark.filterwarnings(
    "ignore:Async generator 'wr124_session_actor.transports._base._close_when_finalized' was garbage collected"
    ":ResourceWarning"
)


async def original_usage(config: Config) -> None:
    """The original README's example, unchanged, checked step by step."""
    manager = SessionStateManager("session_123", config)
    status, doc_id = await manager.upload_session_state(state={"key": "value"}, task="任务描述",
                                                        agent_name="agent_name")
    assert status == S.SUCCESS, doc_id
    status, states = await manager.download_session_states(limit=10)
    assert status == S.SUCCESS
    assert [s["_id"] for s in states] == [doc_id]
    assert states[0]["content"]["state"] == {"key": "value"}
    assert states[0]["created_at"]
    status, data = await manager.restore_session_state(doc_id)
    assert status == S.SUCCESS
    assert data is not None
    assert (data["agent_name"], data["task"], data["state"]) == ("agent_name", "任务描述", {"key": "value"})
    status, msg = await manager.delete_session_state(doc_id)
    assert status == S.SUCCESS, msg
    status, states = await manager.download_session_states(limit=10)
    assert (status, states) == (S.SUCCESS, [])
    await manager.aclose()


class TestOriginalUsage:
    async def test_on_sqlite_with_no_server(self, sqlite_config: Config) -> None:
        """Upload, download, restore, delete against a local sqlite file."""
        await original_usage(sqlite_config)

    async def test_on_memory(self, memory_config: Config) -> None:
        """The same against the in-process store."""
        await original_usage(memory_config)

    @pytest.mark.parametrize(("anyio_backend", "client"), BACKEND_CLIENTS)
    async def test_on_the_reference_server(self, server: Any, client: str) -> None:
        """The same against ``wr124-session serve`` on loopback, with each HTTP client that runs here."""
        await original_usage(http_config(server.url, client))

    @pytest.mark.parametrize(("anyio_backend", "client"), BACKEND_CLIENTS)
    async def test_names_beyond_latin_1(self, server: Any, client: str) -> None:
        """A project, session and agent named in Chinese (the project goes in ``X-Project-ID``, a header
        httpcore and http.client refused to encode, raising out of every call): every call succeeds with
        each client, and the state comes back under its names."""
        manager = SessionStateManager("会话 1/2?#", http_config(server.url, client, project_id="项目"))
        status, doc_id = await manager.upload_session_state({"步骤": 1}, "任务", "代理")
        assert status == S.SUCCESS, doc_id
        status, content = await manager.restore_agent_session_state("代理")
        assert status == S.SUCCESS
        assert content is not None and content["state"] == {"步骤": 1} and content["agent_name"] == "代理"
        status, listed = await manager.list_available_session_states()
        assert (status, [entry["id"] for entry in listed]) == (S.SUCCESS, [doc_id])
        assert (await manager.delete_session_state(doc_id))[0] == S.SUCCESS
        await manager.aclose()

    @pytest.mark.parametrize(("anyio_backend", "client"), BACKEND_CLIENTS)
    async def test_the_longest_names_are_read_back(self, server: Any, client: str) -> None:
        """A session id and an agent name of the longest length taken (256 characters, here of 4 UTF-8 bytes
        each: 12 bytes percent-encoded) fit a read's request line together (a session id of 900 CJK
        characters was stored, and every read of it refused by the server's 8 KiB request-line limit)."""
        session_id, agent = "\U0001F600" * MAX_NAME_CHARS, "\U0001F916" * MAX_NAME_CHARS
        manager = SessionStateManager(session_id, http_config(server.url, client))
        assert (await manager.upload_session_state({"n": 1}, "t", agent))[0] == S.SUCCESS
        status, content = await manager.restore_agent_session_state(agent)
        assert (status, content and content["state"]) == (S.SUCCESS, {"n": 1})
        status, documents = await manager.download_session_states(agent_name=agent, start_date="2000-01-01",
                                                                  end_date="2999-01-01")
        assert (status, len(documents)) == (S.SUCCESS, 1)
        await manager.aclose()

    @TRIO_CLOSES_A_DROPPED_GUARD
    async def test_bare_manager_never_closed_leaves_no_warning(self, server: Any) -> None:
        """The original usage never closes the manager; no unclosed-session or unclosed-socket warning
        follows (pytest turns ResourceWarning into errors here)."""
        manager = SessionStateManager("s", Config(api_url=server.url, timeout=5.0))
        status, _ = await manager.upload_session_state({"a": 1}, "t", "a")
        assert status == S.SUCCESS
        del manager

    @TRIO_CLOSES_A_DROPPED_GUARD
    @pytest.mark.parametrize(("anyio_backend", "client"), BACKEND_CLIENTS)
    async def test_dropped_managers_are_freed_at_once(self, server: Any, client: str) -> None:
        """Bare managers used once and dropped (the original usage at scale: one per session, never
        closed) are freed by reference counting, not left to the garbage collector in a cycle, which
        finalizes a whole cycle at once: aiohttp's sessions then warned "Unclosed client session" for many
        of 2,000 such managers, and their connections stayed open until a collection."""
        refs = []
        for n in range(20):
            manager = SessionStateManager(f"s{n}", http_config(server.url, client))
            assert (await manager.upload_session_state({"n": n}, "t", "a"))[0] == S.SUCCESS
            assert (await manager.restore_latest_session_state())[0] == S.SUCCESS
            refs.append(weakref.ref(manager))
            del manager
        assert [ref() for ref in refs] == [None] * 20
        await anyio.sleep(0.05)  # the close guards close the clients

    @TRIO_CLOSES_A_DROPPED_GUARD
    @pytest.mark.parametrize(("anyio_backend", "client"), [p for p in BACKEND_CLIENTS if p[1] != "urllib"])
    async def test_managers_dropped_after_failed_calls_are_freed_at_once(self, client: str) -> None:
        """The same after calls that failed (a refused connection, retried once): the client library's error,
        in a reference cycle of its own, held the transport's frame, and the error the retries kept held
        theirs; the garbage collector then freed the transports with their clients, before the guards could
        close them ("Unclosed client session" for 50 of 50 managers). (urllib pools nothing, and has nothing to
        close: its worker thread's error, in a cycle with the future that carried it, waits for the collector.)"""
        refs = []
        gc.disable()  # what reference counting frees, nothing else
        try:
            for n in range(10):
                manager = SessionStateManager(f"s{n}", http_config(closed_port_url(), client, retries=1,
                                                                   retry_backoff=0.01))
                assert (await manager.upload_session_state({"n": n}, "t", "a"))[0] == S.FAILED
                refs.append(weakref.ref(manager._direct_store()))
                del manager
            assert [ref() for ref in refs] == [None] * 10
        finally:
            gc.enable()
        await anyio.sleep(0.05)  # the close guards close the clients

    async def test_dropped_sqlite_managers_end_their_checkpoint_threads(self, sqlite_config: Config) -> None:
        """Bare managers on a sqlite file, used and dropped unclosed: each one's WAL checkpoint thread ends
        with it, and its connection is closed (each left a thread and two open files for the process's life)."""
        def threads() -> int:
            return sum(t.name == "wr124-sqlite-checkpoint" for t in threading.enumerate())

        before = threads(), len(os.listdir("/proc/self/fd"))
        for n in range(20):
            manager = SessionStateManager(f"s{n}", sqlite_config)
            assert (await manager.upload_session_state({"n": n}, "t", "a"))[0] == S.SUCCESS
            del manager
        with anyio.fail_after(5):
            while threads() > before[0]:
                await anyio.sleep(0.01)
        gc.collect()  # sqlite keeps a file's descriptors until its last connection in the process is freed
        assert len(os.listdir("/proc/self/fd")) <= before[1]


class TestScoping:
    async def test_other_sessions_documents_never_restore(self, sqlite_config: Config) -> None:
        """A document of another session neither restores, lists nor deletes through this manager."""
        mine, theirs = SessionStateManager("mine", sqlite_config), SessionStateManager("theirs", sqlite_config)
        _, their_id = await theirs.upload_session_state({"secret": 1}, "t", "a")
        assert await mine.restore_session_state(their_id) == (S.FAILED, None)
        status, msg = await mine.delete_session_state(their_id)
        assert status == S.FAILED
        assert "not a state of session 'mine'" in msg
        assert (await theirs.restore_session_state(their_id))[0] == S.SUCCESS
        assert await mine.download_session_states() == (S.SUCCESS, [])
        assert (await mine.restore_latest_session_state())[0] == S.FAILED

    async def test_latest_and_agent_helpers(self, sqlite_config: Config) -> None:
        """restore_latest / restore_agent / list_available pick this session's newest states."""
        manager = SessionStateManager("s", sqlite_config)
        await manager.upload_session_state({"v": 1}, "t", "planner")
        await manager.upload_session_state({"v": 2}, "t", "coder")
        await manager.upload_session_state({"v": 3}, "t", "planner")
        status, latest = await manager.restore_latest_session_state()
        assert status == S.SUCCESS and latest is not None and latest["state"] == {"v": 3}
        status, coder = await manager.restore_agent_session_state("coder")
        assert status == S.SUCCESS and coder is not None and coder["state"] == {"v": 2}
        assert (await manager.restore_agent_session_state("nobody"))[0] == S.FAILED
        status, summaries = await manager.list_available_session_states(limit=10, agent_name="planner")
        assert status == S.SUCCESS
        assert len(summaries) == 2
        assert set(summaries[0]) == {"id", "name", "description", "created_at", "updated_at", "tags"}
        status, docs = await manager.download_session_states(limit=1)
        assert docs[0]["content"]["state"] == {"v": 3}
        await manager.aclose()

    @pytest.mark.parametrize("where", ["sqlite", "reference server"])
    async def test_any_agent_name_restores_that_agent_only(self, sqlite_config: Config, server: Any,
                                                           where: str) -> None:
        """An agent named as one of the library's tags ("agent_state", "session_state") gets its own states
        only (every state carries those tags: another agent's came back), and so does one whose name holds a
        comma or spaces (the reference server split and stripped every tags value: nothing came back)."""
        config = sqlite_config if where == "sqlite" else Config(api_url=server.url, timeout=5.0)
        manager = SessionStateManager("s", config.replace(cache_ttl=0))
        names = ["agent_state", "session_state", "a,b", " planner ", "coder"]
        for n, name in enumerate(names):
            assert (await manager.upload_session_state({"n": n}, "t", name))[0] is S.SUCCESS
        for n, name in enumerate(names):
            status, content = await manager.restore_agent_session_state(name)
            assert (status, content and content["state"], content and content["agent_name"]) == (
                S.SUCCESS, {"n": n}, name), name
            status, docs = await manager.download_session_states(agent_name=name)
            assert (status, [d["content"]["state"] for d in docs]) == (S.SUCCESS, [{"n": n}]), name
            status, summaries = await manager.list_available_session_states(agent_name=name)
            assert (status, len(summaries)) == (S.SUCCESS, 1), name
        await manager.aclose()

    async def test_date_filters(self, sqlite_config: Config) -> None:
        """start_date / end_date bound the download; a malformed date is FAILED, not an exception."""
        manager = SessionStateManager("s", sqlite_config)
        await manager.upload_session_state({"v": 1}, "t", "a")
        assert len((await manager.download_session_states(start_date="2000-01-01T00:00:00"))[1]) == 1
        assert (await manager.download_session_states(end_date="2000-01-01T00:00:00"))[1] == []
        assert await manager.download_session_states(start_date="not a date") == (S.FAILED, [])
        await manager.aclose()


class TestCache:
    async def test_restore_is_cached_and_delete_invalidates(self, memory_config: Config) -> None:
        """A second restore is served from the TTL cache; a delete forgets it."""
        manager = SessionStateManager("s", memory_config)
        _, doc_id = await manager.upload_session_state({"v": 1}, "t", "a")
        first = await manager.restore_session_state(doc_id)
        store = manager._direct_store()
        await store.delete(doc_id)  # behind the manager's back: the cache still answers
        assert await manager.restore_session_state(doc_id) == first
        await manager.delete_session_state(doc_id)
        assert (await manager.restore_session_state(doc_id))[0] == S.FAILED

    async def test_a_large_read_is_not_kept(self, memory_config: Config) -> None:
        """A state of more than 20,000 items is read from the store each time, not kept in the cache (its copy
        was encoded on the loop when kept and decoded at each hit: two more holds of the loop as long as the
        read's); a small one is kept."""
        manager = SessionStateManager("s", memory_config)
        _, small = await manager.upload_session_state({"v": 1}, "t", "a")
        _, large = await manager.upload_session_state({"items": list(range(30_000))}, "t", "b")
        for doc_id in (small, large):
            assert (await manager.restore_session_state(doc_id))[0] == S.SUCCESS
        await manager._direct_store().delete(large)  # behind the manager's back
        await manager._direct_store().delete(small)
        assert (await manager.restore_session_state(small))[0] == S.SUCCESS  # kept
        assert (await manager.restore_session_state(large))[0] == S.FAILED  # read again: gone

    async def test_cached_values_are_copies(self, memory_config: Config) -> None:
        """Mutating a returned value does not change what the cache returns next."""
        manager = SessionStateManager("s", memory_config)
        _, doc_id = await manager.upload_session_state({"v": 1}, "t", "a")
        _, data = await manager.restore_session_state(doc_id)
        assert data is not None
        data["state"]["v"] = 99
        _, again = await manager.restore_session_state(doc_id)
        assert again is not None and again["state"] == {"v": 1}

    async def test_writes_invalidate_downloads(self, memory_config: Config) -> None:
        """An upload makes the next download see it, despite the cache."""
        manager = SessionStateManager("s", memory_config)
        await manager.upload_session_state({"v": 1}, "t", "a")
        assert len((await manager.download_session_states())[1]) == 1
        await manager.upload_session_state({"v": 2}, "t", "a")
        assert len((await manager.download_session_states())[1]) == 2

    async def test_a_read_that_overlaps_a_write_does_not_cache_what_it_read_before(self, memory_config: Config) -> None:
        """Direct mode: a download (and a restore) begun before an upload or delete ended, and answered after,
        is not cached: the next read sees the write (the older answer was cached past the write's
        invalidation, and every later read returned it until the TTL ran out)."""
        manager = SessionStateManager("s", memory_config)
        _, first_id = await manager.upload_session_state({"v": 1}, "t", "a")
        store = manager._direct_store()
        held = anyio.Event()
        answered = anyio.Event()
        query, get = store.query, store.get

        async def held_query(q: Any) -> Any:
            result = await query(q)
            answered.set()
            await held.wait()
            return result

        async def held_get(doc_id: str) -> Any:
            result = await get(doc_id)
            if not answered.is_set():  # the restore's; the delete's own look-up goes through
                answered.set()
                await held.wait()
            return result

        async def read_during(read: Any, write: Any) -> None:
            nonlocal held, answered
            held, answered = anyio.Event(), anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await answered.wait()  # the store has answered the read; the write comes before the reply
                await write()
                held.set()

        store.query = held_query  # type: ignore[method-assign,assignment]
        await read_during(manager.download_session_states,
                          lambda: manager.upload_session_state({"v": 2}, "t", "a"))
        store.query = query  # type: ignore[method-assign]
        status, docs = await manager.download_session_states()
        assert (status, [d["content"]["state"]["v"] for d in docs]) == (S.SUCCESS, [2, 1])

        store.get = held_get  # type: ignore[method-assign]
        await read_during(lambda: manager.restore_session_state(first_id),
                          lambda: manager.delete_session_state(first_id))
        store.get = get  # type: ignore[method-assign]
        assert await manager.restore_session_state(first_id) == (S.FAILED, None)
        await manager.aclose()

    async def test_a_write_that_failed_after_storing_invalidates_the_cache(self, memory_config: Config) -> None:
        """A write whose answer was lost (here: stored, then the store raised a transient error) may have stored
        its state: the next download asks the store instead of answering the listing cached before."""
        manager = SessionStateManager("s", memory_config.replace(retries=0))
        await manager.upload_session_state({"v": 1}, "t", "a")
        assert len((await manager.download_session_states())[1]) == 1
        store = manager._direct_store()
        insert_many = store.insert_many

        async def stored_then_lost(docs: Any) -> Any:
            await insert_many(docs)
            raise StoreUnavailable("connection reset after the request was sent")

        store.insert_many = stored_then_lost  # type: ignore[method-assign]
        assert (await manager.upload_session_state({"v": 2}, "t", "a"))[0] is S.FAILED
        status, docs = await manager.download_session_states()
        assert (status, [d["content"]["state"]["v"] for d in docs]) == (S.SUCCESS, [2, 1])
        await manager.aclose()


    async def test_a_cancelled_write_or_delete_invalidates_the_cache(self, memory_config: Config) -> None:
        """A caller cancelled while its upload or delete is with the store (a request already sent, a worker
        thread that goes on): the store may still take it, so the next read asks the store. The cache kept
        answering the deleted state, and the listing from before the upload, until the TTL ran out."""
        manager = SessionStateManager("s", memory_config)
        _, first_id = await manager.upload_session_state({"v": 1}, "t", "a")
        status, latest = await manager.restore_latest_session_state()  # the listing is cached now
        assert (status, latest and latest["state"]) == (S.SUCCESS, {"v": 1})
        store = manager._direct_store()
        insert_many, delete = store.insert_many, store.delete

        async def done_then_slow_answer(func: Any, arg: Any) -> Any:
            result = await func(arg)
            await anyio.sleep(10)  # the caller gives up before the store's answer arrives
            return result

        store.insert_many = lambda docs: done_then_slow_answer(insert_many, docs)  # type: ignore[method-assign]
        with anyio.move_on_after(0.1):
            await manager.upload_session_state({"v": 2}, "t", "a")
        store.insert_many = insert_many  # type: ignore[method-assign]
        status, latest = await manager.restore_latest_session_state()
        assert (status, latest and latest["state"]) == (S.SUCCESS, {"v": 2})

        assert (await manager.restore_session_state(first_id))[0] is S.SUCCESS  # cached now
        store.delete = lambda doc_id: done_then_slow_answer(delete, doc_id)  # type: ignore[method-assign]
        with anyio.move_on_after(0.1):
            await manager.delete_session_state(first_id)
        store.delete = delete  # type: ignore[method-assign]
        assert await manager.restore_session_state(first_id) == (S.FAILED, None)
        await manager.aclose()


@asynccontextmanager
async def manager_in(mode: str, config: Config) -> AsyncIterator[SessionStateManager]:
    """A manager of session "s" in direct mode, or in actor mode from a running system."""
    if mode == "direct":
        manager = SessionStateManager("s", config)
        yield manager
        await manager.aclose()
    else:
        async with ActorSystem(config) as system:
            yield system.manager("s")


class TestCheckpoints:
    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_calls_that_need_no_store_still_checkpoint(self, memory_config: Config, mode: str) -> None:
        """Cache hits and an unchanged upload are checkpoints like calls that reach the store: each lets
        other tasks run, and a cancelled caller is cancelled there (a loop of them cannot starve the loop)."""
        async with manager_in(mode, memory_config) as manager:
            _, doc_id = await manager.upload_session_state({"v": 1}, "t", "a")
            calls: dict[str, Callable[[], Awaitable[tuple[S, Any]]]] = {
                "upload unchanged": lambda: manager.upload_session_state({"v": 1}, "t", "a"),
                "restore": lambda: manager.restore_session_state(doc_id),
                "restore latest": manager.restore_latest_session_state,
                "restore agent": lambda: manager.restore_agent_session_state("a"),
                "download": manager.download_session_states,
                "list": manager.list_available_session_states,
            }
            for name, call in calls.items():
                status, _ = await call()  # the store once: the cache holds it from now on
                assert status == S.SUCCESS, name
                others = 0

                async def other() -> None:
                    nonlocal others
                    others += 1

                async with anyio.create_task_group() as group:
                    group.start_soon(other)
                    for _ in range(100):  # trio may run the caller first after a checkpoint: a few tries
                        assert (await call())[0] == S.SUCCESS, name
                        if others:
                            break
                    assert others == 1, f"{name} did not let another task run"
                with anyio.CancelScope() as scope:
                    scope.cancel()
                    await call()
                assert scope.cancelled_caught, f"{name} did not notice its cancellation"


class TestLogging:
    async def test_one_event_per_outcome_with_the_fields(self, memory_config: Config) -> None:
        """Each call logs exactly one event: status, session_id, op, ids, sizes, duration, attempt, error."""
        from structlog.testing import capture_logs

        manager = SessionStateManager("s", memory_config)
        with capture_logs() as logs:
            _, doc_id = await manager.upload_session_state({"a": 1}, "t", "a")
            await manager.restore_session_state("missing")
        upload, restore = logs
        assert upload["event"] == "session_state.upload" and upload["log_level"] == "debug"
        assert {"status", "session_id", "op", "ids", "batch_size", "coalesced", "duration_ms", "attempt",
                "error"} <= set(upload)
        assert (upload["status"], upload["ids"], upload["batch_size"], upload["attempt"]) == (
            "success", [doc_id], 1, 1)
        assert restore["log_level"] == "warning" and restore["status"] == "failed" and restore["error"]
