"""The Team, the built-in agent and the scripted model client: tasks that persist their agent's state."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, SessionStateManager, Team
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor.agents import (
    AssistantMessage,
    BuiltinAgent,
    ChatAgent,
    ChatCompletionClient,
    ScriptedModelClient,
    SystemMessage,
    UserMessage,
)
from wr124_session_actor.server import ServerThread

from .faultserver import closed_port_url

pytestmark = pytest.mark.anyio


async def stored_tasks(config: Config, session_id: str) -> list[str]:
    """The tasks of the session's stored states, newest first."""
    manager = SessionStateManager(session_id, config)
    status, docs = await manager.download_session_states(limit=100)
    await manager.aclose()
    assert status is S.SUCCESS
    return [doc["content"]["task"] for doc in docs]


async def stored_documents(config: Config, agent: str, session_id: str = "s") -> list[dict[str, Any]]:
    """The stored states of ``agent`` in the session, newest first."""
    manager = SessionStateManager(session_id, config)
    status, docs = await manager.download_session_states(limit=100, agent_name=agent)
    await manager.aclose()
    assert status is S.SUCCESS
    return docs


async def collect(team: Team, task: str) -> list[Any]:
    """Every message of one task."""
    return [message async for message in team.execute_task(task)]


class CountingAgent(BuiltinAgent):
    """A built-in agent that counts its snapshots."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saves = 0

    async def save_state(self) -> dict[str, Any]:
        self.saves += 1
        return await super().save_state()


class BrokenSaveAgent(BuiltinAgent):
    """A built-in agent whose snapshots always fail."""

    async def save_state(self) -> dict[str, Any]:
        raise RuntimeError("cannot snapshot")


class TestScriptedModelClient:
    async def test_replies_in_order_and_cycles(self) -> None:
        """Replies come in script order, then the script starts again; every call is recorded."""
        client = ScriptedModelClient(["a", "b"])
        replies = [(await client.create([UserMessage(str(i))])).content for i in range(5)]
        assert replies == ["a", "b", "a", "b", "a"]
        assert client.call_count == 5
        assert client.calls[3] == [UserMessage("3")]

    async def test_exhausted_script_raises_without_cycle(self) -> None:
        """With ``cycle=False`` a call past the script raises a RuntimeError that says so."""
        client = ScriptedModelClient(["only"], cycle=False)
        assert (await client.create([])).content == "only"
        with pytest.raises(RuntimeError, match="scripted replies are used"):
            await client.create([])

    async def test_delay_is_slept(self) -> None:
        """Each call takes at least ``delay`` seconds."""
        client = ScriptedModelClient(["x"], delay=0.02)
        started = anyio.current_time()
        await client.create([])
        assert anyio.current_time() - started >= 0.02

    def test_rejects_an_empty_script(self) -> None:
        """No replies, a bare string, or a negative delay is a ValueError."""
        with pytest.raises(ValueError, match="non-empty"):
            ScriptedModelClient([])
        with pytest.raises(ValueError, match="non-empty"):
            ScriptedModelClient("abc")
        with pytest.raises(ValueError, match="delay"):
            ScriptedModelClient(["x"], delay=-1)

    def test_is_a_chat_completion_client(self) -> None:
        """The scripted client has the model-client shape."""
        assert isinstance(ScriptedModelClient(["x"]), ChatCompletionClient)


class TestBuiltinAgent:
    async def test_yields_the_task_then_one_reply_per_turn(self) -> None:
        """run_stream yields the user's message, then ``turns`` replies with the agent as source."""
        agent = BuiltinAgent("bot", ScriptedModelClient(["one", "two", "three"]), turns=3)
        messages = [m async for m in agent.run_stream(task="hello")]
        assert [(m.content, m.source) for m in messages] == [
            ("hello", "user"), ("one", "bot"), ("two", "bot"), ("three", "bot")]
        assert isinstance(agent, ChatAgent)

    async def test_sends_the_system_message_first_and_keeps_history(self) -> None:
        """Each model call gets the system message and the whole conversation so far."""
        client = ScriptedModelClient(["r1", "r2"])
        agent = BuiltinAgent("bot", client, system_message="be brief")
        async for _ in agent.run_stream(task="t1"):
            pass
        async for _ in agent.run_stream(task="t2"):
            pass
        last = client.calls[-1]
        assert [m.content for m in last] == ["be brief", "t1", "r1", "t2"]
        assert [type(m).__name__ for m in last] == ["SystemMessage", "UserMessage", "AssistantMessage",
                                                    "UserMessage"]

    async def test_uses_autogen_core_messages_when_importable(self) -> None:
        """With autogen-core installed the model client receives autogen_core.models messages."""
        models = pytest.importorskip("autogen_core.models", reason="autogen-core is not installed")
        client = ScriptedModelClient(["r"])
        agent = BuiltinAgent("bot", client)
        async for _ in agent.run_stream(task="t"):
            pass
        system, user = client.calls[0]
        assert isinstance(system, models.SystemMessage)
        assert isinstance(user, models.UserMessage)
        assert isinstance(agent.history[1], models.AssistantMessage)
        assert agent.message_origin == "autogen_core.models"

    async def test_falls_back_to_own_messages_without_autogen(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without autogen-core the agent uses this package's same-shaped dataclasses."""
        monkeypatch.setitem(sys.modules, "autogen_core.models", None)
        client = ScriptedModelClient(["r"])
        agent = BuiltinAgent("bot", client, system_message="sys")
        async for _ in agent.run_stream(task="t"):
            pass
        assert client.calls[0] == [SystemMessage("sys"), UserMessage("t", "user")]
        assert agent.history == [UserMessage("t", "user"), AssistantMessage("r", "bot")]
        assert agent.message_origin == "wr124_session_actor.agents"

    async def test_state_round_trips_into_a_fresh_agent(self) -> None:
        """save_state is JSON-able; load_state into a fresh agent gives the same conversation."""
        agent = BuiltinAgent("bot", ScriptedModelClient(["a", "b"]), turns=2)
        async for _ in agent.run_stream(task="t"):
            pass
        state = await agent.save_state()
        assert state["history"][0] == {"type": "UserMessage", "content": "t", "source": "user"}
        assert (state["tasks"], state["model_calls"]) == (1, 2)
        fresh = BuiltinAgent("bot", ScriptedModelClient(["z"]))
        await fresh.load_state(state)
        assert await fresh.save_state() == state

    async def test_load_state_rejects_a_foreign_snapshot(self) -> None:
        """A snapshot of another kind of agent is a ValueError."""
        agent = BuiltinAgent("bot", ScriptedModelClient(["a"]))
        with pytest.raises(ValueError, match="BuiltinAgentState"):
            await agent.load_state({"type": "AssistantAgentState"})

    def test_importing_the_package_does_not_import_autogen(self) -> None:
        """The package, agents and team modules import without importing autogen."""
        code = ("import sys, wr124_session_actor, wr124_session_actor.agents, wr124_session_actor._team\n"
                "assert not [m for m in sys.modules if m.startswith('autogen')], 'autogen imported'\n")
        subprocess.run([sys.executable, "-c", code], check=True)


class TestTeamStoreDown:
    async def test_task_completes_and_every_outcome_is_logged_failed(self) -> None:
        """With the store down a task yields all its messages and every store outcome is a failed warning."""
        config = Config(api_url=closed_port_url(), retries=0, timeout=2.0, shutdown_timeout=0.5)
        with capture_logs() as events:
            agent = BuiltinAgent("assistant", ScriptedModelClient(["a", "b", "c"]), turns=3)
            async with Team(session_id="down", agent=agent, config=config) as team:
                messages = await collect(team, "work")
                assert [m.content for m in messages] == ["work", "a", "b", "c"]
                assert await team.download_session_history() == (S.FAILED, [])
                assert await team.restore_latest() == (S.FAILED, None)
        outcomes = [e for e in events if "status" in e]
        assert {e["event"] for e in outcomes} >= {"session_state.upload", "session_state.download"}
        assert all(e["status"] == "failed" and e["log_level"] == "warning" for e in outcomes), outcomes

    async def test_direct_mode_task_completes(self) -> None:
        """Without ``async with`` the end-of-task upload fails, is logged, and the task still completes."""
        config = Config(api_url=closed_port_url(), retries=0, timeout=2.0, shutdown_timeout=0.5)
        team = Team(ScriptedModelClient(["a"]), session_id="down", config=config)
        with capture_logs() as events:
            messages = await collect(team, "work")
        await team.aclose()
        assert [m.content for m in messages] == ["work", "a"]
        uploads = [e for e in events if e["event"] == "session_state.upload"]
        assert len(uploads) == 1
        assert (uploads[0]["status"], uploads[0]["log_level"]) == ("failed", "warning")


class TestTeamPersists:
    async def test_final_state_is_stored_when_the_loop_ends(self, sqlite_config: Config) -> None:
        """When ``async for`` ends, download already shows the task's final state."""
        async with Team(ScriptedModelClient(["a", "b"]), session_id="s1", config=sqlite_config) as team:
            assert team.manager.mode == "actor"
            await collect(team, "first task")
            status, docs = await team.download_session_history()
            assert status == S.SUCCESS
            assert len(docs) == 1
            content = docs[0]["content"]
            assert (content["task"], content["agent_name"]) == ("first task", "assistant")
            assert content["state"] == await team.agent.save_state()
            await collect(team, "second task")
            status, docs = await team.download_session_history()
            assert [d["content"]["task"] for d in docs] == ["second task", "first task"]
            assert docs[0]["content"]["state"] == await team.agent.save_state()

    async def test_restore_latest_loads_state_into_a_fresh_agent(self, sqlite_config: Config) -> None:
        """restore_latest returns the content and loads its state into a new team's fresh agent."""
        async with Team(ScriptedModelClient(["a", "b"]), session_id="s2", config=sqlite_config) as team:
            await collect(team, "t1")
            await collect(team, "t2")
            saved = await team.agent.save_state()
        fresh = BuiltinAgent("assistant", ScriptedModelClient(["z"]))
        async with Team(session_id="s2", agent=fresh, config=sqlite_config) as other:
            status, content = await other.restore_latest()
        assert status == S.SUCCESS
        assert content is not None
        assert content["task"] == "t2"
        assert await fresh.save_state() == saved
        assert [m.content for m in fresh.history] == ["t1", "a", "t2", "b"]

    async def test_restore_by_id_loads_an_older_state(self, sqlite_config: Config) -> None:
        """restore(doc_id) loads the state of that document."""
        async with Team(ScriptedModelClient(["a", "b"]), session_id="s3", config=sqlite_config) as team:
            await collect(team, "t1")
            await collect(team, "t2")
            _, docs = await team.download_session_history()
            status, content = await team.restore(docs[-1]["_id"])
            assert status == S.SUCCESS
            assert content is not None
            assert content["task"] == "t1"
            assert isinstance(team.agent, BuiltinAgent)
            assert [m.content for m in team.agent.history] == ["t1", "a"]

    async def test_a_state_the_agent_rejects_is_failed(self, sqlite_config: Config) -> None:
        """A stored state the agent cannot load gives (FAILED, None) and a warning."""
        manager = SessionStateManager("s4", sqlite_config)
        await manager.upload_session_state({"type": "Other"}, "t", "assistant")
        await manager.aclose()
        team = Team(ScriptedModelClient(["a"]), session_id="s4", config=sqlite_config)
        with capture_logs() as events:
            assert await team.restore_latest() == (S.FAILED, None)
        await team.aclose()
        assert [(e["event"], e["status"]) for e in events if e["log_level"] == "warning"] == [
            ("session_state.load_state", "failed")]

    async def test_direct_mode_uploads_once_per_task(self, sqlite_config: Config) -> None:
        """Without ``async with`` the final state is uploaded once, awaited, at the end of each task."""
        agent = BuiltinAgent("assistant", ScriptedModelClient(["a"]), turns=4)
        team = Team(session_id="s5", agent=agent, config=sqlite_config)
        await collect(team, "t")
        status, docs = await team.download_session_history()
        await team.aclose()
        assert status == S.SUCCESS
        assert len(docs) == 1
        assert docs[0]["content"]["state"] == await team.agent.save_state()

    async def test_failing_save_state_is_logged_and_skipped(self, sqlite_config: Config) -> None:
        """An agent whose save_state raises still streams every message; each failure is a warning."""
        agent = BrokenSaveAgent("assistant", ScriptedModelClient(["a"]))
        with capture_logs() as events:
            async with Team(session_id="s6", agent=agent, config=sqlite_config) as team:
                messages = await collect(team, "t")
                assert await team.download_session_history() == (S.SUCCESS, [])
        assert [m.content for m in messages] == ["t", "a"]
        failures = [e for e in events if e["event"] == "session_state.save_state"]
        assert len(failures) == 2
        assert all(e["status"] == "failed" and "cannot snapshot" in e["error"] for e in failures)

    async def test_disabled_config_takes_no_snapshots(self) -> None:
        """With uploads disabled the team never calls save_state and the task still runs."""
        agent = CountingAgent("assistant", ScriptedModelClient(["a"]), turns=3)
        async with Team(session_id="off", agent=agent, config=Config(enabled=False)) as team:
            messages = await collect(team, "t")
            assert (await team.download_session_history())[0] == S.DISABLED
        assert len(messages) == 4
        assert agent.saves == 0


class TestTeamWithActorSystem:
    async def test_chatty_task_makes_few_store_writes(self, sqlite_config: Config) -> None:
        """A 50-turn task submits 51 snapshots and the actor writes them as one document in one write."""
        config = sqlite_config.replace(debounce=10.0, max_delay=10.0)
        async with ActorSystem(config) as system:
            agent = BuiltinAgent("assistant", ScriptedModelClient(["x", "y", "z"]), turns=50)
            team = Team(session_id="chatty", agent=agent, manager=system.manager("chatty"))
            messages = await collect(team, "chat")
            stats = system.statistics()
            status, docs = await team.download_session_history()
        assert len(messages) == 51
        assert (stats.submitted, stats.store_writes, stats.documents) == (51, 1, 1)
        assert stats.coalesced == 50
        assert status == S.SUCCESS
        assert len(docs[0]["content"]["state"]["history"]) == 51

    async def test_given_manager_is_not_owned(self, memory_config: Config) -> None:
        """A team over a system's manager leaves the manager running when it exits."""
        async with ActorSystem(memory_config) as system:
            manager = system.manager("shared")
            async with Team(ScriptedModelClient(["a"]), manager=manager) as team:
                assert team.session_id == "shared"
                await collect(team, "t")
            assert system.is_open
            assert manager.mode == "actor"
            assert len((await manager.download_session_states())[1]) == 1


class TestTeamConstruction:
    def test_needs_a_model_client_or_an_agent(self) -> None:
        """A team with neither a model client nor an agent is a ValueError."""
        with pytest.raises(ValueError, match="model_client"):
            Team(session_id="s", config=Config(api_url="memory://"))

    def test_manager_and_config_are_exclusive(self, memory_config: Config) -> None:
        """Both a manager and a config, or a session id other than the manager's, is a ValueError."""
        manager = SessionStateManager("s", memory_config)
        with pytest.raises(ValueError, match="not both"):
            Team(ScriptedModelClient(["a"]), manager=manager, config=memory_config)
        with pytest.raises(ValueError, match="differs"):
            Team(ScriptedModelClient(["a"]), session_id="t", manager=manager)

    def test_defaults(self, memory_config: Config) -> None:
        """The default agent is a built-in 'assistant'; a missing session id gets a fresh one."""
        team = Team(ScriptedModelClient(["a"]), config=memory_config)
        assert isinstance(team.agent, BuiltinAgent)
        assert team.agent.name == "assistant"
        assert team.session_id.startswith("team-")
        assert team.manager.mode == "direct"

    @pytest.mark.parametrize("session_id", ["", 0, "a\0b"])
    def test_a_session_id_that_is_not_one_is_a_value_error(self, memory_config: Config, session_id: Any) -> None:
        """Only None means "a fresh id": an empty id, or one that is not a string, is a ValueError as for the
        manager (the team took them for a random session)."""
        with pytest.raises(ValueError, match="session_id"):
            Team(ScriptedModelClient(["a"]), session_id=session_id, config=memory_config)

    async def test_cannot_be_entered_twice(self, memory_config: Config) -> None:
        """Entering a team again, while open or after close, is a RuntimeError."""
        team = Team(ScriptedModelClient(["a"]), session_id="s", config=memory_config)
        async with team:
            with pytest.raises(RuntimeError, match="entered twice"):
                await team.__aenter__()
        with pytest.raises(RuntimeError, match="entered twice"):
            await team.__aenter__()


class TestAutoGen:
    @pytest.mark.parametrize("anyio_backend", ["asyncio"])  # AutoGen runs on asyncio only
    async def test_assistant_agent_state_is_stored_and_restored(self, sqlite_config: Config) -> None:
        """An AutoGen AssistantAgent over ReplayChatCompletionClient runs in a team; its state round-trips."""
        agents = pytest.importorskip("autogen_agentchat.agents", reason="autogen-agentchat is not installed")
        replay = pytest.importorskip("autogen_ext.models.replay", reason="autogen-ext is not installed")
        agent = agents.AssistantAgent("helper", replay.ReplayChatCompletionClient(["hello there", "again"]))
        async with Team(session_id="ag", agent=agent, config=sqlite_config) as team:
            messages = await collect(team, "hi")
            status, docs = await team.download_session_history()
        assert [getattr(m, "content", None) for m in messages[:2]] == ["hi", "hello there"]
        assert type(messages[-1]).__name__ == "TaskResult"
        assert status == S.SUCCESS
        saved: Mapping[str, Any] = await agent.save_state()
        assert docs[0]["content"]["state"] == saved
        assert docs[0]["content"]["agent_name"] == "helper"

        fresh = agents.AssistantAgent("helper", replay.ReplayChatCompletionClient(["unused"]))
        async with Team(session_id="ag", agent=fresh, config=sqlite_config) as other:
            status, content = await other.restore_latest()
        assert status == S.SUCCESS
        assert content is not None
        assert await fresh.save_state() == saved
        contents = [m["content"] for m in saved["llm_context"]["messages"]]
        assert contents == ["hi", "hello there"]


class TestContinuation:
    async def test_two_teams_continuing_one_state_do_not_fork_silently(self, sqlite_config: Config) -> None:
        """Two teams restore the same latest state and both continue it: the first one's state is stored,
        the second one's first upload is refused as a conflict (parent_seq, without being asked)."""
        async with Team(ScriptedModelClient(["first"]), session_id="shared", config=sqlite_config) as team:
            await collect(team, "start")
        restored: list[Team] = []
        for _ in range(2):
            manager = SessionStateManager("shared", sqlite_config)
            team = Team(ScriptedModelClient(["continued"]), manager=manager)
            status, content = await team.restore_latest()
            assert status is S.SUCCESS and content is not None and isinstance(content["seq"], int)
            restored.append(team)
        winner, loser = restored
        with capture_logs() as logs:
            await collect(winner, "go on")
            await collect(loser, "go on too")
        uploads = [e for e in logs if e["event"] == "session_state.upload"]
        assert [e["status"] for e in uploads] == ["success", "failed"]
        assert "conflict" in uploads[1]["error"]
        status, docs = await winner.download_session_history(limit=10)
        assert status is S.SUCCESS and len(docs) == 2
        assert docs[0]["content"]["task"] == "go on"
        for team in restored:
            await team.aclose()

    @pytest.mark.parametrize("keep", ["latest", "all"])
    @pytest.mark.parametrize("mode", ["actor", "actor+spool", "direct"])
    async def test_a_stale_continuation_is_refused_whole_whatever_the_model_speed(
            self, sqlite_config: Config, mode: str, keep: str, tmp_path: Path) -> None:
        """A team restores a state, another writer stores a newer one, then the team runs tasks with a slow
        model (each snapshot written on its own): none of its states is stored, and the other writer's
        stays the newest. Only the first snapshot after the restore carried parent_seq: it was refused and
        the later ones (and the next task's) were stored over the other writer's state. With a spool, whose
        sync encodes the snapshots before their write, as without."""
        config = sqlite_config.replace(keep=keep, debounce=0.0, spool_sync_interval=0.01,
                                       spool=str(tmp_path / "spool.db") if mode == "actor+spool" else None)
        async with Team(ScriptedModelClient(["seed"]), session_id="fork", config=config) as seeder:
            await collect(seeder, "seed")
        team = Team(agent=BuiltinAgent("assistant", ScriptedModelClient(["stale"], delay=0.05), turns=3),
                    session_id="fork", config=config)
        async with contextlib.AsyncExitStack() as stack:
            if mode != "direct":
                await stack.enter_async_context(team)
            status, content = await team.restore_latest()
            assert status is S.SUCCESS and content is not None
            other = SessionStateManager("fork", config)
            assert (await other.upload_session_state(content["state"], "the other writer", "assistant"))[0] \
                is S.SUCCESS
            await other.aclose()
            with capture_logs() as logs:
                await collect(team, "stale task")
                await collect(team, "next stale task")
            await team.aclose()
        uploads = [e for e in logs if e["event"] == "session_state.upload"]
        assert uploads and all(e["status"] == "failed" and "conflict" in e["error"] for e in uploads), uploads
        tasks = await stored_tasks(config, "fork")
        assert tasks[0] == "the other writer" and not {"stale task", "next stale task"} & set(tasks), tasks

    @pytest.mark.parametrize("where", ["sqlite", "server", "server without the batch endpoint"])
    async def test_one_write_with_a_stale_and_a_fresh_continuation(self, sqlite_config: Config, tmp_path: Path,
                                                                   where: str) -> None:
        """keep="all", one session: agent a continues an old state (stale), agent b its newest (fresh), each with
        two more states after it, all pending together. All of b's are stored and none of a's (b's later states
        were refused against b's own first one when the write was split by a's conflict, or posted one by one
        to a server without the batch endpoint)."""
        async with contextlib.AsyncExitStack() as stack:
            config = sqlite_config.replace(keep="all", debounce=0.0, max_delay=10.0)
            if where != "sqlite":
                server = stack.enter_context(ServerThread(tmp_path / "server.db",
                                                          enable_batch=where == "server"))
                config = config.replace(api_url=server.url)
            manager = SessionStateManager("s", config)
            for agent in ("a", "b"):
                assert (await manager.upload_session_state({"n": 0}, "t", agent))[0] is S.SUCCESS
            seqs = {d["content"]["agent_name"]: d["seq"] for d in (await manager.download_session_states())[1]}
            assert (await manager.upload_session_state({"n": 1}, "other writer", "a"))[0] is S.SUCCESS
            await manager.aclose()
            async with ActorSystem(config) as system:
                handle = system.handle("s")
                for agent in ("a", "b"):
                    handle.submit({"n": 10}, "go on", agent, parent_seq=seqs[agent])
                    handle.submit({"n": 11}, "go on", agent)
                    handle.submit({"n": 12}, "go on", agent)
                status, message = await handle.flush()
                assert (status, message) == (S.FAILED, "3 uploads were refused for good (see the log)")
            by_agent = {agent: [d["content"]["state"]["n"] for d in await stored_documents(config, agent)]
                        for agent in ("a", "b")}
        assert by_agent == {"a": [1, 0], "b": [12, 11, 10, 0]}

    async def test_a_new_continuation_in_the_write_of_a_refused_ones_follower(self, sqlite_config: Config) -> None:
        """keep="all": after a refused continuation, a state without parent_seq and then a new continuation (a new
        restore) wait in one write: the first is refused as continuing the refused state, the new one stored
        (the refusal's message looked the parent up after the new one had cleared it: KeyError in the actor)."""
        config = sqlite_config.replace(keep="all", debounce=0.0, max_delay=10.0)
        async with ActorSystem(config) as system:
            manager = system.manager("s")
            for n in range(2):
                assert (await manager.upload_session_state({"n": n}, "t", "a"))[0] is S.SUCCESS
            newest = (await manager.restore_latest_session_state())[1]["seq"]  # type: ignore[index]
            status, message = await manager.upload_session_state({"n": "stale"}, "t", "a", parent_seq=newest - 1)
            assert status is S.FAILED and "conflict" in message
            handle = system.handle("s")
            handle.submit({"n": "after the refusal"}, "t", "a")
            handle.submit({"n": "restored"}, "t", "a", parent_seq=newest)
            status, message = await handle.flush()
            assert (status, message) == (S.FAILED, "1 uploads were refused for good (see the log)")
        assert [d["content"]["state"]["n"] for d in await stored_documents(config, "a")] == ["restored", 1, 0]

    async def test_a_continuation_whose_answer_was_lost_does_not_block_the_agent(self, sqlite_config: Config) -> None:
        """Direct mode: an upload with parent_seq is stored but answered after the timeout (TIMEOUT); the agent's
        next uploads are stored (they were refused as conflicts against it for the manager's whole life)."""
        manager = SessionStateManager("s", sqlite_config.replace(timeout=0.3, retries=0))
        assert (await manager.upload_session_state({"n": 0}, "t", "a"))[0] is S.SUCCESS
        seq = (await manager.restore_latest_session_state())[1]["seq"]  # type: ignore[index]
        store = manager._direct_store()
        insert_many = store.insert_many

        async def stored_then_slow(docs: Any) -> Any:
            ids = await insert_many(docs)
            await anyio.sleep(1)
            return ids

        store.insert_many = stored_then_slow  # type: ignore[method-assign]
        assert (await manager.upload_session_state({"n": 1}, "t", "a", parent_seq=seq))[0] is S.TIMEOUT
        store.insert_many = insert_many  # type: ignore[method-assign]
        for n in (2, 3):
            assert (await manager.upload_session_state({"n": n}, "t", "a"))[0] is S.SUCCESS
        assert [d["content"]["state"]["n"] for d in await stored_documents(sqlite_config, "a")] == [3, 2, 1, 0]
        await manager.aclose()

    @pytest.mark.parametrize("keep", ["latest", "all"])
    async def test_a_continuation_nobody_interrupts_is_stored_whole(self, sqlite_config: Config, keep: str) -> None:
        """The same slow team with no other writer: every snapshot is stored (the first one with parent_seq, the
        later ones continuing it, not refused as forks of their own first state)."""
        config = sqlite_config.replace(keep=keep, debounce=0.0)
        async with Team(ScriptedModelClient(["seed"]), session_id="line", config=config) as seeder:
            await collect(seeder, "seed")
        team = Team(agent=BuiltinAgent("assistant", ScriptedModelClient(["go"], delay=0.05), turns=3),
                    session_id="line", config=config)
        async with team:
            assert (await team.restore_latest())[0] is S.SUCCESS
            with capture_logs() as logs:
                await collect(team, "first")
                await collect(team, "second")
        assert [e for e in logs if e["event"] == "session_state.upload" and e["status"] != "success"] == []
        tasks = await stored_tasks(config, "line")
        assert tasks[0] == "second" and "first" in tasks, tasks
        assert tasks.count("second") >= 2, tasks  # written in separate writes, none refused
