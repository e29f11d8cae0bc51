"""The reference server for the benchmarks, run as ``python -m bench._server`` in its own process.

It is :func:`wr124_session_actor.server.create_app` unchanged, plus a middleware that counts the
requests each project receives, served at ``GET /_bench/stats`` (the store writes the benchmarks
report are these counts). It prints ``LISTENING <url>`` once it listens and exits when its stdin
closes (so it never outlives the benchmark) or on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from bench._common import quiet_structlog
from wr124_session_actor.server import create_app

__all__ = ["build_app", "main"]


def build_app(db_path: str) -> web.Application:
    """The reference application over ``db_path``, with a request counter per project."""
    counts: dict[str, dict[str, int]] = {}

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        parts = request.path.split("/", 3)
        if len(parts) >= 3 and parts[2] == "json-documents":
            row = counts.get(parts[1])
            if row is None:
                row = counts[parts[1]] = {"requests": 0, "writes": 0}
            row["requests"] += 1
            if request.method == "POST":
                row["writes"] += 1
        return await handler(request)

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counts)

    app = create_app(db_path, middlewares=[count_requests])
    app.router.add_get("/_bench/stats", stats)
    return app


async def _serve(db_path: str, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the benchmark closed our stdin or died
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    runner = web.AppRunner(build_app(db_path), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True, backlog=4096)
        await site.start()
        bound = runner.addresses[0][1]
        gc.freeze()  # as run_server (the CLI's serve) does once it listens
        print(f"LISTENING http://{host}:{bound}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m bench._server")
    parser.add_argument("--db", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    quiet_structlog()
    asyncio.run(_serve(args.db, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
