"""The OpenAPI 3.1 document of the three contracts, generated from the running app's routes,
served at ``/openapi.json``, and a plain HTML rendering of it at ``/docs``.

Generated, not hand-kept: the operations are the app's own routes (``request.app.routes``,
walked like ``starlette.schemas.SchemaGenerator``), so a route added without docs shows up
as an operation with no summary and fails tests/api/test_openapi.py. Per operation, the
handler's docstring carries a short YAML block after ``---`` (Starlette's convention)::

    summary line (also the first docstring line)
    ---
    auth: server | admin | device | api_token | access_token
    query: {name: <schema>}        # optional
    body: <schema>                  # optional; ``body_required: false`` if it may be empty
    data: <schema>                  # the success payload, wrapped in the contract's envelope
    response: <schema>              # instead of data: the whole success body (connect-status)
    status: 201                     # success status, 200 by default
    errors: [404, 409]              # statuses beyond the ones every such route has
    path: {name: <schema>}          # optional: refines a path parameter (its type comes from the route)

``<schema>`` is a component name (api/schemas.py) or an inline JSON schema whose
``$ref`` may be a bare component name. Path parameters come from the route itself.

The error responses are not written per route: each status's schema is derived by
rendering every engine error class through the contract's own error renderer (the
same ``CONTRACTS`` prefix table api/app.py answers errors with), so the document shows
exactly the envelope and the machine codes each status can carry. Every operation also
documents its auth failures (401/403), 400 + 413 when it reads a body, and 503
(Redis away, ``Retry-After: 1``).

Only routes whose handler lives in a contract module (``CONTRACT_MODULES``) are
operations; ``/metrics``, ``/dashboard...`` and these two routes are not part of a
contract and are left out by that rule, each for the reason ``NOT_CONTRACTS`` gives. Decided: both routes are public, like any
API description; the document holds no secret (it names the auth headers, never values).
"""
from __future__ import annotations

import html
import inspect
import re
from typing import Any, Callable, Iterator

import orjson
import yaml
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from engine.errors import EngineError

from .http import JSON
from .schemas import SCHEMAS, SECURITY, SECURITY_SCHEMES, Schema

CONTRACT_MODULES = ("api.stacking", "api.admin", "api.devices", "api.taskcenter")
# Routes of contract modules that are deliberately not operations, with the reason.
EXCLUDED = {
    ("GET", "/api/v1/stacking/folders//connect-status"):
        "answers 400 for an empty folder id; OpenAPI path templates cannot express an empty segment, and the "
        "400 is documented on GET /api/v1/stacking/folders/{folder_id}/connect-status",
}
# Routes of other modules, by path prefix, and why they are not operations. A route that is in
# neither a contract module nor here fails tests/api/test_openapi.py: someone must decide.
NOT_CONTRACTS = {
    "/openapi.json": "this document", "/docs": "its HTML rendering", "/metrics": "Prometheus metrics",
    "/dashboard": "the operators' dashboard (HTML, its own session cookie)",
}
AUTH_ERRORS = {"server": (401, 403), "admin": (401, 403), "device": (401, 403), "api_token": (401, 403),
               "access_token": (401, 403)}
TITLES = {400: "invalid input", 401: "not authenticated", 403: "refused", 404: "not found",
          409: "state does not allow it", 413: "body too large", 500: "internal error",
          503: "storage unavailable; retry (Retry-After: 1)"}
CONVERTOR_TYPES = {"IntegerConvertor": {"type": "integer", "minimum": 0},
                   "FloatConvertor": {"type": "number", "minimum": 0}}


# ---- the per-contract envelopes -------------------------------------------------------------
def _engine_error_classes() -> list[type[EngineError]]:
    """Every EngineError subclass the app can raise (the contract modules import them all)."""
    seen: list[type[EngineError]] = []
    stack = [EngineError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    return seen


def _render(renderer: Callable[[EngineError], Response], cls: type[EngineError]) -> tuple[int, dict]:
    exc = cls.__new__(cls)
    EngineError.__init__(exc, "message")
    response = renderer(exc)
    return response.status_code, orjson.loads(response.body)


def error_schemas(renderer: Callable[[EngineError], Response]) -> dict[int, Schema]:
    """Status -> schema of the envelope ``renderer`` writes for it, with its machine codes."""
    by_status: dict[int, list[dict]] = {}
    for cls in [EngineError, *_engine_error_classes()]:
        status, body = _render(renderer, cls)
        by_status.setdefault(status, []).append(body)
    out: dict[int, Schema] = {}
    for status, bodies in sorted(by_status.items()):
        fields = {name for body in bodies for name in body}
        props: Schema = {}
        for name in sorted(fields):
            values = sorted({repr(b[name]) for b in bodies if name in b})
            sample = next(b[name] for b in bodies if name in b)
            if name == "message":
                props[name] = {"type": "string"}
            elif sample is None:
                props[name] = {"type": "null"}
            elif isinstance(sample, bool):
                props[name] = {"const": sample}
            elif name == "code" and isinstance(sample, str) and status == 403 and len(values) > 1:
                props[name] = {"type": "string"}  # suno's 403 carries the refusal's own code
            else:
                props[name] = {"enum": sorted({b[name] for b in bodies if name in b})}
        required = sorted(name for name in fields if all(name in b for b in bodies))
        out[status] = {"type": "object", "required": required, "properties": props}
    return out


def _contracts() -> tuple[tuple[str, Callable], ...]:
    from .app import CONTRACTS  # the app imports this module: resolved at call time

    return CONTRACTS


def _renderer_for(path: str) -> Callable[[EngineError], Response]:
    for prefix, render in _contracts():
        if path.startswith(prefix):
            return render
    from .stacking import error_response

    return error_response


def _success(renderer: Callable, data: Schema | None) -> Schema:
    """The contract's success envelope around ``data`` (None: the bare ``{"success": true}``)."""
    from . import devices, taskcenter

    if renderer is devices.error_response:
        return _closed(code={"const": 0}, message={"const": "success"}, data=data or {})
    if renderer is taskcenter.suno_error:
        return _closed(code={"const": "success"}, message={"type": "string"}, data=data or {})
    if renderer is taskcenter.management_error:
        return _closed(success={"const": True}, message={"type": "string"}, data=data or {})
    if data is None:
        return _closed(success={"const": True})
    return _closed(success={"const": True}, data=data)


def _closed(**props: Schema) -> Schema:
    return {"type": "object", "required": list(props), "properties": props}


# ---- the handlers' YAML ------------------------------------------------------------------------
def parse_docstring(func: Callable) -> tuple[str, str, dict]:
    """(summary, description, YAML mapping) of a handler's docstring."""
    doc = inspect.getdoc(func) or ""
    text, _, spec = doc.rpartition("---") if "---" in doc else (doc, "", "")
    lines = [line for line in text.strip().splitlines()]
    summary = lines[0].strip() if lines else ""
    description = " ".join(line.strip() for line in lines[1:]).strip()
    data = yaml.safe_load(spec) if spec.strip() else {}
    return summary, description, data if isinstance(data, dict) else {}


def _schema(value: Any) -> Schema:
    """A component name, or an inline schema whose ``$ref`` may be a bare component name."""
    if isinstance(value, str):
        if value not in SCHEMAS:
            raise ValueError(f"unknown component schema {value!r}")
        return {"$ref": f"#/components/schemas/{value}"}
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str) and not value["$ref"].startswith("#"):
            return _schema(value["$ref"])
        return {k: _nested(v) for k, v in value.items()}
    return value


def _nested(value: Any) -> Any:
    if isinstance(value, dict):
        return _schema(value)
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


# ---- the document ------------------------------------------------------------------------------
def contract_operations(routes: list) -> Iterator[tuple[str, str, Route]]:
    """(method, path, route) of every contract operation of ``routes`` (HEAD duplicates skipped)."""
    for route in routes:
        if not isinstance(route, Route) or route.endpoint.__module__ not in CONTRACT_MODULES:
            continue
        for method in sorted(route.methods or ()):
            if method != "HEAD" and (method, route.path) not in EXCLUDED:
                yield method, route.path, route


def non_contract_routes(routes: list) -> list[str]:
    """Paths of the app's routes that are not contract operations (metrics, dashboard, docs...)."""
    paths = [getattr(r, "path", repr(r)) for r in routes
             if not (isinstance(r, Route) and r.endpoint.__module__ in CONTRACT_MODULES)]
    return list(dict.fromkeys(paths))


def _operation_id(method: str, path: str) -> str:
    """``get_api_v1_task_task_id``; a trailing slash is spelt out (``/api/task/`` and ``/api/task`` are two)."""
    return f"{method.lower()}_{re.sub(r'[^a-zA-Z0-9]+', '_', path.strip('/'))}" + ("_slash" * path.endswith("/"))


def _operation(method: str, route: Route) -> Schema:
    summary, description, spec = parse_docstring(route.endpoint)
    renderer = _renderer_for(route.path)
    errors = error_schemas(renderer)
    op: Schema = {"operationId": _operation_id(method, route.path_format), "summary": summary,
                  "tags": [route.endpoint.__module__.split(".")[-1]]}
    if description:
        op["description"] = description
    auth = spec.get("auth")
    if auth:
        op["security"] = SECURITY[auth]
    params = [{"name": name, "in": "path", "required": True,
               "schema": {**CONVERTOR_TYPES.get(type(conv).__name__, {"type": "string", "minLength": 1,
                                                                        "pattern": "^[^/]+$"}),
                          **_schema((spec.get("path") or {}).get(name, {}))}}
              for name, conv in route.param_convertors.items()]
    params += [{"name": name, "in": "query", "required": False, "schema": _schema(schema)}
               for name, schema in (spec.get("query") or {}).items()]
    if params:
        op["parameters"] = params
    statuses = set(spec.get("errors") or ()) | set(AUTH_ERRORS.get(auth, ())) | {503}
    if "body" in spec:
        op["requestBody"] = {"required": spec.get("body_required", True),
                             "content": {"application/json": {"schema": _schema(spec["body"])}}}
        statuses |= {400, 413}
    ok = spec["response"] if "response" in spec else _success(renderer, _schema(spec["data"]) if "data" in spec
                                                             else None)
    responses: Schema = {str(spec.get("status", 200)): {
        "description": "success", "content": {"application/json": {"schema": _schema(ok)}}}}
    for status in sorted(statuses):
        response: Schema = {"description": TITLES.get(status, "error"),
                            "content": {"application/json": {"schema": errors[status]}}}
        if status == 503:
            response["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
        responses[str(status)] = response
    op["responses"] = responses
    return op


def build_document(routes: list) -> Schema:
    paths: dict[str, dict] = {}
    for method, path, route in contract_operations(routes):
        paths.setdefault(route.path_format, {})[method.lower()] = _operation(method, route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "taskhub", "version": "1",
                 "description": "The stacking worker API, the device task API and the task center "
                                "(with their operators' endpoints). Generated from the routes."},
        "tags": [{"name": "stacking", "description": "stacking servers (X-API-Key)"},
                 {"name": "admin", "description": "stacking operators (admin token)"},
                 {"name": "devices", "description": "device tasks and agents (device token)"},
                 {"name": "taskcenter", "description": "task center: platform, management and operators"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


def document_bytes(request: Request) -> bytes:
    """The app's document, built on first use and kept on ``app.state`` (routes do not change)."""
    state = request.app.state
    if getattr(state, "openapi_document", None) is None:
        state.openapi_document = orjson.dumps(build_document(request.app.routes))
    return state.openapi_document


async def openapi_json(request: Request) -> Response:
    return JSON(document_bytes(request))


# ---- the docs page -------------------------------------------------------------------------------
def _json_text(schema: Any, indent: bool = True) -> str:
    """The schema as escaped JSON, each component reference a link to the component below."""
    text = html.escape(orjson.dumps(schema, option=orjson.OPT_INDENT_2 if indent else 0).decode())
    return re.sub(r"&quot;#/components/schemas/(\w+)&quot;", r"<a href='#schema-\1'>\1</a>", text)


def render_docs(document: Schema) -> str:
    """One server-rendered page: every operation with parameters, body, responses and errors."""
    e = html.escape
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8><title>taskhub API</title>",
           "<style>body{font:14px/1.45 system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
           "h2{border-bottom:1px solid #ccc}.op{margin:1.2em 0;padding:.6em 1em;border:1px solid #ddd;"
           "border-radius:6px}.m{font-weight:bold;text-transform:uppercase;margin-right:.5em}"
           "code,pre{background:#f5f5f5}pre{padding:.5em;overflow:auto;max-height:24em}"
           "table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}"
           "details{margin:.3em 0}</style></head><body>",
           f"<h1>{e(document['info']['title'])} API</h1><p>{e(document['info']['description'])} "
           "Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1).</p>"]
    nav, body = [], []
    for tag in document["tags"]:
        nav.append(f"<li><a href='#{e(tag['name'])}'>{e(tag['name'])}</a>: {e(tag['description'])}</li>")
        body.append(f"<h2 id='{e(tag['name'])}'>{e(tag['name'])}</h2>")
        for path, item in document["paths"].items():
            for method, op in item.items():
                if tag["name"] in op["tags"]:
                    body.append(_render_operation(path, method, op))
    out += ["<ul>", *nav, "</ul>", *body, "<h2>Schemas</h2>"]
    for name, schema in document["components"]["schemas"].items():
        out.append(f"<details id='schema-{e(name)}'><summary>{e(name)}</summary><pre>{_json_text(schema)}</pre>"
                   "</details>")
    out.append("<h2>Authentication</h2><table><tr><th>scheme</th><th>how</th></tr>")
    for name, scheme in document["components"]["securitySchemes"].items():
        how = scheme.get("name") or "Authorization: Bearer"
        out.append(f"<tr><td>{e(name)}</td><td><code>{e(how)}</code> — {e(scheme.get('description', ''))}</td></tr>")
    out.append("</table></body></html>")
    return "".join(out)


def _render_operation(path: str, method: str, op: Schema) -> str:
    e = html.escape
    parts = [f"<div class=op id='{e(op['operationId'])}'><span class=m>{e(method)}</span><code>{e(path)}</code>"
             f"<p>{e(op['summary'])}</p>"]
    if op.get("description"):
        parts.append(f"<p>{e(op['description'])}</p>")
    if op.get("security"):
        schemes = " + ".join(name for req in op["security"] for name in req)
        parts.append(f"<p>Auth: {e(schemes)}</p>")
    if op.get("parameters"):
        parts.append("<table><tr><th>parameter</th><th>in</th><th>schema</th></tr>")
        for p in op["parameters"]:
            parts.append(f"<tr><td>{e(p['name'])}</td><td>{e(p['in'])}</td><td><code>{_json_text(p['schema'], indent=False)}"
                         "</code></td></tr>")
        parts.append("</table>")
    if op.get("requestBody"):
        rb = op["requestBody"]
        parts.append(f"<details><summary>request body ({'required' if rb['required'] else 'optional'})</summary>"
                     f"<pre>{_json_text(rb['content']['application/json']['schema'])}</pre></details>")
    for status, resp in op["responses"].items():
        parts.append(f"<details><summary>{e(status)} {e(resp['description'])}</summary>"
                     f"<pre>{_json_text(resp['content']['application/json']['schema'])}</pre></details>")
    parts.append("</div>")
    return "".join(parts)


async def docs_page(request: Request) -> Response:
    """Rendered once per app, like the document (a public page must not cost milliseconds each time)."""
    state = request.app.state
    if getattr(state, "docs_html", None) is None:
        state.docs_html = render_docs(orjson.loads(document_bytes(request)))
    return HTMLResponse(state.docs_html)


routes: list = [
    Route("/openapi.json", openapi_json, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
]

__all__ = ["routes", "build_document", "contract_operations", "non_contract_routes", "error_schemas",
           "render_docs", "EXCLUDED", "NOT_CONTRACTS", "CONTRACT_MODULES"]
