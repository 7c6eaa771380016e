"""The stacking worker API (stacking.md, seed 000): routes and their error envelope.

Envelope: ``{"success": true, ...}``; errors ``{"success": false, "message",
"code"?}``. Every handler: authenticate, parse, one engine call, render.

Handlers are ``async`` and call the synchronous engine directly. Each call is
one or two bounded Redis round trips (a 1000-task pull is ~10 ms of Redis
time), so a thread pool would cost more per request than it saves; a web
process serves one engine call at a time and the API scales with processes
(``TASKHUB_WEB_WORKERS``). Measured in BENCHMARKS.md.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.routing import Route

from engine.errors import (Conflict, EngineError, InvalidInput, InvalidKey, NotFound,
                           ServerNotOnline, ServiceKeyMismatch)
from engine.servers import Caller

from .http import JSON, Forbidden, PayloadTooLarge, Unauthorized, read_json

STATUS = {
    InvalidInput: 400, InvalidKey: 401, Unauthorized: 401, ServiceKeyMismatch: 403, ServerNotOnline: 403,
    Forbidden: 403, NotFound: 404, Conflict: 409, PayloadTooLarge: 413,
}
# Errors whose envelope carries a machine code (stacking.md: "errors that have a machine code").
CODED = (ServiceKeyMismatch, ServerNotOnline, Conflict, PayloadTooLarge)
OK = b'{"success":true}'


def error_response(exc: EngineError) -> JSON:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 500)
    body: dict = {"success": False, "message": exc.message}
    if isinstance(exc, CODED):
        body["code"] = exc.code
    return JSON(body, status_code=status)


def _engine(request: Request):
    return request.app.state.engine


def _caller(request: Request, stacking: bool = True) -> Caller:
    eng = _engine(request)
    caller = eng.servers.authenticate(request.headers.get("x-api-key"))
    request.state.caller = f"server:{caller.name or caller.id}"
    if stacking:
        eng.servers.authorize_stacking(caller)
    return caller


async def pull(request: Request) -> JSON:
    caller = _caller(request)
    raw = request.query_params.get("limit", "5")
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidInput("limit must be an integer between 1 and 1000") from None
    tasks = _engine(request).stacking.claim(caller.id, limit, request.query_params.get("status"))
    return JSON(b'{"success":true,"data":[' + b",".join(tasks) + b"]}")


async def get_task(request: Request) -> JSON:
    _caller(request)
    task = _engine(request).stacking.get_task(request.path_params["task_id"])
    return JSON(b'{"success":true,"data":' + task + b"}")


async def start(request: Request) -> JSON:
    caller = _caller(request)
    _engine(request).stacking.start(caller.id, request.path_params["task_id"])
    return JSON(OK)


async def complete(request: Request) -> JSON:
    caller = _caller(request)
    body = await read_json(request, required=False)
    _engine(request).stacking.complete(caller.id, request.path_params["task_id"],
                                       body.get("link_post"), body.get("note"))
    return JSON(OK)


async def fail(request: Request) -> JSON:
    caller = _caller(request)
    body = await read_json(request)
    _engine(request).stacking.fail(caller.id, request.path_params["task_id"],
                                   body.get("error_message"), body.get("note"))
    return JSON(OK)


async def connect_status(request: Request) -> JSON:
    caller = _caller(request)
    return JSON(_engine(request).stacking.connect_status(caller.id, request.path_params["folder_id"]))


async def missing_folder(request: Request) -> JSON:
    _caller(request)
    raise InvalidInput("folder_id is required in the path")


async def health(request: Request) -> JSON:
    caller = _caller(request, stacking=False)
    body = await read_json(request, required=False)
    eng = _engine(request)
    data = eng.servers.heartbeat(caller, body)
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
