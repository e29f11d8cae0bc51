"""No write for an unchanged state: a state equal to the agent's last stored one is not written again."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import pytest

from wr124_session_actor import ActorSystem, Config, SessionStateManager, StoreTimeout
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import EncodedDocument
from wr124_session_actor.stores import MemoryStore

from .conftest import stored_count
from .test_manager import manager_in

pytestmark = pytest.mark.anyio


class TestUnchanged:
    async def test_thousand_equal_uploads_are_one_document(self, sqlite_config: Config) -> None:
        """1,000 awaited uploads of the same state: one document, 1,000 SUCCESS replies with its id."""
        async with ActorSystem(sqlite_config) as system:
            manager = system.manager("s")
            replies = [await manager.upload_session_state({"same": True}, "t", "a") for _ in range(1000)]
        assert {status for status, _ in replies} == {S.SUCCESS}
        assert len({doc_id for _, doc_id in replies}) == 1
        assert await stored_count(sqlite_config, "s") == 1
        stats = system.statistics()
        assert (stats.documents, stats.unchanged, stats.store_writes) == (1, 999, 1)

    async def test_a_state_changing_every_tenth_upload(self, sqlite_config: Config) -> None:
        """A state that changes every 10th upload becomes 100 documents (keep="all")."""
        async with ActorSystem(sqlite_config.replace(keep="all")) as system:
            manager = system.manager("s")
            for n in range(1000):
                status, _ = await manager.upload_session_state({"version": n // 10}, "t", "a")
                assert status is S.SUCCESS
        assert await stored_count(sqlite_config, "s") == 100

    async def test_submits_count_unchanged(self, sqlite_config: Config) -> None:
        """Fire-and-forget submits of an unchanged state are counted in statistics().unchanged."""
        async with ActorSystem(sqlite_config.replace(keep="all")) as system:
            handle = system.handle("s")
            for _round in range(3):
                for _ in range(50):
                    handle.submit({"same": True}, "t", "a")
                await handle.flush()
        assert system.statistics().unchanged == 149
        assert await stored_count(sqlite_config, "s") == 1

    async def test_agents_are_compared_separately(self, memory_config: Config) -> None:
        """The same state from two agents is two documents."""
        manager = SessionStateManager("s", memory_config)
        _, first = await manager.upload_session_state({"same": True}, "t", "a")
        _, second = await manager.upload_session_state({"same": True}, "t", "b")
        _, again = await manager.upload_session_state({"same": True}, "t", "a")
        assert first != second and again == first
        assert await stored_count(memory_config, "s") == 2

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_what_another_process_deleted_is_stored_again_once_no_longer_trusted(
            self, sqlite_config: Config, mode: str) -> None:
        """The last stored state is trusted for ``cache_ttl``, as cached reads are: after that an equal state is
        written again. Another process deleted it (or pruned it, or stored a newer state of the agent): the
        upload answered SUCCESS with the deleted document's id for as long as the manager lived, and the state
        was gone."""
        config = sqlite_config.replace(cache_ttl=0.2)
        async with manager_in(mode, config) as manager:
            _, first = await manager.upload_session_state({"same": True}, "t", "a")
            assert await manager.upload_session_state({"same": True}, "t", "a") == (S.SUCCESS, first)
            other = SessionStateManager("s", config)  # another process
            assert (await other.delete_session_state(first))[0] is S.SUCCESS
            await other.aclose()
            await anyio.sleep(0.25)
            status, again = await manager.upload_session_state({"same": True}, "t", "a")
            assert status is S.SUCCESS and again != first
            status, content = await manager.restore_session_state(again)
            assert (status, content and content["state"]) == (S.SUCCESS, {"same": True})
        assert await stored_count(config, "s") == 1

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_a_state_the_stores_idle_sweep_removed_is_stored_again(self, sqlite_config: Config,
                                                                         mode: str) -> None:
        """With ``idle_ttl`` shorter than ``cache_ttl``, the store's own sweep removes an idle session whole
        while its last state is still trusted: the state is trusted no longer than ``idle_ttl``, so an equal
        upload after the removal is written (it answered SUCCESS with the removed document's id)."""
        config = sqlite_config.replace(idle_ttl=0.3, sweep_interval=0.05, cache_ttl=60)
        async with manager_in(mode, config) as manager:
            _, first = await manager.upload_session_state({"same": True}, "t", "a")
            await anyio.sleep(0.5)
            other = SessionStateManager("other", config)  # writes of another session: a sweep follows one
            with anyio.fail_after(5):
                for n in range(1000):
                    assert (await other.upload_session_state({"n": n}, "t", "a"))[0] is S.SUCCESS
                    if await stored_count(config, "s") == 0:  # removed whole by the sweep
                        break
                    await anyio.sleep(0.02)
            await other.aclose()
            status, again = await manager.upload_session_state({"same": True}, "t", "a")
            assert status is S.SUCCESS and again != first
            status, content = await manager.restore_latest_session_state()
            assert (status, content and content["state"]) == (S.SUCCESS, {"same": True})
        assert await stored_count(config, "s") == 1

    @pytest.mark.parametrize("mode", ["direct", "actor"])
    async def test_an_unchanged_continuation_is_checked_by_the_store(self, sqlite_config: Config, mode: str) -> None:
        """An upload with ``parent_seq`` is never skipped as unchanged: the store checks it. A state equal to
        the agent's last stored one, continuing it after another writer stored a newer state, answered SUCCESS
        with the old id; the same upload of a changed state was refused as a conflict."""
        async with manager_in(mode, sqlite_config) as manager:
            _, first = await manager.upload_session_state({"same": True}, "t", "a")
            status, content = await manager.restore_session_state(first)
            assert status is S.SUCCESS and content is not None
            other = SessionStateManager("s", sqlite_config)  # another writer of the session
            assert (await other.upload_session_state({"newer": True}, "t", "a"))[0] is S.SUCCESS
            await other.aclose()
            status, message = await manager.upload_session_state({"same": True}, "t", "a",
                                                                 parent_seq=content["seq"])
            assert status is S.FAILED and "conflict" in message
            status, latest = await manager.restore_latest_session_state()  # the other writer's stays newest
            assert status is S.SUCCESS and latest is not None and latest["state"] == {"newer": True}

    async def test_setting_off_writes_every_upload(self, sqlite_config: Config) -> None:
        """SESSION_STATE_SKIP_UNCHANGED=false: every upload is written."""
        config = Config.from_env({"ENABLE_SESSION_STATE_UPLOAD": "true", "SESSION_API_URL": sqlite_config.api_url,
                                  "SESSION_STATE_SKIP_UNCHANGED": "false", "SESSION_STATE_KEEP": "all"})
        assert config.skip_unchanged is False
        async with ActorSystem(config) as system:
            manager = system.manager("s")
            for _ in range(20):
                assert (await manager.upload_session_state({"same": True}, "t", "a"))[0] is S.SUCCESS
        assert await stored_count(sqlite_config, "s") == 20

    async def test_direct_mode_skips_too(self, sqlite_config: Config) -> None:
        """Direct mode uses the same rule (the core operation is shared)."""
        manager = SessionStateManager("s", sqlite_config)
        ids = {(await manager.upload_session_state({"same": True}, "t", "a"))[1] for _ in range(10)}
        await manager.aclose()
        assert len(ids) == 1 and await stored_count(sqlite_config, "s") == 1

    async def test_a_deleted_state_is_written_again(self, memory_config: Config) -> None:
        """After the stored equal state is deleted, the same state is written anew."""
        manager = SessionStateManager("s", memory_config)
        _, first = await manager.upload_session_state({"same": True}, "t", "a")
        assert (await manager.delete_session_state(first))[0] is S.SUCCESS
        status, second = await manager.upload_session_state({"same": True}, "t", "a")
        assert status is S.SUCCESS and second != first
        assert await stored_count(memory_config, "s") == 1


class StoredButLost(MemoryStore):
    """A store whose writes, while ``losing``, are stored and then answered with a timeout (a lost answer)."""

    losing = False

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        ids = await super().insert_many(docs)
        if self.losing:
            raise StoreTimeout("the answer was lost")
        return ids


@pytest.mark.parametrize("cancelled", [False, True])
async def test_after_a_write_that_may_have_stored_the_previous_state_is_written_again(cancelled: bool) -> None:
    """Direct mode: X stored, then Y's write stored but unanswered (a timeout, or the caller cancelled): X sent
    again is written, and is the latest (it was answered "unchanged" with the first X's id, and Y stayed the
    latest, for cache_ttl)."""
    config = Config(api_url="memory://", retries=0, timeout=1.0)
    manager = SessionStateManager("s", config)
    store = manager._direct_store.store = StoredButLost(f"lost-{cancelled}")
    status, first = await manager.upload_session_state({"v": "X"}, "t", "a")
    assert status is S.SUCCESS
    store.losing = True
    if cancelled:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await manager.upload_session_state({"v": "Y"}, "t", "a")
    else:
        assert (await manager.upload_session_state({"v": "Y"}, "t", "a"))[0] is not S.SUCCESS
    store.losing = False
    status, again = await manager.upload_session_state({"v": "X"}, "t", "a")
    assert status is S.SUCCESS and again != first
    status, content = await manager.restore_latest_session_state()
    assert status is S.SUCCESS and content is not None and content["state"] == {"v": "X"}
    await manager.aclose()
