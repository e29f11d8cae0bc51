"""Agents and model clients for a :class:`~wr124_session_actor.Team`, duck-typed like AutoGen's.

A team needs only what the two protocols below describe, so an AutoGen ``AssistantAgent`` (with any
AutoGen model client) drops in. The built-in pieces make examples and tests run with no LLM:
:class:`ScriptedModelClient` answers from a script, and :class:`BuiltinAgent` is a minimal chat agent
over any model client.

The built-in agent talks to its model client with message objects that have ``.content`` and
``.source``: ``autogen_core.models.SystemMessage`` / ``UserMessage`` / ``AssistantMessage`` when
autogen-core is importable, so that any AutoGen model client works, and the same-shaped dataclasses of
this module otherwise. autogen-core is imported lazily, when a built-in agent is made, never when this
module is imported.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import anyio
import anyio.lowlevel

__all__ = [
    "AssistantMessage",
    "BuiltinAgent",
    "ChatAgent",
    "ChatCompletionClient",
    "ModelResult",
    "ScriptedModelClient",
    "ScriptedResult",
    "SystemMessage",
    "UserMessage",
]

#: The ``type`` of a :meth:`BuiltinAgent.save_state` snapshot, and its format version.
BUILTIN_STATE_TYPE: Final = "BuiltinAgentState"
BUILTIN_STATE_VERSION: Final = 1
DEFAULT_SYSTEM_MESSAGE: Final = "You are a helpful AI assistant."


# -- protocols ------------------------------------------------------------------------------------


@runtime_checkable
class ChatAgent(Protocol):
    """What a team needs of an agent; AutoGen's chat agents have this shape."""

    @property
    def name(self) -> str:
        """The agent's name (it tags the agent's state documents)."""
        ...

    @property
    def description(self) -> str:
        """What the agent does (stored with its states)."""
        ...

    def run_stream(self, *, task: str) -> AsyncIterator[Any]:
        """Run ``task`` and yield the messages (and events) it produces, in order."""
        ...

    async def save_state(self) -> Mapping[str, Any]:
        """A JSON-able snapshot of the agent's state."""
        ...

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot made by :meth:`save_state`."""
        ...


class ModelResult(Protocol):
    """What a model client's ``create`` returns (AutoGen's ``CreateResult`` has this shape)."""

    @property
    def content(self) -> Any:
        """The model's reply; a ``str`` for plain text."""
        ...


@runtime_checkable
class ChatCompletionClient(Protocol):
    """What the built-in agent needs of a model client; AutoGen's model clients have this shape."""

    async def create(self, messages: Sequence[Any]) -> ModelResult:
        """Answer a conversation: messages with ``.content`` (and ``.source``), oldest first."""
        ...


# -- messages used when autogen-core is not importable --------------------------------------------


@dataclass(frozen=True, slots=True)
class SystemMessage:
    """Instructions for the model (used only when autogen-core is not importable)."""

    content: str
    source: str = "system"


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A message from the user (used only when autogen-core is not importable)."""

    content: str
    source: str = "user"


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """A reply of the model (used only when autogen-core is not importable)."""

    content: str
    source: str = "assistant"


@dataclass(frozen=True, slots=True)
class _MessageKinds:
    """The three message classes a built-in agent builds, and where they come from."""

    system: Callable[[str], Any]
    user: Callable[[str, str], Any]
    assistant: Callable[[str, str], Any]
    origin: str


def _message_kinds() -> _MessageKinds:
    """autogen-core's message classes when importable (any AutoGen model client then works), else ours."""
    try:
        from autogen_core.models import AssistantMessage as AgAssistant
        from autogen_core.models import SystemMessage as AgSystem
        from autogen_core.models import UserMessage as AgUser
    except ImportError:
        return _MessageKinds(
            system=lambda content: SystemMessage(content),
            user=lambda content, source: UserMessage(content, source),
            assistant=lambda content, source: AssistantMessage(content, source),
            origin=__name__,
        )
    # autogen-core's SystemMessage has no ``source`` field; its User/AssistantMessage require one.
    return _MessageKinds(
        system=lambda content: AgSystem(content=content),
        user=lambda content, source: AgUser(content=content, source=source),
        assistant=lambda content, source: AgAssistant(content=content, source=source),
        origin="autogen_core.models",
    )


# -- the scripted model client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScriptedResult:
    """A :class:`ScriptedModelClient` reply."""

    content: str


class ScriptedModelClient:
    """An offline model client that answers from a script, for examples and tests.

    Each :meth:`create` returns the next reply of the script. Past its end the script starts again
    from the first reply (``cycle=True``, the default, so a chatty demo never runs dry), or
    :meth:`create` raises ``RuntimeError`` (``cycle=False``, for tests that count calls).

    Args:
        replies: the replies, in order; at least one.
        delay: seconds each call takes (slept with anyio), to imitate a model's latency.
        cycle: start the script again when it runs out, instead of raising.

    Raises:
        ValueError: ``replies`` is empty or ``delay`` is negative.
    """

    def __init__(self, replies: Sequence[str], *, delay: float = 0.0, cycle: bool = True) -> None:
        if isinstance(replies, str) or not replies:
            raise ValueError("replies must be a non-empty sequence of strings")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.replies: tuple[str, ...] = tuple(replies)
        self.delay = delay
        self.cycle = cycle
        #: The messages of every call so far, oldest call first.
        self.calls: list[list[Any]] = []
        self._script: Iterator[str] = itertools.cycle(self.replies) if cycle else iter(self.replies)

    @property
    def call_count(self) -> int:
        """How many times :meth:`create` was called."""
        return len(self.calls)

    async def create(self, messages: Sequence[Any], **kwargs: Any) -> ScriptedResult:
        """Record the call, wait ``delay`` seconds, and return the next scripted reply.

        Args:
            messages: the conversation (recorded in :attr:`calls`).
            **kwargs: accepted and ignored, as AutoGen's clients take ``tools``, ``cancellation_token``...

        Raises:
            RuntimeError: the script is exhausted and ``cycle`` is false.
        """
        self.calls.append(list(messages))
        await anyio.sleep(self.delay)
        reply = next(self._script, None)
        if reply is None:
            raise RuntimeError(f"ScriptedModelClient: all {len(self.replies)} scripted replies are used "
                               "(pass cycle=True to start again)")
        return ScriptedResult(reply)


# -- the built-in agent ---------------------------------------------------------------------------


class BuiltinAgent:
    """A minimal chat agent over a model client: it keeps the conversation and asks the model for replies.

    :meth:`run_stream` yields the task as a user message, then, ``turns`` times, asks the model client
    (``await model_client.create(messages)``, the system message first) and yields its reply as an
    assistant message. The conversation carries over from task to task and is the agent's state.

    Args:
        name: the agent's name; replies carry it as their ``source``.
        model_client: any object with ``async create(messages)`` returning something with ``.content``
            (:class:`ScriptedModelClient`, or an AutoGen model client).
        description: what the agent does (stored with its states).
        system_message: the instructions sent first on every call; ``None`` or ``""`` sends none.
        turns: model replies per task.

    Raises:
        ValueError: ``name`` is empty or ``turns`` is below 1.
    """

    def __init__(
        self,
        name: str,
        model_client: ChatCompletionClient,
        *,
        description: str = "",
        system_message: str | None = DEFAULT_SYSTEM_MESSAGE,
        turns: int = 1,
    ) -> None:
        if not name:
            raise ValueError("name must be a non-empty string")
        if turns < 1:
            raise ValueError("turns must be >= 1")
        self.name = name
        self.description = description
        self.model_client = model_client
        self.system_message = system_message
        self.turns = turns
        self._kinds = _message_kinds()
        self._history: list[Any] = []
        self._tasks = 0
        self._model_calls = 0

    @property
    def history(self) -> list[Any]:
        """A copy of the conversation so far (user and assistant messages, oldest first)."""
        return list(self._history)

    @property
    def message_origin(self) -> str:
        """The module whose message classes this agent uses (``autogen_core.models`` or this one)."""
        return self._kinds.origin

    async def run_stream(self, task: str) -> AsyncIterator[Any]:
        """Run ``task``: yield the user's message, then one assistant message per turn.

        Args:
            task: the user's request.

        Yields:
            Messages with ``.content`` and ``.source``.
        """
        kinds = self._kinds
        message = kinds.user(task, "user")
        self._history.append(message)
        self._tasks += 1
        yield message
        for _ in range(self.turns):
            prompt = list(self._history)
            if self.system_message:
                prompt.insert(0, kinds.system(self.system_message))
            result = await self.model_client.create(prompt)
            self._model_calls += 1
            content = result.content if isinstance(result.content, str) else str(result.content)
            message = kinds.assistant(content, self.name)
            self._history.append(message)
            yield message

    async def save_state(self) -> dict[str, Any]:
        """A JSON-able snapshot: the conversation as dicts and the task and model-call counts."""
        await anyio.lowlevel.checkpoint()
        return {
            "type": BUILTIN_STATE_TYPE,
            "version": BUILTIN_STATE_VERSION,
            "history": [
                {"type": type(m).__name__, "content": m.content, "source": m.source} for m in self._history
            ],
            "tasks": self._tasks,
            "model_calls": self._model_calls,
        }

    async def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a snapshot made by :meth:`save_state` (the conversation and the counts).

        Raises:
            ValueError: ``state`` is not a built-in agent's snapshot.
        """
        await anyio.lowlevel.checkpoint()
        if state.get("type") != BUILTIN_STATE_TYPE:
            raise ValueError(f"not a {BUILTIN_STATE_TYPE} snapshot (type {state.get('type')!r})")
        kinds = self._kinds
        history: list[Any] = []
        for item in state.get("history", []):
            kind = item.get("type")
            if kind == "UserMessage":
                history.append(kinds.user(str(item["content"]), str(item.get("source", "user"))))
            elif kind == "AssistantMessage":
                history.append(kinds.assistant(str(item["content"]), str(item.get("source", self.name))))
            else:
                raise ValueError(f"unknown message type in {BUILTIN_STATE_TYPE}: {kind!r}")
        self._history = history
        self._tasks = int(state.get("tasks", 0))
        self._model_calls = int(state.get("model_calls", 0))
