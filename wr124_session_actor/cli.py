"""The ``wr124-session`` command: serve | migrate | demo | ls | show | rm | prune | bench."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

import anyio
import orjson
import structlog

from ._config import Config
from ._document import check_session_id
from ._exceptions import StoreError, status_of
from ._manager import SessionStateManager
from ._retention import RetentionPolicy, parse_duration
from ._status import SessionStateStatus
from .stores import open_engine, open_store, sqlite_path_from_url

__all__ = ["main"]

#: The largest whole number an option takes (a count stored as a 64-bit integer).
_MAX_WHOLE: Final = 2**63 - 1
#: The store the commands use when neither ``--url`` nor ``SESSION_API_URL`` names one.
DEFAULT_CLI_URL: Final = "sqlite:///wr124_sessions.db"


def _configure_logging(verbose: bool) -> None:
    """Console logs on stderr: warnings (failed outcomes) by default, everything with ``-v``.

    The PostgreSQL pool's own retries (stdlib logging) are shown only with ``-v``: the command
    reports the outcome itself.
    """
    logging.getLogger("psycopg.pool").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _config(args: argparse.Namespace) -> Config:
    url = args.url or os.environ.get("SESSION_API_URL", "").strip() or DEFAULT_CLI_URL
    return Config.from_env(enabled=True, api_url=url)


def _database_config(*, migrate: bool = True) -> Config:
    """The settings of a command that names its database itself with ``--db`` (serve, migrate) or only needs
    a retention rule: the rest from the environment, but not ``SESSION_API_URL`` (the clients' store, not
    read here: a malformed one is not this command's mistake)."""
    return Config.from_env(api_url="memory://", migrate=migrate)


def _existing(config: Config) -> Config:
    """``config``, whose sqlite file must exist: a command that reads or deletes does not make an empty one
    (``prune --url sqlite:///typo.db`` made it, reported "removed 0" and exited 0).

    Raises:
        ValueError: no such file; the message names it.
    """
    if config.store_kind == "sqlite":
        path = sqlite_path_from_url(config.api_url)
        if not os.path.exists(path):
            raise ValueError(f"no sqlite database at {path!r} (from {config.api_url!r})")
    return config


def _dump(value: object) -> None:
    """Print ``value`` as JSON; the control and direction characters orjson leaves as they are (C1, bidi
    overrides) as ``\\u`` escapes: the same JSON, which cannot move the terminal's cursor or reorder a line."""
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode().translate(_JSON_ESCAPES) + "\n")


def _fail(message: str) -> int:
    sys.stderr.write(f"error: {message}\n")
    return 1


async def _ls(args: argparse.Namespace) -> int:
    manager = SessionStateManager(args.session_id, _existing(_config(args)))
    status, docs = await manager.download_session_states(limit=args.limit, agent_name=args.agent)
    await manager.aclose()
    if status is not SessionStateStatus.SUCCESS:
        return _fail(f"{status.value}: could not list session {args.session_id!r}")
    if args.json:
        _dump(docs)
        return 0
    if not docs:
        print(f"no states in session {args.session_id!r}")
    for doc in docs:
        content, metadata = _object(doc.get("content")), _object(doc.get("metadata"))
        print(f"{_cell(doc['_id'])}  {_cell(doc.get('created_at'))}  {_cell(content.get('agent_name')):<16} "
              f"{_cell(metadata.get('state_size', '?')):>8} B  {_cell(content.get('task'))[:50]}")
    return 0


def _object(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (another client may have stored anything)."""
    return value if isinstance(value, dict) else {}


def _cell(value: object) -> str:
    """A listing's cell: text with its control characters escaped (another client's text could move the cursor
    or recolour the terminal), nothing for null, any other JSON value as JSON."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return orjson.dumps(value, default=str).decode()
    return value.translate(_CONTROL_ESCAPES) if not value.isprintable() else value


#: Characters another client's text must not send to the terminal: controls (C0, DEL, C1), which move the
#: cursor or recolour, and bidi marks and overrides, which reorder what a line shows.
_UNSAFE: Final = (*range(0x20), *range(0x7F, 0xA0), 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
#: Those as ``\xNN`` or ``\uNNNN``, for :func:`_cell`.
_CONTROL_ESCAPES: Final = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNSAFE}
#: Those orjson leaves in a JSON text, as JSON escapes, for :func:`_dump` (it escapes C0 itself).
_JSON_ESCAPES: Final = {code: f"\\u{code:04x}" for code in _UNSAFE if code >= 0x7F}


async def _show(args: argparse.Namespace) -> int:
    store = open_store(_existing(_config(args)))
    try:
        doc = await store.get(args.doc_id)
    except StoreError as exc:  # said as a status
        return _fail(f"{status_of(exc).value}: {exc}")
    finally:
        await store.aclose()
    if args.json:
        _dump(doc)
        return 0
    content, tags = _object(doc.get("content")), doc.get("tags")
    print(f"id:         {_cell(doc['_id'])}\nsession:    {_cell(doc.get('session_id'))}\n"
          f"name:       {_cell(doc.get('name'))}\n"
          f"created_at: {_cell(doc.get('created_at'))}\nagent:      {_cell(content.get('agent_name'))}\n"
          f"task:       {_cell(content.get('task'))}\n"
          f"tags:       {', '.join(map(_cell, tags)) if isinstance(tags, list) else _cell(tags)}\nstate:")
    _dump(content.get("state"))
    return 0


async def _rm(args: argparse.Namespace) -> int:
    store = open_store(_existing(_config(args)))
    try:
        await store.delete(args.doc_id)
    except StoreError as exc:  # said as a status
        return _fail(f"{status_of(exc).value}: {exc}")
    finally:
        await store.aclose()
    if args.json:
        _dump({"deleted": args.doc_id})
    else:
        print(f"deleted {args.doc_id}")
    return 0


def _policy(args: argparse.Namespace) -> RetentionPolicy | None:
    """The options --keep-last/--max-age/--idle-ttl over the SESSION_STATE_* settings; ``None`` if neither
    names a rule."""
    base = _database_config().retention
    names = ("keep_last", "max_age", "idle_ttl")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if not given and not base.enabled:
        return None
    values = {"keep_last": base.keep_last, "max_age": base.max_age, "idle_ttl": base.idle_ttl, **given}
    return RetentionPolicy.parse(**values)


async def _prune(args: argparse.Namespace) -> int:
    # Pruning a large store takes longer than one state write: allow it minutes.
    config = _existing(_config(args))
    config = config.replace(timeout=max(config.timeout, 600.0))
    policy = _policy(args)
    store = open_store(config)
    try:
        report = await store.prune(policy, session_id=args.session, dry_run=args.dry_run)
    except StoreError as exc:  # said as a status
        return _fail(f"{status_of(exc).value}: {exc}")
    finally:
        await store.aclose()
    if args.json:
        _dump(report.as_dict())
        return 0
    local = config.store_kind != "http"
    rule = ("no rule" if local else "the server's policy") if policy is None else policy.describe()
    if policy is None and local:
        sys.stderr.write("note: no retention rule given (--keep-last, --max-age, --idle-ttl): nothing to do\n")
    verb = "would remove" if report.dry_run else "removed"
    print(f"{verb} ({rule}): {report.sessions} sessions, {report.documents} documents, {report.bytes} bytes")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import run_server

    api_key = args.api_key or os.environ.get("SESSION_API_KEY", "").strip() or None  # blank: unset, as everywhere
    try:
        run_server(args.host, args.port, args.db, api_key=api_key, metrics_key=args.metrics_key,
                   retention=_policy(args) or RetentionPolicy(), sweep_interval=args.sweep_interval)
    except StoreError as exc:  # the database cannot be opened or reached at startup
        return _fail(f"{status_of(exc).value}: {exc}")
    except OSError as exc:  # the address: in use, not this machine's, not allowed
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    engine = open_engine(args.db, _database_config())
    try:
        applied = engine.migrate()
    except StoreError as exc:
        return _fail(f"{status_of(exc).value}: could not migrate: {exc}")
    finally:
        engine.close()
    print(f"applied schema versions {', '.join(map(str, applied))}" if applied else "the schema is up to date")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        return _fail("--backend trio needs trio: pip install 'wr124-session-actor[trio]'")
    return int(anyio.run(run_demo, _config(args), args.sessions, args.messages, args.agents, backend=args.backend))


def _bench(rest: Sequence[str]) -> int:
    sys.path.insert(0, os.getcwd())
    try:
        bench = importlib.import_module("bench.__main__")
    except ImportError:
        return _fail("the benchmarks live in the source tree's bench/ folder: run this from a checkout")
    return int(bench.main(list(rest)))


def _whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (a 64-bit one at most), else a usage error
    that says so."""
    expected = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
    most = _MAX_WHOLE if high is None else high

    def parse(text: str) -> int:
        value = int(text) if text.strip().isdigit() else -1
        if value < low or value > most:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def _key(text: str) -> str:
    """An argparse type: a key that is not blank (stripped of blanks at its ends, it was empty: no key required
    at all, silently)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a key, got only blanks (leave the option out for none)")
    return text


def _session_id(text: str) -> str:
    """An argparse type: a session id (not empty, no NUL, at most 256 characters), else a usage error."""
    try:
        check_session_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a session id: {exc}") from None
    return text


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retention_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keep-last", type=_whole(0), metavar="N",
                   help="keep the newest N states per (session, agent); 0 = all (default: $SESSION_STATE_KEEP_LAST)")
    p.add_argument("--max-age", type=_duration, metavar="AGE",
                   help="remove states older than AGE, e.g. 7d, but never an agent's newest (default: "
                        "$SESSION_STATE_MAX_AGE)")
    p.add_argument("--idle-ttl", type=_duration, metavar="TTL",
                   help="remove whole sessions with no write for TTL, e.g. 30d (default: $SESSION_STATE_IDLE_TTL)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wr124-session", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every outcome (debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_url(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help=f"store URL (default: $SESSION_API_URL or {DEFAULT_CLI_URL})")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    serve = sub.add_parser("serve", help="run the reference json-documents server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_whole(0, 65535), default=8000)
    serve.add_argument("--db", default="wr124_server.db",
                       help="sqlite file, sqlite:/// or postgresql:// URL (default: wr124_server.db)")
    serve.add_argument("--api-key", type=_key, help="require 'Authorization: Bearer KEY' (default: $SESSION_API_KEY)")
    _retention_options(serve)
    serve.add_argument("--sweep-interval", type=_duration, default=60.0, metavar="SECONDS",
                       help="how often the server sweeps by its retention policy (default: 60s)")
    serve.add_argument("--metrics-key", type=_key,
                       help="require 'Authorization: Bearer KEY' for /metrics (default: open)")

    migrate = sub.add_parser("migrate", help="bring a database's schema up to date (sqlite or PostgreSQL)")
    migrate.add_argument("--db", required=True, help="postgresql://user:pass@host:port/db, sqlite:/// URL or file")

    demo = sub.add_parser("demo", help="chatty teams on several sessions, then list and restore")
    demo.add_argument("--url", help=f"store URL (default: $SESSION_API_URL or {DEFAULT_CLI_URL})")
    demo.add_argument("--sessions", type=_whole(1), default=3)
    demo.add_argument("--messages", type=_whole(1), default=40, help="model turns per task")
    demo.add_argument("--agents", type=_whole(1), default=2, help="agents (tasks) per session")
    demo.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")

    ls = with_url(sub.add_parser("ls", help="list a session's states, newest first"))
    ls.add_argument("session_id", type=_session_id)
    ls.add_argument("--limit", type=_whole(1), default=20)
    ls.add_argument("--agent", help="only this agent's states")
    show = with_url(sub.add_parser("show", help="print one document"))
    show.add_argument("doc_id")
    rm = with_url(sub.add_parser("rm", help="delete one document"))
    rm.add_argument("doc_id")
    prune = with_url(sub.add_parser(
        "prune", help="remove old states by a retention policy (through the server's prune endpoint for http(s) URLs)"))
    _retention_options(prune)
    prune.add_argument("--session", type=_session_id, metavar="ID", help="only this session")
    prune.add_argument("--dry-run", action="store_true", help="count what would go, remove nothing")
    sub.add_parser("bench", help="run the benchmarks (options after 'bench' go to it)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((index for index, arg in enumerate(argv) if not arg.startswith("-")), None)
    if command is not None and argv[command] == "bench":  # the command, not a session or document named so
        return _bench(argv[command + 1 :])
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    commands: dict[str, Any] = {"ls": _ls, "show": _show, "rm": _rm, "prune": _prune}
    try:
        if args.command in commands:
            return int(anyio.run(commands[args.command], args))
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            return _migrate(args)
        return _demo(args)
    except ValueError as exc:  # ConfigError: names the variable
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
