"""``wr124-session demo``: chatty teams on several sessions, then the history listed and a state restored."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import anyio

from ._config import Config
from ._progress import progress
from ._status import SessionStateStatus
from ._system import ActorSystem
from ._team import Team
from .agents import BuiltinAgent, ScriptedModelClient

__all__ = ["run_demo"]

_REPLIES = ("Let me look at that.", "Here is a first draft.", "I checked the edge cases.", "Done: all tests pass.")
_ROLES = ("planner", "coder", "reviewer", "tester", "writer", "researcher")


async def _run_team(
    system: ActorSystem, session_id: str, agent_name: str, turns: int, on_message: Callable[[], None] | None = None
) -> int:
    """One agent's chatty task on one session; returns how many messages it produced."""
    client = ScriptedModelClient(_REPLIES, delay=0.002)  # a fast fake LLM: ~500 messages/s per agent
    agent = BuiltinAgent(agent_name, client, description=f"the {agent_name}", turns=turns)
    team = Team(session_id=session_id, agent=agent, manager=system.manager(session_id))
    count = 0
    async for _message in team.execute_task(f"{agent_name}: improve the parser in {session_id}"):
        count += 1
        if on_message is not None:
            on_message()
    return count


async def run_demo(config: Config, sessions: int = 3, turns: int = 40, agents: int = 2) -> int:
    """Run the demo against ``config``'s store; print the figures; return an exit status."""
    print(f"store: {config.api_url}  ({sessions} sessions x {agents} agents x {turns} model turns)")
    started = time.perf_counter()
    session_ids = [f"demo-{n + 1}" for n in range(sessions)]
    messages = 0
    # The built-in agent yields the task as a message, then one reply per turn.
    expected = sessions * agents * (turns + 1)
    async with ActorSystem(config) as system:

        with progress(expected, "agents chatting") as advance:

            async def one(session_id: str, agent_name: str) -> None:
                nonlocal messages
                produced = await _run_team(system, session_id, agent_name, turns, advance)
                messages += produced

            async with anyio.create_task_group() as tg:
                for session_id in session_ids:
                    for n in range(agents):
                        tg.start_soon(one, session_id, _ROLES[n % len(_ROLES)])
        manager = system.manager(session_ids[0])
        status, summaries = await manager.list_available_session_states(limit=5)
        print(f"\nhistory of {session_ids[0]} ({status.value}), newest first:")
        for summary in summaries:
            print(f"  {summary['id']}  {summary['created_at']}  {summary['tags'][-1]}")
        status, content = await manager.restore_latest_session_state()
        if status is SessionStateStatus.SUCCESS and content is not None:
            history = content["state"].get("history", [])
            print(f"\nrestored the latest state of {session_ids[0]}: agent {content['agent_name']!r}, "
                  f"{len(history)} messages, last: {history[-1]['content'] if history else ''!r}")
        else:
            print(f"\nrestore failed: {status.value}")
    elapsed = time.perf_counter() - started  # the final flush included
    stats = system.statistics()  # after the final flush: what it could not write counts as failed
    per_write = f"  ({stats.submitted / stats.store_writes:.0f} states per write)" if stats.documents else ""
    print(f"\nmessages produced:     {messages}\nstates submitted:      {stats.submitted}\n"
          f"coalesced (replaced):  {stats.coalesced}\ndocuments stored:      {stats.documents}\n"
          f"store writes:          {stats.store_writes}{per_write}\n"
          f"failed:                {stats.failed}\nwall time:             {elapsed:.2f} s")
    if stats.failed:
        sys.stderr.write(f"error: {stats.failed} states were not stored in {config.api_url} (the log says why)\n")
    if status is not SessionStateStatus.SUCCESS:
        sys.stderr.write(f"error: {status.value}: could not restore the latest state of {session_ids[0]}\n")
    return 0 if stats.failed == 0 and status is SessionStateStatus.SUCCESS else 1
