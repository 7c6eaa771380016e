"""The stacking worker API (stacking.md, seed 000): routes and their error envelope.

Envelope: ``{"success": true, ...}``; errors ``{"success": false, "message",
"code"?}``. Every handler: authenticate, parse, one engine call, render.

Single-task handlers build an engine ``Call`` and await it through the
process's ``Batcher`` (api/batch.py), which sends the calls of concurrent
requests as one pipeline per event-loop tick: one round trip per request at
most, far fewer under load, with the starts (completes, fails) of a tick in
one script call (engine/calls.py ``Plan``). These routes are dispatched ahead
of Starlette's router (api/hot.py). The pull (a script, then a read that
depends on it) calls the engine directly; a web process scales with processes
(``TASKHUB_WEB_WORKERS``). Measured in BENCHMARKS.md.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from engine.errors import (Conflict, EngineError, InvalidInput, InvalidKey, NotFound,
                           ServerNotOnline, ServiceKeyMismatch, Unavailable)
from engine.servers import ApiKey, check_caller

from .batch import Batcher
from .http import JSON, Fixed, Forbidden, PayloadTooLarge, Unauthorized, read_json
from .metrics import observe_claims

STATUS = {
    InvalidInput: 400, InvalidKey: 401, Unauthorized: 401, ServiceKeyMismatch: 403, ServerNotOnline: 403,
    Forbidden: 403, NotFound: 404, Conflict: 409, PayloadTooLarge: 413, Unavailable: 503,
}
# Errors whose envelope carries a machine code (stacking.md: "errors that have a machine code").
CODED = (ServiceKeyMismatch, ServerNotOnline, Conflict, PayloadTooLarge, Unavailable)
OK = b'{"success":true}'
Done = Fixed.of(OK)  # what start, complete and fail answer


def error_response(exc: EngineError) -> JSON:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    body: dict = {"success": False, "message": exc.message}
    if isinstance(exc, CODED):
        body["code"] = exc.code
    return JSON(body, status_code=status)


def _engine(request: Request):
    return request.scope["app"].engine  # api.app.App: the same object as app.state.engine


def _batch(request: Request) -> Batcher:
    return request.scope["app"].batch


def _key(request: Request) -> ApiKey:
    """The caller's credential; the engine's script resolves and authorizes it in
    the same round trip as the work (includes/auth.lua). Read from the ASGI header list
    (names are lowercase) without building Starlette's Headers."""
    for name, value in request.scope["headers"]:
        if name == b"x-api-key":
            return ApiKey(value.decode("latin-1"))
    return ApiKey("")


def _served(request: Request, sid: str) -> None:
    """The caller for the access log: the scope's state dict, which ``request.state`` wraps
    in a new object on every request."""
    request.scope.setdefault("state", {})["caller"] = f"server:{sid}"


async def _body(request: Request, key: ApiKey, required: bool = True, stacking: bool = True) -> dict:
    """The JSON body; if it is refused (400/413), an authentication failure is reported first."""
    try:
        return await read_json(request, required=required)
    except EngineError:
        check_caller(_engine(request).core, key, stacking)
        raise


async def pull(request: Request) -> JSON:
    """Claim up to ``limit`` ready tasks for the calling server (phase 2 first when no status is given).
    ---
    auth: server
    query:
      limit: {type: integer, minimum: 1, maximum: 1000, default: 5}
      status: {enum: [register, connect]}
    data: {type: array, items: {$ref: StackingTask}}
    errors: [400]
    """
    key = _key(request)
    raw = request.query_params.get("limit", "5")
    try:
        limit = int(raw)
    except ValueError:
        limit = -1  # refused by the engine, after authentication
    sid, tasks = _engine(request).stacking.pull(key, limit, request.query_params.get("status"))
    _served(request, sid)
    observe_claims("stacking", len(tasks))
    return JSON(b'{"success":true,"data":[' + b",".join(tasks) + b"]}")


async def get_task(request: Request) -> JSON:
    """One task, read only (no claim, no change).
    ---
    auth: server
    data: StackingTask
    errors: [404]
    """
    task = await _batch(request).run(_engine(request).stacking.get_task_call(request.path_params["task_id"],
                                                                              _key(request)))
    return JSON(b'{"success":true,"data":' + task + b"}")


async def start(request: Request) -> JSON:
    """Start a task the caller has claimed (register -> registering, connect -> connecting).
    ---
    auth: server
    errors: [404, 409]
    """
    call = _engine(request).stacking.start_call(_key(request), request.path_params["task_id"])
    _served(request, await _batch(request).run(call))
    return Done()


async def complete(request: Request) -> JSON:
    """Complete the caller's running task (phase 1 needs ``link_post``).
    ---
    auth: server
    body: CompleteBody
    body_required: false
    errors: [404, 409]
    """
    key = _key(request)
    body = await _body(request, key, required=False)
    call = _engine(request).stacking.complete_call(key, request.path_params["task_id"], body.get("link_post"),
                                                   body.get("note"))
    _served(request, await _batch(request).run(call))
    return Done()


async def fail(request: Request) -> JSON:
    """Fail the caller's running task; the retry manager decides what comes next.
    ---
    auth: server
    body: FailBody
    errors: [404, 409]
    """
    key = _key(request)
    body = await _body(request, key)
    call = _engine(request).stacking.fail_call(key, request.path_params["task_id"], body.get("error_message"),
                                               body.get("note"))
    _served(request, await _batch(request).run(call))
    return Done()


async def connect_status(request: Request) -> JSON:
    """Phase-2 readiness of a folder, over the tasks assigned to the calling server (top level, no ``data``).
    ---
    auth: server
    response: ConnectStatus
    errors: [400]
    """
    call = _engine(request).stacking.connect_status_call(_key(request), request.path_params["folder_id"])
    sid, body = await _batch(request).run(call)
    _served(request, sid)
    return JSON(body)


async def missing_folder(request: Request) -> JSON:
    check_caller(_engine(request).core, _key(request))
    raise InvalidInput("folder_id is required in the path")


async def health(request: Request) -> JSON:
    """Heartbeat: brings an offline server back online, records its metrics, extends its leases.
    ---
    auth: server
    body: Heartbeat
    body_required: false
    data: HeartbeatReply
    """
    key = _key(request)
    body = await _body(request, key, required=False, stacking=False)
    eng = _engine(request)
    data = await _batch(request).run(eng.servers.heartbeat_call(key, body))
    _served(request, data["server_id"])
    data["server_time"] = eng.iso_now()
    return JSON({"success": True, "data": data})


routes = [
    Route("/api/v1/stacking/links", pull, methods=["GET"]),
    Route("/api/v1/stacking/links/{task_id}", get_task, methods=["GET"]),
    Route("/api/v1/stacking/links/{task_id}/start", start, methods=["POST"]),
    Route("/api/v1/stacking/links/{task_id}/complete", complete, methods=["POST"]),
    Route("/api/v1/stacking/links/{task_id}/fail", fail, methods=["POST"]),
    Route("/api/v1/stacking/folders/{folder_id}/connect-status", connect_status, methods=["GET"]),
    Route("/api/v1/stacking/folders//connect-status", missing_folder, methods=["GET"]),
    Route("/api/v1/worker/health", health, methods=["POST"]),
]
