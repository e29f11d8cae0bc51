"""Shared fixtures: both async backends, quiet structlog, fresh memory stores, real servers on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from wr124_session_actor import Config
from wr124_session_actor.stores import close_shared_postgres, reset_memory_stores


def _drop(_logger: Any, _name: str, _event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    raise structlog.DropEvent


def _quiet_structlog() -> None:
    # The library never configures structlog; the tests do, so that debug events cost nothing.
    # ``structlog.testing.capture_logs`` replaces these processors while a test reads events.
    structlog.reset_defaults()
    structlog.configure(processors=[_drop], cache_logger_on_first_use=False)


_quiet_structlog()


@pytest.fixture(autouse=True)
def _structlog_reset() -> Iterator[None]:
    """A test that configures structlog (the CLI does) leaves no trace for the next."""
    yield
    _quiet_structlog()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on asyncio and on trio."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _fresh_memory_stores() -> Iterator[None]:
    reset_memory_stores()
    yield
    reset_memory_stores()
    close_shared_postgres()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server's URL (its ``postgres`` database; superuser, so tests may create databases).

    ``WR124_TEST_POSTGRES_URL`` when set (``.ci/run`` sets it); otherwise, outside CI, a throwaway
    cluster started for the session. In CI a missing URL fails: a PostgreSQL test never skips there.
    """
    url = os.environ.get("WR124_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if os.environ.get("CI"):
        pytest.fail("WR124_TEST_POSTGRES_URL is not set: CI must start PostgreSQL (.ci/run does)")
    from .pgcluster import PgCluster

    cluster = PgCluster().start()
    try:
        yield cluster.url
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL cluster of the test module's own (a ``tests.pgcluster.PgCluster``), which its tests
    may stop and start again; needs the PostgreSQL binaries (CI has them)."""
    from .pgcluster import PgCluster

    with PgCluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    from .pgcluster import create_database, drop_database

    url = create_database(postgres_url)
    yield url
    close_shared_postgres()
    drop_database(postgres_url, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A ``sqlite:////abs/path`` URL of a fresh database file."""
    return f"sqlite:///{tmp_path / 'states.db'}"


@pytest.fixture
def sqlite_config(sqlite_url: str) -> Config:
    """An enabled configuration on a fresh sqlite file."""
    return Config(api_url=sqlite_url, timeout=5.0)


@pytest.fixture
def memory_config() -> Config:
    """An enabled configuration on the in-process store."""
    return Config(api_url="memory://", timeout=5.0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Any]:
    """The reference server on a loopback port, over a fresh sqlite file."""
    from wr124_session_actor.server import ServerThread

    with ServerThread(str(tmp_path / "server.db")) as running:
        yield running


def http_config(url: str, client: str, **changes: Any) -> Config:
    """An enabled configuration for ``url`` that allows only the HTTP client ``client``."""
    values: dict[str, Any] = {"timeout": 5.0, "retries": 0, **changes}
    return Config(api_url=url, http_clients=(client,), **values)



async def stored_states(config: Config, session_id: str, limit: int = 1000) -> list[Any]:
    """The states stored for ``session_id``, newest first (read with a fresh direct-mode manager)."""
    from wr124_session_actor import SessionStateManager

    manager = SessionStateManager(session_id, config.replace(cache_ttl=0))
    status, docs = await manager.download_session_states(limit=limit)
    await manager.aclose()
    assert status.value == "success"
    return [d["content"]["state"] for d in docs]


async def stored_count(config: Config, session_id: str) -> int:
    """How many state documents ``session_id`` has in the store."""
    return len(await stored_states(config, session_id))
