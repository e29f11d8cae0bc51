"""Many sessions through one write stage, against json-documents services unlike our reference server."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import anyio
import anyio.to_thread
import orjson
import pytest
from structlog.testing import capture_logs

from wr124_session_actor import ActorSystem, Config, SessionStateManager
from wr124_session_actor import SessionStateStatus as S
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor._write_stage import MAX_PACE
from wr124_session_actor.stores import HttpStore, MemoryStore
from wr124_session_actor.stores._base import MAX_QUERY_LIMIT, Query, QueryResult

from .faults.docserver import DocServer, DocServerProcess, doc_server, doc_server_process

pytestmark = pytest.mark.anyio

SESSIONS = 10_000
RAPID_SESSIONS = 3
RAPID_SUBMITS = 500


def _config(server: DocServer | DocServerProcess, anyio_backend: str, **changes: Any) -> Config:
    # aiohttp only runs on asyncio: under trio the client is httpx (the case that lost every state in round 1).
    client = ("aiohttp",) if anyio_backend == "asyncio" else ("httpx",)
    values: dict[str, Any] = {"api_url": server.url, "http_clients": client, "timeout": 5.0, **changes}
    return Config(**values)


async def _ten_thousand_sessions_and_three_rapid_ones(system: ActorSystem) -> dict[tuple[str, int], int]:
    """Every session submits; returns the states sent by document-to-be (session, state)."""
    sent: dict[tuple[str, int], int] = {}
    for n in range(SESSIONS):
        assert system.handle(f"one-{n}").submit({"n": n}, "task", "agent") is S.SUCCESS
        sent[(f"one-{n}", n)] = 0
    for step in range(RAPID_SUBMITS):
        for r in range(RAPID_SESSIONS):
            assert system.handle(f"rapid-{r}").submit({"n": step}, "task", "agent") is S.SUCCESS
            sent[(f"rapid-{r}", step)] = 0
        await anyio.lowlevel.checkpoint()
    return sent


def _stored(docs: Mapping[str, dict[str, Any]]) -> list[tuple[str, int]]:
    return [(doc["session_id"], doc["content"]["state"]["n"]) for doc in docs.values()]


class TestManySessions:
    @pytest.mark.slow
    async def test_ten_thousand_sessions_without_a_batch_endpoint(self, anyio_backend: str) -> None:
        """10,000 sessions × 1 submit and 3 × 500 rapid submits (keep="all") against a service without the
        batch endpoint: every state is stored exactly once with its content, and no outcome is a failure
        or a timeout (queueing in the write stage is not a store failure)."""
        # The server in a process of its own, as a real service is (in a thread of this one it would
        # take half of the client's GIL).
        with doc_server_process(batch=False) as server, capture_logs() as logs:
            # A generous shutdown budget: on a loaded machine the last POSTs may take a while.
            config = _config(server, anyio_backend, keep="all", shutdown_timeout=300.0)
            async with ActorSystem(config) as system:
                sent = await _ten_thousand_sessions_and_three_rapid_ones(system)
            stats = system.statistics()
            state = await anyio.to_thread.run_sync(server.state)
            stored = _stored(state.docs)
            assert len(stored) == len(sent) == SESSIONS + RAPID_SESSIONS * RAPID_SUBMITS
            assert set(stored) == set(sent)
            bad = [e for e in logs if e.get("status") in ("failed", "timeout")]
            assert bad == [], bad[:3]
            assert (stats.documents, stats.failed) == (len(sent), 0)
            assert not any(h.path.endswith("/batch") and h.outcome == "ok" for h in state.hits)

    @pytest.mark.slow
    async def test_ten_thousand_sessions_share_fifty_writes(self, anyio_backend: str) -> None:
        """The same 10,000 sessions against a service with the batch endpoint: their batches are merged
        into at most 50 write requests in all."""
        with doc_server() as server:
            async with ActorSystem(_config(server, anyio_backend)) as system:
                for n in range(SESSIONS):
                    system.handle(f"one-{n}").submit({"n": n}, "task", "agent")
            writes = server.writes()
            assert len(server.docs) == SESSIONS
            assert len(writes) <= 50, len(writes)

    @pytest.mark.slow
    async def test_ten_thousand_sessions_arriving_over_time_share_paced_writes(self, anyio_backend: str) -> None:
        """The same 10,000 sessions arriving 20 per millisecond instead of at once: each is due on its own
        and the server is faster than their arrival (idle between them), yet they share one write per
        pace, not one write each."""
        with doc_server() as server:
            async with ActorSystem(_config(server, anyio_backend)) as system:
                started = anyio.current_time()
                for n in range(SESSIONS):
                    system.handle(f"one-{n}").submit({"n": n}, "task", "agent")
                    if n % 20 == 19:
                        await anyio.sleep(0.001)
                elapsed = anyio.current_time() - started
            writes = server.writes()
            assert len(server.docs) == SESSIONS
            assert len(writes) <= elapsed / MAX_PACE + 5, (len(writes), elapsed)
            assert len(writes) <= SESSIONS / 100

    async def test_sessions_keep_their_order_and_one_batch_in_flight(self, anyio_backend: str) -> None:
        """Many sessions merged into shared writes: each session's states arrive in submit order."""
        with doc_server(batch=False) as server:
            config = _config(server, anyio_backend, keep="all", debounce=0.0)
            async with ActorSystem(config) as system:
                for step in range(20):
                    for n in range(50):
                        system.handle(f"s{n}").submit({"n": step}, "task", "agent")
                    await anyio.sleep(0.001)
            by_session: dict[str, list[int]] = {}
            for doc in server.docs.values():  # in arrival order
                by_session.setdefault(doc["session_id"], []).append(doc["content"]["state"]["n"])
            assert by_session == {f"s{n}": list(range(20)) for n in range(50)}


class TestAgentFilter:
    async def _three_agents(self, manager: SessionStateManager) -> None:
        for step in range(3):
            for agent in ("planner", "coder", "critic"):
                status, _ = await manager.upload_session_state({"agent": agent, "step": step}, "t", agent)
                assert status is S.SUCCESS

    async def _planner_and_critic(self, manager: SessionStateManager, limit: int, steps: list[int]) -> None:
        """The planner's newest state is restored, and the critic's newest ``limit`` states (``steps``)
        come down newest first."""
        status, content = await manager.restore_agent_session_state("planner")
        assert status is S.SUCCESS and content is not None
        assert content["state"] == {"agent": "planner", "step": 2}
        status, docs = await manager.download_session_states(limit=limit, agent_name="critic")
        assert status is S.SUCCESS
        assert [d["content"]["state"]["step"] for d in docs] == steps

    async def test_a_service_that_reads_repeated_tags_restores_the_right_agent(self, anyio_backend: str) -> None:
        """Tags go out as repeated parameters, so a list-typed server filters by agent: the agent's own
        newest state is restored."""
        with doc_server() as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                await manager.upload_session_state({"agent": "other-session"}, "t", "coder")  # same agent name
                other = SessionStateManager("elsewhere", _config(server, anyio_backend))
                await other.upload_session_state({"agent": "coder", "step": 99}, "t", "coder")
                await other.aclose()
                await self._planner_and_critic(manager, 10, [2, 1, 0])
                # The first lookup asks two documents to learn the server's order; once it shows newest
                # first, a restore asks one.
                await manager.restore_agent_session_state("coder")
                assert server.limits == [2, 10, 1]
            finally:
                await manager.aclose()

    async def test_a_service_that_ignores_tags_never_yields_another_agents_state(self, anyio_backend: str) -> None:
        """A server that ignores the tags filter returns every agent's documents: the client checks each
        one, reads further pages when needed, and never hands back another agent's state."""
        with doc_server(tags="ignore") as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                for noise in range(30):  # the planner's newest state is now far down the unfiltered list
                    await manager.upload_session_state({"agent": "coder", "noise": noise}, "t", "coder")
                status, content = await manager.restore_agent_session_state("planner")
                assert status is S.SUCCESS and content is not None
                assert content["agent_name"] == "planner" and content["state"] == {"agent": "planner", "step": 2}
                status, docs = await manager.download_session_states(limit=5, agent_name="critic")
                assert status is S.SUCCESS
                assert {d["content"]["agent_name"] for d in docs} == {"critic"}
                assert [d["content"]["state"]["step"] for d in docs] == [2, 1, 0]
                status, content = await manager.restore_agent_session_state("nobody")
                assert (status, content) == (S.FAILED, None)
            finally:
                await manager.aclose()

    async def test_a_service_that_ignores_tags_and_skip_yields_each_state_once(self, anyio_backend: str) -> None:
        """A server that ignores the tags filter and ``skip`` answers every page from its first document:
        the client's further pages repeat what it has, and no document comes back twice."""
        with doc_server(tags="ignore", paging=False) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                # The first page (critic 2, coder 2) holds one of the critic's states; the next repeats it.
                status, docs = await manager.download_session_states(limit=2, agent_name="critic")
                assert status is S.SUCCESS
                assert [d["content"]["state"]["step"] for d in docs] == [2, 1]
                for noise in range(30):
                    await manager.upload_session_state({"agent": "coder", "noise": noise}, "t", "coder")
                status, docs = await manager.download_session_states(limit=5, agent_name="critic")
                assert status is S.SUCCESS
                assert [d["content"]["state"]["step"] for d in docs] == [2, 1, 0]
                status, docs = await manager.download_session_states(limit=10)
                assert status is S.SUCCESS
                assert len({d["id"] for d in docs}) == len(docs) == 10
                status, content = await manager.restore_agent_session_state("planner")
                assert status is S.SUCCESS and content is not None
                assert content["state"] == {"agent": "planner", "step": 2}
                # The second page of a lookup (all documents, fewer than a page) ends it: no more reads.
                reads = [h for h in server.hits if h.method == "GET"]
                assert len(reads) == 2 + 2 + 1 + 2, len(reads)
            finally:
                await manager.aclose()

    async def test_a_service_that_ignores_the_order_still_gives_the_newest_state(self, anyio_backend: str) -> None:
        """A server that answers oldest first whatever ``sort_by``/``sort_order`` say (and ignores tags):
        the client sees an older document before a newer one, reads on and sorts, so restores and
        downloads give the newest states, for a limit of 1 too."""
        with doc_server(tags="ignore", sorting=False) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                await self._planner_and_critic(manager, 2, [2, 1])
                status, docs = await manager.download_session_states(limit=3)
                assert status is S.SUCCESS
                assert [d["content"]["state"] for d in docs] == [
                    {"agent": agent, "step": 2} for agent in ("critic", "coder", "planner")]
                assert server.limits[0] == 2 and server.limits[-1] == MAX_QUERY_LIMIT  # every page read
            finally:
                await manager.aclose()

    @pytest.mark.parametrize("sorting", [False, True])
    async def test_a_service_that_dates_to_the_second_still_gives_the_newest_state(self, anyio_backend: str,
                                                                                   sorting: bool) -> None:
        """A server that dates documents to the whole second, oldest first or as asked: states of the same
        second come newest first too (a tie was taken for newest first, for good, and ties kept the server's
        oldest-first order: the oldest state of the second was restored as the latest)."""
        with doc_server(sorting=sorting, whole_seconds=True) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend).replace(cache_ttl=0))
            try:
                for round_ in range(2):  # the first round learns the order, the second uses what was learned
                    for step in range(5):
                        await manager.upload_session_state({"round": round_, "step": step}, "t", "coder")
                    status, content = await manager.restore_latest_session_state()
                    assert (status, content and content["state"]) == (S.SUCCESS, {"round": round_, "step": 4})
                    status, docs = await manager.download_session_states(limit=5)
                    assert [d["content"]["state"]["step"] for d in docs] == [4, 3, 2, 1, 0]
                    status, content = await manager.restore_agent_session_state("coder")
                    assert (status, content and content["state"]) == (S.SUCCESS, {"round": round_, "step": 4})
            finally:
                await manager.aclose()

    async def test_a_service_that_caps_the_limit_is_read_to_its_total(self, anyio_backend: str) -> None:
        """A server that ignores tags and answers at most 5 documents a page (fewer than asked, with the
        total of all matches): a short page is not the end while the total says more follow."""
        with doc_server(tags="ignore", max_limit=5) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                for noise in range(12):  # the planner's newest state is on the server's fourth page
                    await manager.upload_session_state({"agent": "coder", "noise": noise}, "t", "coder")
                await self._planner_and_critic(manager, 3, [2, 1, 0])
            finally:
                await manager.aclose()

    async def test_reading_on_has_no_page_bound(self, anyio_backend: str) -> None:
        """A server that ignores tags and answers 5 documents a page: a download of 60 states takes 12 pages,
        and the planner's state behind them 13 (only 10 pages were read: the download was 50 states long and
        SUCCESS, and the planner's state "not in this session")."""
        with doc_server(tags="ignore", max_limit=5) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await manager.upload_session_state({"agent": "planner", "step": 0}, "t", "planner")
                for noise in range(60):
                    await manager.upload_session_state({"agent": "coder", "noise": noise}, "t", "coder")
                status, docs = await manager.download_session_states(limit=60, agent_name="coder")
                assert (status, len(docs)) == (S.SUCCESS, 60)
                status, content = await manager.restore_agent_session_state("planner")
                assert (status, content and content["state"]) == (S.SUCCESS, {"agent": "planner", "step": 0})
            finally:
                await manager.aclose()

    async def test_a_service_that_refuses_large_pages_is_read_in_pages_it_takes(self, anyio_backend: str) -> None:
        """A server that ignores tags and refuses a limit over 100 (422, as a validated parameter does),
        with the planner's states behind 150 of the coder's: the lookup asks for half as many until the
        server answers, keeps to that, and finds the planner's states."""
        with doc_server(tags="ignore", refused_limit=100) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                await self._three_agents(manager)
                for noise in range(150):
                    await manager.upload_session_state({"agent": "coder", "noise": noise}, "t", "coder")
                await self._planner_and_critic(manager, 3, [2, 1, 0])
                assert max(server.limits) == MAX_QUERY_LIMIT and 62 in server.limits
                refused = sum(1 for limit in server.limits if limit > 100)
                assert refused == 4  # 1000, 500, 250, 125 once: later pages ask 62 at once
            finally:
                await manager.aclose()


    async def test_a_download_larger_than_the_servers_pages_is_read_to_its_limit(self, anyio_backend: str) -> None:
        """A server that filters as asked but refuses a limit over 100: a download of 300 of 400 states
        gets the newest 300, in pages the server takes (once it was its first page, or a failure)."""
        with doc_server(refused_limit=100) as server:
            manager = SessionStateManager("s", _config(server, anyio_backend))
            try:
                for step in range(400):
                    status, _ = await manager.upload_session_state({"step": step}, "t", "coder")
                    assert status is S.SUCCESS
                status, docs = await manager.download_session_states(limit=300, agent_name="coder")
                assert status is S.SUCCESS
                assert [d["content"]["state"]["step"] for d in docs] == list(range(399, 99, -1))
            finally:
                await manager.aclose()


    async def test_a_service_that_ignores_the_session_and_tags_yields_only_the_sessions_own(
            self, anyio_backend: str) -> None:
        """A server that ignores both ``session_id`` and ``tags``, with three sessions' states interleaved:
        each session restores and downloads its own agents' states only."""
        with doc_server(tags="ignore", sessions=False) as server:
            managers = [SessionStateManager(f"s{n}", _config(server, anyio_backend)) for n in range(3)]
            try:
                for step in range(3):
                    for n, manager in enumerate(managers):
                        for agent in ("planner", "critic"):
                            state = {"session": n, "agent": agent, "step": step}
                            assert (await manager.upload_session_state(state, "t", agent))[0] is S.SUCCESS
                for n, manager in enumerate(managers):
                    status, content = await manager.restore_agent_session_state("planner")
                    assert status is S.SUCCESS and content is not None
                    assert content["state"] == {"session": n, "agent": "planner", "step": 2}
                    status, docs = await manager.download_session_states(limit=10)
                    assert status is S.SUCCESS
                    assert {(d["session_id"], d["content"]["state"]["session"]) for d in docs} == {(f"s{n}", n)}
                    assert len(docs) == 6
            finally:
                for manager in managers:
                    await manager.aclose()


    @pytest.mark.parametrize("sessions", [True, False])
    async def test_a_service_that_caps_its_pages_and_sends_no_total_is_read_on(self, anyio_backend: str,
                                                                              sessions: bool) -> None:
        """A server that caps pages at 5 and leaves out ``total``: a download of 20 gets all 20, and with the
        session filter ignored too, another session's states in between, the session's latest is restored (a
        short page ended the reading: 5 of 20, or SUCCESS with none and restore FAILED)."""
        with doc_server(max_limit=5, total=False, sessions=sessions) as server:
            mine = SessionStateManager("mine", _config(server, anyio_backend))
            other = SessionStateManager("other", _config(server, anyio_backend))
            try:
                for step in range(20):
                    assert (await mine.upload_session_state({"step": step}, "t", "coder"))[0] is S.SUCCESS
                    assert (await other.upload_session_state({"step": -step}, "t", "coder"))[0] is S.SUCCESS
                status, docs = await mine.download_session_states(limit=20)
                assert status is S.SUCCESS
                assert [d["content"]["state"]["step"] for d in docs] == list(range(19, -1, -1))
                status, content = await mine.restore_latest_session_state()
                assert status is S.SUCCESS and content is not None and content["state"] == {"step": 19}
            finally:
                await mine.aclose()
                await other.aclose()


class PagelessStore(MemoryStore):
    """A store that ignores ``skip`` and ``tags``: every page is the newest documents of the session."""

    def __init__(self) -> None:
        super().__init__(f"pageless-{uuid.uuid4().hex}")
        self.reads = 0

    async def query(self, query: Query) -> QueryResult:
        self.reads += 1
        return await super().query(replace(query, skip=0, tags=()))


async def test_a_store_that_repeats_its_first_page_ends_the_reading() -> None:
    """More than a full page of another agent's states, then a store that repeats it whatever ``skip``
    says: the lookup stops at the page that brings nothing new (no reading up to the page bound), and
    finds nothing rather than a wrong agent's state."""
    store = PagelessStore()
    uploads = [StateUpload("s", {"n": n}, "t", "coder") for n in range(MAX_QUERY_LIMIT + 10)]
    await store.insert_many([encode_document(u) for u in [StateUpload("s", {"n": -1}, "t", "planner"), *uploads]])
    async with ActorSystem(Config(api_url="memory://"), store=store) as system:
        manager = system.manager("s")
        status, content = await manager.restore_agent_session_state("planner")
        assert (status, content) == (S.FAILED, None)
        assert store.reads == 3  # the first page (1), a full page (1,000), the same again: nothing new
        status, docs = await manager.download_session_states(limit=3, agent_name="coder")
        assert status is S.SUCCESS
        assert [d["content"]["state"]["n"] for d in docs] == [MAX_QUERY_LIMIT + 9, MAX_QUERY_LIMIT + 8,
                                                              MAX_QUERY_LIMIT + 7]


class EndlessStore(MemoryStore):
    """A store that ignores every filter and has ever more documents of other sessions, a page at a time."""

    def __init__(self) -> None:
        super().__init__(f"endless-{uuid.uuid4().hex}")
        self.reads = 0

    async def query(self, query: Query) -> QueryResult:
        self.reads += 1
        await anyio.sleep(0.01)
        page = [encode_document(StateUpload(f"other-{self.reads}-{n}", {"n": n})) for n in range(query.limit)]
        return QueryResult([{**orjson.loads(d.body), "_id": d.id} for d in page], 10**9)


async def test_a_reading_the_deadline_cuts_short_is_a_timeout_not_a_short_answer() -> None:
    """Paging on without a page bound ends at the call's deadline: TIMEOUT, not SUCCESS with what was found."""
    store = EndlessStore()
    async with ActorSystem(Config(api_url="memory://", timeout=0.5, retries=0), store=store) as system:
        manager = system.manager("s")
        assert await manager.download_session_states(limit=5) == (S.TIMEOUT, [])
        assert await manager.restore_latest_session_state() == (S.TIMEOUT, None)
    assert store.reads > 10


class TestRedirects:
    @pytest.mark.parametrize(("anyio_backend", "client"), [
        ("asyncio", "aiohttp"), ("asyncio", "httpx"), ("asyncio", "urllib"), ("trio", "httpx"), ("trio", "urllib")])
    async def test_a_service_with_trailing_slash_routes_is_followed_and_learned(self, client: str) -> None:
        """A service whose routes end in "/" redirects the other paths there (307, as web frameworks do):
        with every client the store follows it, method and body kept, and asks at the "/" paths from the
        first redirect on (one extra round trip per store, not one per request)."""
        with doc_server(slash=True) as server:
            config = Config(api_url=server.url, http_clients=(client,), timeout=5.0, retries=0)
            manager = SessionStateManager("s", config)
            status, doc_id = await manager.upload_session_state({"n": 1}, "t", "planner")
            assert status == S.SUCCESS, doc_id
            status, content = await manager.restore_agent_session_state("planner")
            assert status == S.SUCCESS and content is not None and content["state"] == {"n": 1}
            store = manager._direct_store()
            assert isinstance(store, HttpStore) and store.trailing_slash
            assert store.requests_sent == len(server.hits) + 1
            await store.health()  # /health keeps its own path
            assert server.hits[-1].path == "/health"
            await manager.aclose()
            async with ActorSystem(config) as system:
                for n in range(20):
                    system.handle(f"x{n}").submit({"n": n}, "t", "a")
            assert (system.statistics().documents, system.statistics().failed) == (20, 0)
            assert len(server.docs) == 21
            assert all(hit.path.endswith("/") for hit in server.hits if "json-documents" in hit.path)
