"""The original module's document format, and JSON encoding with orjson.

A state is encoded exactly once: the bytes give ``metadata.state_size`` and are spliced into the
document with :class:`orjson.Fragment`, so the whole document is never encoded twice. The document
body travels as bytes from here to the store (HTTP body, sqlite column) untouched.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from ._exceptions import StateEncodeError

__all__ = [
    "STATE_TAG",
    "EncodedDocument",
    "StateUpload",
    "decode",
    "encode",
    "encode_document",
    "encode_state",
    "new_document_id",
    "normalize_timestamp",
    "utc_now_iso",
]

#: The tag every state document carries; with ``session_id`` it defines "this session's states".
STATE_TAG: Final = "session_state"
AGENT_TAG: Final = "agent_state"
DOCUMENT_TYPE: Final = "user_data"

_OPTIONS: Final = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: object) -> object:
    """Encode what orjson does not know natively but agents' states often hold."""
    if isinstance(value, set | frozenset):
        return list(value)
    model_dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(model_dump):
        return model_dump(mode="json")
    raise TypeError(f"Type is not JSON serializable: {type(value).__qualname__}")


def encode(value: object) -> bytes:
    """Encode any JSON value with orjson (and the library's extra types).

    Raises:
        StateEncodeError: the value holds something that cannot be encoded; the message names its type.
    """
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise StateEncodeError(f"state is not JSON-serializable: {exc}") from None


def decode(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON with orjson; raises ``orjson.JSONDecodeError`` (a ``ValueError``) when malformed."""
    return orjson.loads(data)


def encode_state(state: object) -> bytes:
    """Encode an agent state; alias of :func:`encode` kept for the reader of the upload path."""
    return encode(state)


def new_document_id() -> str:
    """A client-assigned document id (a random UUID), sent with the document so writes are idempotent."""
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    """The current UTC time as ISO-8601 with microseconds and offset (sorts as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def normalize_timestamp(value: str | datetime) -> str:
    """Turn a datetime or ISO-8601 text into the UTC form stores compare as text.

    A naive value is taken as UTC. Raises ``ValueError`` for text that is not ISO-8601.
    """
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@dataclass(slots=True)
class StateUpload:
    """One upload as callers gave it, before encoding; ``doc_id`` is assigned at creation."""

    session_id: str
    state: object
    task: str = ""
    agent_name: str = "agent"
    agent_description: str = ""
    agent_color: str = ""
    tools_count: int = 0
    description: str | None = None
    doc_id: str = field(default_factory=new_document_id)
    created: str = field(default_factory=utc_now_iso)
    #: The encoded document, once made (the outbox and the store write share one encoding).
    encoded: EncodedDocument | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class EncodedDocument:
    """A document ready for a store: its id, the fields stores index, and the JSON body as bytes."""

    id: str
    session_id: str
    name: str
    tags: tuple[str, ...]
    body: bytes
    document_type: str = DOCUMENT_TYPE


def encode_document(upload: StateUpload) -> EncodedDocument:
    """Build the original module's document for ``upload`` and encode it.

    Raises:
        StateEncodeError: the state cannot be encoded; nothing else is affected.
    """
    if upload.encoded is not None:
        return upload.encoded
    state_bytes = encode_state(upload.state)
    timestamp = upload.created
    # The original named documents with a compact local timestamp; we keep the shape, in UTC.
    stamp = timestamp[:26].replace("-", "").replace(":", "").replace("T", "_").replace(".", "_")
    name = f"session_state_{upload.session_id}_{stamp}"
    tags = (STATE_TAG, AGENT_TAG, upload.agent_name)
    doc: Mapping[str, object] = {
        "id": upload.doc_id,
        "name": name,
        "description": upload.description
        or f"Session state of agent {upload.agent_name} in session {upload.session_id}",
        "document_type": DOCUMENT_TYPE,
        "content": {
            "agent_name": upload.agent_name,
            "task": upload.task,
            "state": orjson.Fragment(state_bytes),
            "timestamp": timestamp,
            "tools_count": upload.tools_count,
            "session_metadata": {
                "agent_description": upload.agent_description,
                "agent_color": upload.agent_color,
            },
        },
        "session_id": upload.session_id,
        "tags": list(tags),
        "metadata": {
            "upload_timestamp": utc_now_iso(),
            "task_length": len(upload.task),
            "state_size": len(state_bytes),
        },
        "is_public": False,
    }
    body = orjson.dumps(doc)
    upload.encoded = EncodedDocument(id=upload.doc_id, session_id=upload.session_id, name=name, tags=tags, body=body)
    return upload.encoded
