"""Counting what was sent against what arrived, and recording that no public call raised.

Every fault test ends with a :class:`Tally`: the sequence numbers the client sent, those the server
holds, and from them what was lost and what was duplicated. :func:`report` prints it (``pytest -s``
shows it) and, when ``FAULT_TALLY_FILE`` names a file, appends it there as a JSON line.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Tally:
    """Sent versus arrived.

    Attributes:
        sent: distinct sequence numbers the client accepted.
        arrived: distinct sequence numbers stored on the server.
        stored: documents stored (``arrived`` plus every extra copy).
        lost: sent but not stored.
        duplicated: extra copies stored (a sequence number stored twice counts one).
        unexpected: stored but never sent.
    """

    sent: int
    arrived: int
    stored: int
    lost: int
    duplicated: int
    unexpected: int
    lost_examples: tuple[int, ...] = field(default=(), repr=False)

    def __str__(self) -> str:
        return (f"sent={self.sent} arrived={self.arrived} lost={self.lost} duplicated={self.duplicated}"
                f" unexpected={self.unexpected}")


def tally(sent: Iterable[int], stored: Iterable[int]) -> Tally:
    """Compare the sequence numbers sent with those stored (one entry per stored document)."""
    sent_set = set(sent)
    copies = Counter(stored)
    lost = sorted(sent_set - copies.keys())
    return Tally(
        sent=len(sent_set),
        arrived=len(sent_set & copies.keys()),
        stored=sum(copies.values()),
        lost=len(lost),
        duplicated=sum(n - 1 for n in copies.values()),
        unexpected=len(copies.keys() - sent_set),
        lost_examples=tuple(lost[:20]),
    )


def report(label: str, result: Tally, **extra: Any) -> None:
    """Print the tally under ``label`` (and append it to ``$FAULT_TALLY_FILE`` when set)."""
    details = "".join(f" {k}={v}" for k, v in extra.items())
    print(f"\nFAULT-TALLY {label}: {result}{details}")
    path = os.environ.get("FAULT_TALLY_FILE")
    if path:
        record = {"label": label, **asdict(result), **extra}
        record.pop("lost_examples")
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record, default=str) + "\n")


class PublicCalls:
    """Runs public calls and keeps any exception they raise, so that a test can assert none did.

    An I/O fault must come back as a status; an exception escaping a public call is recorded here
    (with the call's name) instead of ending the test early, and ``raised`` must stay empty.
    """

    def __init__(self) -> None:
        self.raised: list[str] = []
        self.statuses: Counter[str] = Counter()

    def _note(self, name: str, result: object) -> None:
        status = result[0] if isinstance(result, tuple) else result
        self.statuses[f"{name}:{getattr(status, 'value', status)}"] += 1

    def sync(self, name: str, func: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``func``; record its status, or the exception it raised."""
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            self.raised.append(f"{name}: {exc!r}")
            return None
        self._note(name, result)
        return result

    async def call(self, name: str, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T | None:
        """Await ``func``; record its status, or the exception it raised."""
        try:
            result = await func(*args, **kwargs)
        except Exception as exc:
            self.raised.append(f"{name}: {exc!r}")
            return None
        self._note(name, result)
        return result


def stored_seqs(db_path: str) -> list[int]:
    """The ``seq`` of every document in the reference server's database file."""
    from wr124_session_actor.stores import Query, SqliteDocuments

    engine = SqliteDocuments(db_path)
    try:
        docs, _ = engine.query("default", Query(limit=1_000_000))
    finally:
        engine.close()
    return [d["content"]["state"]["seq"] for d in docs]


def spool_rows(path: str) -> int:
    """Rows left in an outbox file, read on a connection of our own (blocking; run it in a thread)."""
    if not os.path.exists(path):
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        conn.close()
