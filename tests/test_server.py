"""The reference json-documents server, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

import wr124_session_actor.server as server_pkg
from wr124_session_actor import StoreUnavailable
from wr124_session_actor._document import StateUpload, encode_document
from wr124_session_actor.server import ServerLimits, ServerThread, create_app
from wr124_session_actor.server._app import ApiError, _prepare_document
from wr124_session_actor.stores import Query, SqliteDocuments
from wr124_session_actor.stores._http import HttpStore
from wr124_session_actor.transports import open_transport

PROJECT = "proj"
COLLECTION = f"/{PROJECT}/json-documents"


def make_doc(**changes: Any) -> dict[str, Any]:
    """A valid document in the original module's format, with ``changes`` applied."""
    doc: dict[str, Any] = {
        "name": "session_state_s1_20240101",
        "description": "a state",
        "document_type": "user_data",
        "content": {"agent_name": "a", "task": "t", "state": {"k": [1, 2, {"x": None}]}},
        "session_id": "s1",
        "tags": ["session_state", "agent_state", "a"],
        "metadata": {"state_size": 10},
        "is_public": False,
    }
    doc.update(changes)
    return doc


def client_for(server: ServerThread, **headers: str) -> httpx.Client:
    """An httpx client for ``server`` that sends ``X-Project-ID`` (and ``headers``)."""
    return httpx.Client(base_url=server.url, headers={"X-Project-ID": PROJECT, **headers}, timeout=5.0)


def error_of(resp: httpx.Response, status: int) -> str:
    """Assert ``resp`` is a JSON error with ``status``; return its message."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    return str(body["error"])


@pytest.fixture
def api(server: ServerThread) -> Iterator[httpx.Client]:
    """A client of the shared ``server`` fixture."""
    with client_for(server) as client:
        yield client


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Any]:
    """A factory of servers with options; every server made is stopped at the end."""
    made: list[ServerThread] = []

    def make(**options: Any) -> ServerThread:
        srv = ServerThread(tmp_path / f"db{len(made)}.db", **options).start()
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of one server for the property-based tests (hypothesis reuses it across examples)."""
    with ServerThread(tmp_path_factory.mktemp("fuzz") / "fuzz.db") as srv, client_for(srv) as client:
        yield client


class TestPublicSurface:
    def test_all_is_sorted_and_complete(self) -> None:
        """The package's ``__all__`` is sorted and names every re-export."""
        assert server_pkg.__all__ == sorted(server_pkg.__all__)
        assert set(server_pkg.__all__) == {"ServerLimits", "ServerThread", "create_app", "run_server"}
        for name in server_pkg.__all__:
            assert getattr(server_pkg, name).__doc__

    def test_limits_defaults(self) -> None:
        """The default limits are the documented ones."""
        limits = ServerLimits()
        assert (limits.max_body_bytes, limits.max_batch, limits.max_limit, limits.max_depth) == (
            64 * 1024 * 1024, 1000, 1000, 256
        )

    @pytest.mark.parametrize("field", ["max_body_bytes", "max_batch", "max_limit", "max_depth"])
    def test_limits_must_be_positive(self, field: str) -> None:
        """A zero limit is refused at construction."""
        with pytest.raises(ValueError, match=field):
            ServerLimits(**{field: 0})


class TestCreateApp:
    def test_engine_is_closed_on_cleanup(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """The sqlite engine opens on startup and closes on cleanup."""
        calls: list[str] = []
        monkeypatch.setattr(SqliteDocuments, "ping", lambda self: calls.append("ping"))
        monkeypatch.setattr(SqliteDocuments, "close", lambda self: calls.append("close"))

        async def main() -> None:
            runner = web.AppRunner(create_app(tmp_path / "app.db"))
            await runner.setup()
            assert calls == ["ping"]
            await runner.cleanup()

        asyncio.run(main())
        assert calls == ["ping", "close"]

    def test_body_limit_is_the_client_max_size(self, tmp_path: Path) -> None:
        """aiohttp's own body limit is the configured one."""
        app = create_app(tmp_path / "app.db", limits=ServerLimits(max_body_bytes=1234))
        assert app._client_max_size == 1234


class TestHealth:
    def test_health(self, api: httpx.Client) -> None:
        """``GET /health`` answers 200 ``{"status": "ok"}``."""
        resp = api.get("/health")
        assert resp.status_code == 200
        assert resp.json() == {"status": "ok"}

    def test_a_key_set_with_whitespace_at_its_ends_is_the_key_without_it(self, make_server: Any) -> None:
        """``serve --api-key 'secret '``: the key is "secret" (no header value keeps a trailing blank: every call
        was 401), and the metrics key likewise."""
        srv = make_server(api_key="secret \t", metrics_key=" metrics")
        with client_for(srv, Authorization="Bearer secret") as client:
            assert client.get(COLLECTION).status_code == 200
        with client_for(srv, Authorization="Bearer metrics") as client:
            assert client.get("/metrics").status_code == 200

    def test_a_key_of_blanks_is_refused(self, tmp_path: Path) -> None:
        """A key of blanks only is an error (stripped, it required no key at all, silently)."""
        with pytest.raises(ValueError, match="only blanks"):
            create_app(tmp_path / "blank.db", api_key="  \t")
        with pytest.raises(ValueError, match="only blanks"):
            create_app(tmp_path / "blank.db", metrics_key=" ")

    def test_health_needs_no_key(self, make_server: Any) -> None:
        """``/health`` answers without a key even when one is set."""
        srv = make_server(api_key="secret")
        with client_for(srv) as client:
            assert client.get("/health").status_code == 200


    @pytest.mark.parametrize("key", ["", "secret"])
    def test_an_open_health_keeps_the_databases_message_to_the_log(self, make_server: Any, key: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        """With a key set, /health (open to all) answers 503 without the database's own message, which may name
        its host, port and user (it passed it on); the routes behind the key, and every route of a server
        without one, still give it."""
        srv = make_server(api_key=key or None)

        def down(*args: object) -> Any:
            raise StoreUnavailable("PostgreSQL: cannot connect: host db.internal port 5432 user admin")

        monkeypatch.setattr(SqliteDocuments, "ping", down)
        monkeypatch.setattr(SqliteDocuments, "get", down)
        with client_for(srv, **({"Authorization": f"Bearer {key}"} if key else {})) as client:
            health = error_of(client.get("/health"), 503)
            assert ("db.internal" in health) is not bool(key)
            assert "db.internal" in error_of(client.get(f"{COLLECTION}/x"), 503)


class TestCreate:
    def test_server_assigns_an_id(self, api: httpx.Client) -> None:
        """A document without ``id`` gets a UUID and a 201 with a Location."""
        resp = api.post(COLLECTION, json=make_doc())
        assert resp.status_code == 201
        doc_id = resp.json()["id"]
        assert len(doc_id) == 36
        assert resp.headers["location"] == f"{COLLECTION}/{doc_id}"

    def test_get_returns_every_field_sent(self, api: httpx.Client) -> None:
        """GET returns the fields sent plus ``_id``, ``id``, ``created_at`` and ``updated_at``."""
        sent = make_doc(id="doc-1")
        assert api.post(COLLECTION, json=sent).status_code == 201
        got = api.get(f"{COLLECTION}/doc-1").json()
        assert {k: got[k] for k in sent} == sent
        assert got["_id"] == got["id"] == "doc-1"
        assert got["created_at"] == got["updated_at"]

    def test_defaults_are_filled(self, api: httpx.Client) -> None:
        """Optional fields left out come back with their defaults."""
        doc_id = api.post(COLLECTION, json={"name": "n", "content": {}}).json()["id"]
        got = api.get(f"{COLLECTION}/{doc_id}").json()
        assert got["document_type"] == "user_data"
        assert (got["description"], got["session_id"], got["tags"], got["metadata"], got["is_public"]) == (
            None, None, [], {}, False
        )

    def test_same_id_same_body_is_idempotent(self, api: httpx.Client) -> None:
        """The same id and body again answers 200 and stores no duplicate."""
        assert api.post(COLLECTION, json=make_doc(id="same")).status_code == 201
        again = api.post(COLLECTION, json=make_doc(id="same"))
        assert again.status_code == 200
        assert again.json() == {"id": "same"}
        assert api.get(COLLECTION).json()["total"] == 1

    def test_key_order_and_whitespace_do_not_matter(self, api: httpx.Client) -> None:
        """A repeat with other key order and whitespace is recognized as the same body."""
        doc = make_doc(id="ordered")
        assert api.post(COLLECTION, json=doc).status_code == 201
        reordered = json.dumps(dict(reversed(list(doc.items()))), indent=4).encode()
        assert api.post(COLLECTION, content=reordered).status_code == 200

    def test_same_id_other_body_conflicts(self, api: httpx.Client) -> None:
        """The same id with a different body answers 409 and keeps the first."""
        assert api.post(COLLECTION, json=make_doc(id="c")).status_code == 201
        error_of(api.post(COLLECTION, json=make_doc(id="c", name="other")), 409)
        assert api.get(f"{COLLECTION}/c").json()["name"] == make_doc()["name"]

    def test_deep_document_at_the_limit(self, api: httpx.Client) -> None:
        """A document exactly ``max_depth`` deep is stored and read back (beyond orjson's own limit)."""
        # document 1, content 2, then 254 arrays: 256 levels.
        body = b'{"name":"deep","id":"deep","content":{"a":' + b"[" * 254 + b"]" * 254 + b"}}"
        assert api.post(COLLECTION, content=body).status_code == 201
        got = api.get(f"{COLLECTION}/deep").json()
        depth, node = 0, got["content"]["a"]
        while node:
            node, depth = node[0], depth + 1
        assert depth == 253


class TestValidation:
    def test_malformed_json(self, api: httpx.Client) -> None:
        """A body that is not JSON answers 400."""
        assert "JSON" in error_of(api.post(COLLECTION, content=b'{"name": '), 400)

    def test_invalid_utf8(self, api: httpx.Client) -> None:
        """A body that is not UTF-8 answers 400."""
        error_of(api.post(COLLECTION, content=b'{"name": "\xff", "content": {}}'), 400)

    def test_an_integer_past_64_bits_is_stored_as_sent(self, api: httpx.Client) -> None:
        """An integer orjson would read as a float is stored and read back exactly, alone or in a batch (it was
        stored rounded, 1.2345678901234568e+29, and confirmed with 201); 19-digit runs in range and in strings
        change nothing."""
        numbers = b'[123456789012345678901234567890, -18446744073709551617, 18446744073709551615,' \
                  b' -9223372036854775808, 1764000000000000000, "123456789012345678901234567890", 1.5]'
        body = b'{"name": "big", "content": {"a": %s}}' % numbers
        created = api.post(COLLECTION, content=body)
        assert created.status_code == 201, created.text
        batch = api.post(f"{COLLECTION}/batch", content=b'{"documents": [%s]}' % body)
        assert batch.status_code == 201, batch.text
        expected = json.loads(numbers)
        for doc_id in (created.json()["id"], *batch.json()["ids"]):
            stored = api.get(f"{COLLECTION}/{doc_id}")
            assert json.loads(stored.content)["content"]["a"] == expected
        listed = json.loads(api.get(COLLECTION, params={"name": "big"}).content)["data"]
        assert [doc["content"]["a"] for doc in listed] == [expected, expected]
        again = api.post(COLLECTION, content=b'{"id": "%s", "name": "big", "content": {"a": %s}}'
                         % (created.json()["id"].encode(), numbers))
        assert again.status_code == 200  # the same document sent again: the same canonical bytes
        huge = b"9" * 400  # past a float's range too (orjson refused it: "number is infinity")
        created = api.post(COLLECTION, content=b'{"name": "huge", "content": {"a": [%s, -%s]}}' % (huge, huge))
        assert created.status_code == 201, created.text
        stored = json.loads(api.get(f"{COLLECTION}/{created.json()['id']}").content)["content"]["a"]
        assert stored == [int(huge), -int(huge)]
        for refused in (b"[1e400, %s]" % huge, b"[NaN, %s]" % huge, b"[%s]" % (b"9" * 5000)):
            error_of(api.post(COLLECTION, content=b'{"name": "no", "content": {"a": %s}}' % refused), 400)
        # What orjson refuses stays refused whatever digits the body holds (a BOM, or a lone surrogate, which the
        # stdlib parser takes, was stored when a 20-digit run was in the body too).
        padded = b'"00000000000000000001"'
        for body in (b'\xef\xbb\xbf{"name": "no", "content": {"a": %s}}' % padded,
                     b'{"name": "no", "content": {"a": "\\ud800", "b": %s}}' % padded,
                     b'{"name": "no", "content": {"b": %s, "a": "\\ud800"}}' % huge):
            assert "not valid JSON" in error_of(api.post(COLLECTION, content=body), 400)

    def test_not_an_object(self, api: httpx.Client) -> None:
        """A JSON body that is not an object answers 422."""
        error_of(api.post(COLLECTION, json=[make_doc()]), 422)

    @pytest.mark.parametrize("field", ["name", "content"])
    def test_required_fields(self, api: httpx.Client, field: str) -> None:
        """``name`` and ``content`` are required."""
        doc = make_doc()
        del doc[field]
        assert field in error_of(api.post(COLLECTION, json=doc), 422)

    def test_unknown_field(self, api: httpx.Client) -> None:
        """An unknown top-level field answers 422 and names it."""
        assert "colour" in error_of(api.post(COLLECTION, json=make_doc(colour="red")), 422)

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("name", 5),
            ("content", "text"),
            ("content", None),
            ("description", 1),
            ("document_type", None),
            ("session_id", ["s"]),
            ("tags", "session_state"),
            ("tags", ["ok", 1]),
            ("metadata", []),
            ("is_public", 0),
            ("id", 42),
        ],
    )
    def test_wrong_types(self, api: httpx.Client, field: str, value: object) -> None:
        """A field of the wrong type answers 422 and stores nothing."""
        assert field in error_of(api.post(COLLECTION, json=make_doc(**{field: value})), 422)
        assert api.get(COLLECTION).json()["total"] == 0

    @pytest.mark.parametrize("doc_id", ["", "a/b", "x" * 129, "sp ace", "é"])
    def test_bad_ids(self, api: httpx.Client, doc_id: str) -> None:
        """An id outside 1-128 characters of ``[A-Za-z0-9._:-]`` answers 422."""
        error_of(api.post(COLLECTION, json=make_doc(id=doc_id)), 422)

    def test_null_id_gets_one(self, api: httpx.Client) -> None:
        """``"id": null`` is the same as no id."""
        assert api.post(COLLECTION, json=make_doc(id=None)).status_code == 201

    def test_too_deep(self, api: httpx.Client) -> None:
        """A document nested past ``max_depth`` answers 400."""
        body = b'{"name":"deep","content":{"a":' + b"[" * 255 + b"]" * 255 + b"}}"
        assert "deeper" in error_of(api.post(COLLECTION, content=body), 400)

    def test_deeper_than_the_parser_allows(self, api: httpx.Client) -> None:
        """Nesting past the JSON parser's own limit is a 400, not a crash."""
        body = b'{"name":"deep","content":{"a":' + b"[" * 5000 + b"]" * 5000 + b"}}"
        error_of(api.post(COLLECTION, content=body), 400)


class TestBatch:
    def test_batch_creates_all(self, api: httpx.Client) -> None:
        """A batch answers 201 with the ids in order, assigned where missing."""
        docs = [make_doc(id="b1"), make_doc(name="two"), make_doc(id="b3")]
        resp = api.post(f"{COLLECTION}/batch", json={"documents": docs})
        assert resp.status_code == 201
        ids = resp.json()["ids"]
        assert [ids[0], ids[2]] == ["b1", "b3"]
        assert len(ids[1]) == 36
        assert api.get(COLLECTION).json()["total"] == 3

    def test_repeated_batch_is_idempotent(self, api: httpx.Client) -> None:
        """Sending the same batch again stores nothing new."""
        batch = {"documents": [make_doc(id="r1"), make_doc(id="r2")]}
        assert api.post(f"{COLLECTION}/batch", json=batch).status_code == 201
        again = api.post(f"{COLLECTION}/batch", json=batch)
        assert again.status_code == 200
        assert again.json() == {"ids": ["r1", "r2"]}
        assert api.get(COLLECTION).json()["total"] == 2

    def test_invalid_document_stores_none(self, api: httpx.Client) -> None:
        """One invalid document fails the whole batch with 422 naming its index."""
        docs = [make_doc(id="ok"), make_doc(name=None)]
        assert "documents[1]" in error_of(api.post(f"{COLLECTION}/batch", json={"documents": docs}), 422)
        assert api.get(COLLECTION).json()["total"] == 0

    def test_conflict_stores_none(self, api: httpx.Client) -> None:
        """A conflicting id fails the whole batch with 409."""
        assert api.post(COLLECTION, json=make_doc(id="taken")).status_code == 201
        docs = [make_doc(id="new"), make_doc(id="taken", name="changed")]
        error_of(api.post(f"{COLLECTION}/batch", json={"documents": docs}), 409)
        error_of(api.get(f"{COLLECTION}/new"), 404)

    @pytest.mark.parametrize("body", [[], {"docs": []}, {"documents": {}}, {"documents": [], "x": 1}])
    def test_bad_envelope(self, api: httpx.Client, body: object) -> None:
        """A body that is not ``{"documents": [...]}`` answers 422."""
        error_of(api.post(f"{COLLECTION}/batch", json=body), 422)

    def test_too_many_documents(self, make_server: Any) -> None:
        """A batch over ``max_batch`` answers 413."""
        srv = make_server(limits=ServerLimits(max_batch=2))
        with client_for(srv) as client:
            docs = [make_doc() for _ in range(3)]
            error_of(client.post(f"{COLLECTION}/batch", json={"documents": docs}), 413)
            assert client.post(f"{COLLECTION}/batch", json={"documents": docs[:2]}).status_code == 201

    def test_batch_disabled(self, make_server: Any) -> None:
        """Without the batch endpoint its POST answers 405, and single POSTs still work."""
        srv = make_server(enable_batch=False)
        with client_for(srv) as client:
            resp = client.post(f"{COLLECTION}/batch", json={"documents": [make_doc()]})
            assert error_of(resp, 405)
            assert client.post(COLLECTION, json=make_doc()).status_code == 201


class TestQuery:
    @pytest.fixture
    def docs(self, api: httpx.Client) -> list[dict[str, Any]]:
        """Four documents, created in order, read back with their timestamps."""
        specs = [
            make_doc(id="d0", name="alpha", session_id="s1", tags=["session_state", "agent_a"]),
            make_doc(id="d1", name="beta", session_id="s1", tags=["session_state", "agent_b"]),
            make_doc(id="d2", name="gamma", session_id="s2", tags=["session_state", "agent_a"]),
            make_doc(id="d3", name="alphabet", session_id="s1", tags=["other"], document_type="note"),
        ]
        for spec in specs:
            assert api.post(COLLECTION, json=spec).status_code == 201
        return [api.get(f"{COLLECTION}/{spec['id']}").json() for spec in specs]

    @staticmethod
    def ids(api: httpx.Client, **params: Any) -> list[str]:
        resp = api.get(COLLECTION, params=params)
        assert resp.status_code == 200, resp.text
        return [doc["id"] for doc in resp.json()["data"]]

    def test_default_newest_first(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """Without parameters: every document, newest first, with the total."""
        body = api.get(COLLECTION).json()
        assert [d["id"] for d in body["data"]] == ["d3", "d2", "d1", "d0"]
        assert body["total"] == 4

    def test_session_id(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``session_id`` keeps that session's documents."""
        assert self.ids(api, session_id="s2") == ["d2"]

    def test_document_type(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``document_type`` filters on the type."""
        assert self.ids(api, document_type="note") == ["d3"]

    def test_tags_must_all_match(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """Comma-separated ``tags`` keep documents carrying every one of them."""
        assert self.ids(api, tags="session_state,agent_a") == ["d2", "d0"]
        assert self.ids(api, tags="session_state") == ["d2", "d1", "d0"]
        assert self.ids(api, tags="agent_a,other") == []

    def test_name_pattern(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``name_pattern`` matches a substring of the name."""
        assert self.ids(api, name_pattern="alpha") == ["d3", "d0"]
        assert self.ids(api, name_pattern="phab") == ["d3"]

    def test_created_bounds_are_inclusive(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``created_after`` and ``created_before`` are inclusive bounds."""
        assert self.ids(api, created_after=docs[2]["created_at"]) == ["d3", "d2"]
        assert self.ids(api, created_before=docs[1]["created_at"]) == ["d1", "d0"]
        between = {"created_after": docs[1]["created_at"], "created_before": docs[2]["created_at"]}
        assert self.ids(api, **between) == ["d2", "d1"]

    def test_created_bounds_accept_offsets(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """A bound in another time zone is compared in UTC."""
        assert self.ids(api, created_after="2000-01-01T01:00:00+01:00", session_id="s2") == ["d2"]
        assert self.ids(api, created_before="2000-01-01") == []

    def test_skip_and_limit(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``skip``/``limit`` page through, and ``total`` counts every match."""
        body = api.get(COLLECTION, params={"limit": 2, "skip": 1}).json()
        assert [d["id"] for d in body["data"]] == ["d2", "d1"]
        assert body["total"] == 4
        assert self.ids(api, limit=0) == []

    def test_sort(self, api: httpx.Client, docs: list[dict[str, Any]]) -> None:
        """``sort_by``/``sort_order`` order the page."""
        assert self.ids(api, sort_by="name", sort_order=1) == ["d0", "d3", "d1", "d2"]
        assert self.ids(api, sort_by="name", sort_order=-1) == ["d2", "d1", "d3", "d0"]
        assert self.ids(api, sort_by="created_at", sort_order=1) == ["d0", "d1", "d2", "d3"]
        assert self.ids(api, sort_by="updated_at", sort_order="desc") == ["d3", "d2", "d1", "d0"]

    def test_limit_defaults_to_ten(self, api: httpx.Client) -> None:
        """Without ``limit`` a page holds 10 documents."""
        api.post(f"{COLLECTION}/batch", json={"documents": [make_doc() for _ in range(12)]})
        body = api.get(COLLECTION).json()
        assert (len(body["data"]), body["total"], body["limit"]) == (10, 12, 10)

    def test_limit_is_capped(self, make_server: Any) -> None:
        """A ``limit`` over ``max_limit`` is capped to it (the answer says so), not refused."""
        srv = make_server(limits=ServerLimits(max_limit=3))
        with client_for(srv) as client:
            client.post(f"{COLLECTION}/batch", json={"documents": [make_doc() for _ in range(5)]})
            body = client.get(COLLECTION, params={"limit": 10**40}).json()
            assert (len(body["data"]), body["total"], body["limit"]) == (3, 5, 3)

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": -1},
            {"limit": "ten"},
            {"limit": "1.5"},
            {"limit": "1_0"},
            {"skip": -3},
            {"skip": 10**30},
            {"sort_by": "id"},
            {"sort_order": 0},
            {"sort_order": "up"},
            {"created_after": "yesterday"},
            {"created_before": "2024-13-01"},
            {"created_after": "0001-01-01T00:00:00+05:00"},
        ],
    )
    def test_malformed_parameters(self, api: httpx.Client, params: dict[str, Any]) -> None:
        """A malformed query parameter answers 400 naming it."""
        assert next(iter(params)) in error_of(api.get(COLLECTION, params=params), 400)


class TestGetDelete:
    def test_get_missing(self, api: httpx.Client) -> None:
        """GET of an unknown id answers 404 JSON."""
        assert "nope" in error_of(api.get(f"{COLLECTION}/nope"), 404)

    def test_delete(self, api: httpx.Client) -> None:
        """DELETE answers 200 ``{"deleted": id}``; the document is gone afterwards."""
        api.post(COLLECTION, json=make_doc(id="gone"))
        resp = api.delete(f"{COLLECTION}/gone")
        assert resp.status_code == 200
        assert resp.json() == {"deleted": "gone"}
        error_of(api.get(f"{COLLECTION}/gone"), 404)
        error_of(api.delete(f"{COLLECTION}/gone"), 404)

    def test_deleted_id_can_be_reused(self, api: httpx.Client) -> None:
        """After a delete, the id can hold a new body."""
        api.post(COLLECTION, json=make_doc(id="again"))
        api.delete(f"{COLLECTION}/again")
        assert api.post(COLLECTION, json=make_doc(id="again", name="new")).status_code == 201

    def test_id_named_batch_is_readable(self, api: httpx.Client) -> None:
        """A document whose id is ``batch`` is still read and deleted by id."""
        assert api.post(COLLECTION, json=make_doc(id="batch")).status_code == 201
        assert api.get(f"{COLLECTION}/batch").json()["id"] == "batch"
        assert api.delete(f"{COLLECTION}/batch").status_code == 200


class TestAuth:
    @pytest.fixture
    def secured(self, make_server: Any) -> ServerThread:
        """A server that requires the key ``s3cret``."""
        srv: ServerThread = make_server(api_key="s3cret")
        return srv

    def test_missing_key(self, secured: ServerThread) -> None:
        """Without a key every API route answers 401 with ``WWW-Authenticate``."""
        with client_for(secured) as client:
            resp = client.get(COLLECTION)
            error_of(resp, 401)
            assert resp.headers["www-authenticate"].startswith("Bearer")
            error_of(client.post(COLLECTION, json=make_doc()), 401)
            error_of(client.delete(f"{COLLECTION}/x"), 401)

    @pytest.mark.parametrize(
        "header", [b"Bearer wrong", b"Bearer s3cre", b"Basic s3cret", b"s3cret", b"Bearer \xc3\xa9"]
    )
    def test_wrong_key(self, secured: ServerThread, header: bytes) -> None:
        """A wrong key, another scheme or a non-ASCII key answers 401."""
        with httpx.Client(base_url=secured.url, headers={b"Authorization": header}) as client:
            error_of(client.get(COLLECTION), 401)

    def test_right_key(self, secured: ServerThread) -> None:
        """The right key is let through."""
        with client_for(secured, Authorization="Bearer s3cret") as client:
            assert client.post(COLLECTION, json=make_doc(id="k")).status_code == 201
            assert client.get(f"{COLLECTION}/k").status_code == 200


class TestProjects:
    def test_header_mismatch(self, server: ServerThread) -> None:
        """``X-Project-ID`` naming another project answers 403."""
        with httpx.Client(base_url=server.url, headers={"X-Project-ID": "other"}) as client:
            error_of(client.get(COLLECTION), 403)
            error_of(client.post(COLLECTION, json=make_doc()), 403)

    def test_header_may_be_absent(self, server: ServerThread) -> None:
        """Without ``X-Project-ID`` the path's project is used."""
        with httpx.Client(base_url=server.url) as client:
            assert client.post(COLLECTION, json=make_doc()).status_code == 201

    def test_projects_are_isolated(self, server: ServerThread) -> None:
        """Documents of project A are invisible in project B, even under the same id."""
        with httpx.Client(base_url=server.url) as client:
            assert client.post("/a/json-documents", json=make_doc(id="shared")).status_code == 201
            assert client.get("/b/json-documents").json() == {"data": [], "total": 0, "limit": 10, "skip": 0}
            error_of(client.get("/b/json-documents/shared"), 404)
            error_of(client.delete("/b/json-documents/shared"), 404)
            other = make_doc(id="shared", name="b's own")
            assert client.post("/b/json-documents", json=other).status_code == 201
            assert client.get("/a/json-documents/shared").json()["name"] == make_doc()["name"]

    def test_escaped_project_name(self, server: ServerThread) -> None:
        """A project name with spaces travels escaped in the path and plain in the header."""
        with httpx.Client(base_url=server.url, headers={"X-Project-ID": "my project"}) as client:
            assert client.post("/my%20project/json-documents", json=make_doc()).status_code == 201
            assert client.get("/my%20project/json-documents").json()["total"] == 1


class TestLimits:
    def test_body_too_large(self, make_server: Any) -> None:
        """A body over ``max_body_bytes`` answers 413 JSON."""
        srv = make_server(limits=ServerLimits(max_body_bytes=1000))
        with client_for(srv) as client:
            big = make_doc(content={"x": "y" * 2000})
            error_of(client.post(COLLECTION, json=big), 413)
            error_of(client.post(f"{COLLECTION}/batch", json={"documents": [big]}), 413)

    def test_chunked_body_too_large(self, make_server: Any) -> None:
        """A chunked body (no Content-Length) over the limit gets aiohttp's 413, as JSON."""
        srv = make_server(limits=ServerLimits(max_body_bytes=1000))
        with client_for(srv) as client:
            chunks = iter([b'{"name": "n", "content": {"x": "', b"y" * 3000, b'"}}'])
            error_of(client.post(COLLECTION, content=chunks), 413)

    def test_depth_limit_is_configurable(self, make_server: Any) -> None:
        """``max_depth`` counts the document itself as level 1."""
        srv = make_server(limits=ServerLimits(max_depth=3))
        with client_for(srv) as client:
            assert client.post(COLLECTION, json=make_doc(content={"a": {}})).status_code == 201
            error_of(client.post(COLLECTION, json=make_doc(content={"a": [[]]})), 400)
            error_of(client.post(COLLECTION, json=make_doc(metadata={"a": {"b": 1}})), 400)

    def test_too_deep_wins_over_invalid_fields(self, make_server: Any) -> None:
        """A document both nested too deep and invalid answers 400 (nesting is checked first)."""
        srv = make_server(limits=ServerLimits(max_depth=3))
        with client_for(srv) as client:
            assert "bogus" in error_of(client.post(COLLECTION, json=make_doc(content={}, bogus=1)), 422)
            assert "tags" in error_of(client.post(COLLECTION, json=make_doc(content={}, tags=[[]])), 422)
            error_of(client.post(COLLECTION, json=make_doc(content={"a": [[]]}, bogus=1)), 400)
            error_of(client.post(COLLECTION, json=make_doc(content={}, tags=[[[]]])), 400)
            error_of(client.post(COLLECTION, json={"content": {"a": [[]]}}), 400)
            message = error_of(client.post(f"{COLLECTION}/batch", json={"documents": [
                make_doc(content={}), make_doc(content={"a": [[]]}, name=7)]}), 400)
            assert message == "documents[1]: the document is nested deeper than 3 levels"
            assert client.get(COLLECTION).json()["total"] == 0

    @pytest.mark.parametrize("max_depth", [3, 253, 254, 255, 256, 300])
    @pytest.mark.parametrize("depth", [3, 4, 253, 254, 255, 256, 257])
    def test_depth_around_orjson_limit(self, max_depth: int, depth: int) -> None:
        """Depth ``> max_depth`` is refused however deep orjson can encode; the body is canonical JSON."""
        content: Any = []
        for _ in range(depth - 3):
            content = [content]
        raw = {"id": "d", "name": "n", "content": {"a": content}}  # document 1, content 2, lists 3..depth
        if depth > max_depth:
            with pytest.raises(ApiError) as caught:
                _prepare_document(raw, max_depth, "here: ")
            assert (caught.value.status, caught.value.message) == (
                400, f"here: the document is nested deeper than {max_depth} levels"
            )
            return
        encoded = _prepare_document(raw, max_depth)
        canonical = {k: v for k, v in make_doc(**raw, description=None, session_id=None, tags=[], metadata={}).items()
                     if k != "id"}
        assert encoded.body == json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
        assert (encoded.id, encoded.session_id, encoded.tags) == ("d", "", ())


class TestErrors:
    def test_unknown_route(self, api: httpx.Client) -> None:
        """An unknown path answers 404 JSON."""
        error_of(api.get("/nothing/here/at/all"), 404)

    def test_wrong_method(self, api: httpx.Client) -> None:
        """A method a route lacks answers 405 JSON with ``Allow``."""
        resp = api.put(COLLECTION, json=make_doc())
        error_of(resp, 405)
        assert "POST" in resp.headers["allow"]

    @settings(max_examples=60, deadline=None)
    @given(body=st.binary(max_size=300))
    def test_random_bytes_never_500(self, shared_api: httpx.Client, body: bytes) -> None:
        """Random bodies are answered with a 4xx, never a 500."""
        for path in (COLLECTION, f"{COLLECTION}/batch"):
            status = shared_api.post(path, content=body).status_code
            assert 400 <= status < 500 or status in (200, 201)

    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )

    @settings(max_examples=60, deadline=None)
    @given(
        fields=st.dictionaries(
            st.sampled_from(["id", "name", "content", "tags", "metadata", "is_public", "session_id", "x"]),
            json_values,
        )
    )
    def test_random_documents_never_500(self, shared_api: httpx.Client, fields: dict[str, Any]) -> None:
        """Random JSON documents are stored (201/200) or refused (4xx), never a 500."""
        body = json.dumps(fields).encode()  # the stdlib writes Infinity for huge floats: also a 4xx
        assert shared_api.post(COLLECTION, content=body).status_code in (200, 201, 400, 409, 422)

    @settings(max_examples=40, deadline=None)
    @given(params=st.dictionaries(
        st.sampled_from(["limit", "skip", "sort_by", "sort_order", "tags", "created_after", "session_id"]),
        st.text(max_size=12),
    ))
    def test_random_query_parameters_never_500(
        self, shared_api: httpx.Client, params: dict[str, str]
    ) -> None:
        """Random query parameters answer 200 or 400."""
        assert shared_api.get(COLLECTION, params=params).status_code in (200, 400)


class TestServerThread:
    def test_url_needs_a_start(self, tmp_path: Path) -> None:
        """Before the first start with port 0, ``url`` raises."""
        with pytest.raises(RuntimeError):
            _ = ServerThread(tmp_path / "x.db").url

    def test_restart_keeps_data_and_port(self, make_server: Any) -> None:
        """A restart listens on the same port over the same data."""
        srv = make_server()
        url = srv.url
        with client_for(srv) as client:
            assert client.post(COLLECTION, json=make_doc(id="kept")).status_code == 201
        srv.restart()
        assert srv.url == url
        with client_for(srv) as client:
            assert client.get(f"{COLLECTION}/kept").status_code == 200

    def test_stop_is_idempotent_and_start_again(self, make_server: Any) -> None:
        """``stop`` twice is harmless; ``start`` twice without a stop raises."""
        srv = make_server()
        with pytest.raises(RuntimeError):
            srv.start()
        srv.stop()
        srv.stop()
        assert not srv.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{srv.url}/health")

    def test_startup_error_is_raised(self, tmp_path: Path) -> None:
        """A database that cannot open makes ``start`` raise."""
        with pytest.raises(Exception, match="unable to open"):
            ServerThread(tmp_path).start()  # a directory is not a database file

    def test_port_in_use(self, server: ServerThread, tmp_path: Path) -> None:
        """A taken port makes ``start`` raise ``OSError``."""
        with pytest.raises(OSError, match="address"):
            ServerThread(tmp_path / "other.db", port=server.port).start()

    def test_delay_makes_a_slow_server(self, make_server: Any) -> None:
        """``delay`` holds every request; a shorter client timeout times out."""
        srv = make_server(delay=0.5)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"{srv.url}/health", timeout=0.1)
        srv.delay = 0.0
        assert httpx.get(f"{srv.url}/health", timeout=1.0).status_code == 200

    def test_stop_does_not_wait_for_delayed_requests(self, make_server: Any) -> None:
        """A stop answers delayed requests 503 at once rather than waiting out the delay."""
        srv = make_server(delay=30.0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.get, f"{srv.url}/health", timeout=10.0)
            time.sleep(0.2)  # let the request reach the server
            started = time.monotonic()
            srv.stop()
            assert time.monotonic() - started < 3.0
            assert pending.result().status_code == 503


class TestRunServer:
    def test_serves_until_sigterm(self, tmp_path: Path) -> None:
        """``run_server`` prints its URL, serves, and ends cleanly on SIGTERM."""
        code = (
            "import sys; from wr124_session_actor.server import run_server;"
            " run_server('127.0.0.1', 0, sys.argv[1], api_key='k')"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "cli.db")], stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = line.split("listening on ", 1)[1].split()[0]
            assert httpx.get(f"{url}/health").status_code == 200
            assert httpx.get(f"{url}{COLLECTION}").status_code == 401
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


class TestWithTheHttpStore:
    @pytest.mark.anyio
    async def test_store_round_trip(self, server: ServerThread) -> None:
        """The library's HTTP store batches, reads, dedups and deletes against the server."""
        store = HttpStore(server.url, PROJECT, lambda: open_transport(["aiohttp", "httpx", "urllib"]))
        try:
            uploads = [StateUpload(session_id="s1", state={"n": i}, agent_name=f"a{i}") for i in range(3)]
            docs = [encode_document(u) for u in uploads]
            assert await store.insert_many(docs) == [u.doc_id for u in uploads]
            assert store.batch_supported is True
            assert await store.insert_many(docs[:1]) == [uploads[0].doc_id]  # a retry: no duplicate
            result = await store.query(Query(session_id="s1", tags=("session_state", "a1")))
            assert result.total == 1
            assert result.data[0]["content"]["state"] == {"n": 1}
            got = await store.get(uploads[2].doc_id)
            assert orjson.loads(docs[2].body) | {"_id": got["_id"]} == {
                k: v for k, v in got.items() if k not in ("created_at", "updated_at", "seq")
            }
            await store.delete(uploads[2].doc_id)
            assert (await store.query(Query(limit=5000))).total == 2
        finally:
            await store.aclose()

    @pytest.mark.anyio
    async def test_store_falls_back_without_batch(self, make_server: Any) -> None:
        """Against a server without the batch endpoint the store falls back to single POSTs."""
        srv = make_server(enable_batch=False)
        store = HttpStore(srv.url, PROJECT, lambda: open_transport(["aiohttp", "httpx", "urllib"]))
        try:
            docs = [encode_document(StateUpload(session_id="s", state=i)) for i in range(2)]
            assert await store.insert_many(docs) == [d.id for d in docs]
            assert store.batch_supported is False
            assert (await store.query(Query(session_id="s"))).total == 2
        finally:
            await store.aclose()
