"""The OpenAPI 3.1 document at /openapi.json and its HTML rendering at /docs.

The expected operations are taken from the contract modules' own ``routes`` lists, not
from the generator, so a route added to a contract without docs (or dropped from the
document) fails here; routes of other modules (metrics, dashboard, the docs themselves)
must stay out of it.
"""
from __future__ import annotations

import re

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.routing import Route
from starlette.testclient import TestClient

from api import admin, devices, openapi, stacking, taskcenter
from api.app import create_app
from engine.errors import Conflict, InvalidInput, NotTaskOwner
from tests.helpers import online_server, request_doc

CONTRACT_ROUTES = [*stacking.routes, *admin.routes, *devices.routes, *taskcenter.routes]
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def app(engine):
    return create_app(engine, access_log=False)


@pytest.fixture
def client(app):
    return TestClient(app)


@pytest.fixture
def document(client) -> dict:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    return resp.json()


def operations(document: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): op for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS}


def expected_operations() -> set[tuple[str, str]]:
    """(METHOD, path template) of every contract route, HEAD duplicates and explicit exclusions left out."""
    out = set()
    for route in CONTRACT_ROUTES:
        for method in route.methods:
            if method != "HEAD" and (method, route.path) not in openapi.EXCLUDED:
                out.add((method, re.sub(r"{(\w+):\w+}", r"{\1}", route.path)))
    return out


def undocumented(document: dict) -> list[str]:
    """Operations missing a summary, an auth scheme, a success response or their error responses."""
    bad = []
    for (method, path), op in operations(document).items():
        codes = set(op["responses"])
        if not op.get("summary") or not op.get("security") or not any(c.startswith("2") for c in codes) \
                or not {"401", "503"} <= codes:
            bad.append(f"{method} {path}")
    return bad


def validator(document: dict, schema: dict) -> jsonschema_rs.Validator:
    """A validator for one schema of the document, its ``#/components/...`` references resolvable."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


# ---- coverage -------------------------------------------------------------------------------------
def test_every_contract_route_is_an_operation_and_nothing_else_is(app, document):
    documented = set(operations(document))
    assert documented == expected_operations()
    assert len(documented) >= 50
    # the one excluded contract route, and why: an empty path segment cannot be templated
    assert set(openapi.EXCLUDED) == {("GET", "/api/v1/stacking/folders//connect-status")}
    assert "{folder_id}" in next(p for p in document["paths"] if p.endswith("/connect-status"))
    # routes of other modules (these two, /metrics, /dashboard...) are not contract operations
    others = openapi.non_contract_routes(app.routes)
    assert {"/openapi.json", "/docs"} <= set(others)
    assert not set(others) & set(document["paths"])
    # each is excluded for a stated reason (metrics, dashboard, the docs); a new one needs a decision
    unexplained = [p for p in others if not any(p == k or p.startswith(k + "/") for k in openapi.NOT_CONTRACTS)]
    assert unexplained == []
    contract_paths = {r.path for r in CONTRACT_ROUTES}
    assert not contract_paths & set(others)


def test_every_operation_is_documented(document):
    assert undocumented(document) == []
    ids = [op["operationId"] for op in operations(document).values()]
    assert len(ids) == len(set(ids))


def test_a_route_added_without_docs_is_caught(engine):
    async def new_handler(request):  # no docstring: no summary, no auth, no documented errors
        raise NotImplementedError

    new_handler.__module__ = "api.devices"
    app = create_app(engine, access_log=False)
    app.router.routes.append(Route("/api/v1/task/new-thing", new_handler, methods=["POST"]))
    document = TestClient(app).get("/openapi.json").json()
    assert ("POST", "/api/v1/task/new-thing") in operations(document)
    assert undocumented(document) == ["POST /api/v1/task/new-thing"]


def test_path_parameters_come_from_the_routes(document):
    for (method, path), op in operations(document).items():
        names = re.findall(r"{(\w+)}", path)
        params = [p for p in op.get("parameters", []) if p["in"] == "path"]
        assert [p["name"] for p in params] == names, (method, path)
        assert all(p["required"] for p in params)
    user = operations(document)[("GET", "/api/v1/admin/users/{user_id}")]
    assert user["parameters"][0]["schema"]["type"] == "integer"  # the route's :int convertor


# ---- validity ---------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    errors = [f"{e.instance_path}: {e.message}" for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []


def test_every_schema_is_valid_json_schema_and_every_ref_resolves(document):
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    refs = set(re.findall(r'"\$ref": ?"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs and refs <= set(document["components"]["schemas"])
    for (method, path), op in operations(document).items():
        for status, response in op["responses"].items():
            validator(document, response["content"]["application/json"]["schema"])  # compiles, refs resolve
        for scheme in (name for req in op["security"] for name in req):
            assert scheme in document["components"]["securitySchemes"], (method, path)


# ---- the error envelopes are derived from each contract's renderer ------------------------------------
def test_error_responses_carry_each_contracts_envelope_and_codes(document):
    ops = operations(document)
    start = ops[("POST", "/api/v1/stacking/links/{task_id}/start")]["responses"]
    assert set(start["409"]["content"]["application/json"]["schema"]["properties"]["code"]["enum"]) == {
        Conflict.code, NotTaskOwner.code}
    assert start["503"]["headers"]["Retry-After"]
    create = ops[("POST", "/api/v1/task")]["responses"]
    assert set(create["400"]["content"]["application/json"]["schema"]["properties"]["code"]["enum"]) == {
        code for cls, code, status in devices.CODES if status == 400}
    assert create["413"]["content"]["application/json"]["schema"]["properties"]["code"]["enum"] == [40001]
    mgmt = ops[("GET", "/api/task/self")]["responses"]["401"]["content"]["application/json"]["schema"]
    assert set(mgmt["properties"]) == {"success", "message"}
    suno = ops[("POST", "/suno/submit/{action}")]["responses"]
    assert suno["400"]["content"]["application/json"]["schema"]["properties"]["code"]["enum"] == [
        "invalid_request"]
    assert "insufficient_user_quota" not in str(suno["401"])


def test_error_schemas_follow_the_renderer_not_a_copy():
    """A new status or code in a contract's table shows up in the document by itself."""
    def renderer(exc):
        status = 418 if isinstance(exc, InvalidInput) else 500
        return stacking.JSON({"success": False, "message": exc.message, "teapot": exc.code}, status_code=status)

    schemas = openapi.error_schemas(renderer)
    assert set(schemas) == {418, 500}
    assert "invalid_input" in schemas[418]["properties"]["teapot"]["enum"]


def test_real_refusals_and_successes_match_the_documented_schemas(engine, client, document):
    ops = operations(document)
    _, key = online_server(engine)
    engine.stacking.create_request(request_doc())

    def check(method, path, template, status, **kw):
        resp = client.request(method, path, **kw)
        assert resp.status_code == status, resp.text
        schema = ops[(method, template)]["responses"][str(status)]["content"]["application/json"]["schema"]
        errors = [e.message for e in validator(document, schema).iter_errors(resp.json())]
        assert errors == [], (path, resp.json())

    links = "/api/v1/stacking/links"
    check("GET", links, links, 200, headers={"X-API-Key": key})
    check("GET", links, links, 401)
    check("GET", links, links, 400, headers={"X-API-Key": key}, params={"limit": "0"})
    check("GET", f"{links}/nope", f"{links}/{{task_id}}", 404, headers={"X-API-Key": key})
    check("POST", f"{links}/nope/fail", f"{links}/{{task_id}}/fail", 400, headers={"X-API-Key": key},
          content=b"{")
    check("GET", "/api/v1/task/stats", "/api/v1/task/stats", 200)
    check("GET", "/api/v1/task/9", "/api/v1/task/{task_id}", 404)
    check("POST", "/suno/fetch", "/suno/fetch", 401, json={"ids": []})
    check("GET", "/api/user/self", "/api/user/self", 401)
    check("GET", "/api/v1/admin/users/7", "/api/v1/admin/users/{user_id}", 404)


# ---- serving -----------------------------------------------------------------------------------------
def test_document_and_docs_are_public_even_with_tokens_set(engine, settings):
    settings.admin_token, settings.device_token = "adm", "dev"
    client = TestClient(create_app(engine, access_log=False), client=("203.0.113.9", 5000))
    assert client.get("/api/v1/admin/servers").status_code == 401
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_docs_page_lists_every_operation_from_the_document(client, document):
    resp = client.get("/docs")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    page = resp.text
    for (method, path), op in operations(document).items():
        block = page[page.index(f"id='{op['operationId']}'"):]
        block = block[:block.index("</div>")]
        assert f"<span class=m>{method.lower()}</span><code>{path}</code>" in block
        for status in op["responses"]:
            assert f"<summary>{status} " in block, (method, path, status)
        for param in op.get("parameters", []):
            assert f"<td>{param['name']}</td>" in block
        if "requestBody" in op:
            assert "request body" in block
    for name in document["components"]["schemas"]:
        assert f"id='schema-{name}'" in page
    # served by taskhub alone: no script, no stylesheet or asset from elsewhere
    assert "<script" not in page and "src=" not in page and "<link" not in page


def test_docs_page_escapes_what_it_shows():
    document = {"info": {"title": "<t>", "description": "a & b"}, "tags": [{"name": "x", "description": "<i>"}],
                "paths": {"/p/{id}": {"get": {"operationId": "g", "summary": "<script>alert(1)</script>",
                                               "tags": ["x"], "responses": {"200": {
                                                   "description": "ok", "content": {"application/json": {
                                                       "schema": {"const": "</pre><b>"}}}}}}}},
                "components": {"schemas": {}, "securitySchemes": {}}}
    page = openapi.render_docs(document)
    assert "<script>" not in page and "&lt;script&gt;" in page and "</pre><b>" not in page
