"""The OpenAPI contract: built from the router and the validators' tables, and checked by schemathesis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from multidict import MultiDict
from prometheus_client.parser import text_string_to_metric_families
from schemathesis.specs.openapi.checks import allow_header_conformance

from wr124_session_actor.server import ServerThread, create_app
from wr124_session_actor.server import _app as app_module
from wr124_session_actor.server._metrics import PREFIX
from wr124_session_actor.server._openapi import OPERATIONS, query_parameters, spec_of

SPEC = spec_of(create_app("unused.db"))
#: Past a size limit (``maxItems`` of a batch) the server answers 413, a rejection like 400 and 422.
CONFIG = schemathesis.Config.from_dict({
    "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]}},
})
schema = schemathesis.openapi.from_dict(SPEC, config=CONFIG)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One reference server for every generated request, with a few documents in it."""
    with ServerThread(tmp_path_factory.mktemp("contract") / "contract.db") as srv:
        with httpx.Client(base_url=srv.url) as client:
            for n in range(3):
                doc = {"id": f"d{n}", "name": "n", "content": {"agent_name": "a"}, "session_id": "s", "tags": ["t"]}
                client.post("/p/json-documents", json=doc).raise_for_status()
        yield srv


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_its_contract(case: schemathesis.Case[Any], live: ServerThread) -> None:
    """Generated requests (valid and invalid) get no 5xx, and every answer matches the contract."""
    # ``/{project}/json-documents/batch`` also matches ``/{project}/json-documents/{doc_id}`` (a document
    # may be named "batch"), so its Allow header rightly lists GET and DELETE too.
    case.call_and_validate(base_url=live.url, excluded_checks=[allow_header_conformance])


@pytest.mark.slow  # it counts what the slow test above sent: the fast set leaves both out
def test_every_route_got_a_hundred_requests_or_more(live: ServerThread) -> None:
    """The server's own metrics count the generated requests per route (runs after the test above): no 5xx."""
    text = httpx.get(f"{live.url}/metrics").text
    counts: dict[str, float] = {}
    statuses: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{PREFIX}requests_total":
                key = f"{sample.labels['method']} {sample.labels['route']}"
                counts[key] = counts.get(key, 0) + sample.value
                statuses.add(sample.labels["status"])
    print("generated requests by route:", dict(sorted(counts.items())))
    assert not {status for status in statuses if status.startswith("5")}, statuses
    for path, methods in SPEC["paths"].items():
        for method, operation in methods.items():
            # A route without parameters or body has only one request to make.
            varied = "parameters" in operation or "requestBody" in operation
            assert counts.get(f"{method.upper()} {path}", 0) >= (100 if varied else 1), (method, path)


class RecordingParams(MultiDict[str]):
    """Query parameters that remember which names a parser asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def getall(self, key: str, default: Any = ()) -> Any:
        self.asked.add(key)
        return super().getall(key, default)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def documented(operation_id: str) -> set[str]:
    app = create_app("unused.db")
    from wr124_session_actor.server._openapi import _VALIDATORS

    return {p["name"] for p in query_parameters(app[_VALIDATORS])[operation_id]}


class TestNoDrift:
    def test_the_contract_lists_exactly_the_routes(self) -> None:
        """Every route of the router is in the contract with its methods, and nothing else is."""
        app = create_app("unused.db")
        routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource}
        described = {(m.upper(), path) for path, methods in SPEC["paths"].items() for m in methods}
        assert routed == described
        assert set(OPERATIONS) == routed  # no description of a route that is gone

    def test_an_undescribed_route_fails_the_build(self) -> None:
        """A route added without a description cannot ship: building the contract fails."""
        app = create_app("unused.db")

        async def handler(request: Any) -> Any:
            raise NotImplementedError

        app.router.add_get("/new", handler)
        with pytest.raises(RuntimeError, match="GET /new"):
            spec_of(app)

    def test_document_fields_come_from_the_validator(self) -> None:
        """The posted document's properties are the validator's field table; a new field fails the build."""
        assert set(SPEC["components"]["schemas"]["DocumentIn"]["properties"]) == app_module._FIELDS
        from wr124_session_actor.server._openapi import Validators, build_spec

        app = create_app("unused.db")
        validators = Validators(app_module._FIELDS | {"extra"}, ("created_at",), ("1",), app_module.DEFAULT_LIMITS,
                                1, ".*")
        with pytest.raises(RuntimeError, match="extra"):
            build_spec(app, validators)

    def test_sort_values_come_from_the_validator(self) -> None:
        """``sort_by`` and ``sort_order`` enumerate what the parser accepts."""
        params = {p["name"]: p for p in SPEC["paths"]["/{project}/json-documents"]["get"]["parameters"]}
        assert params["sort_by"]["schema"]["anyOf"][0]["enum"] == list(app_module._SORT_BY)
        assert params["sort_order"]["schema"]["anyOf"][0]["enum"] == list(app_module._SORT_ORDERS)

    def test_the_list_parser_reads_exactly_the_documented_parameters(self) -> None:
        """``_parse_query`` asks for the parameters the contract names, no more, no fewer."""
        params = RecordingParams()
        app_module._parse_query(params, app_module.DEFAULT_LIMITS)
        assert params.asked == documented("listDocuments")

    def test_the_sessions_parser_reads_exactly_the_documented_parameters(self) -> None:
        """``_parse_sessions`` asks for the parameters the contract names."""
        params = RecordingParams()
        app_module._parse_sessions(params, app_module.DEFAULT_LIMITS)
        assert params.asked == documented("listSessions")

    def test_served_contract_is_the_built_one(self, live: ServerThread) -> None:
        """``GET /openapi.json`` answers the contract (open even when the server has a key)."""
        assert httpx.get(f"{live.url}/openapi.json").json() == SPEC


class TestQueryLists:
    def test_tags_repeat_or_join(self, live: ServerThread) -> None:
        """``tags=a&tags=b`` and ``tags=a,b`` select the same documents; a scalar given twice is 400."""
        url = f"{live.url}/p/json-documents"
        repeated = httpx.get(url, params=[("tags", "t"), ("tags", "x")]).json()
        joined = httpx.get(url, params={"tags": "t,x"}).json()
        assert repeated["total"] == joined["total"] == 0
        assert httpx.get(url, params=[("tags", "t")]).json()["total"] == 3
        assert httpx.get(url, params=[("limit", "1"), ("limit", "2")]).status_code == 400


class TestUiFiles:
    def test_the_package_ships_exactly_the_served_files(self) -> None:
        """The ``ui`` folder holds the page and the assets the contract enumerates, nothing else."""
        from wr124_session_actor.server import _ui

        folder = Path(_ui.__file__).parent / "ui"
        assert {p.name for p in folder.iterdir()} == {_ui.INDEX, *_ui.ASSETS}

    def test_assets_are_served_and_unknown_ones_are_404(self, live: ServerThread) -> None:
        """``/ui`` and every asset answer with their media type; another name is a JSON 404."""
        assert httpx.get(f"{live.url}/ui").headers["content-type"].startswith("text/html")
        for name, media in _ui_assets().items():
            assert httpx.get(f"{live.url}/ui/{name}").headers["content-type"].startswith(media)
        missing = httpx.get(f"{live.url}/ui/nope.js")
        assert missing.status_code == 404
        assert missing.json()["status"] == 404


def _ui_assets() -> dict[str, str]:
    from wr124_session_actor.server._ui import ASSETS

    return dict(ASSETS)


class TestPruneBodies:
    def test_the_contract_states_the_prune_body_limit_the_server_keeps(self, live: ServerThread) -> None:
        """The prune body's limit is its own (64 KiB), and the contract says so (it said the documents' 64 MiB):
        a body under it is read, one over it is 413."""
        said = SPEC["paths"]["/{project}/json-documents/prune"]["post"]["requestBody"]["description"]
        assert said == "At most 65536 bytes."
        padding = {"dry_run": True, "session_id": "s", "keep_last": 1}
        assert httpx.post(f"{live.url}/p/json-documents/prune", json=padding).status_code == 200
        big = httpx.post(f"{live.url}/p/json-documents/prune", content=b" " * 65537 + b"{}",
                         headers={"content-type": "application/json"})
        assert big.status_code == 413

    def test_huge_durations_and_whole_floats_are_valid(self, live: ServerThread) -> None:
        """A duration past year 1 prunes nothing (no overflow); ``keep_last: 2.0`` is the whole number 2."""
        body = {"max_age": "9999999999w", "idle_ttl": 1e300, "keep_last": 2.0, "dry_run": True}
        resp = httpx.post(f"{live.url}/p/json-documents/prune", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["dry_run"] is True


def test_no_route_answers_head_which_the_contract_does_not_list(live: ServerThread) -> None:
    """HEAD is answered 405, and no Allow header offers it: every GET route answered HEAD with 200, an
    operation the contract does not have."""
    for path in ("/health", "/p/json-documents", "/p/json-documents/d0", "/p/sessions", "/metrics",
                 "/openapi.json", "/ui"):
        resp = httpx.head(f"{live.url}{path}")
        assert resp.status_code == 405 and "HEAD" not in resp.headers["allow"], path
    assert all("head" not in operations for operations in SPEC["paths"].values())


def test_a_request_line_too_long_is_refused_as_the_contract_says(live: ServerThread) -> None:
    """A query string past the HTTP parser's 8 KiB is a 400 in plain text, before the service: the contract
    says so (schemathesis once generated such a request and found the answer undocumented)."""
    resp = httpx.get(f"{live.url}/p/sessions", params={"search": "x" * 9000})
    assert resp.status_code == 400 and resp.headers["content-type"].startswith("text/plain")
    for path in ("/{project}/sessions", "/{project}/json-documents", "/ui/{asset}"):
        assert "text/plain" in SPEC["paths"][path]["get"]["responses"]["400"]["content"], path


def test_the_contract_says_names_and_filters_hold_no_nul(live: ServerThread) -> None:
    """Path and query texts exclude NUL, which the server refuses with 400 on every backend (schemathesis
    generated a tag holding one as valid data)."""
    texts = {"project", "doc_id", "asset", "session_id", "document_type", "name_pattern", "search", "tags"}
    params = [p for ops in SPEC["paths"].values() for op in ops.values() for p in op.get("parameters", [])
              if p["name"] in texts]
    assert {p["name"] for p in params} == texts
    for param in params:
        schemas = param["schema"].get("anyOf", [param["schema"]])
        patterns = {(s.get("items") or s)["pattern"] for s in schemas}
        assert patterns == {"^[^\\u0000]*$"}, param["name"]
    resp = httpx.get(f"{live.url}/p/json-documents", params={"tags": "a\0b"})
    assert (resp.status_code, resp.json()["error"]) == (400, "a NUL character in the path or the query")


def test_a_document_names_no_nul_in_the_fields_queries_name(live: ServerThread) -> None:
    """A document whose session, name, type, description or tag holds NUL is refused (422) on every backend,
    as the contract's document fields say: sqlite stored a session "s\\0" that no query could name (a NUL in
    a query is 400), and PostgreSQL refused it with a message quoting its internals."""
    fields = SPEC["components"]["schemas"]["DocumentIn"]["properties"]
    for field in ("name", "description", "document_type", "session_id"):
        assert fields[field]["pattern"] == "^[^\\u0000]*$", field
    assert fields["tags"]["items"]["pattern"] == "^[^\\u0000]*$"
    good = {"name": "n", "content": {"state": "a\0b"}, "session_id": "s", "tags": ["t"]}
    assert httpx.post(f"{live.url}/p/json-documents", json=good).status_code == 201  # content is the caller's
    for field, value in (("session_id", "s\0"), ("name", "n\0"), ("description", "\0"), ("document_type", "x\0"),
                         ("tags", ["t", "u\0"])):
        resp = httpx.post(f"{live.url}/p/json-documents", json={**good, field: value})
        assert resp.status_code == 422 and "U+0000" in resp.json()["error"], (field, resp.text)
