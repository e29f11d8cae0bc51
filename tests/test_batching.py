"""The batching policy and the backoff rule: plain synchronous code, tested without an event loop."""

from __future__ import annotations

import math

import pytest

from wr124_session_actor import Config
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._backoff import backoff_delay
from wr124_session_actor._batching import PendingBatch
from wr124_session_actor._document import StateUpload
from wr124_session_actor._ops import UploadOutcome

CONFIG = Config(api_url="memory://", debounce=0.05, max_delay=1.0, max_batch=3, retry_backoff=0.1,
                retry_backoff_max=2.0)


def upload(agent: str = "a", n: int = 0, parent_seq: int | None = None) -> StateUpload:
    return StateUpload("s", {"n": n}, "t", agent, parent_seq=parent_seq)


def batch(keep: str = "latest", bound: int = 3) -> PendingBatch[str]:
    return PendingBatch(CONFIG.replace(keep=keep), bound=bound)


class TestBackoff:
    def test_doubles_up_to_the_cap(self) -> None:
        """Without jitter the delay doubles per failure and stops at the cap."""
        assert [backoff_delay(n, 0.1, 1.0, jitter=False) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]

    def test_jitter_stays_in_the_upper_half(self) -> None:
        """With jitter the delay is drawn from [delay/2, delay]."""
        delays = [backoff_delay(3, 0.1, 10.0) for _ in range(200)]
        assert all(0.2 <= d <= 0.4 for d in delays) and len(set(delays)) > 1


class TestDueTime:
    def test_empty_batch_is_never_due(self) -> None:
        """Nothing pending: due at infinity."""
        assert batch().due_at() == math.inf

    def test_quiet_for_debounce(self) -> None:
        """Due debounce after the last upload while uploads keep coming, at most max_delay after the first."""
        pending = batch(keep="all", bound=100)
        pending.add(upload(n=0), None, 0, now=10.0)
        assert pending.due_at() == pytest.approx(10.05)
        pending.add(upload(n=1), None, 0, now=10.04)
        assert pending.due_at() == pytest.approx(10.09)
        for step in range(2, 40):
            pending.add(upload(n=step), None, 0, now=10.0 + step * 0.03)
        assert pending.due_at() == pytest.approx(11.0)  # max_delay caps the wait

    def test_awaited_upload_is_due_at_once(self) -> None:
        """A caller waits: no reason to wait for quiet."""
        pending = batch()
        pending.add(upload(), "reply", 0, now=5.0)
        assert pending.due_at() == 0.0

    def test_full_batch(self) -> None:
        """max_batch pending uploads make the batch full."""
        pending = batch(keep="all")
        for n in range(3):
            assert not pending.full
            pending.add(upload(n=n), None, 0, now=0.0)
        assert pending.full


class TestCoalescing:
    def test_keep_latest_replaces_and_moves_replies(self) -> None:
        """keep="latest": a newer state of an agent replaces the pending one; its callers wait on the newer."""
        pending = batch()
        older = upload(n=1)
        pending.add(older, "first caller", 0, now=0.0)
        replaced, coalesced = pending.add(upload(n=2), "second caller", 0, now=0.1)
        assert replaced is older and coalesced == 1
        (item,) = pending.take()
        assert item.upload.state == {"n": 2}
        assert item.replies == ["first caller", "second caller"]
        assert item.coalesced == 1

    def test_newer_state_continues_the_older_ones_parent(self) -> None:
        """A coalesced newer state keeps the parent_seq of the state it replaced (optimistic concurrency)."""
        pending = batch()
        pending.add(upload(n=1, parent_seq=7), None, 0, now=0.0)
        pending.add(upload(n=2), None, 0, now=0.1)
        assert pending.take()[0].upload.parent_seq == 7

    def test_keep_all_keeps_every_upload(self) -> None:
        """keep="all": every upload stays pending, in order."""
        pending = batch(keep="all")
        for n in range(3):
            pending.add(upload(n=n), None, 0, now=0.0)
        assert [p.upload.state for p in pending.take()] == [{"n": 0}, {"n": 1}, {"n": 2}]

    def test_bound_replaces_the_oldest_of_the_agent(self) -> None:
        """Past the bound (the store is failing) a new upload replaces the oldest pending one of its agent."""
        pending = batch(keep="all", bound=2)
        pending.add(upload(n=0), None, 0, now=0.0)
        pending.add(upload(n=1), None, 0, now=0.0)
        replaced, _ = pending.add(upload(n=2), None, 0, now=0.0)
        assert replaced is not None and replaced.state == {"n": 0}
        assert [p.upload.state for p in pending.take()] == [{"n": 1}, {"n": 2}]


class TestSettle:
    def test_written_uploads_leave(self) -> None:
        """A successful write empties the batch and resets the retry time."""
        pending = batch(keep="all")
        pending.add(upload(n=0), "r", 0, now=0.0)
        items = pending.take()
        done = pending.settle(items, [UploadOutcome(S.SUCCESS, "id-0")], now=1.0)
        assert [(p.upload.state, o.value) for p, o in done] == [({"n": 0}, "id-0")]
        assert len(pending) == 0 and pending.retry_at == 0.0

    def test_transient_failure_stays_with_backoff(self) -> None:
        """A transient failure keeps the upload pending and puts the next try a backoff later."""
        pending = batch(keep="all")
        pending.add(upload(n=0), None, 0, now=0.0)
        pending.add(upload(n=1), None, 0, now=0.0)
        items = pending.take()
        done = pending.settle(items, [UploadOutcome(S.SUCCESS, "x"), UploadOutcome(S.TIMEOUT, "slow", True)],
                              now=10.0)
        assert [p.upload.state for p, _ in done] == [{"n": 0}]
        assert [p.upload.state for p in pending.take()] == [{"n": 1}]
        assert 10.05 <= pending.retry_at <= 10.1
        assert pending.due_at() >= pending.retry_at

    def test_permanent_failure_leaves(self) -> None:
        """A permanent failure is done: it is answered, not kept."""
        pending = batch()
        pending.add(upload(), "r", 0, now=0.0)
        done = pending.settle(pending.take(), [UploadOutcome(S.FAILED, "HTTP 422")], now=0.0)
        assert len(done) == 1 and len(pending) == 0

    def test_a_newer_state_that_came_during_the_write_stays_pending(self) -> None:
        """keep="latest": states of the written agents that came while the write was in flight replace the
        written ones in the batch and stay pending after it (the batch counted as many items as were
        written, and was emptied: the newest states were lost, with nothing logged)."""
        pending = batch()
        pending.add(upload("x", 0), None, 0, now=0.0)
        pending.add(upload("y", 0), "r", 0, now=0.0)
        items = pending.take()
        # The write of x0, y0 is in flight: they are written all the same, so not coalesced; y0's caller is
        # answered by its write (or y1's, should it fail for now), y1's caller by y1's only.
        assert pending.add(upload("x", 1), None, 0, now=0.1)[1] == 0
        assert pending.add(upload("y", 1), "r1", 0, now=0.1)[1] == 0
        assert [p.replies for p in items] == [(), ["r"]]
        done = pending.settle(items, [UploadOutcome(S.SUCCESS, "x0"), UploadOutcome(S.SUCCESS, "y0")], now=0.2)
        assert [p.upload.state for p, _ in done] == [{"n": 0}, {"n": 0}]
        assert [(p.upload.agent_name, p.upload.state, p.replies, p.coalesced) for p in pending.take()] == [
            ("x", {"n": 1}, (), 0), ("y", {"n": 1}, ["r", "r1"], 0)]
        assert pending.awaited
        done = pending.settle(pending.take(), [UploadOutcome(S.SUCCESS, "x1"), UploadOutcome(S.SUCCESS, "y1")],
                              now=0.3)
        assert len(done) == 2 and len(pending) == 0 and not pending.awaited

    def test_keep_all_while_failing_a_replaced_upload_in_flight_leaves_its_successor(self) -> None:
        """keep="all" at the bound: an upload that replaced one in flight stays pending after that write."""
        pending = batch(keep="all", bound=1)
        pending.add(upload("x", 0), None, 0, now=0.0)
        items = pending.take()
        pending.add(upload("x", 1), None, 0, now=0.1)
        done = pending.settle(items, [UploadOutcome(S.SUCCESS, "x0")], now=0.2)
        assert len(done) == 1 and [p.upload.state for p in pending.take()] == [{"n": 1}]


class TestTake:
    def test_an_agents_uploads_after_a_continuation_wait_for_the_next_write(self) -> None:
        """Uploads of an agent after one that gives a parent_seq stay pending for the next write, once the store
        has answered the continuation; other agents' uploads, and the agent's earlier ones, go now."""
        pending = batch(keep="all", bound=10)
        for item in (upload("a", 0), upload("b", 0), upload("a", 1, parent_seq=7), upload("a", 2), upload("b", 1)):
            pending.add(item, None, 0, 0.0)
        first = pending.take()
        assert [(p.upload.agent_name, p.upload.state) for p in first] == [("a", {"n": 0}), ("b", {"n": 0}),
                                                                          ("a", {"n": 1}), ("b", {"n": 1})]
        pending.settle(first, [UploadOutcome(S.SUCCESS, "id")] * 4, 1.0)
        assert [(p.upload.agent_name, p.upload.state) for p in pending.take()] == [("a", {"n": 2})]

    def test_a_state_that_comes_while_a_continuation_is_written_continues_its_outcome(self) -> None:
        """keep="latest": a newer state of the agent that comes while its continuation (parent_seq) is in
        flight does not take the parent then: stored, the continuation needs no check after it (the newer
        state took it, and was refused against its own predecessor); failed for now, the newer one
        continues it in its place."""
        for outcome, parent in ((UploadOutcome(S.SUCCESS, "id"), None),
                                (UploadOutcome(S.TIMEOUT, "slow", transient=True), 7)):
            pending = batch(keep="latest")
            pending.add(upload("a", 0, parent_seq=7), None, 0, 0.0)
            written = pending.take()
            pending.add(upload("a", 1), None, 0, 0.1)
            assert pending.take()[-1].upload.parent_seq is None
            pending.settle(written, [outcome], 1.0)
            assert [p.upload.parent_seq for p in pending.take()] == [parent], outcome
