"""The browser view at ``/ui``, driven in a real headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from wr124_session_actor.server import ServerThread

from .test_server import make_doc

pytestmark = pytest.mark.slow



def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``), or ``WR124_CHROMIUM``; never a downloaded build."""
    for candidate in (os.environ.get("WR124_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium; missing is a failure in CI (``.ci/run`` installs it), a skip elsewhere."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it (apt-get install chromium)")
        pytest.skip(reason="chromium is not installed (apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$WR124_TEST_ARTIFACTS`` or a temporary folder (printed)."""
    folder = Path(os.environ.get("WR124_TEST_ARTIFACTS") or tmp_path_factory.mktemp("ui-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sqlite file written by ``wr124-session demo`` (short max_delay: several states per agent)."""
    db = tmp_path_factory.mktemp("ui") / "demo.db"
    env = {**os.environ, "SESSION_STATE_MAX_DELAY": "0.05"}
    subprocess.run(
        [sys.executable, "-m", "wr124_session_actor.cli", "demo", "--url", f"sqlite:///{db}", "--sessions", "3"],
        check=True, env=env, capture_output=True, timeout=120,
    )
    return db


@pytest.fixture(scope="module")
def server(demo_db: Path) -> Iterator[ServerThread]:
    """``serve`` over the demo's file."""
    with ServerThread(demo_db) as srv:
        yield srv


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A desktop-sized page; a JavaScript error in it fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def open_session(page: Page, server: ServerThread, session_id: str) -> None:
    """Open /ui, find the session with the search box (keyboard only) and open it."""
    page.goto(f"{server.url}/ui")
    page.keyboard.press("/")
    page.keyboard.type(session_id)
    button = page.locator(f'#sessions [data-session="{session_id}"]')
    expect(page.locator("#sessions button")).to_have_count(1)
    button.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#session-title")).to_have_text(session_id)
    expect(page.locator("#timeline .chip").first).to_be_visible()  # its states have loaded


class TestBrowserView:
    def test_find_a_demo_session_and_see_its_agents_states(self, page: Page, server: ServerThread) -> None:
        """The demo's session is listed, found by search, opened; each agent has a lane of states."""
        open_session(page, server, "demo-2")
        lanes = page.locator("#timeline .lane")
        expect(lanes).to_have_count(2)
        assert sorted(lanes.locator(".lane-name").all_inner_texts())[0].startswith("coder")
        assert page.locator("#timeline .chip").count() >= 4
        state = page.locator("#state")
        expect(state.locator('[data-fact="task"]')).to_contain_text("demo-2")
        expect(state.locator('[data-fact="size"]')).to_contain_text("B")
        expect(state.locator('li[data-key="history"]')).to_be_visible()

    def test_diff_highlights_the_changed_key(self, page: Page, server: ServerThread) -> None:
        """A state against the previous one of its agent: the changed key is highlighted."""
        open_session(page, server, "demo-1")
        lane = page.locator("#timeline .lane").first
        chips = lane.locator(".chip")
        assert chips.count() >= 2
        chips.nth(1).click()
        changed = page.locator('#diff li.changed[data-key="model_calls"]')
        expect(changed).to_be_visible()
        background = changed.locator(".row").evaluate("el => getComputedStyle(el).backgroundColor")
        assert background not in ("rgba(0, 0, 0, 0)", "transparent")
        expect(page.locator('#diff li.changed[data-key="history"]')).to_be_visible()
        expect(page.locator("#diff .diff-summary")).to_contain_text("changed")
        assert "base" in (chips.nth(0).get_attribute("class") or "")
        # Any two states: compare with another one from the menu.
        page.select_option("#compare", index=1)
        expect(page.locator("#diff h3")).to_contain_text("→")

    def test_a_new_state_appears_within_two_seconds(self, page: Page, server: ServerThread) -> None:
        """While the session is open, a state written to the server shows up within 2 s."""
        open_session(page, server, "demo-3")
        chips = page.locator("#timeline .chip")
        before = chips.count()
        doc = make_doc(session_id="demo-3", name="session_state_demo-3_live",
                       content={"agent_name": "coder", "task": "live", "state": {"model_calls": 999}},
                       tags=["session_state", "agent_state", "coder"])
        written = time.monotonic()
        httpx.post(f"{server.url}/default/json-documents", json=doc).raise_for_status()
        expect(chips).to_have_count(before + 1, timeout=2000)
        assert time.monotonic() - written < 2.5
        expect(page.locator("#timeline .chip.new")).to_have_count(1)

    def test_screenshots_at_desktop_and_phone_sizes(self, browser: Browser, server: ServerThread,
                                                    artifacts: Path) -> None:
        """Readable at 1280×800 and 390×844; the screenshots are saved as artifacts."""
        for width, height in ((1280, 800), (390, 844)):
            context = browser.new_context(viewport={"width": width, "height": height})
            page = context.new_page()
            open_session(page, server, "demo-1")
            page.locator("#timeline .lane").first.locator(".chip").nth(1).click()
            expect(page.locator("#diff li.changed").first).to_be_visible()
            # Nothing wider than the screen: no horizontal scrolling.
            assert page.evaluate("document.documentElement.scrollWidth") <= width
            path = artifacts / f"ui-{width}x{height}.png"
            page.screenshot(path=str(path))
            assert path.stat().st_size > 10_000
            context.close()


    def test_a_long_session_loads_its_newest_states_then_older_ones(self, page: Page, server: ServerThread) -> None:
        """A session with more states than one page shows the newest, and "Load older" brings the rest."""
        docs = [make_doc(session_id="long", name=f"state-{n}", tags=["session_state", "agent_state", "a"],
                         content={"agent_name": "a", "task": "t", "state": {"n": n}}) for n in range(230)]
        httpx.post(f"{server.url}/default/json-documents/batch", json={"documents": docs}).raise_for_status()
        open_session(page, server, "long")
        chips = page.locator("#timeline .chip")
        expect(chips).to_have_count(200)
        expect(page.locator("#session-meta")).to_contain_text("newest 200 shown")
        page.get_by_role("button", name="Load older").click()
        expect(chips).to_have_count(230)
        expect(page.get_by_role("button", name="Load older")).to_have_count(0)


    def test_a_followed_session_keeps_its_newest_states_in_view(self, page: Page, tmp_path: Path) -> None:
        """States keep coming while a session is followed: the view keeps the newest page of them (and the one
        selected), not every state that came (a session followed as it grew to 9,930 states redrew them all at
        every poll and stalled the page for seconds)."""
        with ServerThread(tmp_path / "growing.db") as srv:
            collection = f"{srv.url}/default/json-documents"
            httpx.post(f"{collection}/batch", json={"documents": [state_doc("g", n) for n in range(150)]}
                       ).raise_for_status()
            open_session(page, srv, "g")
            chips = page.locator("#timeline .chip")
            expect(chips).to_have_count(150)
            page.locator("#timeline .chip").first.click()  # the oldest state, selected: it stays in view
            for start in range(150, 450, 100):
                docs = [state_doc("g", n) for n in range(start, start + 100)]
                httpx.post(f"{collection}/batch", json={"documents": docs}).raise_for_status()
                page.wait_for_timeout(800)  # a poll
            expect(page.locator("#session-meta")).to_contain_text("450 states", timeout=3000)
            expect(chips).to_have_count(450)  # from the selected one on
            page.locator("#timeline .chip").last.click()  # the newest selected: the older ones may go
            newest = httpx.post(f"{collection}/batch", json={"documents": [state_doc("g", 450)]}).json()["ids"][0]
            expect(page.locator("#session-meta")).to_contain_text("451 states · 1 agent · newest 200 shown",
                                                                  timeout=3000)
            expect(chips).to_have_count(200)
            expect(chips.last).to_have_attribute("data-doc", newest)
            page.get_by_role("button", name="Load older").click()  # and the older ones come back on demand
            expect(chips).to_have_count(400)


@contextmanager
def asked_for_the_key(browser: Browser, demo_db: Path) -> Iterator[Page]:
    """A new tab on /ui of a server over ``demo_db`` with the key "s3cret", its key dialog open."""
    with ServerThread(demo_db, api_key="s3cret") as srv:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{srv.url}/ui")
        expect(page.locator("#key-dialog")).to_be_visible()
        yield page
        context.close()


class TestApiKey:
    def test_asks_for_the_key_once_and_keeps_it_for_the_tab(self, browser: Browser, demo_db: Path) -> None:
        """With --api-key the page asks for the key, then lists sessions; a reload does not ask again."""
        with asked_for_the_key(browser, demo_db) as page:
            page.fill("#key", "s3cret")
            page.keyboard.press("Enter")
            expect(page.locator('#sessions [data-session="demo-1"]')).to_be_visible()
            assert page.evaluate("sessionStorage.getItem('wr124.apiKey')") == "s3cret"
            page.reload()
            expect(page.locator('#sessions [data-session="demo-1"]')).to_be_visible()
            expect(page.locator("#key-dialog")).to_be_hidden()

    def test_a_key_no_header_can_hold_is_asked_again(self, browser: Browser, demo_db: Path) -> None:
        """A key typed with characters outside Latin-1 is refused in the page and asked again, with why (fetch
        threw at every call and the tab stayed locked, the key kept for it)."""
        with asked_for_the_key(browser, demo_db) as page:
            page.fill("#key", "鍵")
            page.keyboard.press("Enter")
            expect(page.locator("#key-dialog")).to_be_visible()
            expect(page.locator("#key-why")).to_contain_text("ASCII")
            page.fill("#key", "s3cret")
            page.keyboard.press("Enter")
            expect(page.locator('#sessions [data-session="demo-1"]')).to_be_visible()

    def test_a_wrong_key_is_asked_again_saying_it_was_refused(self, browser: Browser, demo_db: Path) -> None:
        """A wrong key: the dialog comes back saying the key was refused (it came back blank, as if never
        asked)."""
        with asked_for_the_key(browser, demo_db) as page:
            expect(page.locator("#key-why")).to_have_text("")
            page.fill("#key", "wrong")
            page.keyboard.press("Enter")
            expect(page.locator("#key-why")).to_contain_text("That key was refused")
            page.fill("#key", "s3cret")
            page.keyboard.press("Enter")
            expect(page.locator('#sessions [data-session="demo-1"]')).to_be_visible()

def state_doc(session_id: str, n: int) -> dict[str, object]:
    """A state of agent "a" in ``session_id``."""
    return make_doc(session_id=session_id, name=f"state-{session_id}-{n}", tags=["session_state", "agent_state", "a"],
                    content={"agent_name": "a", "task": "t", "state": {"n": n}})


class TestWhatTheViewShows:
    def test_an_older_list_answer_does_not_replace_the_page_asked_last(self, page: Page, tmp_path: Path) -> None:
        """Older sessions, then newer again, while the older page's answer is held: when it comes, last, the
        list keeps the newer page its label names (the late answer was drawn: "1–20 of 45" over sessions
        21-40; paging through 101 pages showed 1,941 of 2,001 sessions)."""
        with ServerThread(tmp_path / "many.db") as srv:
            docs = [state_doc(f"s{n:02d}", 0) for n in range(45)]
            httpx.post(f"{srv.url}/default/json-documents/batch", json={"documents": docs}).raise_for_status()
            held: list[Route] = []

            def hold_the_older_page(route: Route) -> None:
                if "skip=20" in route.request.url and not held:
                    held.append(route)
                else:
                    route.continue_()

            page.route("**/default/sessions?*", hold_the_older_page)
            page.goto(f"{srv.url}/ui")
            expect(page.locator("#page-info")).to_have_text("1–20 of 45")
            newest = page.locator("#sessions button").first.get_attribute("data-session")
            page.click("#next")
            while not held:
                page.wait_for_timeout(20)
            page.click("#prev")
            expect(page.locator("#page-info")).to_have_text("1–20 of 45")
            held[0].continue_()
            page.wait_for_timeout(500)  # the late answer has come
            expect(page.locator("#page-info")).to_have_text("1–20 of 45")
            assert page.locator("#sessions button").first.get_attribute("data-session") == newest

    def test_a_page_whose_sessions_were_all_deleted_goes_back_to_the_last_one(self, page: Page,
                                                                              tmp_path: Path) -> None:
        """On page 2, its 5 sessions are deleted: the next list poll shows the last page that exists (it showed
        "21–20 of 20" and "No sessions in project", with 20 sessions left)."""
        with ServerThread(tmp_path / "shrink.db") as srv:
            docs = [state_doc(f"s{n:02d}", 0) for n in range(25)]
            ids = httpx.post(f"{srv.url}/default/json-documents/batch", json={"documents": docs}).json()["ids"]
            page.goto(f"{srv.url}/ui")
            expect(page.locator("#page-info")).to_have_text("1–20 of 25")
            page.click("#next")
            expect(page.locator("#page-info")).to_have_text("21–25 of 25")
            on_page = {page.locator("#sessions button").nth(i).get_attribute("data-session") for i in range(5)}
            for doc_id, doc in zip(ids, docs, strict=True):
                if doc["session_id"] in on_page:
                    httpx.delete(f"{srv.url}/default/json-documents/{doc_id}").raise_for_status()
            expect(page.locator("#page-info")).to_have_text("1–20 of 20", timeout=8000)
            expect(page.locator("#sessions button")).to_have_count(20)

    def test_offline_stays_offline_with_no_session_open(self, page: Page, tmp_path: Path) -> None:
        """The server stops while no session is open: the status says offline, and stays so (the idle session
        poll said "live" every 0.7 s: 25 of 30 looks showed "● live" with the server down)."""
        with ServerThread(tmp_path / "gone.db") as srv:
            httpx.post(f"{srv.url}/default/json-documents", json=state_doc("s", 0)).raise_for_status()
            page.goto(f"{srv.url}/ui")
            expect(page.locator('#sessions [data-session="s"]')).to_be_visible()
        live = page.locator("#live")
        expect(live).to_have_text("● offline", timeout=5000)
        seen = set()
        for _ in range(12):  # past the session poll's 0.7 s, which said "live"
            seen.add(live.inner_text())
            page.wait_for_timeout(100)
        assert seen == {"● offline"}

    def test_integers_past_what_a_double_holds_are_shown_as_stored(self, page: Page, tmp_path: Path) -> None:
        """A state holding integers past 2**53 shows their digits as stored (they were shown rounded:
        18446744073709551615 as 18446744073709552000); other numbers as before."""
        with ServerThread(tmp_path / "big.db") as srv:
            body = (b'{"name": "big", "session_id": "big", "tags": ["session_state", "agent_state", "a"],'
                    b' "content": {"agent_name": "a", "task": "t", "state": {"u": 18446744073709551615,'
                    b' "v": 123456789012345678901234567890, "f": 1e20, "n": 7}}}')
            httpx.post(f"{srv.url}/default/json-documents", content=body).raise_for_status()
            open_session(page, srv, "big")
            state = page.locator("#state")
            expect(state.locator('li[data-key="u"]')).to_contain_text("u: 18446744073709551615")
            expect(state.locator('li[data-key="v"]')).to_contain_text("v: 123456789012345678901234567890")
            expect(state.locator('li[data-key="f"]')).to_contain_text("f: 100000000000000000000")
            expect(state.locator('li[data-key="n"]')).to_contain_text("n: 7")

    def test_states_deleted_while_a_session_is_followed_leave_the_view(self, page: Page, tmp_path: Path) -> None:
        """Two of five states are deleted (retention, a prune) while the session is open: within 2 s the view
        shows three, and says so (it kept all five, and counted on from five)."""
        with ServerThread(tmp_path / "trimmed.db") as srv:
            docs = [state_doc("kept", n) for n in range(5)]
            ids = httpx.post(f"{srv.url}/default/json-documents/batch", json={"documents": docs}).json()["ids"]
            open_session(page, srv, "kept")
            chips = page.locator("#timeline .chip")
            expect(chips).to_have_count(5)
            for doc_id in ids[:2]:
                httpx.delete(f"{srv.url}/default/json-documents/{doc_id}").raise_for_status()
            expect(chips).to_have_count(3, timeout=2000)
            expect(page.locator("#session-meta")).to_contain_text("3 states")
            httpx.post(f"{srv.url}/default/json-documents", json=state_doc("kept", 5)).raise_for_status()
            expect(chips).to_have_count(4, timeout=2000)
            expect(page.locator("#session-meta")).to_contain_text("4 states")
