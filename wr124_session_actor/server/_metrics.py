"""``GET /metrics``: the reference server's own Prometheus metrics.

Each application has its own :class:`~prometheus_client.CollectorRegistry` (several servers in one
process never collide). A middleware outside the JSON-error middleware counts every answered request
by route template, method and status, and times it; the handlers count stored documents and
database errors through :func:`count_stored` and :func:`count_database_error`.

Without ``prometheus_client`` (the ``metrics`` extra) the server still runs; ``/metrics`` then
answers 501 with a JSON error saying what to install.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ._auth import bearer_key, bearer_matches

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Histogram
except ImportError:  # pragma: no cover - the metrics extra is part of the dev install
    prometheus_client = None  # type: ignore[assignment]

__all__ = ["METRICS_PATH", "ServerMetrics", "count_database_error", "count_stored", "install_metrics"]

#: Where the metrics are served.
METRICS_PATH: Final = "/metrics"
#: Every server metric name starts with this.
PREFIX: Final = "wr124_session_server_"
#: The route label of requests that matched no route (keeps the label set bounded).
UNMATCHED: Final = "unmatched"

_LATENCY_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class ServerMetrics:
    """One application's registry and metrics."""

    registry: CollectorRegistry
    answered: Counter
    latency: Histogram
    documents: Counter
    database_errors: Counter


_METRICS: Final = web.AppKey("metrics", ServerMetrics)
_METRICS_KEY: Final = web.AppKey("metrics_key", bytes)  # empty: open like /health


def _new_metrics() -> ServerMetrics:
    registry = CollectorRegistry()
    return ServerMetrics(
        registry=registry,
        answered=Counter(
            PREFIX + "requests_total", "Requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=registry,
        ),
        latency=Histogram(
            PREFIX + "request_duration_seconds", "Time to answer a request, by route template and method.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=registry,
        ),
        documents=Counter(PREFIX + "documents_stored_total", "Documents newly stored.", registry=registry),
        database_errors=Counter(
            PREFIX + "database_errors_total", "Database failures (answered 503), by error type.",
            ["error"], registry=registry,
        ),
    )


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count and time every request (it sits outside the error middleware, so it sees final statuses)."""
    metrics = request.app[_METRICS]
    started = time.perf_counter()
    status = "cancelled"  # the client went away, or the server is stopping
    try:
        response = await handler(request)
        status = str(response.status)
        return response
    except web.HTTPException as exc:
        status = str(exc.status)
        raise
    finally:
        route = _route_of(request)
        metrics.answered.labels(route, request.method, status).inc()
        metrics.latency.labels(route, request.method).observe(time.perf_counter() - started)


async def _metrics_handler(request: web.Request) -> web.Response:
    expected = request.app[_METRICS_KEY]
    if expected and not bearer_matches(request.headers, expected):
        raise web.HTTPUnauthorized(
            text="the metrics key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    if prometheus_client is None:
        raise web.HTTPNotImplemented(text="install wr124-session-actor[metrics] for /metrics")
    body = prometheus_client.generate_latest(request.app[_METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def install_metrics(app: web.Application, metrics_key: str | None) -> None:
    """Serve ``GET /metrics`` on ``app`` and count its requests (call before the app starts).

    Args:
        app: the application; its middlewares must start with :func:`middlewares`.
        metrics_key: when set, ``/metrics`` needs ``Authorization: Bearer <metrics_key>``;
            otherwise it is open like ``/health`` (the API key never applies to it).
    """
    if prometheus_client is not None:
        app[_METRICS] = _new_metrics()
    app[_METRICS_KEY] = bearer_key(metrics_key)
    app.router.add_get(METRICS_PATH, _metrics_handler, name="metrics", allow_head=False)


def middlewares() -> list[Middleware]:
    """The middleware to put first in the application's list (none without ``prometheus_client``)."""
    return [] if prometheus_client is None else [_metrics_middleware]


def count_stored(app: web.Application, documents: int) -> None:
    """Count ``documents`` newly stored."""
    metrics = app.get(_METRICS)
    if metrics is not None and documents:
        metrics.documents.inc(documents)


def count_database_error(app: web.Application, error: BaseException) -> None:
    """Count one database failure, labelled with the database's own error type when there is one."""
    metrics = app.get(_METRICS)
    if metrics is not None:
        metrics.database_errors.labels(type(error.__cause__ or error).__name__).inc()
