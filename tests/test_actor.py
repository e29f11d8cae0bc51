"""Actor mode: coalescing batches, the mailbox handle, idle actors and shutdown."""

from __future__ import annotations

from typing import Any
from unittest.mock import ANY

import anyio
import pytest
from anyio.lowlevel import checkpoint
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, Query, SessionStateManager
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor.stores import HttpStore, open_store
from wr124_session_actor.transports import Response

from .conftest import stored_states
from .faultserver import closed_port_url
from .test_http_store import NoBatchTransport

pytestmark = pytest.mark.anyio


class TestCoalescing:
    async def test_thousand_submits_become_at_most_two_writes(self, sqlite_config: Config) -> None:
        """1,000 submits from one agent within 100 ms: at most 2 store writes, the last state stored."""
        async with ActorSystem(sqlite_config) as system:
            handle = system.handle("s")
            for n in range(1000):  # a tight loop: well within 100 ms
                assert handle.submit({"n": n}, "task", "agent") == S.SUCCESS
            assert await handle.flush() == (S.SUCCESS, "flushed")
            stats = system.statistics()
        assert stats.store_writes <= 2
        assert stats.submitted == 1000
        assert stats.documents + stats.coalesced == 1000
        states = await stored_states(sqlite_config, "s")
        assert states[0] == {"n": 999}
        assert len(states) == stats.documents

    async def test_keep_all_writes_every_upload_in_max_batch_writes(self, sqlite_config: Config) -> None:
        """keep="all": 1,000 submits become 1,000 documents in about 1000/max_batch writes."""
        config = sqlite_config.replace(keep="all", max_batch=250)
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            for n in range(1000):
                handle.submit({"n": n}, "task", "agent")
            await handle.flush()
            stats = system.statistics()
        assert stats.documents == 1000
        assert 4 <= stats.store_writes <= 5
        states = await stored_states(config, "s")
        assert sorted(s["n"] for s in states) == list(range(1000))

    async def test_agents_coalesce_separately(self, memory_config: Config) -> None:
        """keep="latest" keeps the newest state of each agent in the batch."""
        async with ActorSystem(memory_config) as system:
            handle = system.handle("s")
            for n in range(10):
                handle.submit({"n": n}, "t", "planner")
                handle.submit({"m": n}, "t", "coder")
            await handle.flush()
        assert sorted(map(str, await stored_states(memory_config, "s"))) == ["{'m': 9}", "{'n': 9}"]

    async def test_superseded_caller_gets_the_newer_document(self, memory_config: Config) -> None:
        """Awaited uploads queued together coalesce: every caller gets the id of the newest state's document."""
        from wr124_session_actor._document import StateUpload
        from wr124_session_actor._mailbox import Reply, Upload

        async with ActorSystem(memory_config) as system:
            actor = system.actor("s")
            replies = [Reply() for _ in range(5)]
            for n, reply in enumerate(replies):  # queued in order, before the actor runs
                assert actor.put_nowait(Upload(StateUpload("s", {"n": n}, "t", "a"), reply))
            results = [await reply.wait() for reply in replies]
            assert {r[0] for r in results} == {S.SUCCESS}
            assert len({r[1] for r in results}) == 1
            assert system.statistics().documents == 1
            status, data = await system.manager("s").restore_session_state(results[0][1])
            assert status == S.SUCCESS and data is not None and data["state"] == {"n": 4}

    async def test_awaited_upload_does_not_wait_for_debounce(self, memory_config: Config) -> None:
        """An awaited upload is written as soon as the mailbox is empty, not after the debounce."""
        async with ActorSystem(memory_config.replace(debounce=30, max_delay=60)) as system:
            with anyio.fail_after(5):
                status, _ = await system.manager("s").upload_session_state({"n": 1}, "t", "a")
            assert status == S.SUCCESS

    async def test_unencodable_state_fails_alone(self, memory_config: Config) -> None:
        """One state that cannot be encoded fails; the rest of the batch is written."""
        config = memory_config.replace(keep="all")
        async with ActorSystem(config) as system:
            manager = system.manager("s")
            results: dict[str, tuple[S, str]] = {}

            async def upload(name: str, state: object) -> None:
                results[name] = await manager.upload_session_state(state, "t", name)

            async with anyio.create_task_group() as tg:
                tg.start_soon(upload, "good1", {"a": 1})
                tg.start_soon(upload, "bad", {"a": object()})
                tg.start_soon(upload, "good2", {"a": 2})
        assert results["bad"][0] == S.FAILED and "object" in results["bad"][1]
        assert results["good1"][0] == results["good2"][0] == S.SUCCESS
        assert len(await stored_states(config, "s")) == 2


    async def test_keep_all_stores_each_state_as_it_was_submitted(self, memory_config: Config) -> None:
        """keep="all": a state changed by the caller after submit() is stored as it was then; a state
        that cannot be encoded still fails alone, and a large one (encoded later, in pieces) is stored."""
        config = memory_config.replace(keep="all")
        large = {"items": list(range(5000))}
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            state: dict[str, object] = {"step": 0, "messages": ["hello"]}
            for step in range(1, 4):
                assert handle.submit(state, "t", "a") == S.SUCCESS
                state["step"] = step  # the agent goes on with the same object
                state["messages"].append(f"m{step}")  # type: ignore[attr-defined]
            assert handle.submit({"bad": object()}, "t", "a") == S.SUCCESS
            assert handle.submit(large, "t", "a") == S.SUCCESS
            assert await handle.flush() == (S.FAILED, "1 uploads were refused for good (see the log)")
            stats = system.statistics()
        assert stats.documents == 4 and stats.failed == 1
        assert (await stored_states(config, "s"))[::-1] == [
            {"step": 0, "messages": ["hello"]},
            {"step": 1, "messages": ["hello", "m1"]},
            {"step": 2, "messages": ["hello", "m1", "m2"]},
            large,
        ]

class TestFlushTriggers:
    async def test_debounce_flushes_after_quiet(self, memory_config: Config) -> None:
        """A lone submit is written once the session has been quiet for ``debounce``."""
        async with ActorSystem(memory_config.replace(debounce=0.02)) as system:
            system.handle("s").submit({"n": 1}, "t", "a")
            with anyio.fail_after(2):
                while system.statistics().store_writes == 0:
                    await anyio.sleep(0.01)
            assert await stored_states(memory_config, "s") == [{"n": 1}]

    async def test_max_delay_bounds_a_busy_session(self, memory_config: Config) -> None:
        """Submits every 10 ms never go quiet for 1 s of debounce, yet max_delay forces a write."""
        config = memory_config.replace(debounce=1.0, max_delay=0.1)
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            for n in range(30):
                handle.submit({"n": n}, "t", "a")
                await anyio.sleep(0.01)
            assert system.statistics().store_writes >= 1

    async def test_max_batch_flushes_at_once(self, memory_config: Config) -> None:
        """Reaching max_batch pending documents writes without waiting for quiet."""
        config = memory_config.replace(keep="all", max_batch=10, debounce=30, max_delay=30)
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            for n in range(10):
                handle.submit({"n": n}, "t", "a")
            with anyio.fail_after(2):
                while system.statistics().documents < 10:
                    await checkpoint()


class TestCachedReads:
    async def test_actor_mode_cache_hit_skips_the_mailbox_only_when_idle(self, memory_config: Config) -> None:
        """A cached restore is answered by the handle when the actor is idle; a pending write goes first."""
        async with ActorSystem(memory_config.replace(debounce=30, max_delay=60)) as system:
            manager = system.manager("s")
            _, doc_id = await manager.upload_session_state({"n": 1}, "t", "a")
            await manager.restore_session_state(doc_id)  # fills the cache
            assert system.idle_actor("s") is not None
            assert (await manager.restore_session_state(doc_id))[1]["state"] == {"n": 1}  # type: ignore[index]
            manager.submit_session_state({"n": 2}, "t", "a")
            assert system.idle_actor("s") is None  # something is queued: go through the mailbox
            assert (await manager.delete_session_state(doc_id))[0] == S.SUCCESS
            assert await manager.restore_session_state(doc_id) == (S.FAILED, None)


class TestReadYourWrites:
    async def test_download_right_after_submit_sees_it(self, sqlite_config: Config) -> None:
        """A download right after a submit returns the new state; restoring the id returns it too."""
        config = sqlite_config.replace(debounce=10, max_delay=10)
        async with ActorSystem(config) as system:
            manager = system.manager("s")
            assert manager.submit_session_state({"v": 1}, "t", "a") == S.SUCCESS
            status, docs = await manager.download_session_states(limit=5)
            assert status == S.SUCCESS
            assert [d["content"]["state"] for d in docs] == [{"v": 1}]
            status, data = await manager.restore_session_state(docs[0]["_id"])
            assert status == S.SUCCESS and data is not None and data["state"] == {"v": 1}
            manager.submit_session_state({"v": 2}, "t", "a")
            status, latest = await manager.restore_latest_session_state()
            assert latest is not None and latest["state"] == {"v": 2}

    async def test_context_manager_is_actor_mode(self, memory_config: Config) -> None:
        """``async with SessionStateManager(...)`` runs a private system: submit works, results match."""
        async with SessionStateManager("s", memory_config) as manager:
            assert manager.mode == "actor"
            assert manager.submit_session_state({"v": 1}, "t", "a") == S.SUCCESS
            status, doc_id = await manager.upload_session_state({"v": 2}, "t", "b")
            assert status == S.SUCCESS
            assert (await manager.delete_session_state(doc_id))[0] == S.SUCCESS
        assert await stored_states(memory_config, "s") == [{"v": 1}]

    async def test_direct_mode_submit_is_failed(self, memory_config: Config) -> None:
        """A bare manager has no actor: submit returns FAILED and the log says to use actor mode."""
        manager = SessionStateManager("s", memory_config)
        with capture_logs() as logs:
            assert manager.submit_session_state({"v": 1}) == S.FAILED
        assert "actor mode" in logs[0]["error"]
        await checkpoint()


class TestShutdown:
    async def test_cancelled_scope_still_stores_pending(self, sqlite_config: Config) -> None:
        """Cancelling the scope holding the system while uploads are pending still stores them."""
        config = sqlite_config.replace(debounce=10, max_delay=10, keep="all")
        with anyio.CancelScope() as scope:
            async with ActorSystem(config) as system:
                for n in range(50):
                    system.handle(f"s{n % 5}").submit({"n": n}, "t", "a")
                scope.cancel()
                await anyio.sleep(5)
        assert scope.cancelled_caught
        assert system.statistics().documents == 50
        stored = [s for n in range(5) for s in await stored_states(config, f"s{n}")]
        assert sorted(s["n"] for s in stored) == list(range(50))

    @pytest.mark.parametrize("awaited", [False, True])
    async def test_a_state_saved_in_a_shielded_cleanup_of_a_cancelled_system_is_stored(
            self, memory_config: Config, awaited: bool) -> None:
        """The usual "save on cancel": the scope around the system is cancelled and the code inside it saves a
        final state in a shielded finally, after a checkpoint. It is stored, and the statistics say so. (The
        cancellation had ended the actor spawner before the system closed: the session's actor was never
        started, the submit's state was given up at once as "not written before shutdown_timeout" and an
        awaited upload timed out; running_actors stayed 1.)"""
        config = memory_config.replace(shutdown_timeout=5.0, timeout=3.0)
        answers: list[object] = []
        with anyio.CancelScope() as scope:
            async with ActorSystem(config) as system:
                manager = system.manager("s")
                try:
                    scope.cancel()
                    await anyio.sleep(5)
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(0.05)  # the agent finishes its step
                        answers.append(await manager.upload_session_state({"final": True}, "t", "a") if awaited
                                       else manager.submit_session_state({"final": True}, "t", "a"))
        assert answers[0] in (S.SUCCESS, (S.SUCCESS, ANY))
        stats = system.statistics()
        assert (stats.documents, stats.failed, stats.running_actors) == (1, 0, 0)
        assert await stored_states(config, "s") == [{"final": True}]

    async def test_a_state_saved_while_the_cancelled_actor_waits_for_its_write_is_stored(
            self, memory_config: Config) -> None:
        """A busy session is cancelled with a write in flight (a slow store); its shielded cleanup saves the final
        state after that write has begun to drain. It is stored (it came while the actor's task waited for the
        write, after its one look at the mailbox, and was given up at once as "not written before
        shutdown_timeout")."""
        config = memory_config.replace(shutdown_timeout=5.0, debounce=0.0)
        store = open_store(config)
        insert_many = store.insert_many

        async def slow(docs: Any) -> Any:
            await anyio.sleep(0.2)
            return await insert_many(docs)

        store.insert_many = slow  # type: ignore[method-assign]
        with anyio.CancelScope() as scope:
            async with ActorSystem(config, store=store) as system:
                manager = system.manager("s")
                try:
                    for n in range(1000):
                        manager.submit_session_state({"n": n}, "t", "a")
                        if n == 20:
                            scope.cancel()
                        await anyio.sleep(0.01)
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(0.05)  # the actor's task drains: its write is in flight
                        assert manager.submit_session_state({"final": True}, "t", "a") is S.SUCCESS
        assert system.statistics().failed == 0
        assert (await stored_states(config, "s"))[0] == {"final": True}

    async def test_deadline_exit_with_store_down_logs_failures(self) -> None:
        """Uploads that cannot be written at shutdown are logged with their status, not dropped silently."""
        config = Config(api_url=closed_port_url(), timeout=0.5, retries=0, debounce=10, max_delay=10,
                        shutdown_timeout=1.0)
        with capture_logs() as logs:
            async with ActorSystem(config) as system:
                system.handle("s").submit({"n": 1}, "t", "a")
        failed = [e for e in logs if e["event"] == "session_state.upload"]
        assert failed and failed[-1]["status"] == "failed" and failed[-1]["log_level"] == "warning"
        assert system.statistics().failed == 1

    async def test_what_a_failed_part_way_write_stored_is_not_given_up_at_exit(self) -> None:
        """A server without the batch endpoint stores 5 single POSTs, then answers 503; the system leaves at
        its deadline. The 5 stored are answered and counted as stored; only the rest is logged as not
        written (all were logged "lost", and counted failed, though the server held 5 of them)."""
        stored: set[str] = set()

        def answer(n: int, doc: dict[str, Any]) -> object:
            if n > 5:
                return Response(503, {}, b"")
            stored.add(doc["id"])
            return {"_id": doc["id"]}

        transport = NoBatchTransport(answer)
        store = HttpStore("http://127.0.0.1:1", "p", lambda: transport)
        config = Config(api_url="http://127.0.0.1:1", keep="all", timeout=30.0, shutdown_timeout=1.0)
        with capture_logs() as logs:
            async with ActorSystem(config, store=store) as system:
                handle = system.handle("s")
                for n in range(20):
                    assert handle.submit({"n": n}, "t", "a") is S.SUCCESS
        assert len(stored) == 5
        stats = system.statistics()
        assert (stats.documents, stats.failed) == (5, 15)
        [given_up] = [e for e in logs if "shutdown_timeout" in str(e.get("error"))]
        assert len(given_up["ids"]) == 15 and not stored & set(given_up["ids"])

    async def test_closed_system_refuses_without_raising(self, memory_config: Config) -> None:
        """After exit, submit and awaited calls return FAILED instead of raising."""
        async with ActorSystem(memory_config) as system:
            handle = system.handle("s")
            manager = system.manager("s")
        assert handle.submit({"n": 1}) == S.FAILED
        assert (await handle.upload({"n": 1}))[0] == S.FAILED
        assert (await manager.download_session_states())[0] == S.FAILED


class TestManySessions:
    async def test_ten_thousand_sessions_are_stored_and_idle_actors_exit(self, sqlite_config: Config) -> None:
        """10,000 sessions each submitting once are all stored; their actors then exit when idle."""
        config = sqlite_config.replace(idle_timeout=0.2, debounce=0.01)
        async with ActorSystem(config) as system:
            for n in range(10_000):
                system.handle(f"s{n}").submit({"n": n}, "t", "a")
            assert system.statistics().live_actors == 10_000
            with anyio.fail_after(60):
                while system.statistics().live_actors:
                    await anyio.sleep(0.05)
            stats = system.statistics()
        assert stats.documents == 10_000
        store = SessionStateManager("x", config)._direct_store()
        assert (await store.query(Query(limit=1))).total == 10_000
        await store.aclose()

    async def test_idle_actor_comes_back_on_the_next_message(self, memory_config: Config) -> None:
        """An actor that exited when idle starts again for the next message, with nothing lost."""
        async with ActorSystem(memory_config.replace(idle_timeout=0.01, debounce=0)) as system:
            handle = system.handle("s")
            handle.submit({"n": 1}, "t", "a")
            with anyio.fail_after(2):
                while system.statistics().live_actors:
                    await anyio.sleep(0.01)
            handle.submit({"n": 2}, "t", "b")
            assert system.statistics().live_actors == 1
            await handle.flush()
            assert system.statistics().actors_started == 2
        assert len(await stored_states(memory_config, "s")) == 2


class TestMailboxBound:
    async def test_full_mailbox_coalesces_per_agent_even_with_keep_all(self, memory_config: Config) -> None:
        """Past the mailbox bound, submits replace the queued upload of their agent; memory stays bounded."""
        config = memory_config.replace(mailbox_size=8, keep="all")
        async with ActorSystem(config) as system:
            handle = system.handle("s")
            for n in range(1000):  # no checkpoint: the actor cannot run, the mailbox fills
                assert handle.submit({"n": n}, "t", f"a{n % 2}") == S.SUCCESS
            assert system.statistics().queued <= 8
            assert system.statistics().pending == 0  # the actor has not run yet
            await handle.flush()
            stats = system.statistics()
        assert stats.documents + stats.coalesced == 1000
        assert stats.documents <= 8
        states = await stored_states(config, "s")
        assert {s["n"] for s in states} >= {998, 999}


class TestFlushStatus:
    async def test_flush_reports_a_batch_refused_for_good(self, memory_config: Config) -> None:
        """flush() says FAILED when what it wrote was refused (here: a state that cannot be encoded)."""
        async with ActorSystem(memory_config.replace(debounce=30, max_delay=60)) as system:
            handle = system.handle("s")
            handle.submit({"bad": object()}, "t", "a")
            status, message = await handle.flush()
            assert status == S.FAILED and "refused" in message
            handle.submit({"good": 1}, "t", "a")
            assert await handle.flush() == (S.SUCCESS, "flushed")
