"""BASELINE ONLY: a re-implementation of the original WR124 client's upload path, contender (a).

Not part of the library. It does what the original ``SessionStateManager.upload_session_state``
did, so that the benchmarks compare against it faithfully:

- a new ``aiohttp.ClientSession`` (so a new connection pool, a new TCP connection) for every call;
- the state encoded with the stdlib ``json`` to compute ``state_size``, then the whole document
  encoded again by aiohttp's ``json=`` argument (stdlib ``json`` too), on the event loop;
- one awaited ``POST /{project}/json-documents`` per snapshot, no batching, no coalescing;
- the status strings of the original (``success`` / ``failed`` / ``timeout``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp

__all__ = ["OriginalSessionStateManager"]


class OriginalSessionStateManager:
    """The original client's upload path (baseline (a)); see the module docstring."""

    def __init__(self, session_id: str, api_url: str, project_id: str = "default", timeout: float = 10.0) -> None:
        self.session_id = session_id
        self.api_url = api_url.rstrip("/")
        self.project_id = project_id
        self.timeout = timeout

    async def upload_session_state(
        self, state: Any, task: str = "", agent_name: str = "agent", agent_description: str = "",
        agent_color: str = "", tools_count: int = 0,
    ) -> tuple[str, str | None]:
        """POST one state document; return ``(status, document id or error)``."""
        now = datetime.now()
        document = {
            "name": f"session_state_{self.session_id}_{now.strftime('%Y%m%d_%H%M%S')}",
            "description": f"Session state of agent {agent_name}",
            "document_type": "user_data",
            "content": {
                "agent_name": agent_name,
                "task": task,
                "state": state,
                "timestamp": now.isoformat(),
                "tools_count": tools_count,
                "session_metadata": {"agent_description": agent_description, "agent_color": agent_color},
            },
            "session_id": self.session_id,
            "tags": ["session_state", "agent_state", agent_name],
            "metadata": {
                "upload_timestamp": now.isoformat(),
                "task_length": len(task),
                "state_size": len(json.dumps(state, ensure_ascii=False, default=str)),
            },
            "is_public": False,
        }
        url = f"{self.api_url}/{self.project_id}/json-documents"
        headers = {"Content-Type": "application/json", "X-Project-ID": self.project_id}
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.post(url, json=document, headers=headers) as response,
            ):
                if response.status in (200, 201):
                    result = await response.json()
                    return "success", result.get("id") or result.get("_id")
                return "failed", f"HTTP {response.status}: {await response.text()}"
        except TimeoutError:
            return "timeout", f"timed out after {self.timeout}s"
        except Exception as exc:  # the original caught everything and returned a status
            return "failed", str(exc)
