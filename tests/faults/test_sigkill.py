"""A client process SIGKILLed mid-run with an outbox, then started again: nothing lost beyond the last
sync interval, nothing duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from .spool_client import SYNC_INTERVAL
from .tally import report, stored_seqs, tally

CLIENT = str(Path(__file__).with_name("spool_client.py"))
RATE = 2_000  # submits per second
SESSIONS = 20
RUN_FOR = 1.2  # seconds of submitting before the kill
STOP_SERVER_AFTER = 0.3  # "server-down": the server stops this long into the run, so the outbox fills
#: What a SIGKILL may lose: what was accepted within the last sync interval (plus slack for a slow sync).
MARGIN = 0.3


class Lines:
    """Collects a process's stdout lines in a thread, each with the time it was read."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.strip())
            if line.startswith("ready"):
                self.ready.set()
        self.ready.set()

    def join(self) -> None:
        self._thread.join(10)



def spool_seqs(path: str) -> set[int]:
    """The ``seq`` of every state left in an outbox file."""
    conn = sqlite3.connect(path, timeout=30)
    try:
        rows = conn.execute("SELECT body FROM outbox").fetchall()
    finally:
        conn.close()
    return {orjson.loads(body)["content"]["state"]["seq"] for (body,) in rows}


def client(*args: str) -> list[str]:
    return [sys.executable, CLIENT, *args]


@pytest.mark.parametrize(("backend", "server_fault"), [
    ("asyncio", "server-down"), ("trio", "server-down"), ("asyncio", "server-slow"), ("trio", "server-up")])
def test_sigkill_with_outbox_loses_at_most_the_last_sync_interval(
        server: Any, tmp_path: Path, backend: str, server_fault: str) -> None:
    """Fault: a client process submitting 2,000 states/s (outbox synced every 0.1 s) is SIGKILLed after
    1.2 s, while the server is down (stopped 0.3 s into the run: the outbox fills), slow (0.3 s per
    request: writes lag and are in flight at the kill) or up (states it confirmed since the last sync
    are still in the outbox). A second process on the same outbox only enters and leaves an ActorSystem:
    leaving finishes the replay. Every state accepted
    more than sync interval + 0.3 s before the kill is on the server; none is there twice (a replayed
    state the server already had is not duplicated)."""
    spool = str(tmp_path / "outbox.db")
    stderr_path = tmp_path / "client.stderr"
    if server_fault == "server-slow":
        server.delay = 0.3
    with stderr_path.open("w") as stderr, subprocess.Popen(
            client("run", server.url, spool, backend, str(RATE), str(SESSIONS)),
            stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1) as proc:
        out = Lines(proc.stdout)  # type: ignore[arg-type]
        try:
            assert out.ready.wait(30), f"the client did not start: {stderr_path.read_text()[-2000:]}"
            run_started = time.monotonic()
            if server_fault == "server-down":
                time.sleep(STOP_SERVER_AFTER)
                server.stop()
            time.sleep(max(0.0, run_started + RUN_FOR - time.monotonic()))
            killed_at = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(10)
            out.join()
    assert proc.returncode == -signal.SIGKILL
    errors = [line for line in out.lines if line.startswith("error")]
    reports = [(int(n), float(t)) for _, n, t in (line.split() for line in out.lines if line.startswith("accepted"))]
    accepted = max(n for n, _ in reports)
    # Every seq below ``safe`` was accepted more than the allowed window before the kill.
    window = SYNC_INTERVAL + MARGIN
    safe = max((n for n, t in reports if t < killed_at - window), default=0)

    if server_fault == "server-down":
        server.start()
    else:
        time.sleep(server.delay + 0.2)  # writes the dead client left in flight are committed by now
    server.delay = 0.0
    before_replay = set(stored_seqs(server.db_path))
    in_spool = spool_seqs(spool)
    replay = subprocess.run(client("replay", server.url, spool, backend), capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0 and replay.stdout.startswith("replayed"), replay.stdout + replay.stderr[-2000:]
    spooled = int(replay.stdout.split()[1])
    stored = stored_seqs(server.db_path)
    # Seqs past the last report may have been accepted (and kept) after it, just before the kill.
    result = tally(range(accepted), [s for s in stored if s < accepted])
    late = sorted(s for s in stored if s >= accepted)
    lost = sorted(set(range(accepted)) - set(stored))
    lost_outside_window = [s for s in lost if s < safe]
    # How long before the kill the oldest lost state was accepted (the report after it, at most 4 ms late).
    oldest_lost_age = killed_at - min((t for n, t in reports if n > lost[0]), default=killed_at) if lost else 0.0
    report(f"sigkill {backend} {server_fault}", result, accepted_before_kill=accepted,
           allowed_window=accepted - safe, lost_in_window=len(lost) - len(lost_outside_window),
           oldest_lost_age_s=round(oldest_lost_age, 3),
           stored_before_replay=len(before_replay), spooled_at_restart=spooled,
           spooled_already_stored=len(in_spool & before_replay))

    assert errors == []
    assert accepted >= RATE * RUN_FOR * 0.5, f"the client accepted only {accepted} states"
    assert safe > 0
    assert spooled == len(in_spool) > 0, "the outbox held nothing at restart: nothing was tested"
    assert lost_outside_window == [], f"lost outside the last sync interval: {lost_outside_window[:20]}"
    assert result.duplicated == 0, str(result)
    assert late == list(range(accepted, accepted + len(late)))  # accepted after the last report, in order
    assert len(stored) == len(set(stored))
