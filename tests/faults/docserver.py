"""An in-memory json-documents server on loopback that fails on purpose, and counts what it received.

Unlike ``tests/faultserver.py`` (which only misbehaves), this one also works: it stores documents by
their client-made ids, so a fault test can tell exactly what arrived after retries. Faults:

- ``"ok"``: no fault.
- ``"flaky-500"``: a seeded ``rate`` of write requests answer 500; half of them *after* storing the
  documents (the answer is lost, the write is not: the client's retry must not duplicate it).
- ``"flaky-reset"``: the same, but the connection is reset (RST) instead of answered.
- ``"status"``: the first ``fail_first`` write requests answer ``status`` (with ``Retry-After`` when
  ``retry_after`` is set); later ones work. ``fail_first=None`` fails every write.

``/health`` always answers 200 so that the client's circuit-breaker probes do not add faults, unless
the server has no health route at all (``health=False``: 404).

Like services the client has never seen, it may lack the batch endpoint (``batch=False``: the POST
answers 404) and read ``tags`` only as repeated parameters, or ignore it (``tags="ignore"``), and
ignore ``skip`` (``paging=False``: every page starts at the first document), and ignore the order asked
(``sorting=False``: oldest first, as stored), and cap ``limit`` (``max_limit``: fewer documents than
asked, with the ``total`` of all matches), and route paths that end in "/" only, redirecting the others
there with 307 (``slash=True``), and refuse a ``limit`` above ``refused_limit`` (422, as a validated
query parameter does), and ignore ``session_id`` (``sessions=False``), and date documents to the second
(``whole_seconds=True``, as a SQL ``DATETIME`` column does), and leave ``total`` out of its pages
(``total=False``).
"""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from aiohttp import web

Mode = Literal["ok", "flaky-500", "flaky-reset", "status"]
#: How ``GET`` treats ``tags``: each repeated value is a tag ("repeated"), or the filter is ignored ("ignore").
TagsMode = Literal["repeated", "ignore"]
_LINGER_RST = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends RST


@dataclass(frozen=True, slots=True)
class Hit:
    """One request the server saw: when (``time.monotonic()``), what, and how it was answered."""

    at: float
    method: str
    path: str
    outcome: str  # "ok", "500", "500-after-store", "reset", "reset-after-store", "<status>"
    ids: tuple[str, ...] = ()


class DocServer:
    """The server's state; read it from the test thread once the client is done.

    Args:
        mode: the fault (see the module docstring).
        rate: share of write requests that fail in the flaky modes.
        seed: seed of the fault dice.
        status: the HTTP status of ``"status"`` mode.
        retry_after: the ``Retry-After`` header of ``"status"`` mode, in seconds.
        fail_first: how many write requests fail in ``"status"`` mode (``None``: all).
        batch, tags, paging, sorting, max_limit, health: how it departs from the API (see the module
            docstring).
    """

    def __init__(self, mode: Mode = "ok", *, rate: float = 0.5, seed: int = 0, status: int = 500,
                 retry_after: float | None = None, fail_first: int | None = None, batch: bool = True,
                 tags: TagsMode = "repeated", paging: bool = True, sorting: bool = True,
                 max_limit: int = 10_000, health: bool = True, slash: bool = False,
                 refused_limit: int | None = None, sessions: bool = True, whole_seconds: bool = False,
                 total: bool = True) -> None:
        self.batch = batch
        self.total = total
        self.whole_seconds = whole_seconds
        self.sessions = sessions
        self.refused_limit = refused_limit
        self.slash = slash
        self.paging = paging
        self.sorting = sorting
        self.max_limit = max_limit
        self.health = health
        self.tags = tags
        self.mode = mode
        self.rate = rate
        self.status = status
        self.retry_after = retry_after
        self.fail_first = fail_first
        self._dice = random.Random(seed)
        self._lock = threading.Lock()
        self.url = ""
        #: Stored documents by id (each id at most once, by construction).
        self.docs: dict[str, dict[str, Any]] = {}
        #: How many times each document id was received in a write request.
        self.received: Counter[str] = Counter()
        #: Every request, in arrival order.
        self.hits: list[Hit] = []
        #: The ``limit`` of every query, in arrival order.
        self.limits: list[int] = []
        self._writes = 0

    # -- what a test reads -------------------------------------------------------------------------

    def writes(self) -> list[Hit]:
        """The write requests (POST), in arrival order."""
        with self._lock:
            return [h for h in self.hits if h.method == "POST"]

    def injected(self) -> int:
        """Write requests that were failed on purpose."""
        return sum(1 for h in self.writes() if h.outcome != "ok")

    def stored_states(self) -> list[Any]:
        """The ``state`` of every stored document."""
        with self._lock:
            return [doc["content"]["state"] for doc in self.docs.values()]

    # -- serving -----------------------------------------------------------------------------------

    def _decide(self) -> str:
        """The fate of the next write request: "ok", or a fault, possibly after storing."""
        with self._lock:
            self._writes += 1
            if self.mode == "status":
                if self.fail_first is None or self._writes <= self.fail_first:
                    return str(self.status)
                return "ok"
            if self.mode in ("flaky-500", "flaky-reset") and self._dice.random() < self.rate:
                fault = "500" if self.mode == "flaky-500" else "reset"
                return fault + ("-after-store" if self._dice.random() < 0.5 else "")
            return "ok"

    def _store(self, docs: list[dict[str, Any]]) -> list[str]:
        ids = []
        with self._lock:
            for doc in docs:
                doc_id = str(doc["id"])
                if doc_id not in self.docs:
                    now = datetime.now(UTC).isoformat(timespec="seconds" if self.whole_seconds else "auto")
                    self.docs[doc_id] = {**doc, "_id": doc_id, "created_at": now, "updated_at": now}
                ids.append(doc_id)
        return ids

    def _record(self, request: web.Request, outcome: str, ids: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.hits.append(Hit(time.monotonic(), request.method, request.path, outcome, ids))
            self.received.update(ids)

    async def _write(self, request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        batch = request.path.rstrip("/").endswith("/batch")
        docs = body["documents"] if batch else [body]
        ids = tuple(str(d["id"]) for d in docs)
        fate = self._decide()
        self._record(request, fate, ids)
        if fate.endswith("-after-store") or fate == "ok":
            stored = self._store(docs)
        if fate == "ok":
            return web.json_response({"ids": stored} if batch else {"id": stored[0]}, status=201)
        if fate.startswith("reset"):
            transport = request.transport
            assert transport is not None
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            transport.abort()
            return web.Response()
        status = int(fate.split("-")[0])
        headers = {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}
        return web.json_response({"error": f"injected {status}"}, status=status, headers=headers)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self._record(request, "ok")
        session_id = request.query.get("session_id") if self.sessions else None
        self.limits.append(int(request.query.get("limit", "10")))
        if self.refused_limit is not None and self.limits[-1] > self.refused_limit:
            return web.json_response({"detail": f"limit must be <= {self.refused_limit}"}, status=422)
        limit = min(self.limits[-1], self.max_limit)
        skip = int(request.query.get("skip", "0")) if self.paging else 0
        # Each tags value is one tag, as a list-typed query parameter reads it: a comma-joined value is
        # one (unknown) tag here, so a client must send repeated parameters.
        wanted = request.query.getall("tags", []) if self.tags == "repeated" else []
        with self._lock:
            docs = [d for d in self.docs.values() if (session_id is None or d.get("session_id") == session_id)
                    and all(tag in d.get("tags", ()) for tag in wanted)]
        if self.sorting:
            docs.reverse()  # newest first
        page: dict[str, Any] = {"data": docs[skip:skip + limit]}
        if self.total:
            page["total"] = len(docs)
        return web.json_response(page)

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self._record(request, "ok")
        return web.json_response({"status": "ok"})

    def app(self) -> web.Application:
        """The aiohttp application."""
        # With ``slash``, routes end in "/" and a path without it is redirected there (307, the method
        # and body kept), as a framework with trailing-slash routes does.
        end = "/" if self.slash else ""
        middlewares = [web.normalize_path_middleware(redirect_class=web.HTTPTemporaryRedirect)] if self.slash else []
        app = web.Application(middlewares=middlewares)
        if self.health:
            app.router.add_get("/health", self._health)
        app.router.add_post("/{project}/json-documents" + end, self._write)
        if self.batch:
            app.router.add_post("/{project}/json-documents/batch" + end, self._write)
        app.router.add_get("/{project}/json-documents" + end, self._list)
        return app


@contextmanager
def doc_server(mode: Mode = "ok", **options: Any) -> Iterator[DocServer]:
    """Serve a :class:`DocServer` on 127.0.0.1 in a background thread for the ``with`` block."""
    server = DocServer(mode, **options)
    with serve_app(server.app(), name=f"docserver-{mode}") as url:
        server.url = url
        yield server


@dataclass(frozen=True, slots=True)
class ServerState:
    """What a :class:`DocServer` in a process of its own held, read once the client is done."""

    docs: dict[str, dict[str, Any]]
    hits: list[Hit]


class DocServerProcess:
    """A :class:`DocServer` in a process of its own (:func:`doc_server_process`): the client under test
    has the test process to itself, as against a real service, and not half of one GIL."""

    def __init__(self, url: str) -> None:
        self.url = url

    def state(self) -> ServerState:
        """The documents and requests so far (a blocking call: make it once the client is done)."""
        with urllib.request.urlopen(f"{self.url}/_state", timeout=60) as answer:
            raw = orjson.loads(answer.read())
        return ServerState(raw["docs"], [Hit(at, method, path, outcome, tuple(ids))
                                         for at, method, path, outcome, ids in raw["hits"]])


@contextmanager
def doc_server_process(mode: Mode = "ok", **options: Any) -> Iterator[DocServerProcess]:
    """Serve a :class:`DocServer` on 127.0.0.1 in a subprocess for the ``with`` block."""
    args = [sys.executable, "-m", "tests.faults.docserver", orjson.dumps({"mode": mode, **options}).decode()]
    root = Path(__file__).resolve().parents[2]  # where ``tests`` is a package
    with subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=root) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("LISTENING "):
                raise RuntimeError(f"the docserver process did not start: {line!r}")
            yield DocServerProcess(line.split()[1])
        finally:
            proc.terminate()
            proc.wait(10)


def _serve_in_this_process(options_json: str) -> None:
    """The subprocess of :func:`doc_server_process`: serve until terminated."""
    options = orjson.loads(options_json)
    server = DocServer(options.pop("mode"), **options)
    app = server.app()

    async def state(_request: web.Request) -> web.Response:
        with server._lock:
            body = orjson.dumps({"docs": server.docs, "hits": [astuple(hit) for hit in server.hits]})
        return web.Response(body=body, content_type="application/json")

    app.router.add_get("/_state", state)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"LISTENING http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, access_log=None, print=None)


@contextmanager
def serve_app(app: web.Application, name: str = "test-server") -> Iterator[str]:
    """Serve an aiohttp application on 127.0.0.1 in a background thread; yields its URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.1)
    url = ""

    def serve() -> None:
        nonlocal url
        asyncio.set_event_loop(loop)

        async def start() -> None:
            nonlocal url
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            url = f"http://127.0.0.1:{port}"

        loop.run_until_complete(start())
        # Ready once the loop runs forever: a stop asked for sooner would be lost before run_forever.
        loop.call_soon(ready.set)
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=serve, name=name, daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"the {name} did not start")
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


if __name__ == "__main__":
    _serve_in_this_process(sys.argv[1])
