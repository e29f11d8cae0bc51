"""The reference server's ``GET /metrics``: requests by route and status, latency, documents, database errors."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from wr124_session_actor.server import ServerThread
from wr124_session_actor.server._metrics import PREFIX

from .test_server import make_doc

COLLECTION = "/proj/json-documents"


def scrape(client: httpx.Client, **headers: str) -> dict[str, float]:
    """The server's metrics keyed by name and sorted labels."""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def requests(samples: dict[str, float], route: str, method: str, status: int) -> float:
    return samples.get(f"{PREFIX}requests_total{{method={method},route={route},status={status}}}", 0.0)


class TestServerMetrics:
    def test_request_counts_match_the_requests_made(self, tmp_path: Path) -> None:
        """Counts by route template, method and status equal what the client sent; documents are counted."""
        with ServerThread(tmp_path / "m.db") as srv, httpx.Client(base_url=srv.url) as client:
            for n in range(3):
                assert client.post(COLLECTION, json=make_doc(id=f"d{n}")).status_code == 201
            assert client.post(COLLECTION, json=make_doc(id="d0")).status_code == 200  # a repeat: not stored
            assert client.post(COLLECTION + "/batch", json={"documents": [make_doc(), make_doc()]}).status_code == 201
            for _ in range(5):
                assert client.get(COLLECTION, params={"session_id": "s1"}).status_code == 200
            assert client.get(COLLECTION + "/nope").status_code == 404
            assert client.post(COLLECTION, content=b"{").status_code == 400
            assert client.get("/no/such/route/at/all").status_code == 404
            samples = scrape(client)
        item = COLLECTION.replace("proj", "{project}")
        assert requests(samples, item, "POST", 201) == 3
        assert requests(samples, item, "POST", 200) == 1
        assert requests(samples, item, "POST", 400) == 1
        assert requests(samples, item + "/batch", "POST", 201) == 1
        assert requests(samples, item, "GET", 200) == 5
        assert requests(samples, item + "/{doc_id}", "GET", 404) == 1
        assert requests(samples, "unmatched", "GET", 404) == 1
        assert samples[f"{PREFIX}documents_stored_total{{}}"] == 5
        assert samples[f"{PREFIX}request_duration_seconds_count{{method=GET,route={item}}}"] == 5

    def test_open_even_with_an_api_key(self, tmp_path: Path) -> None:
        """Without a metrics key, /metrics is open like /health even when the API needs a key."""
        with ServerThread(tmp_path / "m.db", api_key="secret") as srv, httpx.Client(base_url=srv.url) as client:
            assert client.get(COLLECTION).status_code == 401
            samples = scrape(client)
        assert requests(samples, COLLECTION.replace("proj", "{project}"), "GET", 401) == 1

    def test_behind_the_metrics_key(self, tmp_path: Path) -> None:
        """With a metrics key, /metrics needs it (and not the API key)."""
        with ServerThread(tmp_path / "m.db", api_key="api", metrics_key="m") as srv, \
                httpx.Client(base_url=srv.url) as client:
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"Authorization": "Bearer api"}).status_code == 401
            scrape(client, Authorization="Bearer m")

    def test_database_errors_are_counted(self, tmp_path: Path) -> None:
        """A database whose table vanished answers 503 and counts a database error."""
        db = tmp_path / "m.db"
        with ServerThread(db) as srv, httpx.Client(base_url=srv.url) as client:
            assert client.post(COLLECTION, json=make_doc()).status_code == 201
            with contextlib.closing(sqlite3.connect(db)) as conn:
                conn.execute("DROP TABLE documents")
            assert client.get(COLLECTION).status_code == 503
            samples = scrape(client)
        errors = {k: v for k, v in samples.items() if k.startswith(f"{PREFIX}database_errors_total")}
        assert errors == {f"{PREFIX}database_errors_total{{error=OperationalError}}": 1.0}

    def test_apps_in_one_process_do_not_collide(self, tmp_path: Path) -> None:
        """Two servers in one process keep separate counts."""
        with ServerThread(tmp_path / "a.db") as a, ServerThread(tmp_path / "b.db") as b, \
                httpx.Client(base_url=a.url) as ca, httpx.Client(base_url=b.url) as cb:
            ca.get("/health")
            ca.get("/health")
            cb.get("/health")
            assert requests(scrape(ca), "/health", "GET", 200) == 2
            assert requests(scrape(cb), "/health", "GET", 200) == 1
