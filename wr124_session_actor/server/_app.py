"""The json-documents REST API as an ``aiohttp.web`` application over a document engine (sqlite, PostgreSQL).

Routes::

    GET    /health                               200 {"status": "ok"}   (no key needed; 503 when the database is not)
    POST   /{project}/json-documents             201 {"id": ...}        (200 when the id was stored before)
    POST   /{project}/json-documents/batch       201 {"ids": [...]}     (all or none; absent when disabled)
    GET    /{project}/json-documents?filters     200 {"data": [...], "total": n, "limit": l, "skip": s}
    GET    /{project}/json-documents/{id}        200 the document, or 404
    DELETE /{project}/json-documents/{id}        200 {"deleted": id}, or 404
    POST   /{project}/json-documents/prune       200 {"sessions", "documents", "bytes", "dry_run"} (_prune.py)

Every error is a JSON body ``{"error": message, "status": code}``; no request is answered with a 500.
A replica holds no state between requests: everything lives in the engine's database.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from multidict import MultiMapping

from .._config import Config
from .._document import EncodedDocument, decode_exact, new_document_id, normalize_timestamp
from .._exceptions import SchemaBehind, StoreError, StoreRejected
from .._retention import NO_RETENTION, RetentionPolicy
from ..stores import SORT_FIELDS, DocumentConflict, DocumentEngine, Query, SortField, open_engine
from . import _metrics, _openapi, _ui
from ._auth import bearer_key, bearer_matches
from ._prune import install_retention, sweep_after_write

__all__ = ["DEFAULT_LIMITS", "ApiError", "ServerLimits", "create_app"]

logger = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the server accepts; past a limit it answers 413 (size) or 400 (nesting) with a JSON error.

    Args:
        max_body_bytes: the largest request body, in bytes (64 MiB).
        max_batch: the most documents in one batch request.
        max_limit: the most documents one query returns; a larger ``limit`` is capped to it.
        max_depth: the deepest nesting of objects and arrays in one document (the document itself is 1).

    Raises:
        ValueError: a limit is not a positive integer.
    """

    max_body_bytes: int = 64 * 1024 * 1024
    max_batch: int = 1000
    max_limit: int = 1000
    max_depth: int = 256

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_batch", "max_limit", "max_depth"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"ServerLimits.{name} must be a positive integer, got {value!r}")


#: The limits a server has unless told otherwise.
DEFAULT_LIMITS: Final = ServerLimits()


class ApiError(Exception):
    """A request the API refuses; the error middleware answers it as ``{"error": ..., "status": ...}``.

    Args:
        status: the HTTP status code (4xx, or 503 when the store fails).
        message: what was wrong, for the client.
        headers: extra response headers (e.g. ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


# Typed application state.
_ENGINE: Final = web.AppKey[DocumentEngine]("engine")
_LIMITER: Final = web.AppKey("engine_limiter", anyio.CapacityLimiter)
#: One worker thread decodes and encodes big bodies: such work holds the GIL, so more threads would
#: only take turns, and each switch also stalls the event loop and the engine's threads.
_CPU_LIMITER: Final = web.AppKey("cpu_limiter", anyio.CapacityLimiter)
_LIMITS: Final = web.AppKey("limits", ServerLimits)
_API_KEY: Final = web.AppKey("api_key", bytes)  # empty: no key required

_JSON: Final = "application/json"
#: Bodies up to this size are decoded on the event loop; larger ones in a worker thread.
_INLINE_BYTES: Final = 256 * 1024
#: Worker threads that may wait on the engine at once, at least (more when the engine has a larger pool).
_ENGINE_THREADS: Final = 4
#: The largest ``skip`` (sqlite's OFFSET is a signed 64-bit integer).
_MAX_SKIP: Final = 2**62

_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INT_RE: Final = re.compile(r"[+-]?[0-9]+")
_SORT_ORDERS: Final[Mapping[str, Literal[1, -1]]] = {"1": 1, "-1": -1, "asc": 1, "desc": -1}
_SORT_BY: Final[Mapping[str, SortField]] = {field: field for field in SORT_FIELDS}
_FIELDS: Final = frozenset(
    {"id", "name", "description", "document_type", "content", "session_id", "tags", "metadata", "is_public",
     "parent_seq"}
)
_DEFAULT_DOCUMENT_TYPE: Final = "user_data"
#: Paths served without the API key.
_OPEN_PATHS: Final = frozenset({"/health", _metrics.METRICS_PATH, _openapi.OPENAPI_PATH, _ui.UI_PATH})
_OPEN_PREFIXES: Final = (_ui.UI_PATH + "/",)


# --------------------------------------------------------------------------------------------------
# JSON helpers (pure functions; the big ones run in worker threads)


def _dumps(value: object, *, sort_keys: bool = False) -> bytes:
    """Encode with orjson, falling back to the stdlib for what orjson refuses.

    orjson stops at 254 levels of nesting while the server accepts ``max_depth`` (256 by default),
    so a document near the limit is encoded by :mod:`json` instead. The choice depends only on the
    value, so the same document always gets the same bytes (idempotent writes compare bytes).
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except orjson.JSONEncodeError:
        return _stdlib_dumps(value, sort_keys=sort_keys)


def _stdlib_dumps(value: object, *, sort_keys: bool = False) -> bytes:
    """:func:`_dumps`'s fallback for what orjson refuses.

    Raises:
        ApiError: 400 for a lone surrogate (which the stdlib parser takes, and orjson refuses).
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: a lone surrogate ({exc.reason})") from None


def _orjson_max_depth() -> int:
    """The deepest nesting orjson encodes (254), or 0 if it turns out to encode 255 levels.

    A document orjson encodes is then known to be at most this deep, so :func:`_prepare_document`
    skips its depth walk when ``max_depth`` is at least this. Should a newer orjson encode deeper
    documents, 0 keeps the walk for every document (slower, still correct).
    """
    probe: list[object] = []
    for _ in range(254):
        probe = [probe]
    try:
        orjson.dumps(probe)  # 255 levels
    except orjson.JSONEncodeError:
        return 254
    return 0


#: Documents orjson encodes are nested at most this deep (0: no such bound is known).
_ORJSON_MAX_DEPTH: Final = _orjson_max_depth()


def _json_response(
    value: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=_dumps(value), status=status, content_type=_JSON, headers=headers)


def _bytes_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=_JSON)


def _error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return _json_response({"error": message, "status": status}, status, headers)


def _decode(body: bytes) -> Any:
    try:
        return decode_exact(body)  # an integer past 64 bits is stored as sent, not rounded to a float
    except ValueError as exc:  # orjson's JSONDecodeError, or the stdlib parser's for such an integer
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # the stdlib parser, for such an integer, in a document nested past ~900 levels
        raise ApiError(400, "the body is nested too deep") from None


def _depth_exceeds(value: object, max_depth: int) -> bool:
    """Whether ``value`` nests objects/arrays deeper than ``max_depth`` (a bare ``{}`` is depth 1).

    Iterative, so that a deep document cannot exhaust the interpreter's stack.
    """
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _field_error(where: str, message: str) -> ApiError:
    return ApiError(422, f"{where}{message}")


def _prepare_document(raw: object, max_depth: int, where: str = "") -> EncodedDocument:
    """Validate one document and encode its canonical body.

    The stored body is the document without ``id``, with every optional field filled with its
    default and keys sorted, so that the same document sent again (other key order, whitespace,
    omitted defaults) has the same bytes and is recognized as a repeat of an idempotent write.

    Raises:
        ApiError: 400 when nested too deep, 422 when a field is missing, unknown or of the wrong type.
    """
    if not isinstance(raw, dict):
        raise _field_error(where, f"a document must be a JSON object, got {_json_type(raw)}")
    try:
        doc_id, canonical = _canonical(raw, where)
    except ApiError:
        # Nesting is checked first: a document both too deep and invalid answers 400.
        if _depth_exceeds(raw, max_depth):
            raise _too_deep(where, max_depth) from None
        raise
    # Walking every document for its depth is costly, and orjson refuses to encode more than
    # _ORJSON_MAX_DEPTH levels: when it encodes the body, the walk is needed only for a lower
    # max_depth. The canonical body nests as deep as the document: each container of the document
    # is in it at the same level, and its defaults ([] and {}) are no deeper than the content object.
    try:
        body = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
        walk = max_depth < _ORJSON_MAX_DEPTH
    except orjson.JSONEncodeError:
        body, walk = None, True
    if walk and _depth_exceeds(raw, max_depth):
        raise _too_deep(where, max_depth)
    if body is None:
        body = _stdlib_dumps(canonical, sort_keys=True)
    agent = canonical["content"].get("agent_name")
    return EncodedDocument(
        id=doc_id,
        session_id=canonical["session_id"] or "",
        name=canonical["name"],
        tags=tuple(canonical["tags"]),
        body=body,
        document_type=canonical["document_type"],
        agent=agent if isinstance(agent, str) else None,
        parent_seq=canonical.get("parent_seq"),
    )


def _too_deep(where: str, max_depth: int) -> ApiError:
    return ApiError(400, f"{where}the document is nested deeper than {max_depth} levels")


def _canonical(raw: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """Validate the fields of the document ``raw``; return its id and canonical body (unencoded).

    Raises:
        ApiError: 422 when a field is missing, unknown or of the wrong type.
    """
    unknown = raw.keys() - _FIELDS
    if unknown:
        raise _field_error(where, f"unknown field(s): {', '.join(sorted(unknown))}")

    doc_id = raw.get("id")
    if doc_id is None:
        doc_id = new_document_id()
    elif not isinstance(doc_id, str) or not _ID_RE.fullmatch(doc_id):
        raise _field_error(where, "'id' must be 1 to 128 characters of A-Z a-z 0-9 . _ : -")
    if "name" not in raw:
        raise _field_error(where, "'name' is required")
    name = raw["name"]
    if not isinstance(name, str):
        raise _field_error(where, f"'name' must be a string, got {_json_type(name)}")
    if "content" not in raw:
        raise _field_error(where, "'content' is required")
    content = raw["content"]
    if not isinstance(content, dict):
        raise _field_error(where, f"'content' must be an object, got {_json_type(content)}")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise _field_error(where, f"'description' must be a string or null, got {_json_type(description)}")
    document_type = raw.get("document_type", _DEFAULT_DOCUMENT_TYPE)
    if not isinstance(document_type, str):
        raise _field_error(where, f"'document_type' must be a string, got {_json_type(document_type)}")
    session_id = raw.get("session_id")
    if session_id is not None and not isinstance(session_id, str):
        raise _field_error(where, f"'session_id' must be a string or null, got {_json_type(session_id)}")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise _field_error(where, "'tags' must be a list of strings")
    for field, text in (("name", name), ("description", description), ("document_type", document_type),
                        ("session_id", session_id), *(("tags", tag) for tag in tags)):
        if text is not None and "\0" in text:  # no query could name it (a NUL in a query is 400), and jsonb holds none
            raise _field_error(where, f"'{field}' must not contain the character U+0000 (NUL)")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _field_error(where, f"'metadata' must be an object, got {_json_type(metadata)}")
    is_public = raw.get("is_public", False)
    if not isinstance(is_public, bool):
        raise _field_error(where, f"'is_public' must be a boolean, got {_json_type(is_public)}")
    parent_seq = raw.get("parent_seq")
    if isinstance(parent_seq, float) and parent_seq.is_integer():
        parent_seq = int(parent_seq)  # JSON has one number type: 7.0 is the whole number 7
    if parent_seq is not None and (type(parent_seq) is not int or not 0 <= parent_seq < 2**63):
        raise _field_error(where, "'parent_seq' must be a whole number >= 0 or null")

    canonical: dict[str, Any] = {
        "name": name,
        "description": description,
        "document_type": document_type,
        "content": content,
        "session_id": session_id,
        "tags": tags,
        "metadata": metadata,
        "is_public": is_public,
    }
    if parent_seq is not None:  # only when given: bodies without it stay as round 1 stored them
        canonical["parent_seq"] = parent_seq
    return doc_id, canonical


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _prepare_single(body: bytes, limits: ServerLimits) -> EncodedDocument:
    return _prepare_document(_decode(body), limits.max_depth)


def _prepare_batch(body: bytes, limits: ServerLimits) -> list[EncodedDocument]:
    envelope = _decode(body)
    if not isinstance(envelope, dict):
        raise ApiError(422, f'the batch body must be {{"documents": [...]}}, got {_json_type(envelope)}')
    unknown = envelope.keys() - {"documents"}
    if unknown:
        raise ApiError(422, f"unknown field(s) in the batch body: {', '.join(sorted(unknown))}")
    docs = envelope.get("documents")
    if not isinstance(docs, list):
        raise ApiError(422, "the batch body needs 'documents', a list of documents")
    if len(docs) > limits.max_batch:
        raise ApiError(413, f"a batch holds at most {limits.max_batch} documents, got {len(docs)}")
    return [_prepare_document(raw, limits.max_depth, f"documents[{i}]: ") for i, raw in enumerate(docs)]


def _query_body(engine: DocumentEngine, project: str, query: Query) -> bytes:
    data, total = engine.query(project, query)
    return _dumps({"data": data, "total": total, "limit": query.limit, "skip": query.skip})


def _get_body(engine: DocumentEngine, project: str, doc_id: str) -> bytes | None:
    doc = engine.get(project, doc_id)
    return None if doc is None else _dumps(doc)


# --------------------------------------------------------------------------------------------------
# Query parameters


def _one(params: MultiMapping[str], key: str) -> str | None:
    """The value of the single-valued parameter ``key``, or ``None``.

    Raises:
        ApiError: 400 when it is given more than once (only ``tags`` may repeat).
    """
    values = params.getall(key, ())
    if len(values) > 1:
        raise ApiError(400, f"{key!r} may be given once, got {len(values)} values")
    return values[0] if values else None


def _parse_int(params: MultiMapping[str], key: str, default: int) -> int:
    raw = _one(params, key)
    if raw is None or raw == "":
        return default
    try:
        if not _INT_RE.fullmatch(raw):
            raise ValueError(raw)
        value = int(raw)  # ValueError past Python's 4300-digit conversion limit
    except ValueError:
        raise ApiError(400, f"{key!r} must be an integer, got {raw[:40]!r}") from None
    if value < 0:
        raise ApiError(400, f"{key!r} must not be negative, got {value}")
    return value


def _parse_time(params: MultiMapping[str], key: str) -> str | None:
    raw = _one(params, key)
    if not raw:
        return None
    try:
        return normalize_timestamp(raw)
    except (ValueError, OverflowError):
        raise ApiError(400, f"{key!r} must be an ISO-8601 date or time, got {raw!r}") from None


def _parse_page(params: MultiMapping[str], default_limit: int, limits: ServerLimits) -> tuple[int, int]:
    """``limit`` (``default_limit`` when absent, capped at ``limits.max_limit``) and ``skip``.

    Raises:
        ApiError: 400 for a malformed value, or a ``skip`` past the largest sqlite offset.
    """
    limit = min(_parse_int(params, "limit", default_limit), limits.max_limit)
    skip = _parse_int(params, "skip", 0)
    if skip > _MAX_SKIP:
        raise ApiError(400, f"'skip' must be at most {_MAX_SKIP}")
    return limit, skip


def _parse_query(params: MultiMapping[str], limits: ServerLimits) -> Query:
    """Turn the list endpoint's query parameters into a :class:`Query`.

    Empty values count as absent. ``tags`` may repeat (``tags=a&tags=b``, as the original client sends a
    list: each value is one tag, as it is, commas and spaces included), or be one comma-joined value
    (``tags=a,b``, each tag stripped); a document must carry every tag. ``limit`` defaults
    to 10 and is capped at ``limits.max_limit`` (the answer's ``limit`` says what was used); a negative or
    non-integer ``limit``/``skip`` is 400.

    Raises:
        ApiError: 400 for a malformed parameter.
    """
    limit, skip = _parse_page(params, 10, limits)
    raw_sort = _one(params, "sort_by") or "created_at"
    sort_by = _SORT_BY.get(raw_sort)
    if sort_by is None:
        raise ApiError(400, f"'sort_by' must be one of {', '.join(SORT_FIELDS)}, got {raw_sort!r}")
    raw_order = _one(params, "sort_order") or "-1"
    sort_order = _SORT_ORDERS.get(raw_order.lower())
    if sort_order is None:
        raise ApiError(400, f"'sort_order' must be 1 or -1, got {raw_order!r}")
    values = [value for value in params.getall("tags", ()) if value]
    if len(values) == 1:  # one value: a comma-joined list (tags=a,b); repeated values are one tag each
        values = [tag.strip() for tag in values[0].split(",")]
    tags = tuple(dict.fromkeys(tag for tag in values if tag))
    return Query(
        session_id=_one(params, "session_id") or None,
        document_type=_one(params, "document_type") or None,
        tags=tags,
        name_pattern=_one(params, "name_pattern") or None,
        created_after=_parse_time(params, "created_after"),
        created_before=_parse_time(params, "created_before"),
        limit=limit,
        skip=skip,
        sort_by=sort_by,
        sort_order=sort_order,
    )


# --------------------------------------------------------------------------------------------------
# Off-loop execution


async def _engine_call(app: web.Application, func: Callable[..., T], *args: object, open_route: bool = False) -> T:
    """Run an engine call in a worker thread; map its failures to API errors (409, 4xx, 503). For an
    ``open_route`` (served without the key) a 503 names no more than its kind: the database's own message
    goes to the log (but a schema behind says which step is missing)."""
    try:
        return await anyio.to_thread.run_sync(func, *args, limiter=app[_LIMITER])
    except DocumentConflict as exc:
        raise ApiError(409, str(exc)) from None
    except StoreRejected as exc:  # the database refused this request's data for good
        status = exc.status_code if exc.status_code is not None and 400 <= exc.status_code < 500 else 422
        raise ApiError(status, str(exc)) from None
    except StoreError as exc:
        _metrics.count_database_error(app, exc)
        logger.warning("server_store_error", error=f"{type(exc).__name__}: {exc}")
        if open_route and not isinstance(exc, SchemaBehind):
            raise ApiError(503, "the document store is unavailable (the server's log says why)") from None
        raise ApiError(503, f"the document store is unavailable: {exc}") from None


async def _cpu_call(app: web.Application, size: int, func: Callable[..., T], *args: object) -> T:
    """Run CPU work inline for small inputs, in the CPU worker thread for big ones (never stall the loop)."""
    if size <= _INLINE_BYTES:
        return func(*args)
    return await anyio.to_thread.run_sync(func, *args, limiter=app[_CPU_LIMITER])


async def _read_body(request: web.Request) -> bytes:
    limit = request.app[_LIMITS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    return await request.read()  # aiohttp raises 413 past client_max_size (chunked bodies too)


def _project(request: web.Request) -> str:
    return request.match_info["project"]


# --------------------------------------------------------------------------------------------------
# Handlers


async def _health(request: web.Request) -> web.Response:
    # Open when the other routes need the key: then it does not pass on the driver's message (hosts, ports,
    # user names), which the log has.
    await _engine_call(request.app, request.app[_ENGINE].ping, open_route=bool(request.app[_API_KEY]))
    return _json_response({"status": "ok"})


async def _create(request: web.Request) -> web.Response:
    body = await _read_body(request)
    doc = await _cpu_call(request.app, len(body), _prepare_single, body, request.app[_LIMITS])
    engine = request.app[_ENGINE]
    ((doc_id, created),) = await _engine_call(request.app, engine.insert_many, _project(request), [doc])
    await sweep_after_write(request.app, _project(request), [doc])
    _metrics.count_stored(request.app, int(created))
    location = str(request.rel_url.with_query(None) / doc_id)
    return _json_response({"id": doc_id}, 201 if created else 200, {"Location": location})


async def _create_batch(request: web.Request) -> web.Response:
    body = await _read_body(request)
    docs = await _cpu_call(request.app, len(body), _prepare_batch, body, request.app[_LIMITS])
    engine = request.app[_ENGINE]
    results = await _engine_call(request.app, engine.insert_many, _project(request), docs)
    await sweep_after_write(request.app, _project(request), docs)
    created = sum(was_created for _, was_created in results)
    _metrics.count_stored(request.app, created)
    return _json_response({"ids": [doc_id for doc_id, _ in results]}, 201 if created else 200)


async def _list(request: web.Request) -> web.Response:
    query = _parse_query(request.query, request.app[_LIMITS])
    body = await _engine_call(request.app, _query_body, request.app[_ENGINE], _project(request), query)
    return _bytes_response(body)


def _sessions_body(engine: DocumentEngine, project: str, search: str | None, limit: int, skip: int) -> bytes:
    data, total = engine.sessions(project, search, limit, skip)
    return _dumps({"data": data, "total": total, "limit": limit, "skip": skip})


def _parse_sessions(params: MultiMapping[str], limits: ServerLimits) -> tuple[str | None, int, int]:
    """The sessions endpoint's ``search``, ``limit`` (default 20) and ``skip``.

    Raises:
        ApiError: 400 for a malformed parameter.
    """
    limit, skip = _parse_page(params, 20, limits)
    return _one(params, "search") or None, limit, skip


async def _sessions(request: web.Request) -> web.Response:
    """The project's sessions, latest activity first (what the browser view lists)."""
    search, limit, skip = _parse_sessions(request.query, request.app[_LIMITS])
    body = await _engine_call(
        request.app, _sessions_body, request.app[_ENGINE], _project(request), search, limit, skip
    )
    return _bytes_response(body)


async def _get(request: web.Request) -> web.Response:
    doc_id = request.match_info["doc_id"]
    body = await _engine_call(request.app, _get_body, request.app[_ENGINE], _project(request), doc_id)
    if body is None:
        raise ApiError(404, f"no document {doc_id!r} in project {_project(request)!r}")
    return _bytes_response(body)


async def _delete(request: web.Request) -> web.Response:
    doc_id = request.match_info["doc_id"]
    existed = await _engine_call(request.app, request.app[_ENGINE].delete, _project(request), doc_id)
    if not existed:
        raise ApiError(404, f"no document {doc_id!r} in project {_project(request)!r}")
    return _json_response({"deleted": doc_id})


# --------------------------------------------------------------------------------------------------
# Middlewares (outermost first: errors, any extra ones, auth, project)


def _http_exception_message(exc: web.HTTPException) -> str:
    text = exc.text
    if not text or text == f"{exc.status}: {exc.reason}":
        return exc.reason
    return text


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure as a JSON error; turn anything unexpected into a 4xx, never a 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        skip = ("content-type", "content-length")
        headers = {k: v for k, v in exc.headers.items() if k.lower() not in skip}
        return _error_response(exc.status, _http_exception_message(exc), headers)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
        raise
    except ConnectionError as exc:
        # The client went away mid-request: nobody reads the answer, and it is no server fault.
        logger.debug("server_client_disconnected", method=request.method, path=request.path, error=str(exc))
        return _error_response(400, "the client closed the connection")
    except Exception as exc:
        # A request that reaches this point is one we did not foresee; it is still the request's
        # fault as far as the client can tell, and the API promises no 500s.
        logger.warning("server_unexpected_error", method=request.method, path=request.path, exc_info=exc)
        return _error_response(400, f"the request could not be processed ({type(exc).__name__})")


def _is_open(path: str) -> bool:
    return path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """When a key is set, require ``Authorization: Bearer <key>`` everywhere but the open paths.

    Open: ``/health``, ``/metrics`` (its own ``metrics_key``), ``/openapi.json`` and the ``/ui`` page and
    assets (the page asks for the key and sends it with its API calls).
    """
    expected = request.app[_API_KEY]
    if expected and not _is_open(request.path) and not bearer_matches(request.headers, expected):
        raise ApiError(
            401, "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="json-documents"'},
        )
    return await handler(request)


@web.middleware
async def _project_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a request whose ``X-Project-ID`` names another project than its path (403), and one with a NUL
    character in its path or query (400: no store holds one in a name or id; PostgreSQL refused it with a
    422 the contract does not list, and sqlite answered 200 or 404)."""
    if "\0" in request.path or any("\0" in value for value in request.query.values()):
        raise ApiError(400, "a NUL character in the path or the query")
    project = request.match_info.get("project")
    header = request.headers.get("X-Project-ID")
    if project is not None and header is not None and header != project:
        raise ApiError(403, f"X-Project-ID {header!r} does not match the path's project {project!r}")
    return await handler(request)


# --------------------------------------------------------------------------------------------------
# The factory


def _engine_context(
    db: str | os.PathLike[str] | DocumentEngine, config: Config | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def engine_context(app: web.Application) -> AsyncIterator[None]:
        owned = isinstance(db, str | os.PathLike)
        engine = open_engine(db, config, exact_numbers=True) if isinstance(db, str | os.PathLike) else db
        app[_LIMITER] = anyio.CapacityLimiter(max(_ENGINE_THREADS, engine.concurrency))
        app[_CPU_LIMITER] = anyio.CapacityLimiter(1)
        app[_ENGINE] = engine
        try:
            try:
                await anyio.to_thread.run_sync(engine.ping)  # a database that cannot open fails the startup
            except SchemaBehind as exc:  # a deploy's migrate step may come after its replicas start
                logger.warning("server_schema_behind", error=str(exc), health="503 until it is migrated")
            yield
        finally:
            if owned:
                await anyio.to_thread.run_sync(engine.close)

    return engine_context


def create_app(
    db_path: str | os.PathLike[str] | DocumentEngine,
    *,
    api_key: str | None = None,
    limits: ServerLimits = DEFAULT_LIMITS,
    enable_batch: bool = True,
    middlewares: Sequence[Middleware] = (),
    config: Config | None = None,
    retention: RetentionPolicy = NO_RETENTION,
    sweep_interval: float = 60.0,
    metrics_key: str | None = None,
) -> web.Application:
    """Build the json-documents application over a database: a sqlite file or a PostgreSQL URL.

    The engine is opened on startup (its schema migrated unless turned off) and closed on cleanup
    (``cleanup_ctx``); every engine call runs in a worker thread.

    Args:
        db_path: the sqlite file (created with its folder when missing), a ``sqlite:///`` or
            ``postgresql://`` URL, or an engine (used as is; not closed on cleanup).
        api_key: when set (non-empty), every route but ``/health`` needs ``Authorization: Bearer <key>``.
        limits: body, batch, query and nesting limits.
        enable_batch: serve ``POST /{project}/json-documents/batch``; without it that POST answers 405,
            as an older server would, and clients fall back to single POSTs.
        middlewares: extra middlewares, run inside the JSON-error middleware and before auth (the
            test server's delay is one).
        config: PostgreSQL pool settings, timeout and ``migrate`` (default: from the environment).
        retention: the retention policy the server enforces: keep-last after every write, the
            whole policy in a periodic sweep; ``POST /{project}/json-documents/prune`` prunes on demand.
        sweep_interval: seconds between periodic sweeps (0: none).
        metrics_key: when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_key>``;
            otherwise it is open like ``/health``.

    Returns:
        The application, ready for ``web.run_app`` or an ``AppRunner``.
    """
    app = web.Application(
        client_max_size=limits.max_body_bytes,
        middlewares=[
            *_metrics.middlewares(), _errors_middleware, *middlewares, _auth_middleware, _project_middleware
        ],
    )
    app[_LIMITS] = limits
    app[_API_KEY] = bearer_key(api_key)
    app.cleanup_ctx.append(_engine_context(db_path, config))
    app.router.add_get("/health", _health, name="health", allow_head=False)
    collection = "/{project}/json-documents"
    app.router.add_post(collection, _create, name="create")
    app.router.add_get(collection, _list, name="list", allow_head=False)
    if enable_batch:
        app.router.add_post(collection + "/batch", _create_batch, name="batch")
    app.router.add_get(collection + "/{doc_id}", _get, name="get", allow_head=False)
    app.router.add_delete(collection + "/{doc_id}", _delete, name="delete")
    install_retention(app, engine=lambda a: a[_ENGINE], call=_engine_call, policy=retention,
                      sweep_interval=sweep_interval)
    app.router.add_get("/{project}/sessions", _sessions, name="sessions", allow_head=False)
    _metrics.install_metrics(app, metrics_key)
    _ui.install_ui(app)
    _openapi.install_openapi(app, _openapi.Validators(
        document_fields=_FIELDS, sort_by=tuple(_SORT_BY), sort_orders=tuple(_SORT_ORDERS), limits=limits,
        max_skip=_MAX_SKIP, id_pattern=_ID_RE.pattern,
    ))
    return app
