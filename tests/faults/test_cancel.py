"""The client cancelled in the middle of a flush: the shielded shutdown flush still writes everything once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from wr124_session_actor import ActorSystem, Config
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import EncodedDocument
from wr124_session_actor.stores import DocumentStore, open_store

from .tally import PublicCalls, report, stored_seqs, tally

pytestmark = pytest.mark.anyio

SESSIONS = 10
PER_SESSION = 40
#: Every request waits this long in the server: writes are surely in flight when the cancel comes.
SERVER_DELAY = 0.5


class WatchedStore:
    """A store that counts ``insert_many`` calls started and finished (the test waits on the count)."""

    def __init__(self, inner: DocumentStore) -> None:
        self.inner = inner
        self.started = 0
        self.finished = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def insert_many(self, docs: Sequence[EncodedDocument]) -> list[str]:
        self.started += 1
        ids = await self.inner.insert_many(docs)
        self.finished += 1
        return ids



@pytest.mark.parametrize("when", ["while-writing", "during-shutdown-flush"])
async def test_cancelled_mid_flush_everything_arrives_once(server: Any, when: str, anyio_backend: str) -> None:
    """Fault: the scope holding the ActorSystem is cancelled while every session has a batch write in
    flight (the server takes 0.5 s per request), with more uploads still queued behind it; or it is
    cancelled while the system's own shutdown flush is writing. The abandoned writes are redone under
    the shield (ids make a redone write idempotent) and every state arrives exactly once."""
    config = Config(api_url=server.url, keep="all", timeout=10.0, retries=3, debounce=0.01, max_delay=0.05,
                    shutdown_timeout=15.0)
    server.delay = SERVER_DELAY
    calls = PublicCalls()
    sent: list[int] = []
    store = WatchedStore(open_store(config))
    system = ActorSystem(config, store=store)
    handles: list[Any] = []

    def submit_round(round_: int) -> None:
        for n, handle in enumerate(handles):
            seq = round_ * SESSIONS + n
            if calls.sync("submit", handle.submit, {"seq": seq}, "t", "agent") == S.SUCCESS:
                sent.append(seq)

    async def wait_for_writes(count: int) -> None:
        with anyio.fail_after(10):
            while store.started < count:
                await anyio.sleep(0.005)
        await anyio.sleep(0.1)  # the requests reach the server and wait out its delay

    at_cancel: dict[str, int] = {}

    async def cancel_when_shutdown_writes(writes_before: int) -> None:
        await wait_for_writes(writes_before + 1)  # the shutdown flush has a write in flight
        at_cancel["in_flight"] = store.started - store.finished
        outer.cancel()

    started = time.monotonic()
    with anyio.CancelScope() as outer:
        async with anyio.create_task_group() as tg:
            try:
                async with system:
                    handles.extend(system.handle(f"c{n}") for n in range(SESSIONS))
                    for round_ in range(PER_SESSION // 2):
                        submit_round(round_)
                    await wait_for_writes(1)  # the sessions' batches leave together (the write stage)
                    # More uploads queue behind the writes in flight; a caller awaits a flush.
                    for round_ in range(PER_SESSION // 2, PER_SESSION):
                        submit_round(round_)
                    tg.start_soon(calls.call, "flush", handles[0].flush)
                    await anyio.sleep(0.01)
                    if when == "while-writing":
                        at_cancel["in_flight"] = store.started - store.finished
                        outer.cancel()
                        await anyio.sleep(30)  # cancelled at once
                    else:
                        # Leaving the block starts the shutdown flush; it is cancelled in the middle.
                        tg.start_soon(cancel_when_shutdown_writes, store.started)
            except Exception as exc:  # leaving the system is a public call too
                calls.raised.append(f"ActorSystem exit: {exc!r}")
    took = time.monotonic() - started

    stats = system.statistics()
    result = tally(sent, await anyio.to_thread.run_sync(stored_seqs, server.db_path))
    report(f"cancel {when} ({anyio_backend})", result, writes_in_flight_at_cancel=at_cancel.get("in_flight"),
           insert_calls=store.started, insert_calls_finished=store.finished, took_s=round(took, 2))
    assert outer.cancelled_caught
    assert calls.raised == []
    assert at_cancel["in_flight"] >= 1  # the cancel came in the middle of a write
    if when == "while-writing":
        assert store.started > store.finished  # the abandoned writes were redone
    assert (result.sent, result.arrived, result.lost, result.duplicated, result.unexpected) == (
        SESSIONS * PER_SESSION, SESSIONS * PER_SESSION, 0, 0, 0), str(result)
    assert (stats.documents, stats.failed) == (SESSIONS * PER_SESSION, 0)
