"""Retention on the reference server: the prune endpoint, keep-last after writes, periodic sweeps.

Route::

    POST /{project}/json-documents/prune    200 {"sessions": s, "documents": d, "bytes": b, "dry_run": x}

The body ``{"keep_last", "max_age", "idle_ttl", "session_id", "dry_run"}`` is optional, and so is each
field: an omitted rule is the server's own (``serve --keep-last --max-age --idle-ttl``), ``null`` or
``0`` turns it off; durations are seconds or text such as ``90s``, ``15m``, ``12h``, ``7d``. The route is
protected like every other by the server's API key (whoever may delete documents may prune them).
A malformed body is a 400/422 JSON error.

:func:`install_retention` adds the route, and a periodic sweep by the server's policy that runs for
the application's lifetime (``cleanup_ctx``); :func:`sweep_after_write` trims the sessions a write
just touched to ``keep_last``. Several replicas may sweep one database at once (see
``stores/_retention.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import anyio
import orjson
import structlog
from aiohttp import web

from .._document import EncodedDocument
from .._retention import RetentionPolicy
from ..stores import DocumentEngine, RetentionSweeper

__all__ = ["install_retention", "sweep_after_write"]

logger = structlog.get_logger(__name__)

#: Runs an engine call in a worker thread and maps its failures to API errors (the app's).
EngineCall = Callable[..., Awaitable[Any]]

_FIELDS: Final = ("keep_last", "max_age", "idle_ttl", "session_id", "dry_run")
MAX_PRUNE_BODY: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class _Retention:
    policy: RetentionPolicy
    engine: Callable[[web.Application], DocumentEngine]
    call: EngineCall
    sweep_interval: float


_RETENTION: Final = web.AppKey("retention", _Retention)


def install_retention(
    app: web.Application,
    *,
    engine: Callable[[web.Application], DocumentEngine],
    call: EngineCall,
    policy: RetentionPolicy,
    sweep_interval: float = 60.0,
) -> None:
    """Add the prune route and, when ``policy`` has a rule, the periodic sweep.

    Args:
        app: the application (its engine context must come first in ``cleanup_ctx``).
        engine: returns the application's engine.
        call: runs an engine call off the event loop, as the other handlers do.
        policy: the server's retention policy.
        sweep_interval: seconds between periodic sweeps (0 turns them off).
    """
    app[_RETENTION] = _Retention(policy, engine, call, sweep_interval)
    app.router.add_post("/{project}/json-documents/prune", _prune, name="prune")
    if policy.enabled and sweep_interval > 0:
        app.cleanup_ctx.append(_periodic_sweeps)


async def sweep_after_write(app: web.Application, project: str, docs: Sequence[EncodedDocument]) -> None:
    """Trim the sessions of ``docs`` to the server's ``keep_last`` (the write is already stored)."""
    retention = app.get(_RETENTION)
    if retention is None or not retention.policy.keep_last:
        return
    sweeper = RetentionSweeper(retention.engine(app), retention.policy, interval=retention.sweep_interval)
    try:
        await retention.call(app, sweeper.after_write, project, docs)
    except Exception as exc:  # an ApiError (store trouble): the write succeeded, the next one trims
        logger.warning("server_keep_last_failed", project=project, error=str(exc))


def _unprocessable(message: str) -> web.HTTPException:
    return web.HTTPUnprocessableEntity(text=message)


def _parse_body(raw: bytes, default: RetentionPolicy) -> tuple[RetentionPolicy, str | None, bool]:
    """The policy, session and dry-run flag a prune body asks for (omitted rules: ``default``'s)."""
    if not raw:  # no body: the server's policy (whitespace alone is no JSON text, as the contract says)
        body: Any = {}
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise web.HTTPBadRequest(text=f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _unprocessable("the prune body must be a JSON object")
    unknown = body.keys() - set(_FIELDS)
    if unknown:
        raise _unprocessable(f"unknown field(s): {', '.join(sorted(unknown))}")
    session_id = body.get("session_id")
    if session_id is not None and (not isinstance(session_id, str) or not session_id):
        raise _unprocessable("'session_id' must be a non-empty string or null")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise _unprocessable("'dry_run' must be a boolean")
    try:
        policy = RetentionPolicy.parse(
            keep_last=body.get("keep_last") if "keep_last" in body else default.keep_last,
            max_age=body.get("max_age") if "max_age" in body else default.max_age,
            idle_ttl=body.get("idle_ttl") if "idle_ttl" in body else default.idle_ttl,
        )
    except ValueError as exc:
        raise _unprocessable(str(exc)) from None
    return policy, session_id, dry_run


async def _prune(request: web.Request) -> web.Response:
    retention = request.app[_RETENTION]
    if request.content_length is not None and request.content_length > MAX_PRUNE_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_PRUNE_BODY, actual_size=request.content_length)
    policy, session_id, dry_run = _parse_body(await request.read(), retention.policy)
    project = request.match_info["project"]
    engine = retention.engine(request.app)
    report = await retention.call(
        request.app, partial(engine.prune, project, policy, session_id=session_id, dry_run=dry_run)
    )
    logger.info("server_prune", project=project, policy=policy.describe(), session_id=session_id,
                **report.as_dict())
    return web.json_response(report.as_dict())


async def _periodic_sweeps(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_sweep_forever(app))  # asyncio-only: aiohttp.web
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # asyncio-only: aiohttp.web
            await task


async def _sweep_forever(app: web.Application) -> None:
    """Sweep every project by the server's policy, every ``sweep_interval`` (±10 %, so replicas spread)."""
    retention = app[_RETENTION]
    while True:
        await anyio.sleep(retention.sweep_interval * random.uniform(0.9, 1.1))
        try:
            report = await retention.call(app, retention.engine(app).prune, None, retention.policy)
        except Exception as exc:  # store trouble: try again next period
            logger.warning("server_sweep_failed", error=str(exc))
            continue
        logger.info("server_sweep", policy=retention.policy.describe(), **report.as_dict())
