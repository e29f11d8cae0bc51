"""Configuration: one frozen dataclass, read from the original module's environment variables."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from ._exceptions import ConfigError
from ._retention import RetentionPolicy, parse_duration

__all__ = ["HTTP_CLIENTS", "Config", "given_or_env"]

#: HTTP client libraries in the order the original module prefers them.
HTTP_CLIENTS: Final = ("aiohttp", "httpx", "urllib")

_SCHEMES: Final = frozenset({"http", "https", "sqlite", "memory", "postgresql", "postgres"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

T = TypeVar("T")

#: Store writes in flight by store kind, when ``write_concurrency`` is 0.
_WRITE_CONCURRENCY: Final = {"sqlite": 1, "memory": 1, "postgresql": 4, "http": 8}


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of the library.

    Built in code, ``Config(...)`` means "persist" (``enabled`` defaults to true); built by
    :meth:`from_env`, it follows the original module and stays disabled unless
    ``ENABLE_SESSION_STATE_UPLOAD`` is true. Each field's environment variable is given beside it.
    """

    enabled: bool = True  # ENABLE_SESSION_STATE_UPLOAD
    api_url: str = "http://localhost:8000"  # SESSION_API_URL (http(s)://, sqlite:///, postgresql://, memory://)
    project_id: str = "default"  # DEFAULT_PROJECT_ID
    timeout: float = 10.0  # SESSION_STATE_TIMEOUT: bounds a whole public call, retries included
    api_key: str | None = None  # SESSION_API_KEY, sent as "Authorization: Bearer"
    debounce: float = 0.05  # SESSION_STATE_DEBOUNCE: flush after this much quiet
    max_delay: float = 1.0  # SESSION_STATE_MAX_DELAY: flush at the latest this long after the first upload
    max_batch: int = 500  # SESSION_STATE_MAX_BATCH: flush when this many documents are pending
    mailbox_size: int = 1024  # SESSION_STATE_MAILBOX_SIZE: messages buffered per session
    idle_timeout: float = 60.0  # SESSION_STATE_IDLE_TIMEOUT: an idle actor exits after this long
    shutdown_timeout: float = 30.0  # SESSION_STATE_SHUTDOWN_TIMEOUT: final flush budget
    cache_ttl: float = 60.0  # SESSION_STATE_CACHE_TTL: seconds; 0 turns the cache off
    cache_size: int = 128  # SESSION_STATE_CACHE_SIZE: cached reads per session
    keep: Literal["latest", "all"] = "latest"  # SESSION_STATE_KEEP
    http_clients: tuple[str, ...] = HTTP_CLIENTS  # SESSION_STATE_HTTP_CLIENTS: allowed, in order
    max_body_bytes: int = 64 * 1024 * 1024  # SESSION_STATE_MAX_BODY_BYTES: the client splits batches below it
    retries: int = 4  # SESSION_STATE_RETRIES: extra attempts for transient failures
    retry_backoff: float = 0.1  # SESSION_STATE_RETRY_BACKOFF: first backoff, doubled per attempt
    retry_backoff_max: float = 2.0  # SESSION_STATE_RETRY_BACKOFF_MAX: backoff cap
    spool: str | None = None  # SESSION_STATE_SPOOL: sqlite outbox path (opt-in durability)
    spool_sync_interval: float = 0.1  # SESSION_STATE_SPOOL_SYNC_INTERVAL: outbox commit interval
    spool_max_documents: int = 100_000  # SESSION_STATE_SPOOL_MAX_DOCUMENTS: outbox bound
    circuit_threshold: int = 5  # SESSION_STATE_CIRCUIT_THRESHOLD: transient failures in a row that open it
    circuit_cooldown: float = 0.5  # SESSION_STATE_CIRCUIT_COOLDOWN: first open period, doubled up to 30 s
    write_concurrency: int = 0  # SESSION_STATE_WRITE_CONCURRENCY: store writes in flight; 0 = by store kind
    skip_unchanged: bool = True  # SESSION_STATE_SKIP_UNCHANGED: no write for a state equal to the last stored
    keep_last: int = 0  # SESSION_STATE_KEEP_LAST: newest states kept per (session, agent); 0 = unlimited
    max_age: float | None = None  # SESSION_STATE_MAX_AGE: seconds (or 90s/15m/12h/7d); older states go
    idle_ttl: float | None = None  # SESSION_STATE_IDLE_TTL: a session with no write for this long goes whole
    sweep_interval: float = 60.0  # SESSION_STATE_SWEEP_INTERVAL: seconds between the store's periodic sweeps
    pg_pool_size: int = 10  # SESSION_STATE_PG_POOL_SIZE: most PostgreSQL connections per store
    pg_max_lifetime: float = 3600.0  # SESSION_STATE_PG_MAX_LIFETIME: seconds before a connection is replaced
    # SESSION_STATE_PG_PREPARE_THRESHOLD: executions before psycopg prepares a statement; "none" never
    # prepares (needed behind PgBouncer in transaction mode)
    pg_prepare_threshold: int | None = 5
    migrate: bool = True  # SESSION_STATE_MIGRATE: bring the database schema up to date on first use

    def __post_init__(self) -> None:
        _check(_number(self.timeout) and self.timeout > 0 and math.isfinite(self.timeout), "SESSION_STATE_TIMEOUT",
               "a positive number")
        for name, value in (
            ("SESSION_STATE_DEBOUNCE", self.debounce),
            ("SESSION_STATE_MAX_DELAY", self.max_delay),
            ("SESSION_STATE_IDLE_TIMEOUT", self.idle_timeout),
            ("SESSION_STATE_SHUTDOWN_TIMEOUT", self.shutdown_timeout),
            ("SESSION_STATE_CACHE_TTL", self.cache_ttl),
            ("SESSION_STATE_RETRY_BACKOFF", self.retry_backoff),
            ("SESSION_STATE_RETRY_BACKOFF_MAX", self.retry_backoff_max),
            ("SESSION_STATE_SPOOL_SYNC_INTERVAL", self.spool_sync_interval),
            ("SESSION_STATE_CIRCUIT_COOLDOWN", self.circuit_cooldown),
            ("SESSION_STATE_SWEEP_INTERVAL", self.sweep_interval),
            ("SESSION_STATE_MAX_AGE", 0.0 if self.max_age is None else self.max_age),
            ("SESSION_STATE_IDLE_TTL", 0.0 if self.idle_ttl is None else self.idle_ttl),
        ):
            _check(_number(value) and value >= 0 and math.isfinite(value), name, "a number >= 0")
        for name, count in (
            ("SESSION_STATE_MAX_BATCH", self.max_batch),
            ("SESSION_STATE_MAILBOX_SIZE", self.mailbox_size),
            ("SESSION_STATE_CACHE_SIZE", self.cache_size),
            ("SESSION_STATE_MAX_BODY_BYTES", self.max_body_bytes),
            ("SESSION_STATE_SPOOL_MAX_DOCUMENTS", self.spool_max_documents),
            ("SESSION_STATE_CIRCUIT_THRESHOLD", self.circuit_threshold),
        ):
            _check(_whole(count) and count >= 1, name, "a whole number >= 1")
        _check(_whole(self.retries) and self.retries >= 0, "SESSION_STATE_RETRIES", "a whole number >= 0")
        _check(_whole(self.write_concurrency) and self.write_concurrency >= 0, "SESSION_STATE_WRITE_CONCURRENCY",
               "a whole number >= 0")
        _check(_whole(self.keep_last) and self.keep_last >= 0, "SESSION_STATE_KEEP_LAST",
               "a whole number >= 0 (0 = unlimited)")
        _check(_whole(self.pg_pool_size) and self.pg_pool_size >= 1, "SESSION_STATE_PG_POOL_SIZE",
               "a whole number >= 1")
        _check(_number(self.pg_max_lifetime) and self.pg_max_lifetime > 0 and math.isfinite(self.pg_max_lifetime),
               "SESSION_STATE_PG_MAX_LIFETIME", "a positive number of seconds")
        _check(self.pg_prepare_threshold is None
               or (_whole(self.pg_prepare_threshold) and self.pg_prepare_threshold >= 0),
               "SESSION_STATE_PG_PREPARE_THRESHOLD", "a whole number >= 0, or 'none' to never prepare")
        _check(self.keep in ("latest", "all"), "SESSION_STATE_KEEP", "'latest' or 'all'")
        _check(isinstance(self.project_id, str) and self.project_id not in ("", ".", "..")
               and "/" not in self.project_id and _header_safe(self.project_id),
               "DEFAULT_PROJECT_ID", "a non-empty name without '/' or control characters, and not '.' or '..'"
               " (a URL's path segment and a header's value)")
        _check(self.api_key is None or (isinstance(self.api_key, str) and _header_safe(self.api_key)
                                        and self.api_key == self.api_key.strip()),
               "SESSION_API_KEY", "text without control characters or whitespace at its ends (a header's value)")
        _check(isinstance(self.http_clients, tuple | list) and bool(self.http_clients)
               and all(c in HTTP_CLIENTS for c in self.http_clients),
               "SESSION_STATE_HTTP_CLIENTS", "a comma-separated subset of " + ",".join(HTTP_CLIENTS))
        _check(isinstance(self.api_url, str), "SESSION_API_URL", "a URL (a string)")
        scheme = self.api_url.partition(":")[0].lower()
        _check(scheme in _SCHEMES and "://" in self.api_url,
               "SESSION_API_URL", "an http(s)://, sqlite:///path, postgresql://... or memory:// URL")
        if scheme == "sqlite":
            _check(self.api_url.startswith("sqlite:///") and len(self.api_url) > len("sqlite:///"),
                   "SESSION_API_URL", "sqlite:///relative.db or sqlite:////absolute/path.db")
        elif scheme in ("http", "https"):
            _check(_is_http_url(self.api_url), "SESSION_API_URL",
                   "an http(s)://host[:port][/path] URL with a host, a port number from 1 to 65535, no"
                   " ?query or #fragment (the API's paths are added to it) and no space or control character")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Read the configuration from the environment (``os.environ`` unless given).

        Raises:
            ConfigError: a variable is set to a malformed value; the message names it.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}

        def read(var: str, field: str, parse: Callable[[str, str], object]) -> None:
            raw = env.get(var)
            if raw is None or not raw.strip() or field in overrides:
                return  # set to nothing is unset (as the original's ENABLE_SESSION_STATE_UPLOAD); an override wins
            values[field] = parse(var, raw.strip())

        read("ENABLE_SESSION_STATE_UPLOAD", "enabled", _parse_bool)
        values.setdefault("enabled", False)
        read("SESSION_API_URL", "api_url", _parse_text)
        read("DEFAULT_PROJECT_ID", "project_id", _parse_text)
        read("SESSION_STATE_TIMEOUT", "timeout", _parse_float)
        read("SESSION_API_KEY", "api_key", _parse_text)
        read("SESSION_STATE_SPOOL", "spool", _parse_text)
        read("SESSION_STATE_KEEP", "keep", _parse_word)
        read("SESSION_STATE_HTTP_CLIENTS", "http_clients", _parse_list)
        read("SESSION_STATE_SKIP_UNCHANGED", "skip_unchanged", _parse_bool)
        read("SESSION_STATE_MAX_AGE", "max_age", _parse_duration)
        read("SESSION_STATE_IDLE_TTL", "idle_ttl", _parse_duration)
        read("SESSION_STATE_PG_PREPARE_THRESHOLD", "pg_prepare_threshold", _parse_optional_int)
        read("SESSION_STATE_MIGRATE", "migrate", _parse_bool)
        for field in dataclasses.fields(cls):
            if field.name in values or field.name in ("enabled", "api_url", "project_id", "timeout"):
                continue
            var = "SESSION_STATE_" + field.name.upper()
            if field.type == "float":
                read(var, field.name, _parse_float)
            elif field.type == "int":
                read(var, field.name, _parse_int)
        values.update(overrides)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:  # pragma: no cover - a wrong override type
            raise ConfigError(str(exc)) from exc

    def replace(self, **changes: object) -> Config:
        """Return a copy with some fields changed (validated like the original)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def store_write_concurrency(self) -> int:
        """Store writes in flight at once: ``write_concurrency``, or by store kind: one for a file or memory,
        four for a database pool, eight for HTTP (a server without the batch endpoint takes a POST per
        document, each one round trip: against a 5 ms server a burst of 11,500 takes half the time)."""
        if self.write_concurrency:
            return self.write_concurrency
        return _WRITE_CONCURRENCY[self.store_kind]

    @property
    def trust_ttl(self) -> float:
        """Seconds a state this process read or stored is taken as still there without asking the store (the
        read cache, ``skip_unchanged``): ``cache_ttl``, no longer than ``idle_ttl`` when the store's own
        sweep may remove the whole session sooner."""
        return min(self.cache_ttl, self.idle_ttl) if self.idle_ttl else self.cache_ttl

    @property
    def retention(self) -> RetentionPolicy:
        """The retention policy the settings ``keep_last``, ``max_age`` and ``idle_ttl`` make."""
        return RetentionPolicy(self.keep_last, self.max_age or None, self.idle_ttl or None)

    @property
    def store_kind(self) -> Literal["http", "sqlite", "memory", "postgresql"]:
        """Which store the URL names."""
        scheme = self.api_url.partition(":")[0].lower()
        if scheme in ("http", "https"):
            return "http"
        if scheme in ("postgresql", "postgres"):
            return "postgresql"
        return "sqlite" if scheme == "sqlite" else "memory"


def given_or_env(config: object) -> Config:
    """``config``, or the configuration read from the environment when it is ``None``.

    Raises:
        TypeError: ``config`` is something else, such as the store's URL given as text.
        ConfigError: the environment holds a malformed value; the message names the variable.
    """
    if config is None:
        return Config.from_env()
    if not isinstance(config, Config):
        raise TypeError(f"config must be a Config or None, got {type(config).__qualname__}"
                        " (for a URL: Config(api_url=...))")
    return config


def _number(value: object) -> bool:
    """A number of seconds or bytes as code gives it: an ``int`` or a ``float`` (not a bool, not text), and
    no larger than a float holds (``math.isfinite`` raises ``OverflowError`` for a larger ``int``)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


def _whole(value: object) -> bool:
    """A count: an ``int`` (not a bool, not a float) that a 64-bit database column holds."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _is_http_url(url: str) -> bool:
    """Whether ``url`` names a host (and a valid port, if any) and has no query, fragment, space or control
    character: ``http://``, ``http://[::1``, ``http://host:notaport``, ``http://host/?tenant=1`` and
    ``http://host/a b`` do not (``urlsplit`` drops tabs and newlines before it looks: such a URL passed, and
    every call failed)."""
    if any(char.isspace() or not char.isprintable() for char in url):
        return False
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return bool(parts.hostname) and port != 0 and "?" not in url and "#" not in url


def _header_safe(text: str) -> bool:
    """Whether ``text`` can be an HTTP header's value: no control character but a tab (a newline would end the
    header; every HTTP client refuses them, at the first request)."""
    return not any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F for char in text)


def _check(ok: bool, variable: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{variable} must be {expected}")


def _parse_bool(var: str, raw: str) -> bool:
    low = raw.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{var} must be true or false, got {raw!r}")


def _parse_float(var: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):  # its range is the field's own (checked with the others in Config)
        raise ConfigError(f"{var} must be a finite number of seconds, got {raw!r}")
    return value


def _parse_int(var: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{var} must be a whole number, got {raw!r}") from None


def _parse_duration(var: str, raw: str) -> float | None:
    try:
        return parse_duration(raw) or None
    except ValueError:
        raise ConfigError(f"{var} must be a duration such as 90s, 15m, 12h, 7d or seconds, got {raw!r}") from None


def _parse_optional_int(var: str, raw: str) -> int | None:
    if raw.lower() in ("none", "off"):
        return None
    return _parse_int(var, raw)


def _parse_text(var: str, raw: str) -> str:
    return raw


def _parse_word(var: str, raw: str) -> str:
    return raw.lower()


def _parse_list(var: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())
