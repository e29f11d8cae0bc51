"""The original module's document format, and JSON encoding with orjson.

A state is encoded exactly once: the bytes give ``metadata.state_size`` and are spliced into the
document with :class:`orjson.Fragment`, so the whole document is never encoded twice. The document
body travels as bytes from here to the store (HTTP body, sqlite column) untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypedDict

import anyio.lowlevel
import orjson

from ._exceptions import StateEncodeError

__all__ = [
    "MAX_NAME_CHARS",
    "STATE_TAG",
    "EncodedDocument",
    "StateUpload",
    "UploadDetails",
    "check_agent_name",
    "check_session_id",
    "check_upload",
    "created_of_name",
    "decode",
    "decode_exact",
    "encode",
    "encode_document",
    "encode_documents",
    "encode_if_small",
    "encode_state",
    "encode_state_pieces",
    "holds_at_most",
    "new_document_id",
    "normalize_timestamp",
    "utc_now_iso",
]

#: The tag every state document carries; with ``session_id`` it defines "this session's states".
STATE_TAG: Final = "session_state"
AGENT_TAG: Final = "agent_state"
_MARK: Final = orjson.Fragment(b"\0")
DOCUMENT_TYPE: Final = "user_data"

#: orjson's options for states: numpy arrays as lists; keys that are not strings (ints, say) as text. orjson
#: takes twice as long with ``OPT_NON_STR_KEYS``, so :func:`encode` asks for it only when a key needs it.
_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY
_OPTIONS_ANY_KEYS: Final = _OPTIONS | orjson.OPT_NON_STR_KEYS


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
        StateEncodeError: the value holds something that cannot be encoded (the message names its type), or
            two keys of one object that are the same text in JSON (``1`` and ``"1"``).
    """
    return _encode(value, check_keys=True)


def _encode(value: object, *, check_keys: bool) -> bytes:
    """:func:`encode`; ``check_keys`` false: the caller checked the keys of ``value``'s objects already."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        pass  # a key that is not a string, or a value nothing encodes: the slower options tell which
    try:
        data = orjson.dumps(value, default=_default, option=_OPTIONS_ANY_KEYS)
    except orjson.JSONEncodeError as exc:
        raise StateEncodeError(f"state is not JSON-serializable: {exc}") from None
    if check_keys:
        _check_keys_differ(value)
    return data


#: What :func:`_check_keys_differ` need not look into (a tuple: ``isinstance`` is slower with a union).
_SCALARS: Final = (str, int, float, type(None))


def _check_keys_differ(value: object) -> None:
    """Raise ``StateEncodeError`` when two keys of one object of ``value`` are the same text in JSON (``1`` and
    ``"1"``): orjson writes both, and a reader keeps one (a value lost with SUCCESS). Only objects with keys
    that are not strings are looked at: the slower path of :func:`encode`, taken only for them."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(type(key) is str for key in item):
                _check_dict_keys(item)
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        elif dataclasses.is_dataclass(item):  # orjson writes a dataclass's fields itself
            children = [getattr(item, f.name) for f in dataclasses.fields(item)]
        else:
            continue
        stack.extend([child for child in children if not isinstance(child, _SCALARS)])


def _check_dict_keys(value: dict[Any, Any]) -> None:
    if len(orjson.loads(orjson.dumps(dict.fromkeys(value), option=_OPTIONS_ANY_KEYS))) == len(value):
        return  # no two keys the same text: the common case, in two C calls
    texts: dict[bytes, object] = {}
    for key in value:
        text = orjson.dumps({key: None}, option=_OPTIONS_ANY_KEYS)[1:-6]  # b'"1"' of b'{"1":null}'
        earlier = texts.setdefault(text, key)
        if earlier is not key:
            raise StateEncodeError(f"state is not JSON-serializable: keys {earlier!r} and {key!r} of one object are"
                                   f" both {text.decode()} in JSON")


def decode(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON with orjson; raises ``orjson.JSONDecodeError`` (a ``ValueError``) when malformed."""
    return orjson.loads(data)


#: Every digit as "0", for a quick look for the shortest runs that can be out of range: 20 digits (2**64 has
#: 20), or 19 after a minus (-2**63 - 1); 19 digits alone are always in range (nanosecond timestamps, say:
#: they took the slow path every time). A regular expression's scan of a 1 MB body took 23 ms, six times
#: orjson's parse of it; this, under 1 ms. (A minus is not mapped to "0": a UUID's groups then made 20.)
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_MAYBE_HUGE: Final = (b"0" * 20, b"-" + b"0" * 19)


def decode_exact(data: bytes) -> Any:
    """:func:`decode`, but an integer orjson cannot hold (outside -2**63 .. 2**64-1: it reads one as a float,
    rounded, or refuses it past a float's range) is read exactly, by the stdlib parser. A stored document
    gives back the numbers it was sent.

    Costs a translate and two substring searches of ``data`` (under 1 ms a MB); where a digit run that long is
    found (in a string too), a walk of the parsed value for a float that large; the stdlib parser runs only
    when there is one.

    Raises:
        ValueError: ``data`` is not JSON (``orjson.JSONDecodeError``), or holds a float past a float's range or
            an integer of over 4,300 digits (Python's own bound).
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Past a float's range orjson refuses a number ("number is infinity"), where it stops: the stdlib parser
        # reads the body on for an integer that large, and refuses a float (``_finite``). Any other fault stays
        # orjson's (a BOM or a lone surrogate, which the stdlib parser takes).
        if "infinity" not in str(exc):
            raise
    else:
        # orjson reads such an integer as a float: only a float that large can be one (or a float written so).
        if not _may_hold_huge_integer(data) or not _has_float_past_64_bits(value):
            return value
    return json.loads(data, parse_float=_finite, parse_constant=_no_constant)


def _may_hold_huge_integer(data: bytes) -> bool:
    """Whether ``data`` has a digit run that can be an integer past 64 bits (in a string too)."""
    digits = data.translate(_DIGITS_AS_ZERO)
    return _MAYBE_HUGE[0] in digits or _MAYBE_HUGE[1] in digits


def _has_float_past_64_bits(value: object) -> bool:
    """Whether ``value`` holds a float of magnitude 2**63 or more (one orjson made of an integer past 64 bits,
    or a float written so). Walked only when the text has a digit run that long: zero-padded numbers in
    strings had a regular expression go over every one of them (0.3 s for a 10 MB state)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float) and not -(2.0**63) < item < 2.0**63:  # -2**63 - 1 rounds to -2**63
            return True
    return False


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number is infinity when parsed as double: {text[:40]}")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def encode_state(state: object) -> bytes:
    """Encode an agent state in one orjson call (see :func:`encode_state_pieces` for large ones)."""
    return encode(state)


#: Container elements looked at to tell a small state (one orjson call) from a large one (pieces).
_SMALL_BUDGET: Final = 256
#: Items per piece when a large list or dict is encoded in pieces.
_PIECE_ITEMS: Final = 256
#: Bytes encoded between two yields to the event loop.
_YIELD_EVERY: Final = 256 * 1024


def _is_small(value: object, budget: int = _SMALL_BUDGET) -> int:
    """Return the budget left after looking at ``value``'s containers (<= 0: large)."""
    if type(value) is dict:
        budget -= len(value)
        children: Iterable[object] = value.values()
    elif type(value) is list:
        budget -= len(value)
        children = value
    else:
        return budget
    if budget <= 0:
        return budget
    for child in children:
        kind = type(child)
        if kind is dict or kind is list:
            budget = _is_small(child, budget)
            if budget <= 0:
                return budget
    return budget


def holds_at_most(value: object, elements: int) -> bool:
    """Whether ``value``'s lists and dicts hold at most ``elements`` items in all (looked at only until past it):
    what orjson's time on it grows with."""
    return _is_small(value, elements + 1) > 0


def encode_state_pieces(state: object, depth: int = 0) -> Iterator[bytes]:
    """Encode ``state`` as JSON in pieces of at most ~``_PIECE_ITEMS`` elements each.

    A C encoder holds the GIL (and the event loop) for its whole call: a 10 MB state is 6-30 ms in
    one ``orjson.dumps``. Large lists and dicts near the top are cut into slices encoded one by one,
    so the caller can yield to the loop between pieces. The pieces joined are the same JSON.
    """
    if depth < 6 and (type(state) is list or type(state) is dict) and _is_small(state) <= 0:
        if type(state) is list:
            if len(state) > _PIECE_ITEMS:
                yield b"["
                for start in range(0, len(state), _PIECE_ITEMS):
                    if start:
                        yield b","
                    yield encode(state[start : start + _PIECE_ITEMS])[1:-1]
                yield b"]"
                return
            yield b"["
            for index, item in enumerate(state):
                if index:
                    yield b","
                yield from encode_state_pieces(item, depth + 1)
            yield b"]"
            return
        assert type(state) is dict
        all_text = all(type(key) is str for key in state)
        if len(state) > _PIECE_ITEMS or not all_text:
            if not all_text:  # its pieces are encoded apart: two keys of one text may be in two of them
                _check_keys_differ(state)
            items = list(state.items())
            yield b"{"
            for start in range(0, len(items), _PIECE_ITEMS):
                if start:
                    yield b","
                yield _encode(dict(items[start : start + _PIECE_ITEMS]), check_keys=all_text)[1:-1]
            yield b"}"
            return
        yield b"{"
        for index, (key, value) in enumerate(state.items()):
            yield (b',"' if index else b'"') + encode(key)[1:-1] + b'":'
            yield from encode_state_pieces(value, depth + 1)
        yield b"}"
        return
    yield encode(state)


class _Pacer:
    """Counts the bytes encoded and yields to the event loop after every ~256 KB.

    With a ``turn`` shared by the encoders of many sessions, the first yield takes it and the pacer
    holds it until :meth:`release`: only one long encoding proceeds at a time. (N of them at once would
    each encode a slice in every turn of the event loop, which would then poll its sockets only every
    N slices.) An encoding that never yields never waits for the turn.
    """

    __slots__ = ("_holding", "_produced", "_turn")

    def __init__(self, turn: anyio.Lock | None) -> None:
        self._turn = turn
        self._holding = False
        self._produced = 0

    def count(self, size: int) -> bool:
        """Count ``size`` bytes encoded; return whether it is time to :meth:`pause`."""
        self._produced += size
        return self._produced >= _YIELD_EVERY

    async def pause(self) -> None:
        """Yield to the event loop (taking the turn, the first time: it waits while another holds it)."""
        self._produced = 0
        if self._turn is not None and not self._holding:
            await self._turn.acquire()  # a checkpoint when free
            self._holding = True
        else:
            await anyio.lowlevel.checkpoint()

    def release(self) -> None:
        """Give the turn back, if this pacer took it."""
        if self._turn is not None and self._holding:
            self._holding = False
            self._turn.release()


async def encode_documents(uploads: Iterable[StateUpload],
                           turn: anyio.Lock | None = None) -> list[EncodedDocument | str]:
    """Encode uploads on the event loop, yielding to it at least every ~256 KB encoded (small batches of
    small states need no yield: the store write that follows is the next checkpoint).

    ``turn``, shared by the encoders of many sessions, makes long encodings take turns (:class:`_Pacer`).
    A state that cannot be encoded becomes its error message; the others are unaffected.
    """
    out: list[EncodedDocument | str] = []
    pacer = _Pacer(turn)
    uploaded = utc_now_iso()  # one upload timestamp for the documents encoded together
    try:
        for upload in uploads:
            if upload.encoded is not None:
                out.append(upload.encoded)
                continue
            try:
                if _is_small(upload.state) > 0:  # the common case: one orjson call
                    document = encode_document(upload, uploaded=uploaded)
                    out.append(document)
                    if pacer.count(len(document.body)):
                        await pacer.pause()
                    continue
                pieces: list[bytes] = []
                digest = _state_digest()
                for piece in encode_state_pieces(upload.state):
                    pieces.append(piece)
                    digest.update(piece)
                    if pacer.count(len(piece)):
                        await pacer.pause()
                # A large state: assemble the body piece by piece too (one big copy is a long hold as well).
                template = _template(upload) or _make_template(upload)
                name, before, after = _fill(template, upload, uploaded)
                body = bytearray(template.head % before)
                for piece in pieces:
                    body += piece
                    if pacer.count(len(piece)):
                        await pacer.pause()
                body += template.tail % (*after, sum(map(len, pieces)))
                upload.encoded = _encoded(upload, name, template.tags, body, digest.digest())
                out.append(upload.encoded)
            except StateEncodeError as exc:
                out.append(str(exc))
            except RuntimeError as exc:  # the caller mutated the state while it was being encoded
                out.append(f"state changed while being encoded ({exc}); submit a snapshot (save_state())")
    finally:
        pacer.release()
    return out


class _RandomPool:
    """Random hex digits drawn from ``os.urandom`` a page at a time: one system call per 128 ids, not per id."""

    __slots__ = ("_hex", "_offset")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the digits drawn so far (a forked child must not repeat its parent's ids)."""
        self._hex = ""
        self._offset = 0

    def take32(self) -> str:
        """32 random hex digits (128 bits)."""
        offset = self._offset
        if offset + 32 > len(self._hex):
            self._hex, offset = os.urandom(2048).hex(), 0
        self._offset = offset + 32
        return self._hex[offset : offset + 32]


_RANDOM: Final = _RandomPool()
os.register_at_fork(after_in_child=_RANDOM.reset)
#: A UUID4's variant digit (binary 10xx) for any random hex digit.
_UUID4_VARIANT: Final = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def new_document_id() -> str:
    """A client-assigned document id (a random UUID4), sent with the document so writes are idempotent."""
    h = _RANDOM.take32()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UUID4_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class _Second:
    """The texts of one UTC second, made once per second (timestamps are per upload): ISO-8601 up to
    the seconds, and the compact form the original module named documents with."""

    __slots__ = ("compact", "iso")

    def __init__(self, second: int) -> None:
        self.iso = datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")[:19]
        self.compact = self.iso.replace("-", "").replace(":", "").replace("T", "_")


#: The seconds last written out. Several: a write stamps its documents with the second each upload was
#: made and with the second it is encoded, in turns (one second cached would be made anew each time).
_SECONDS: Final[dict[int, _Second]] = {}


def _second(second: int) -> _Second:
    try:
        return _SECONDS[second]
    except KeyError:
        if len(_SECONDS) >= 8:
            _SECONDS.clear()
        texts = _SECONDS[second] = _Second(second)
        return texts


def utc_now_iso() -> str:
    """The current UTC time as ISO-8601 with microseconds and offset (sorts as text).

    The same text as ``datetime.now(UTC).isoformat(timespec="microseconds")``, for a fraction of its cost.
    """
    return utc_iso(time.time_ns())


def utc_iso(ns: int) -> str:
    """``ns`` nanoseconds since the epoch as :func:`utc_now_iso` writes them."""
    second, micros = divmod(ns // 1000, 1_000_000)
    return f"{_second(second).iso}.{micros:06d}+00:00"


def _timestamps(ns: int) -> tuple[str, str]:
    """``ns`` as :func:`utc_iso` writes it, and in the compact form of document names
    (``20261203_104500_123456``)."""
    second, micros = divmod(ns // 1000, 1_000_000)
    texts = _second(second)
    fraction = f"{micros:06d}"
    return f"{texts.iso}.{fraction}+00:00", f"{texts.compact}_{fraction}"


def created_of_name(name: str) -> str | None:
    """When the upload a document of ours is named after was made, as :func:`utc_iso` writes it (to the
    microsecond); ``None`` for a name not made here."""
    stamp = name[-22:]
    if len(stamp) != 22 or stamp[8] != "_" or stamp[15] != "_" or not stamp.replace("_", "").isdigit():
        return None
    return (f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
            f".{stamp[16:22]}+00:00")


def normalize_timestamp(value: str | datetime) -> str:
    """Turn a datetime or ISO-8601 text into the UTC form stores compare as text.

    A naive value is taken as UTC. Raises ``ValueError`` for text that is not ISO-8601.
    """
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


class UploadDetails(TypedDict, total=False):
    """The optional details of an upload, as keywords of :meth:`SessionHandle.submit` and
    :meth:`SessionHandle.upload` (``upload_session_state`` takes the same ones)."""

    agent_description: str
    agent_color: str
    tools_count: int
    description: str | None
    #: The ``seq`` of this agent's state the upload continues (optimistic concurrency), if any.
    parent_seq: int | None


@dataclass(slots=True)
class StateUpload:
    """One upload as callers gave it, before encoding; ``doc_id`` is assigned when first read (an upload
    coalesced away before its write never needs one: most of a chatty agent's).

    A caller's arguments are checked with :func:`check_upload` where they come in: a field no document
    can hold would otherwise fail only at the write, far from the caller."""

    session_id: str
    state: object
    task: str = ""
    agent_name: str = "agent"
    agent_description: str = ""
    agent_color: str = ""
    tools_count: int = 0
    description: str | None = None
    #: The ``seq`` of this agent's state the upload continues (optimistic concurrency), if any.
    parent_seq: int | None = None
    #: When it was made, in nanoseconds since the epoch (written out as text only when encoded).
    created_ns: int = field(default_factory=time.time_ns)
    #: The encoded document, once made (the outbox and the store write share one encoding).
    encoded: EncodedDocument | None = field(default=None, repr=False)
    _doc_id: str | None = field(default=None, init=False, repr=False)

    @property
    def doc_id(self) -> str:
        """The id of the document that will hold this upload: a client-made UUID4, the same at every read."""
        doc_id = self._doc_id
        if doc_id is None:
            doc_id = self._doc_id = new_document_id()
        return doc_id

    @property
    def created(self) -> str:
        """When it was made, as ISO-8601 text (:func:`utc_now_iso`)."""
        return utc_iso(self.created_ns)


#: The longest session id or agent name, in characters. Both go into a read's query string, percent-encoded
#: (up to 12 bytes a character); HTTP servers commonly refuse a request line over 8 KiB (aiohttp's
#: default, nginx's), so a longer one could be written and never read back over HTTP.
MAX_NAME_CHARS: Final = 256


def _too_long(what: str, value: str) -> str:
    return (f"{what} must be at most {MAX_NAME_CHARS} characters (it goes into a read's URL), got"
            f" {len(value)}")


def check_session_id(session_id: object) -> None:
    """Raise ``ValueError`` unless ``session_id`` is a session id every store can keep and find again."""
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session_id must be a non-empty string, got {session_id!r}")
    if "\0" in session_id:
        raise ValueError("session_id must not contain NUL characters")
    if len(session_id) > MAX_NAME_CHARS:
        raise ValueError(_too_long("session_id", session_id))


def check_agent_name(agent_name: str) -> None:
    """Raise ``ValueError`` unless the string ``agent_name`` is an agent name every store can keep and find again."""
    if "\0" in agent_name:
        raise ValueError("agent_name must not contain NUL characters")
    if len(agent_name) > MAX_NAME_CHARS:
        raise ValueError(_too_long("agent_name", agent_name))


def check_upload(upload: StateUpload) -> None:
    """Raise ``TypeError`` or ``ValueError`` naming the first field of ``upload`` that no document can hold
    (the document's text fields are strings: a store refuses anything else, or it breaks the encoding)."""
    # The usual arguments pass one cheap test; anything else gets the checks that name the field.
    if (type(upload.task) is str and type(upload.agent_name) is str and type(upload.agent_description) is str
            and type(upload.agent_color) is str and type(upload.tools_count) is int
            and (upload.description is None or type(upload.description) is str)
            and (upload.parent_seq is None or (type(upload.parent_seq) is int and upload.parent_seq >= 0))
            and "\0" not in upload.agent_name and len(upload.agent_name) <= MAX_NAME_CHARS):
        return
    for name in ("task", "agent_name", "agent_description", "agent_color"):
        value = getattr(upload, name)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__qualname__}")
    if upload.description is not None and not isinstance(upload.description, str):
        raise TypeError(f"description must be a string or None, got {type(upload.description).__qualname__}")
    check_agent_name(upload.agent_name)
    seq = upload.parent_seq
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise ValueError(f"parent_seq must be a whole number >= 0 or None, got {seq!r}")
    try:
        encode(upload.tools_count)  # any JSON value, as the original took it (a count, usually)
    except StateEncodeError:
        raise TypeError(f"tools_count must be a number, got {type(upload.tools_count).__qualname__}") from None


@dataclass(slots=True)
class EncodedDocument:
    """A document ready for a store: its id, the fields stores index, and the JSON body as bytes.

    Treat it as immutable, but for ``stored_as``. (It is not frozen: a frozen dataclass sets each field
    through ``object.__setattr__``, which made a document three times as costly to create, once per upload.)
    """

    id: str
    session_id: str
    name: str
    tags: tuple[str, ...]
    body: bytes | bytearray
    document_type: str = DOCUMENT_TYPE
    #: The agent whose state this is (``content.agent_name``), for per-agent order and retention.
    agent: str | None = None
    #: The ``seq`` of the agent's state this one continues: a newer one stored makes it a conflict.
    parent_seq: int | None = None
    #: A digest of the encoded state (taken while encoding): equal digests, equal states.
    state_hash: bytes | None = field(default=None, compare=False, repr=False)
    #: The id an HTTP store gave it, once stored by one request of a write of several (a POST per
    #: document, a batch per chunk) that failed as a whole: a retry of that write does not send it again.
    stored_as: str | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class _Template:
    """A document's JSON as bytes formats, made of what depends only on who uploads what (not on when or
    which state). ``head`` takes the id's JSON and the name's time stamp, ``tail`` the timestamp, the
    upload timestamp and the state's size; ``whole`` is ``head``, the state's bytes, then ``tail``."""

    name_prefix: str
    tags: tuple[str, ...]
    head: bytes
    tail: bytes
    whole: bytes


#: Templates by the upload fields they are made of (``None``: seen once, not kept yet); cleared when it
#: holds :data:`_TEMPLATES_MAX`.
_TEMPLATES: Final[dict[tuple[object, ...], _Template | None]] = {}
_TEMPLATES_MAX: Final = 4096


def _template(upload: StateUpload) -> _Template | None:
    """The template of ``upload``'s document, made the second time a session, agent, task and details
    are seen (``None`` the first time: a session that uploads once never pays for one)."""
    key = (upload.session_id, upload.agent_name, upload.task, upload.description, upload.agent_description,
           upload.agent_color, upload.tools_count, upload.parent_seq)
    try:
        template = _TEMPLATES[key]
    except KeyError:
        if len(_TEMPLATES) >= _TEMPLATES_MAX:
            _TEMPLATES.clear()
        _TEMPLATES[key] = None
        return None
    except TypeError:  # an unhashable detail (tools_count): no template
        return None
    if template is None:
        template = _TEMPLATES[key] = _make_template(upload)
    return template


def _tags(upload: StateUpload) -> tuple[str, ...]:
    return (STATE_TAG, AGENT_TAG, upload.agent_name)


def _name_prefix(upload: StateUpload) -> str:
    # The original named documents with a compact local timestamp; we keep the shape, in UTC.
    return f"session_state_{upload.session_id}_"


def _document(upload: StateUpload, doc_id: object, name: object, state: object, timestamp: object,
              uploaded: object, state_size: object) -> dict[str, object]:
    """The original module's document for ``upload``, with the given values (or gaps) for the rest."""
    agent = upload.agent_name
    doc: dict[str, object] = {
        "id": doc_id,
        "name": name,
        "description": upload.description or f"Session state of agent {agent} in session {upload.session_id}",
        "document_type": DOCUMENT_TYPE,
        "content": {
            "agent_name": agent,
            "task": upload.task,
            "state": state,
            "timestamp": timestamp,
            "tools_count": _as_json(upload.tools_count),
            "session_metadata": {
                "agent_description": upload.agent_description,
                "agent_color": upload.agent_color,
            },
        },
        "session_id": upload.session_id,
        "tags": list(_tags(upload)),
        "metadata": {
            "upload_timestamp": uploaded,
            "task_length": len(upload.task),
            "state_size": state_size,
        },
        "is_public": False,
    }
    if upload.parent_seq is not None:
        doc["parent_seq"] = upload.parent_seq
    return doc


def _as_json(value: object) -> object:
    """``value`` as the document's encoding takes it: an int as it is, anything else (a set, a model, a dict
    with int keys: :func:`check_upload` lets through what :func:`encode` takes) as :func:`encode` makes it."""
    return value if type(value) is int else orjson.Fragment(encode(value))


def _make_template(upload: StateUpload) -> _Template:
    name_prefix = _name_prefix(upload)
    # orjson escapes every control character inside strings, so a raw NUL byte marks each gap. The
    # time stamp and timestamps are digits and punctuation JSON strings hold unescaped.
    doc = orjson.dumps(_document(upload, _MARK, _MARK, _MARK, _MARK, _MARK, _MARK))
    id_, name, state, timestamp, uploaded, size, end = doc.replace(b"%", b"%%").split(b"\0")
    name += orjson.dumps(name_prefix)[:-1].replace(b"%", b"%%")
    head = id_ + b"%b" + name + b'%b"' + state
    tail = timestamp + b'"%b"' + uploaded + b'"%b"' + size + b"%d" + end
    return _Template(name_prefix, _tags(upload), head, tail, head + b"%b" + tail)


def _fill(template: _Template, upload: StateUpload,
          uploaded: str | None) -> tuple[str, tuple[bytes, bytes], tuple[bytes, bytes]]:
    """The document's name, and what fills ``template`` before and after the state.

    ``uploaded`` is the upload timestamp (``None``: when the upload was made).
    """
    timestamp, stamp = _timestamps(upload.created_ns)
    before = (orjson.dumps(upload.doc_id), stamp.encode())
    after = (timestamp.encode(), (uploaded or timestamp).encode())
    return template.name_prefix + stamp, before, after


def encode_document(upload: StateUpload, *, uploaded: str | None = None) -> EncodedDocument:
    """Build the original module's document for ``upload`` and encode it (once: it is kept on ``upload``).

    ``uploaded`` is the upload timestamp (``None``: when the upload was made).

    Raises:
        StateEncodeError: the state cannot be encoded; nothing else is affected.
    """
    if upload.encoded is not None:
        return upload.encoded
    state = encode_state(upload.state)
    template = _template(upload)
    if template is None:  # the first of its kind: one orjson call, the state's bytes spliced in as they are
        timestamp, stamp = _timestamps(upload.created_ns)
        name = _name_prefix(upload) + stamp
        body = orjson.dumps(_document(upload, upload.doc_id, name, orjson.Fragment(state), timestamp,
                                      uploaded or timestamp, len(state)))
        tags = _tags(upload)
    else:
        name, before, after = _fill(template, upload, uploaded)
        body = template.whole % (*before, state, *after, len(state))
        tags = template.tags
    upload.encoded = _encoded(upload, name, tags, body, _whole_state_hash(state))
    return upload.encoded


def encode_if_small(upload: StateUpload) -> None:
    """Encode ``upload`` now if its state is small (one short orjson call), and let go of the state.

    For ``keep="all"``, where every snapshot is written: the library then holds bytes instead of the
    caller's objects until the write (less memory, and no work for the garbage collector, which
    otherwise walks every waiting snapshot), and a state the caller changes after submitting it is
    stored as it was. A large state is left for the write, which encodes it in pieces between yields
    to the event loop; one that cannot be encoded is left too, and fails there with its message.
    """
    if upload.encoded is not None or _is_small(upload.state) <= 0:
        return
    try:
        encode_document(upload)  # uploaded as submitted, like the original
    except StateEncodeError:
        return
    upload.state = None


def _state_digest() -> hashlib._Hash:
    """A digest of a large state's bytes, fed piece by piece (sha256: with the CPU's SHA instructions,
    twice blake2b's speed)."""
    return hashlib.sha256()


def _whole_state_hash(data: bytes) -> bytes:
    """A hash of a small state's bytes, encoded in one piece: Python's own (SipHash with this process's
    random key, 64 bits), three times sha256's speed on a few KB.

    Hashes are compared within the process only (is a state the same as the one stored before?), and a
    state always takes the same path (whole or in pieces), so the two kinds never meet for equal states.
    """
    return hash(data).to_bytes(8, "little", signed=True)


def _encoded(upload: StateUpload, name: str, tags: tuple[str, ...], body: bytes | bytearray,
             state_hash: bytes) -> EncodedDocument:
    return EncodedDocument(upload.doc_id, upload.session_id, name, tags, body, agent=upload.agent_name,
                           parent_seq=upload.parent_seq, state_hash=state_hash)
