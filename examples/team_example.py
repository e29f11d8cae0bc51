"""A Team that persists its agent's state to a local sqlite file, offline (no LLM, no server).

Run it with ``python examples/team_example.py``. It runs two tasks with a scripted model client,
prints the messages, lists the stored history, and restores the latest state into a fresh agent.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import anyio
import structlog

from wr124_session_actor import Config, Team
from wr124_session_actor.agents import BuiltinAgent, ScriptedModelClient

REPLIES = [
    "Paris is the capital of France.",
    "It has about two million inhabitants.",
    "The Eiffel Tower was finished in 1889.",
    "Lyon is known for its cuisine.",
]


def configure_logging() -> None:
    """Console output for the example; the library itself never configures structlog."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),  # DEBUG shows every write
    )


async def main(directory: Path) -> None:
    config = Config(api_url=f"sqlite:///{directory / 'team_example.db'}")  # uploads are enabled
    client = ScriptedModelClient(REPLIES, delay=0.01)
    agent = BuiltinAgent("assistant", client, description="answers questions about France", turns=2)

    async with Team(session_id="example-session", agent=agent, config=config) as team:
        for task in ("Tell me about Paris.", "And about Lyon?"):
            print(f"\n== task: {task}")
            async for message in team.execute_task(task):
                print(f"  [{message.source}] {message.content}")

        status, docs = await team.download_session_history(limit=10)
        print(f"\n== history ({status}): {len(docs)} stored states, newest first")
        for doc in docs:
            content = doc["content"]
            print(f"  {doc['_id']}  {doc['created_at']}  task={content['task']!r}"
                  f"  messages={len(content['state']['history'])}")

    # A new process would do this: a fresh agent, the same session, the latest state loaded.
    fresh = BuiltinAgent("assistant", ScriptedModelClient(["(unused)"]))
    async with Team(session_id="example-session", agent=fresh, config=config) as restored:
        status, content = await restored.restore_latest()
        print(f"\n== restore_latest ({status}): task={content['task'] if content else None!r}")
        for message in fresh.history:
            print(f"  [{message.source}] {message.content}")

        if docs:
            status, content = await restored.restore(docs[-1]["_id"])
            print(f"\n== restore oldest ({status}): {len(fresh.history)} messages after the first task")


if __name__ == "__main__":
    configure_logging()
    with tempfile.TemporaryDirectory() as tmp:
        anyio.run(main, Path(tmp))
