"""``GET /openapi.json``: the OpenAPI 3.1 contract of the reference server, built from the app itself.

Why it cannot drift:

- The paths and methods come from the application's router: :func:`build_spec` walks
  ``app.router.routes()`` and (strict, as the tests run it) fails when a route of ``create_app`` has no
  entry in :data:`OPERATIONS`, so a new route cannot ship undocumented; a route that is gone is simply
  not in the contract.
- The document fields, the ``sort_by``/``sort_order`` values, the id pattern and the limits are the
  validators' own tables, handed over by ``create_app`` (:class:`Validators`); a document field the
  validator knows but :data:`_DOCUMENT_FIELD_SCHEMAS` does not describe fails the build.
- The tests check that the query parsers read exactly the parameters named here, and run
  schemathesis against a live server: generated valid requests must be accepted, invalid ones refused
  with a 4xx, and every answer must match its response schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final, Protocol

import orjson
from aiohttp import web

from ._metrics import METRICS_PATH
from ._prune import MAX_PRUNE_BODY
from ._ui import ASSETS, UI_PATH

__all__ = ["OPENAPI_PATH", "OPERATIONS", "Validators", "build_spec", "install_openapi", "spec_of"]

#: Where the contract is served.
OPENAPI_PATH: Final = "/openapi.json"

JSONSchema = dict[str, Any]


class Limits(Protocol):
    """The server limits the contract states (``ServerLimits``)."""

    @property
    def max_body_bytes(self) -> int: ...
    @property
    def max_batch(self) -> int: ...
    @property
    def max_limit(self) -> int: ...
    @property
    def max_depth(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Validators:
    """The tables the request validators use, from which the contract's schemas are made.

    Attributes:
        document_fields: the fields a posted document may have.
        sort_by: the accepted ``sort_by`` values.
        sort_orders: the accepted ``sort_order`` values.
        limits: the server's limits (``max_batch``, ``max_limit``, ``max_body_bytes``, ``max_depth``).
        max_skip: the largest ``skip``.
        id_pattern: the regular expression a client-supplied document id must match in full.
    """

    document_fields: frozenset[str]
    sort_by: tuple[str, ...]
    sort_orders: tuple[str, ...]
    limits: Limits
    max_skip: int
    id_pattern: str


# --------------------------------------------------------------------------------------------------
# Schemas

_STRING: Final = {"type": "string"}
#: A name, id or filter in a path or query: any text without NUL (no store holds one; the answer is 400).
_TEXT: Final = {"type": "string", "pattern": "^[^\\u0000]*$"}
_OBJECT: Final = {"type": "object"}

#: The JSON schema of each field a posted document may have (see ``_canonical`` in ``_app``).
_DOCUMENT_FIELD_SCHEMAS: Final[Mapping[str, JSONSchema]] = {
    "id": {"description": "A client-chosen id: the write becomes idempotent. Omitted or null: the server makes one."},
    "name": _TEXT,
    "description": {**_TEXT, "type": ["string", "null"]},
    "document_type": {**_TEXT, "default": "user_data"},
    "content": {"type": "object", "description": "The payload (agent_name, task, state, timestamp, ...). A"
                " PostgreSQL-backed server answers 422 for a string holding U+0000 (jsonb cannot)."},
    "session_id": {**_TEXT, "type": ["string", "null"]},
    "tags": {"type": "array", "items": _TEXT, "default": []},
    "metadata": {"type": "object", "default": {}},
    "is_public": {"type": "boolean", "default": False},
    "parent_seq": {
        "type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1,
        "description": "The seq of the agent's state this one continues: 409 when a newer one is stored.",
    },
}
_REQUIRED_FIELDS: Final = ("name", "content")


def _error_schema() -> JSONSchema:
    return {
        "type": "object",
        "required": ["error", "status"],
        "properties": {"error": _STRING, "status": {"type": "integer", "minimum": 400, "maximum": 599}},
        "additionalProperties": False,
    }


def _document_in(validators: Validators) -> JSONSchema:
    missing = validators.document_fields - _DOCUMENT_FIELD_SCHEMAS.keys()
    extra = _DOCUMENT_FIELD_SCHEMAS.keys() - validators.document_fields
    if missing or extra:
        raise RuntimeError(f"the contract's document fields drifted: missing {sorted(missing)}, extra {sorted(extra)}")
    properties = {name: dict(_DOCUMENT_FIELD_SCHEMAS[name]) for name in sorted(validators.document_fields)}
    properties["id"] = {
        "anyOf": [{"type": "string", "pattern": f"^{validators.id_pattern}$"}, {"type": "null"}],
        **properties["id"],
    }
    return {
        "type": "object",
        "required": list(_REQUIRED_FIELDS),
        "properties": properties,
        "additionalProperties": False,
        "description": f"A document to store; nested at most {validators.limits.max_depth} levels deep.",
    }


def _document_out() -> JSONSchema:
    time = {"type": "string", "description": "UTC ISO-8601"}
    stored = {k: v for k, v in _DOCUMENT_FIELD_SCHEMAS.items() if k not in ("id", "parent_seq")}
    return {
        "type": "object",
        "required": ["_id", "id", "seq", "created_at", "updated_at", "name", "content"],
        "properties": {
            "_id": _STRING, "id": _STRING, "created_at": time, "updated_at": time, **stored,
            "seq": {"type": "integer", "description": "Per session, strictly increasing; the newest is the latest."},
            "parent_seq": {"type": ["integer", "null"]},
        },
    }


def _page(item: str) -> JSONSchema:
    count = {"type": "integer", "minimum": 0}
    return {
        "type": "object",
        "required": ["data", "total", "limit", "skip"],
        "properties": {"data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
                       "total": count, "limit": count, "skip": count},
        "additionalProperties": False,
    }


def _schemas(validators: Validators) -> dict[str, JSONSchema]:
    count = {"type": "integer", "minimum": 0}
    duration = {
        "anyOf": [
            {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[smhdwSMHDW]?\s*$"},
            {"type": "number", "minimum": 0},
            {"type": "null"},
        ],
        "description": "A duration: `90s`, `15m`, `12h`, `7d`, `2w` or seconds; 0 or null turns the rule off;"
                       " omitted: the server's own rule.",
    }
    return {
        "Error": _error_schema(),
        "DocumentIn": _document_in(validators),
        "Document": _document_out(),
        "DocumentList": _page("Document"),
        "Batch": {
            "type": "object",
            "required": ["documents"],
            "properties": {"documents": {"type": "array", "items": {"$ref": "#/components/schemas/DocumentIn"},
                                         "maxItems": validators.limits.max_batch}},
            "additionalProperties": False,
        },
        "Created": {"type": "object", "required": ["id"], "properties": {"id": _STRING}, "additionalProperties": False},
        "CreatedMany": {"type": "object", "required": ["ids"],
                        "properties": {"ids": {"type": "array", "items": _STRING}}, "additionalProperties": False},
        "Deleted": {"type": "object", "required": ["deleted"], "properties": {"deleted": _STRING},
                    "additionalProperties": False},
        "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}},
                   "additionalProperties": False},
        "Session": {
            "type": "object",
            "required": ["session_id", "documents", "agents", "first_at", "last_at", "last_seq"],
            "properties": {"session_id": _STRING, "documents": count, "agents": {"type": "array", "items": _STRING},
                           "first_at": _STRING, "last_at": _STRING, "last_seq": {"type": "integer"}},
            "additionalProperties": False,
        },
        "SessionList": _page("Session"),
        "Prune": {
            "type": "object",
            "properties": {
                "keep_last": {
                    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                              {"type": "string", "pattern": r"^\s*[0-9]{1,18}\s*$"}, {"type": "null"}],
                    "description": "Keep this many newest states per (session, agent); 0 or null: no limit.",
                },
                "max_age": duration,
                "idle_ttl": duration,
                "session_id": {"type": ["string", "null"], "minLength": 1, "description": "Only this session."},
                "dry_run": {"type": "boolean", "default": False},
            },
            "additionalProperties": False,
        },
        "PruneReport": {
            "type": "object",
            "required": ["sessions", "documents", "bytes", "dry_run"],
            "properties": {"sessions": count, "documents": count, "bytes": count, "dry_run": {"type": "boolean"}},
        },
    }


# --------------------------------------------------------------------------------------------------
# Parameters (the names the query parsers read; a test checks them against the parsers)


def _query(name: str, schema: JSONSchema, description: str) -> JSONSchema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _or_empty(schema: JSONSchema) -> JSONSchema:
    # The parsers take an empty value as absent (``?limit=``): the contract says so.
    return {"anyOf": [schema, {"type": "string", "const": ""}]}


def _time_parameter(name: str, description: str) -> JSONSchema:
    when = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string", "format": "date"}]}
    return _query(name, _or_empty(when), f"{description} (ISO-8601 date or date-time; naive is UTC).")


def _page_parameters(default_limit: int, validators: Validators, what: str) -> list[JSONSchema]:
    return [
        _query("limit", _or_empty({"type": "integer", "minimum": 0, "default": default_limit}),
               f"Page size (default {default_limit}); capped at {validators.limits.max_limit}"
               " (the answer says what was used)."),
        _query("skip", _or_empty({"type": "integer", "minimum": 0, "maximum": validators.max_skip, "default": 0}),
               f"{what} to skip."),
    ]


def _list_parameters(validators: Validators) -> list[JSONSchema]:
    return [
        _query("session_id", _TEXT, "Only this session's documents."),
        _query("document_type", _TEXT, "Only documents of this type."),
        # One value on the wire (``tags=a`` or ``tags=a,b``) is a list as well: the contract says both forms.
        {**_query("tags", {"anyOf": [{"type": "array", "items": _TEXT}, _TEXT]},
                  "Documents carrying all these tags: repeated (`tags=a&tags=b`, each value one tag as it is),"
                  " or one comma-joined value (`tags=a,b`)."),
         "style": "form", "explode": True},
        _query("name_pattern", _TEXT, "A substring of the name."),
        _time_parameter("created_after", "Inclusive lower bound"),
        _time_parameter("created_before", "Inclusive upper bound"),
        *_page_parameters(10, validators, "Documents"),
        _query("sort_by", _or_empty({"type": "string", "enum": list(validators.sort_by), "default": "created_at"}),
               "Sort key."),
        _query("sort_order", _or_empty({"type": "string", "enum": list(validators.sort_orders), "default": "-1"}),
               "-1 (or desc): newest first; 1 (or asc): oldest first. Case-insensitive."),
    ]


def _sessions_parameters(validators: Validators) -> list[JSONSchema]:
    return [_query("search", _TEXT, "Only sessions whose id contains this."),
            *_page_parameters(20, validators, "Sessions")]


def query_parameters(validators: Validators) -> dict[str, list[JSONSchema]]:
    """The query parameters of each operation that has some, by operation id."""
    return {"listDocuments": _list_parameters(validators), "listSessions": _sessions_parameters(validators)}


_PROJECT: Final = {"name": "project", "in": "path", "required": True, "schema": {**_TEXT, "minLength": 1}}
_X_PROJECT: Final = {
    "name": "X-Project-ID", "in": "header", "required": False, "schema": _STRING,
    "description": "When sent, it must equal the path's project (403 otherwise).",
}


# --------------------------------------------------------------------------------------------------
# Operations


@dataclass(frozen=True, slots=True)
class Operation:
    """What the contract says about one route, beyond what the router knows."""

    operation_id: str
    summary: str
    ok: Mapping[int, tuple[str, str]]  # status -> (media type, schema name or "" for free text)
    errors: tuple[int, ...]
    body: str = ""  # the request body's schema name
    body_required: bool = True
    project: bool = True  # a /{project}/... route: X-Project-ID, 401 with a key, 403
    open: bool = False  # served without the API key
    max_body: int | None = None  # the request body's own limit (bytes), if not the server's


_API_ERRORS: Final = (400, 401, 403, 404, 503)
_BODY_ERRORS: Final = (*_API_ERRORS, 413, 422)
_JSON: Final = "application/json"
_ASSET: Final = "asset"  # any of the UI assets' media types

#: Every route's description, keyed by (method, path template) as the router has them.
OPERATIONS: Final[Mapping[tuple[str, str], Operation]] = {
    ("GET", "/health"): Operation(
        "health", "Whether the server and its database are up (no key needed).",
        {200: (_JSON, "Health")}, (503,), project=False, open=True,
    ),
    ("POST", "/{project}/json-documents"): Operation(
        "createDocument", "Store one document; a client-supplied id makes it idempotent (200 when already stored).",
        {201: (_JSON, "Created"), 200: (_JSON, "Created")}, (*_BODY_ERRORS, 409), body="DocumentIn",
    ),
    ("GET", "/{project}/json-documents"): Operation(
        "listDocuments", "Query documents, one page at a time.", {200: (_JSON, "DocumentList")}, _API_ERRORS,
    ),
    ("POST", "/{project}/json-documents/batch"): Operation(
        "createDocuments", "Store many documents in one transaction: all or none.",
        {201: (_JSON, "CreatedMany"), 200: (_JSON, "CreatedMany")}, (*_BODY_ERRORS, 409), body="Batch",
    ),
    ("POST", "/{project}/json-documents/prune"): Operation(
        "pruneDocuments", "Delete old states by retention policy (or count them with dry_run).",
        {200: (_JSON, "PruneReport")}, _BODY_ERRORS, body="Prune", body_required=False, max_body=MAX_PRUNE_BODY,
    ),
    ("GET", "/{project}/json-documents/{doc_id}"): Operation(
        "getDocument", "One document.", {200: (_JSON, "Document")}, _API_ERRORS,
    ),
    ("DELETE", "/{project}/json-documents/{doc_id}"): Operation(
        "deleteDocument", "Delete one document.", {200: (_JSON, "Deleted")}, _API_ERRORS,
    ),
    ("GET", "/{project}/sessions"): Operation(
        "listSessions", "The project's sessions, latest activity first (the browser view's list).",
        {200: (_JSON, "SessionList")}, _API_ERRORS,
    ),
    ("GET", METRICS_PATH): Operation(
        "metrics", "Prometheus metrics (text format); needs the metrics key when one is set.",
        {200: ("text/plain", "")}, (401,), project=False, open=True,
    ),
    ("GET", OPENAPI_PATH): Operation(
        "openapi", "This contract.", {200: (_JSON, "")}, (), project=False, open=True,
    ),
    ("GET", UI_PATH): Operation(
        "ui", "The browser view of sessions and their states.", {200: ("text/html", "")}, (), project=False, open=True,
    ),
    ("GET", UI_PATH + "/{asset}"): Operation(
        "uiAsset", "A file of the browser view.", {200: (_ASSET, "")}, (400, 404), project=False, open=True,
    ),
}

_REASONS: Final = {
    400: "Malformed request (bad JSON, bad parameter, nested too deep); a request line or header longer than"
         " 8 KiB is refused as plain text by the HTTP parser, before the service.",
    401: "A valid key is required (Authorization: Bearer <key>).",
    403: "X-Project-ID names another project than the path.",
    404: "Not found.",
    409: "An id exists with another body, or a newer state of the agent exists (parent_seq).",
    413: "Body or batch too large.",
    422: "A field is missing, unknown or of the wrong type.",
    503: "The document store is unavailable.",
}


def _path_parameter(name: str, description: str) -> JSONSchema:
    schema = {**_TEXT, "minLength": 1}
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _content(media: str, schema: str) -> JSONSchema:
    if media == _JSON:
        return {media: {"schema": {"$ref": f"#/components/schemas/{schema}"} if schema else _OBJECT}}
    if media == _ASSET:
        return {asset_type: {"schema": _STRING} for asset_type in sorted(set(ASSETS.values()))}
    return {media: {"schema": _STRING}}


def _operation(op: Operation, path: str, validators: Validators, queries: Mapping[str, list[JSONSchema]]) -> JSONSchema:
    parameters: list[JSONSchema] = []
    if op.project:
        parameters += [_PROJECT, _X_PROJECT]
    if "{doc_id}" in path:
        parameters.append(_path_parameter("doc_id", "A document id."))
    if "{asset}" in path:
        parameters.append(_path_parameter("asset", f"One of {', '.join(sorted(ASSETS))}."))
    parameters += queries.get(op.operation_id, [])
    responses: dict[str, JSONSchema] = {}
    for status, (media, schema) in op.ok.items():
        description = "OK" if status == 200 else "Created"
        responses[str(status)] = {"description": description, "content": _content(media, schema)}
    for status in op.errors:
        content = _content(_JSON, "Error")
        if status == 400:  # aiohttp's HTTP parser answers a request line or header too long as plain text
            content["text/plain"] = {"schema": _STRING}
        responses[str(status)] = {"description": _REASONS.get(status, "Error"), "content": content}
    result: JSONSchema = {"operationId": op.operation_id, "summary": op.summary, "responses": responses}
    if parameters:
        result["parameters"] = parameters
    if op.body:
        result["requestBody"] = {
            "required": op.body_required,
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{op.body}"}}},
            "description": f"At most {op.max_body or validators.limits.max_body_bytes} bytes.",
        }
    result["security"] = [{}] if op.open else [{}, {"bearer": []}]
    return result


def build_spec(app: web.Application, validators: Validators, *, strict: bool = True) -> JSONSchema:
    """The OpenAPI 3.1 contract of ``app``'s routes.

    Args:
        app: the application whose router lists the routes.
        validators: the validators' tables.
        strict: fail on a route :data:`OPERATIONS` does not describe; otherwise leave it out (routes an
            embedding application adds itself, like the benchmarks' statistics route).

    Raises:
        RuntimeError: (strict) a route of the router has no entry in :data:`OPERATIONS`; or the document
            fields drifted.
    """
    paths: dict[str, dict[str, JSONSchema]] = {}
    queries = query_parameters(validators)
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        op = OPERATIONS.get((route.method, path))
        if op is None:
            if strict:
                raise RuntimeError(f"the route {route.method} {path} is not described in the OpenAPI contract")
            continue
        paths.setdefault(path, {})[route.method.lower()] = _operation(op, path, validators, queries)
    try:
        version = metadata.version("wr124-session-actor")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        version = "0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wr124 json-documents (reference server)",
            "version": version,
            "description": "Every error is a JSON body {\"error\": message, \"status\": code}; no request gets a 500."
                           " A method a path does not have (HEAD included) is answered 405, with an Allow header.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(validators),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Needed on every API route when the server has a key."}},
        },
    }


_SPEC: Final = web.AppKey("openapi_spec", bytes)
_VALIDATORS: Final = web.AppKey("openapi_validators", Validators)


def spec_of(app: web.Application, *, strict: bool = True) -> JSONSchema:
    """The contract of an application made by ``create_app`` (no need to start it); see :func:`build_spec`."""
    return build_spec(app, app[_VALIDATORS], strict=strict)


async def _build(app: web.Application) -> None:
    # Built on startup, when every route is registered (the frozen router lists them all).
    # Routes the embedding application added are not ours to describe (the tests hold ours to strict).
    app[_SPEC] = orjson.dumps(spec_of(app, strict=False), option=orjson.OPT_INDENT_2)


async def _serve(request: web.Request) -> web.Response:
    return web.Response(body=request.app[_SPEC], content_type=_JSON)


def install_openapi(app: web.Application, validators: Validators) -> None:
    """Serve ``GET /openapi.json``, built from ``app``'s router and ``validators`` when the app starts."""
    app[_VALIDATORS] = validators
    app.on_startup.append(_build)
    app.router.add_get(OPENAPI_PATH, _serve, name="openapi", allow_head=False)
