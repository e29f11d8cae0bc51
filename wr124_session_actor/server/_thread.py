"""Running the server: :class:`ServerThread` for tests and examples, :func:`run_server` for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .._retention import NO_RETENTION, RetentionPolicy
from ._app import DEFAULT_LIMITS, ServerLimits, create_app

__all__ = ["ServerThread", "run_server"]

#: How long a stopping server lets requests in flight finish before it cancels them.
_SHUTDOWN_TIMEOUT: Final = 2.0


def _shown(db: str) -> str:
    """A database for the log: a URL's password hidden."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", db)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerThread:
    """The reference server on its own asyncio event loop in a background thread.

    Tests under any async library (trio included) or none can talk to it over real HTTP::

        with ServerThread(tmp_path / "docs.db") as server:
            httpx.get(f"{server.url}/health")

    Args:
        db_path: the sqlite file the server keeps documents in, or a ``postgresql://`` URL.
        host: the address to listen on.
        port: the port; 0 picks a free one on the first start, and later starts reuse it.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        limits: the server's limits.
        enable_batch: serve the batch endpoint (``False`` acts as an older server without it).
        delay: seconds every request waits before it is handled (a slow server, for timeout tests);
            a plain attribute, change it at any time.
        startup_timeout: how long :meth:`start` waits for the server to listen.
        retention: the retention policy the server enforces (keep-last after writes, periodic sweeps).
        sweep_interval: seconds between the server's periodic sweeps.
        metrics_key: when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_key>``.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        limits: ServerLimits = DEFAULT_LIMITS,
        enable_batch: bool = True,
        delay: float = 0.0,
        startup_timeout: float = 10.0,
        retention: RetentionPolicy = NO_RETENTION,
        sweep_interval: float = 60.0,
        metrics_key: str | None = None,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.retention = retention
        self.sweep_interval = sweep_interval
        self.host = host
        #: The listening port (known after the first start; kept for restarts).
        self.port = port
        self.api_key = api_key
        self.limits = limits
        self.enable_batch = enable_batch
        #: Seconds every request sleeps before it is handled.
        self.delay = delay
        self.startup_timeout = startup_timeout
        self.metrics_key = metrics_key
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None  # asyncio-only: aiohttp.web
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        """The server's root URL, e.g. ``http://127.0.0.1:54321``.

        Raises:
            RuntimeError: the server was never started, so its port is not known yet.
        """
        if self.port == 0:
            raise RuntimeError("the server has not been started yet; its port is not known")
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start the server and return once it is listening.

        Returns:
            The server itself, for chaining.

        Raises:
            RuntimeError: it is already running, or it did not start within ``startup_timeout``.
            OSError: the port is taken, or the database cannot be opened (whatever startup raised).
        """
        if self.running:
            raise RuntimeError("the server is already running")
        ready = threading.Event()
        self._startup_error = None
        thread = threading.Thread(
            target=self._run, args=(ready,), name=f"wr124-server-{self.host}:{self.port}", daemon=True
        )
        self._thread = thread
        thread.start()
        if not ready.wait(self.startup_timeout):
            # The thread is left to finish on its own (it is a daemon); a later stop() ends it.
            raise RuntimeError(f"the server did not start within {self.startup_timeout} s")
        if self._startup_error is not None:
            thread.join()
            self._thread = None
            error, self._startup_error = self._startup_error, None
            raise error
        return self

    def stop(self) -> None:
        """Stop the server and wait for its thread to end; does nothing when it is not running.

        Requests waiting out :attr:`delay` are answered 503 at once; others in flight get a couple
        of seconds to finish.
        """
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None

    def restart(self) -> None:
        """Stop and start again on the same port, with the same database (clients can reconnect)."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))  # asyncio-only: aiohttp.web
        except BaseException as exc:
            if ready.is_set():
                raise
            self._startup_error = exc
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        stopping = asyncio.Event()  # asyncio-only: aiohttp.web
        app = create_app(
            self.db_path,
            api_key=self.api_key,
            limits=self.limits,
            enable_batch=self.enable_batch,
            middlewares=[self._delay_middleware(stopping)],
            retention=self.retention,
            sweep_interval=self.sweep_interval,
            metrics_key=self.metrics_key,
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
            self.port = runner.addresses[0][1]
            self._loop = asyncio.get_running_loop()
            self._stopping = stopping
            ready.set()
            await stopping.wait()
        finally:
            stopping.set()  # wake delayed requests so that cleanup does not wait for them
            await runner.cleanup()

    def _delay_middleware(self, stopping: asyncio.Event) -> Middleware:  # asyncio-only: aiohttp.web
        @web.middleware
        async def delay(request: web.Request, handler: Handler) -> web.StreamResponse:
            seconds = self.delay
            if seconds > 0:
                try:
                    async with asyncio.timeout(seconds):
                        await stopping.wait()
                except TimeoutError:
                    pass
                else:
                    raise web.HTTPServiceUnavailable(text="the server is stopping")
            return await handler(request)

        return delay


def run_server(
    host: str = "127.0.0.1",
    port: int = 8000,
    db_path: str | os.PathLike[str] = "wr124-session.db",
    api_key: str | None = None,
    *,
    limits: ServerLimits = DEFAULT_LIMITS,
    enable_batch: bool = True,
    announce: Callable[[str], None] | None = None,
    retention: RetentionPolicy = NO_RETENTION,
    sweep_interval: float = 60.0,
    metrics_key: str | None = None,
) -> None:
    """Serve the json-documents API until SIGINT or SIGTERM (the CLI's ``serve``).

    Args:
        host: the address to listen on.
        port: the port (0 picks a free one; the announced URL shows which).
        db_path: the sqlite file the documents live in, or a ``postgresql://`` URL.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer <key>``.
        limits: the server's limits.
        enable_batch: serve the batch endpoint.
        announce: called once with a line naming the URL when the server listens (default: print
            it to stdout, flushed).
        retention: the retention policy the server enforces.
        sweep_interval: seconds between periodic sweeps.
        metrics_key: when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_key>``.
    """
    app = create_app(db_path, api_key=api_key, limits=limits, enable_batch=enable_batch, retention=retention,
                     sweep_interval=sweep_interval, metrics_key=metrics_key)
    with contextlib.suppress(KeyboardInterrupt):
        serve = _serve_forever(app, host, port, os.fspath(db_path), announce or _print_flushed)
        asyncio.run(serve)  # asyncio-only: aiohttp.web


def _print_flushed(line: str) -> None:
    print(line, flush=True)


async def _serve_forever(
    app: web.Application, host: str, port: int, db_path: str, announce: Callable[[str], None]
) -> None:
    stop = asyncio.Event()  # asyncio-only: aiohttp.web
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Not on Windows or outside the main thread; Ctrl+C then ends asyncio.run instead.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound_port = runner.addresses[0][1]
        # What exists now (modules, the app) lives as long as the process: keep it out of the cyclic
        # collector's full passes. A batch of documents allocates thousands of containers, and each full
        # pass over the startup objects doubled the cost of decoding it (15.6 -> 29 us per document).
        gc.freeze()
        announce(f"json-documents server listening on {_url(host, bound_port)} (database: {_shown(db_path)})")
        await stop.wait()
    finally:
        await runner.cleanup()
