"""Retention: the policy value (keep the newest N, a maximum age, an idle TTL) and what a prune removed.

Pure values with no I/O; the stores enforce them (``stores/_retention.py``).

Semantics, per (project, session):

- ``keep_last`` (N > 0): of each agent's states, keep the N newest (highest ``seq``); older ones go.
- ``max_age``: states created longer ago than this go, except each agent's newest one.
- ``idle_ttl``: a session with no write for this long goes whole (every document of it).

"States" are documents that name their agent (``content.agent_name``); documents without an agent
are only ever removed with their whole session, and documents without a session are never pruned.
So the newest state of every agent of a live session survives any prune: only the idle TTL
removes a session's last states.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["NO_RETENTION", "PRUNE_BATCH", "PruneReport", "RetentionPolicy", "format_duration", "parse_duration"]

#: The most rows one prune transaction deletes (writers wait at most one such batch).
PRUNE_BATCH: Final = 1000

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_RE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)", re.IGNORECASE)


def parse_duration(text: str | float) -> float:
    """Read a duration: ``90s``, ``15m``, ``12h``, ``7d``, ``2w`` or plain seconds (``3600``, ``1.5``).

    Args:
        text: the duration; a number is taken as seconds.

    Returns:
        The duration in seconds (``0`` means "off" wherever a duration is optional).

    Raises:
        ValueError: the text is not a duration, or is negative or not finite.
    """
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a duration (use e.g. 90s, 15m, 12h, 7d or seconds): {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).lower() or "s"]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be finite and >= 0, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """The shortest exact form of ``seconds`` among ``7d``, ``12h``, ``15m``, ``90s`` (``1.5s`` if fractional)."""
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What a prune removes; every rule off by default (see the module docstring for the semantics).

    Args:
        keep_last: the newest states kept per (session, agent); 0 = unlimited.
        max_age: seconds after which a state goes (each agent's newest stays); ``None``/0 = off.
        idle_ttl: seconds without a write after which a session goes whole; ``None``/0 = off.

    Raises:
        ValueError: a negative or non-finite value; the message names the field.
    """

    keep_last: int = 0
    max_age: float | None = None
    idle_ttl: float | None = None

    def __post_init__(self) -> None:
        if type(self.keep_last) is not int or self.keep_last < 0:
            raise ValueError(f"keep_last must be a whole number >= 0, got {self.keep_last!r}")
        for name in ("max_age", "idle_ttl"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
            if value == 0:
                object.__setattr__(self, name, None)  # 0 means off: one spelling of "off"

    @classmethod
    def parse(cls, *, keep_last: object = None, max_age: object = None, idle_ttl: object = None) -> RetentionPolicy:
        """Build a policy from loose values (command-line text, JSON): ``None`` means off.

        ``keep_last`` is a whole number or its text; durations are numbers of seconds or text such as
        ``7d`` (see :func:`parse_duration`).

        Raises:
            ValueError: a malformed value; the message names the field.
        """
        return cls(
            keep_last=_parse_count("keep_last", keep_last),
            max_age=_parse_optional_duration("max_age", max_age),
            idle_ttl=_parse_optional_duration("idle_ttl", idle_ttl),
        )

    @property
    def enabled(self) -> bool:
        """Whether any rule is on (a prune by a policy with none removes nothing)."""
        return bool(self.keep_last or self.max_age or self.idle_ttl)

    def describe(self) -> str:
        """A short human form, e.g. ``keep_last=5 max_age=7d idle_ttl=30d`` (``off`` when no rule is on)."""
        parts = []
        if self.keep_last:
            parts.append(f"keep_last={self.keep_last}")
        if self.max_age:
            parts.append(f"max_age={format_duration(self.max_age)}")
        if self.idle_ttl:
            parts.append(f"idle_ttl={format_duration(self.idle_ttl)}")
        return " ".join(parts) or "off"


#: The policy that removes nothing (the default everywhere).
NO_RETENTION: Final = RetentionPolicy()


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed, or with ``dry_run`` would remove.

    Attributes:
        sessions: sessions removed whole (by the idle TTL).
        documents: documents removed, those of whole sessions included.
        bytes: the size of the removed documents' stored bodies.
        dry_run: whether this only counted (nothing was removed).
        complete: false when a time budget stopped the prune before it was done (not in the JSON).
        resume_after: where such a prune stopped: the ``(project, session_id)`` it stopped in or after; the next
            one goes on with the session after it (not in the JSON).
    """

    sessions: int = 0
    documents: int = 0
    bytes: int = 0
    dry_run: bool = False
    complete: bool = True
    resume_after: tuple[str, str] | None = field(default=None, compare=False)

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(
            self.sessions + other.sessions,
            self.documents + other.documents,
            self.bytes + other.bytes,
            self.dry_run and other.dry_run,
            self.complete and other.complete,
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as the prune endpoint's JSON body: ``{"sessions", "documents", "bytes", "dry_run"}``."""
        return {"sessions": self.sessions, "documents": self.documents, "bytes": self.bytes, "dry_run": self.dry_run}

    @classmethod
    def from_dict(cls, body: object) -> PruneReport:
        """Read the prune endpoint's JSON body.

        Raises:
            ValueError: the body does not have that shape.
        """
        if not isinstance(body, dict):
            raise ValueError("a prune report must be a JSON object")
        counts = [body.get(key) for key in ("sessions", "documents", "bytes")]
        dry_run = body.get("dry_run")
        if not all(type(c) is int and c >= 0 for c in counts) or not isinstance(dry_run, bool):
            raise ValueError("a prune report needs whole numbers sessions, documents, bytes and a boolean dry_run")
        return cls(counts[0], counts[1], counts[2], dry_run)  # type: ignore[arg-type]


#: The largest count a store can hold (a signed 64-bit integer in sqlite and PostgreSQL).
_MAX_COUNT: Final = 2**63 - 1
#: A count as text: up to 18 digits (always below ``_MAX_COUNT``), as the server's OpenAPI schema says.
_COUNT_TEXT: Final = re.compile(r"\s*[0-9]{1,18}\s*")


def _parse_count(name: str, value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, str) and _COUNT_TEXT.fullmatch(value):
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 5.0 is the whole number 5
    if type(value) is int and 0 <= value <= _MAX_COUNT:
        return value
    raise ValueError(f"{name} must be a whole number from 0 to {_MAX_COUNT}, got {value!r}")


def _parse_optional_duration(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not isinstance(value, str | int | float):
        raise ValueError(f"{name} must be a duration such as 90s, 15m, 12h, 7d or seconds, got {value!r}")
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return seconds or None
