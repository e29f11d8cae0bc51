"""The original document format and JSON encoding."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid

import orjson
import pytest

from wr124_session_actor import StateEncodeError
from wr124_session_actor._document import (
    StateUpload,
    decode_exact,
    encode_document,
    encode_if_small,
    encode_state_pieces,
    normalize_timestamp,
)


class Color(enum.Enum):
    RED = "red"


class Model:
    """A pydantic-v2-like model: ``model_dump(mode="json")``."""

    def __init__(self, **fields: object) -> None:
        self.fields = fields

    def model_dump(self, mode: str) -> dict[str, object]:
        return dict(self.fields)


@dataclasses.dataclass
class Point:
    x: int
    y: int


class TestDocumentFormat:
    def test_every_field_of_the_original(self) -> None:
        """The document has exactly the original's fields, tags and metadata."""
        upload = StateUpload("s1", {"k": "v", "n": [1, 2]}, "do it", "writer", agent_description="writes",
                             agent_color="blue", tools_count=5)
        doc = orjson.loads(encode_document(upload).body)
        assert set(doc) == {"id", "name", "description", "document_type", "content", "session_id", "tags",
                            "metadata", "is_public"}
        assert doc["id"] == upload.doc_id
        assert doc["name"].startswith("session_state_s1_")
        assert doc["document_type"] == "user_data"
        assert doc["session_id"] == "s1"
        assert doc["tags"] == ["session_state", "agent_state", "writer"]
        assert doc["is_public"] is False
        assert doc["content"] == {
            "agent_name": "writer",
            "task": "do it",
            "state": {"k": "v", "n": [1, 2]},
            "timestamp": upload.created,
            "tools_count": 5,
            "session_metadata": {"agent_description": "writes", "agent_color": "blue"},
        }
        assert set(doc["metadata"]) == {"upload_timestamp", "task_length", "state_size"}
        assert doc["metadata"]["task_length"] == len("do it")
        datetime.datetime.fromisoformat(doc["metadata"]["upload_timestamp"])

    @pytest.mark.parametrize("details", [
        {},
        {"description": 'says "hi"', "agent_description": "ä\n", "agent_color": "red", "tools_count": 3},
        {"parent_seq": 7},
        {"tools_count": [1, 2]},  # unhashable: no cached template, same bytes
        {"description": "100% %s %b %%", "agent_color": "%d"},  # the template is a bytes format
    ])
    @pytest.mark.parametrize("session_id", ["s1", 'sé"s\\x\u2028', "s%d%%b"])
    def test_bytes_are_those_of_the_whole_document(self, session_id: str, details: dict[str, object]) -> None:
        """The cached fixed parts give the same bytes as encoding the whole document at once, twice over."""
        for _ in range(2):
            upload = StateUpload(session_id, {"a": [1, {"b": "ü"}]}, 't"ask', 'ag"ent', **details)  # type: ignore[arg-type]
            body = bytes(encode_document(upload).body)
            doc = orjson.loads(body)
            assert orjson.dumps(doc) == body
            assert doc["session_id"] == session_id
            stamp = upload.created[:26].replace("-", "").replace(":", "").replace("T", "_").replace(".", "_")
            assert doc["name"] == f"session_state_{session_id}_{stamp}"
            assert doc["content"]["timestamp"] == doc["metadata"]["upload_timestamp"] == upload.created
            assert doc["content"]["agent_name"] == 'ag"ent'
            assert doc["content"]["tools_count"] == details.get("tools_count", 0)
            assert doc.get("parent_seq") == details.get("parent_seq")
            assert doc["description"] == details.get("description",
                                                     f"Session state of agent ag\"ent in session {session_id}")

    def test_state_size_is_bytes_of_the_encoded_state(self) -> None:
        """``state_size`` counts UTF-8 bytes of the JSON-encoded state, not characters."""
        state = {"text": "héllo ✓"}
        doc = orjson.loads(encode_document(StateUpload("s", state)).body)
        assert doc["metadata"]["state_size"] == len(orjson.dumps(state))
        assert doc["metadata"]["state_size"] > len('{"text":"héllo ✓"}')

    def test_encodes_what_agents_states_hold(self) -> None:
        """datetime, UUID, enum, dataclass, set and non-string keys encode."""
        when = datetime.datetime(2025, 8, 26, 10, 30, tzinfo=datetime.UTC)
        ident = uuid.UUID(int=1)
        state = {"when": when, "id": ident, "color": Color.RED, "point": Point(1, 2), "tags": {"a"}, 3: "three"}
        content = orjson.loads(encode_document(StateUpload("s", state)).body)["content"]["state"]
        assert content == {"when": "2025-08-26T10:30:00+00:00", "id": str(ident), "color": "red",
                           "point": {"x": 1, "y": 2}, "tags": ["a"], "3": "three"}

    def test_unencodable_state_names_the_type(self) -> None:
        """A state holding an object orjson cannot encode raises StateEncodeError naming the type."""

        class Opaque:
            pass

        with pytest.raises(StateEncodeError, match="Opaque"):
            encode_document(StateUpload("s", {"x": Opaque()}))

    @pytest.mark.parametrize(("tools_count", "stored"), [
        ({"a"}, ["a"]), (frozenset([3]), [3]), ({1: "x"}, {"1": "x"}), (Model(n=2), {"n": 2}), (True, True),
        (Color.RED, "red"), (2.5, 2.5),
    ])
    def test_tools_count_is_stored_as_the_state_encoder_takes_it(self, tools_count: object, stored: object) -> None:
        """A tools_count the argument check accepts (any value the state encoder takes) is encoded, by the first
        document of its kind and by its template alike (a set raised TypeError at the write: it crashed the
        session's actor and the system's exit)."""
        for _ in range(3):
            upload = StateUpload("s", {"n": 1}, "t", "a", tools_count=tools_count)  # type: ignore[arg-type]
            assert orjson.loads(encode_document(upload).body)["content"]["tools_count"] == stored

    def test_ids_are_unique_uuids(self) -> None:
        """Every upload gets its own client-made UUID4 in canonical text, across many refills of the
        random pool (128 ids a refill); it is made when first read, and is the same at every read."""
        ids = {StateUpload("s", {}).doc_id for _ in range(1000)}
        assert len(ids) == 1000
        read_first, read_later = StateUpload("s", {}), StateUpload("s", {})  # made when first read
        first_id = read_first.doc_id
        assert orjson.loads(encode_document(read_first).body)["id"] == first_id == read_first.doc_id
        later = orjson.loads(encode_document(read_later).body)["id"]
        assert later == read_later.doc_id == encode_document(read_later).id != first_id
        for doc_id in ids:
            parsed = uuid.UUID(doc_id)
            assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, doc_id)

    def test_created_is_the_time_of_the_upload_as_utc_text(self) -> None:
        """``created`` is the moment the upload was made, written as ``datetime.isoformat`` writes it."""
        before = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        upload = StateUpload("s", {})
        after = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
        assert before <= upload.created <= after
        assert datetime.datetime.fromisoformat(upload.created).isoformat(timespec="microseconds") == upload.created


class TestDecodeExact:
    @pytest.mark.parametrize("text", [b'[123456789012345678901234567890, -9223372036854775809]',
                                      b'[-9223372036854775809]', b'[18446744073709551616]', b'[18446744073709551615]',
                                      b'{"padded": "value-00000000000000000001", "n": -9223372036854775808}',
                                      b'{"a": 18446744073709551616}', b'[1e30, -1.5e-7, "x"]',
                                      b'{"a": "%s", "b": 1764000000000000000}' % (b"0" * 100_000)])
    def test_reads_every_integer_as_sent(self, text: bytes) -> None:
        """Integers past 64 bits are read exactly (orjson reads them as rounded floats); anything else, long digit
        runs in strings too, reads as orjson reads it."""
        assert decode_exact(text) == json.loads(text)
        assert repr(decode_exact(text)) == repr(json.loads(text))

    @pytest.mark.parametrize("text", [b'[NaN, 123456789012345678901234567890]', b'[-Infinity]', b'[1, 2',
                                      b'[1e400, 123456789012345678901234567890]'])
    def test_what_is_not_json_is_a_value_error(self, text: bytes) -> None:
        """What is not JSON (NaN or infinities, which the stdlib parser would take; a float past its range) is a
        ValueError, whichever parser read it."""
        with pytest.raises(ValueError, match=r"JSON|infinity|digit|unexpected"):
            decode_exact(text)


class TestTimestamps:
    def test_naive_is_utc_and_offsets_convert(self) -> None:
        """Naive values are UTC; aware ones convert to UTC; text and datetimes agree."""
        assert normalize_timestamp("2025-01-01T00:00:00") == "2025-01-01T00:00:00.000000+00:00"
        assert normalize_timestamp("2025-01-01T02:00:00+02:00") == "2025-01-01T00:00:00.000000+00:00"
        assert normalize_timestamp(datetime.datetime(2025, 1, 1)) == "2025-01-01T00:00:00.000000+00:00"

    def test_garbage_raises_value_error(self) -> None:
        """Text that is not ISO-8601 is a ValueError."""
        with pytest.raises(ValueError, match="Invalid isoformat"):
            normalize_timestamp("yesterday")


class TestPieces:
    @pytest.mark.parametrize(
        "state",
        [
            {"messages": [{"role": "user", "content": "x" * 50, "i": i} for i in range(5000)]},
            {f"k{i}": [i, {"v": i}] for i in range(2000)},
            {1: "int key", "nested": {"deep": {"list": list(range(3000))}}, "s": {"a"}},
            [[i, str(i)] for i in range(1000)],
            {"small": 1},
            "just a string",
        ],
    )
    def test_pieces_join_to_the_same_json(self, state: object) -> None:
        """Encoding in pieces gives exactly the bytes of one encode."""
        from wr124_session_actor._document import encode, encode_state_pieces

        pieces = list(encode_state_pieces(state))
        assert b"".join(pieces) == encode(state)

    @pytest.mark.anyio
    async def test_large_state_document_matches_the_sync_encoding(self) -> None:
        """The async, piecewise document has the same content as the one-call document."""
        from wr124_session_actor._document import encode_documents

        state = {"messages": [{"content": "y" * 100, "i": i} for i in range(20_000)]}
        (async_doc,) = await encode_documents([StateUpload("s", state, "t", "a")])
        assert not isinstance(async_doc, str)
        doc = orjson.loads(async_doc.body)
        assert doc["content"]["state"] == state
        assert doc["metadata"]["state_size"] == len(orjson.dumps(state))

    @pytest.mark.anyio
    async def test_unencodable_among_others(self) -> None:
        """A bad state becomes its message; the others encode."""
        from wr124_session_actor._document import encode_documents

        good, bad = StateUpload("s", {"a": 1}), StateUpload("s", {"a": object()})
        results = await encode_documents([good, bad])
        assert not isinstance(results[0], str)
        assert isinstance(results[1], str) and "object" in results[1]


def test_encode_if_small_encodes_small_states_only() -> None:
    """A small state is encoded at once and let go; a large one (left for the write, in pieces) and one
    that cannot be encoded (left to fail there) are kept as they are."""
    small = StateUpload("s", {"n": [1, 2]}, "t", "a")
    encode_if_small(small)
    assert small.state is None and small.encoded is not None
    assert orjson.loads(small.encoded.body)["content"]["state"] == {"n": [1, 2]}
    large_state = {"items": list(range(5000))}
    bad_state = {"x": object()}
    for state in (large_state, bad_state):
        upload = StateUpload("s", state, "t", "a")
        encode_if_small(upload)
        assert upload.state is state and upload.encoded is None


def test_non_finite_floats_are_stored_as_null() -> None:
    """NaN and ±Infinity, which JSON cannot hold, are encoded as null (the README says so), in one piece and in
    pieces alike."""
    state = {"nan": float("nan"), "inf": [float("inf"), -float("inf")], "ok": 1.5}
    doc = orjson.loads(encode_document(StateUpload("s", state)).body)
    assert doc["content"]["state"] == {"nan": None, "inf": [None, None], "ok": 1.5}
    assert orjson.loads(b"".join(encode_state_pieces([float("nan")] * 5000))) == [None] * 5000
