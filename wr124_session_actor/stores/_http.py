"""The json-documents REST API as a :class:`DocumentStore`, over any :class:`Transport`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import quote, unquote, urljoin, urlsplit

import anyio
import anyio.lowlevel
import anyio.to_thread
import orjson

from .._document import EncodedDocument, decode
from .._exceptions import (
    DocumentNotFound,
    StoreBadResponse,
    StoreClosed,
    StoreError,
    StoreRejected,
    StoreTimeout,
    StoreUnavailable,
)
from .._retention import PruneReport, RetentionPolicy
from ..transports import Params, Response, Transport, preload_clients
from ._base import MAX_QUERY_LIMIT, Document, Query, QueryResult

__all__ = ["MAX_SERVER_BATCH", "HttpStore"]

#: The most documents the reference server takes in one batch request.
MAX_SERVER_BATCH: Final = 1000
_ENVELOPE: Final = len(b'{"documents":[]}')
#: What a server without the batch endpoint answers to it: Not Found, Method Not Allowed (a route
#: ``/{id}`` without POST), Not Implemented.
_NO_BATCH_ENDPOINT: Final = frozenset({404, 405, 501})
#: Redirects followed with the same method and body (a framework's trailing-slash redirect is a 307).
_SAME_METHOD_REDIRECTS: Final = frozenset({307, 308})
#: Redirects followed by reads only (they would turn a write into a GET).
_READ_REDIRECTS: Final = frozenset({301, 302, 303})
_MAX_REDIRECTS: Final = 5
#: Answers to a query that may mean "this page is larger than the server allows" (a validated ``limit``).
_PAGE_REFUSALS: Final = frozenset({400, 422})


class HttpStore:
    """Documents behind the json-documents HTTP API.

    Args:
        base_url: the server's root, e.g. ``http://127.0.0.1:8000``.
        project: the project (path segment and ``X-Project-ID`` header).
        transport_factory: makes the transport on first use, inside the running event loop.
        api_key: sent as ``Authorization: Bearer`` when set.
        max_body_bytes: batches are split so that no request body is larger.
        concurrency: single POSTs in flight at once when the server has no batch endpoint (the
            configuration's write concurrency when the store is opened from it; 8, as for HTTP there).
    """

    def __init__(
        self,
        base_url: str,
        project: str,
        transport_factory: Callable[[], Transport],
        *,
        api_key: str | None = None,
        max_body_bytes: int = 64 * 1024 * 1024,
        concurrency: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.project = project
        self._collection = f"{self.base_url}/{quote(project, safe='')}/json-documents"
        self._transport_factory = transport_factory
        self._transport: Transport | None = None
        self._opening: anyio.Event | None = None
        self._headers = {"X-Project-ID": project, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._max_body = max_body_bytes
        self._max_count = MAX_SERVER_BATCH
        self._max_limit = MAX_QUERY_LIMIT  # lowered by a server that refuses larger pages
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._closed = False
        #: ``None`` until known; ``False`` after the server answered 404, 405 or 501 to the batch endpoint.
        self.batch_supported: bool | None = None
        #: Whether the server answers queries newest first as asked: ``None`` until a page shows it.
        self.newest_first: bool | None = None
        #: Whether the server's document routes end in "/" (learned from its first trailing-slash redirect).
        self.trailing_slash = False
        #: HTTP requests sent (the "store writes" and reads benchmarks count).
        self.requests_sent = 0

    @property
    def transport_name(self) -> str | None:
        """The client library in use, once the first request chose it."""
        return None if self._transport is None else self._transport.name

    async def _request(
        self, method: str, url: str, *, params: Params = (), content: bytes | None = None
    ) -> Response:
        if self._closed:
            raise StoreClosed("the HTTP store is closed")
        transport = self._transport or await self._open_transport()
        headers = self._headers if content is None else self._json_headers
        if self.trailing_slash and url.startswith(self._collection) and not url.endswith("/"):
            url += "/"
        for _ in range(_MAX_REDIRECTS):
            self.requests_sent += 1
            resp = await transport.request(method, url, headers=headers, params=params, content=content)
            target = _redirect_target(method, url, resp)
            if target is None:
                break
            there = urlsplit(target)
            if there.path == urlsplit(url).path + "/":
                self.trailing_slash = True  # routes that end in "/": ask there from now on, one trip each
            url, params = target, (() if there.query else params)
        return resp

    async def _open_transport(self) -> Transport:
        """Make the transport once, its client library imported off the event loop first."""
        while self._transport is None:
            if self._opening is not None:
                await self._opening.wait()  # another request is opening it
                continue
            self._opening = opening = anyio.Event()
            try:
                await anyio.to_thread.run_sync(preload_clients)
                self._transport = self._transport_factory()
            finally:
                self._opening = None
                opening.set()
        return self._transport

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """Send the documents in as few batch requests as the body and batch limits allow.

        A server (or a proxy before it) that finds a batch too large (413) has the store keep to half
        that batch's size and count from then on, down to one document: only a document too large on its
        own is refused."""
        ids: list[str] = []
        start = 0
        while start < len(docs):
            end = _chunk_end(docs, start, self._max_body - _ENVELOPE, self._max_count)
            chunk = docs[start:end]
            new = [doc for doc in chunk if doc.stored_as is None]  # not stored by an earlier request of this write
            try:
                got = await self._insert_batch(new) if new and self.batch_supported is not False else None
            except _TooLarge:
                continue  # chunk again, within what the server takes
            if got is None:
                ids.extend(await self._insert_singly(chunk))
                start = end
                continue
            for doc, doc_id in zip(new, got, strict=True):
                doc.stored_as = doc_id  # a later request of the write failing, its retry does not send it again
            ids.extend(doc.stored_as or doc.id for doc in chunk)
            start = end
        return ids

    async def _insert_batch(self, chunk: Sequence[EncodedDocument]) -> list[str] | None:
        """POST ``chunk`` to the batch endpoint; ``None`` when the server has none, or refuses a repeated id
        (409): the chunk is then posted document by document, each 409 looked up.

        Raises:
            _TooLarge: the server answered 413 to several documents (the store's limits are halved).
        """
        body = b'{"documents":[' + b",".join(d.body for d in chunk) + b"]}"
        resp = await self._request("POST", f"{self._collection}/batch", content=body)
        if resp.status in _NO_BATCH_ENDPOINT:
            self.batch_supported = False  # an older server: remember, and fall back
            return None
        self.batch_supported = True
        if resp.status == 413 and len(chunk) > 1:
            self._max_body = min(self._max_body, max(len(body) // 2, _ENVELOPE + 1))
            self._max_count = min(self._max_count, len(chunk) // 2)
            raise _TooLarge
        if resp.status == 409:  # a repeated id (a retry whose answer was lost): each document says which
            return None
        return _created_ids(resp, chunk)

    async def _insert_singly(self, docs: Sequence[EncodedDocument]) -> list[str]:
        """One POST per document (a server without the batch endpoint): the sessions' documents go in
        parallel, at most ``concurrency`` requests at once, and each session's in order.

        A few workers take the sessions one after another (a task per session would cost more than its
        POST when thousands of sessions wrote one document each). The first POST that fails stops the
        workers from taking another session; those in flight end, and its error is raised as it is
        (never wrapped in an exception group: callers handle a :class:`StoreError`). The documents stored
        by then keep their ids (``stored_as``), and the write's retry does not send them again: else it
        would succeed only if all its POSTs did at once, and a server that makes its own ids would store
        them twice."""
        by_session: dict[str, list[int]] = {}
        ids: list[str] = [""] * len(docs)
        for index, doc in enumerate(docs):
            if doc.stored_as is None:
                by_session.setdefault(doc.session_id, []).append(index)
            else:
                ids[index] = doc.stored_as
        sessions = deque(by_session.values())
        failures: list[StoreError] = []

        async def post_sessions_in_order() -> None:
            try:
                while sessions and not failures:
                    for index in sessions.popleft():
                        doc = docs[index]
                        async with self._limiter:  # the look-up after a 409 is a request in flight too
                            resp = await self._request("POST", self._collection, content=bytes(doc.body))
                            held = resp.status == 409 and await self._stored_before(doc)
                        ids[index] = doc.stored_as = doc.id if held else _created_id(resp, doc.id)
            except StoreError as exc:
                failures.append(exc)

        workers = min(len(sessions), int(self._limiter.total_tokens))
        if workers == 0:
            await anyio.lowlevel.checkpoint()  # every document stored by an earlier try
        elif workers == 1:
            await post_sessions_in_order()
        else:
            async with anyio.create_task_group() as group:
                for _ in range(workers):
                    group.start_soon(post_sessions_in_order)
        if failures:
            failures[0].progressed = any(ids[i] for indexes in by_session.values() for i in indexes)
            raise failures[0]
        return ids

    def _document_url(self, doc_id: str) -> str:
        return f"{self._collection}/{quote(doc_id, safe='')}"

    async def _stored_before(self, doc: EncodedDocument) -> bool:
        """Whether the server already holds ``doc`` under its id: a service that refuses a repeated id
        (409) answers so to a retry whose first answer was lost, and to a replay; the id is ours (made
        for this upload), so the document there, of the same name and session, is this one."""
        resp = await self._request("GET", self._document_url(doc.id))
        try:
            _check_status(resp, doc.id)
        except StoreError as exc:
            if exc.transient:
                raise  # not known yet: the write is tried again
            return False
        if resp.status != 200:
            return False
        try:
            stored = _body(resp)
        except StoreBadResponse:
            return False
        return stored.get("name") == doc.name and stored.get("session_id") == doc.session_id

    async def query(self, query: Query) -> QueryResult:
        """``GET /{project}/json-documents`` with the query's filters.

        A server that refuses a page as large as asked (400 or 422: a validated maximum of ``limit``) is
        asked for half as many until it answers, and for no more than that from then on (a shorter
        page with the server's ``total`` reads on)."""
        asked = min(query.limit, MAX_QUERY_LIMIT)
        limit = min(asked, self._max_limit)
        while True:
            resp = await self._request("GET", self._collection, params=_query_params(query, limit))
            if resp.status not in _PAGE_REFUSALS or limit == 1:
                break
            limit //= 2
        if limit < asked and 200 <= resp.status < 300:
            self._max_limit = limit
        _check_status(resp, None)
        body = _body(resp)  # decoded once (a 10 MB page was decoded twice, for its data and for its total)
        data = body.get("data")
        if not isinstance(data, list):
            raise StoreBadResponse(f"HTTP {resp.status}: the answer has no 'data' list")
        if not all(isinstance(d, dict) for d in data):
            raise StoreBadResponse("the server's 'data' holds something that is not a document")
        total = body.get("total")
        return QueryResult(data, total if type(total) is int else None)

    async def get(self, doc_id: str) -> Document:
        """``GET /{project}/json-documents/{id}``."""
        resp = await self._request("GET", self._document_url(doc_id))
        _check_status(resp, doc_id)
        return _body(resp)

    async def delete(self, doc_id: str) -> None:
        """``DELETE /{project}/json-documents/{id}``."""
        resp = await self._request("DELETE", self._document_url(doc_id))
        _check_status(resp, doc_id)

    async def prune(
        self,
        policy: RetentionPolicy | None = None,
        *,
        session_id: str | None = None,
        dry_run: bool = False,
        now: datetime | None = None,
    ) -> PruneReport:
        """``POST /{project}/json-documents/prune``: the server prunes by ``policy`` (``None``: its own).

        Raises:
            ValueError: ``now`` is given (the server measures ages by its own clock).
            StoreRejected: the server has no prune endpoint (404/405) or refused the request.
        """
        if now is not None:
            raise ValueError("an HTTP store cannot prune as of another time: the server's clock decides")
        body: dict[str, object] = {"dry_run": dry_run}
        if policy is not None:
            body.update(keep_last=policy.keep_last, max_age=policy.max_age, idle_ttl=policy.idle_ttl)
        if session_id is not None:
            body["session_id"] = session_id
        resp = await self._request("POST", f"{self._collection}/prune", content=orjson.dumps(body))
        _check_status(resp, None)
        try:
            return PruneReport.from_dict(_body(resp))
        except ValueError as exc:
            raise StoreBadResponse(f"HTTP {resp.status}: {exc}") from None

    async def health(self) -> None:
        """``GET /health``; raises unless it answers 2xx."""
        resp = await self._request("GET", f"{self.base_url}/health")
        _check_status(resp, None)

    async def aclose(self) -> None:
        """Close the transport; later calls raise ``StoreClosed``."""
        self._closed = True
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()


def _query_params(query: Query, limit: int) -> list[tuple[str, str]]:
    """The query string of ``query`` with a page of ``limit`` documents."""
    params: list[tuple[str, str]] = [
        ("limit", str(limit)),
        ("skip", str(query.skip)),
        ("sort_by", query.sort_by),
        ("sort_order", str(query.sort_order)),
    ]
    for key in ("session_id", "document_type", "name_pattern", "created_after", "created_before"):
        value = getattr(query, key)
        if value is not None:
            params.append((key, value))
    # A list goes out as repeated parameters (tags=a&tags=b), as the original client's aiohttp sent it.
    params.extend(("tags", tag) for tag in query.tags)
    return params


def _redirect_target(method: str, url: str, resp: Response) -> str | None:
    """Where to send a request again that ``resp`` redirects (each client library does it its own way:
    aiohttp follows, httpcore and urllib's POST do not): 307 and 308 for any request, 301 to 303 for
    reads; on the same server only, so the key never goes elsewhere."""
    if resp.status not in _SAME_METHOD_REDIRECTS and not (resp.status in _READ_REDIRECTS and method == "GET"):
        return None
    location = resp.headers.get("location")
    if not location:
        return None
    target = urljoin(url, location)
    here, there = urlsplit(url), urlsplit(target)
    return target if (here.scheme, here.netloc) == (there.scheme, there.netloc) else None


def _chunk_end(docs: Sequence[EncodedDocument], start: int, max_bytes: int, max_count: int) -> int:
    """Where the chunk of ``docs`` from ``start`` ends: within ``max_bytes`` and ``max_count`` (at least one)."""
    end = start
    size = 0
    while end < len(docs) and end - start < max_count:
        size += len(docs[end].body) + 1
        if end > start and size > max_bytes:
            break
        end += 1
    return end


class _TooLarge(Exception):
    """The server refused a batch of several documents as too large (413)."""


#: The most characters of a server's error detail a message quotes.
_DETAIL_CHARS: Final = 500


def _error_message(resp: Response) -> str:
    try:
        body = decode(resp.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "detail", "message"):
            if key in body:
                detail = str(body[key])  # at most _DETAIL_CHARS: a 200 KB detail went into every log line of it
                return f"HTTP {resp.status}: {detail[:_DETAIL_CHARS]}{'...' if len(detail) > _DETAIL_CHARS else ''}"
    text = resp.content[:200].decode("utf-8", "replace").strip()
    return f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}"


def _retry_after(resp: Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None  # an HTTP-date: rare for APIs; use our own backoff


def _check_status(resp: Response, doc_id: str | None) -> None:
    if 200 <= resp.status < 300:
        return
    message = _error_message(resp)
    if resp.status == 404 and doc_id is not None:
        raise DocumentNotFound(f"no document {doc_id!r} ({message})", status_code=404)
    if resp.status == 408:
        raise StoreTimeout(message)
    if resp.status == 429 or resp.status >= 500:
        raise StoreUnavailable(message, retry_after=_retry_after(resp))
    raise StoreRejected(message, status_code=resp.status)


def _body(resp: Response) -> dict[str, Any]:
    try:
        body = decode(resp.content)
    except orjson.JSONDecodeError as exc:
        raise StoreBadResponse(f"HTTP {resp.status}: malformed JSON from the server: {exc}") from None
    if not isinstance(body, dict):
        raise StoreBadResponse(f"HTTP {resp.status}: expected a JSON object, got {type(body).__name__}")
    return body


def _no_content(resp: Response) -> bool:
    """Whether ``resp`` is a success with an empty body (``201 Created`` with at most a ``Location``, ``204``)."""
    return 200 <= resp.status < 300 and not resp.content.strip()


def _created_fields(resp: Response) -> tuple[dict[str, Any], bool]:
    """The JSON object a create's success answered with, and whether its status alone confirms the create:
    ``201 Created`` does whatever its body holds, and so does a success with no body. Another success must
    answer a JSON object naming what it stored (an HTML page from a proxy answering 200 confirms nothing):
    a body that is not one is :class:`StoreBadResponse`."""
    _check_status(resp, None)
    if _no_content(resp):
        return {}, True
    confirmed = resp.status == 201
    try:
        return _body(resp), confirmed
    except StoreBadResponse:
        if confirmed:
            return {}, True
        raise


def _is_id(value: object) -> bool:
    """Whether a store's answer names a document by ``value``: a non-empty string, or a number."""
    return (isinstance(value, str) and bool(value)) or type(value) is int


def _created_id(resp: Response, sent: str) -> str:
    """The id a single POST answered: ``id``, or ``_id`` as some services name it (the original client took
    either); a number is taken as its text. A create confirmed without one (see :func:`_created_fields`)
    names the document by its ``Location`` (the last path segment), or else it keeps the id ``sent``."""
    body, confirmed = _created_fields(resp)
    for key in ("id", "_id"):
        value = body.get(key)
        if _is_id(value):
            return str(value)
    if not confirmed:
        raise StoreBadResponse(f"HTTP {resp.status}: the answer has no 'id' (nor '_id')")
    location = urlsplit(resp.headers.get("location", "")).path.rstrip("/")
    return unquote(location.rpartition("/")[2]) if location else sent


def _created_ids(resp: Response, chunk: Sequence[EncodedDocument]) -> list[str]:
    """The ids a batch POST answered (``ids``, one per document). A create confirmed without them (see
    :func:`_created_fields`; all or none) keeps the ids the documents were sent with."""
    body, confirmed = _created_fields(resp)
    ids = body.get("ids")
    if isinstance(ids, list) and len(ids) == len(chunk) and all(map(_is_id, ids)):
        return [str(i) for i in ids]
    if not confirmed:  # a 200 must name what it stored: an empty list, or ids of another batch, confirm nothing
        raise StoreBadResponse(f"HTTP {resp.status}: the answer has no 'ids' list naming each of the"
                               f" {len(chunk)} documents")
    return [doc.id for doc in chunk]
