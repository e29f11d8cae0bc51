"""The original WR124 usage, unchanged, in direct mode and in actor mode. Runs offline on a sqlite file.

    python examples/session_state_usage_example.py [path/to/states.db] [--trio]
"""

from __future__ import annotations

import os
import sys
import tempfile

import anyio
import structlog

from wr124_session_actor import Config, SessionStateManager, SessionStateStatus


async def direct_mode(config: Config) -> None:
    """Each call goes straight to the store, as in the original module."""
    manager = SessionStateManager("session_123", config)
    status, doc_id = await manager.upload_session_state(
        state={"key": "value"}, task="任务描述", agent_name="agent_name"
    )
    print("upload:  ", status.value, doc_id)
    status, states = await manager.download_session_states(limit=10)
    print("download:", status.value, [s["_id"] for s in states])
    status, data = await manager.restore_session_state(doc_id)
    print("restore: ", status.value, data and data["state"])
    status, msg = await manager.delete_session_state(doc_id)
    print("delete:  ", status.value, msg)
    await manager.aclose()


async def actor_mode(config: Config) -> None:
    """Calls go through the session's mailbox; submit is fire-and-forget and coalesces."""
    async with SessionStateManager("session_456", config) as manager:
        for step in range(100):
            assert manager.submit_session_state(state={"step": step}, task="count", agent_name="counter") in (
                SessionStateStatus.SUCCESS,
            )
        status, latest = await manager.restore_latest_session_state()  # read-your-writes: flushes first
        print("actor mode, latest after 100 submits:", status.value, latest and latest["state"])
        status, summaries = await manager.list_available_session_states()
        print("documents stored for 100 submits:", len(summaries))


def main() -> None:
    """Run both modes against a local sqlite file."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    paths = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = paths[0] if paths else os.path.join(tempfile.mkdtemp(), "states.db")
    config = Config(api_url=f"sqlite:///{os.path.abspath(path)}")
    anyio.run(direct_mode, config)
    anyio.run(actor_mode, config, backend="trio" if "--trio" in sys.argv else "asyncio")


if __name__ == "__main__":
    main()
