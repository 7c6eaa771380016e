"""Operator endpoints (stacking.md "Operator side"), under ``/api/v1/admin``.

Auth: ``Authorization: Bearer <TASKHUB_ADMIN_TOKEN>``. Decided: with no token
configured, the admin API answers only clients on loopback, so a fresh install
works on one machine without exposing operator power to the network.
Same envelope as the stacking contract.
"""
from __future__ import annotations


from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from .http import JSON, MAX_BULK_BODY, read_json, require_bearer



def _operator(request: Request):
    eng = request.app.state.engine
    require_bearer(request, eng.core.settings.admin_token, "TASKHUB_ADMIN_TOKEN", "the admin API",
                   "invalid admin token")
    request.state.caller = "operator"
    return eng


async def create_server(request: Request) -> JSON:
    """Create a stacking server; its API key is returned once.
    ---
    auth: admin
    body: ServerCreate
    status: 201
    data: ServerCreated
    errors: [409]
    """
    eng = _operator(request)
    body = await read_json(request)
    created = eng.servers.create(body.get("name"), body.get("services"), body.get("max_threads", 10))
    return JSON({"success": True, "data": created}, status_code=201)


async def list_servers(request: Request) -> JSON:
    """Every server with its status, last heartbeat, active tasks and free slots.
    ---
    auth: admin
    data: {type: array, items: {$ref: Server}}
    """
    return JSON({"success": True, "data": _operator(request).servers.list()})


async def get_server(request: Request) -> JSON:
    """One server.
    ---
    auth: admin
    data: Server
    errors: [404]
    """
    return JSON({"success": True, "data": _operator(request).servers.get(request.path_params["server_id"])})


async def set_server_status(request: Request) -> JSON:
    """Set a server online, offline or in maintenance.
    ---
    auth: admin
    body: ServerStatusBody
    data: ServerStatusChange
    errors: [404]
    """
    eng = _operator(request)
    body = await read_json(request)
    sid = request.path_params["server_id"]
    previous = eng.servers.set_status(sid, body.get("status"))
    return JSON({"success": True, "data": {"id": sid, "status": body["status"], "previous": previous}})


async def delete_server(request: Request) -> JSON:
    """Delete a server: its key stops working at once.
    ---
    auth: admin
    errors: [404]
    """
    _operator(request).servers.delete(request.path_params["server_id"])
    return JSON({"success": True})


async def create_request(request: Request) -> JSON:
    """Import a stacking request with its folders and tasks in one call.
    Runs in a thread: a 100,000-task import is seconds of Python work, during which
    this process keeps serving workers (its Redis calls are short chunks anyway).
    ---
    auth: admin
    body: RequestCreate
    status: 201
    data: RequestCreated
    errors: [409]
    """
    eng = _operator(request)
    body = await read_json(request, limit=MAX_BULK_BODY)
    created = await run_in_threadpool(eng.stacking.create_request, body)
    return JSON({"success": True, "data": created}, status_code=201)


async def get_request(request: Request) -> JSON:
    """A request with its per-folder progress.
    ---
    auth: admin
    data: RequestView
    errors: [404]
    """
    return JSON({"success": True, "data": _operator(request).stacking.request(request.path_params["request_id"])})


async def cancel_request(request: Request) -> JSON:
    """Cancel every non-terminal task of a request.
    ---
    auth: admin
    data: Cancelled
    errors: [404]
    """
    n = _operator(request).stacking.cancel_request(request.path_params["request_id"])
    return JSON({"success": True, "data": {"cancelled": n}})


async def cancel_task(request: Request) -> JSON:
    """Cancel one non-terminal task.
    ---
    auth: admin
    errors: [404, 409]
    """
    _operator(request).stacking.cancel_task(request.path_params["task_id"])
    return JSON({"success": True})


async def release_folder(request: Request) -> JSON:
    """Release a folder's server binding.
    ---
    auth: admin
    data: Released
    errors: [404]
    """
    released = _operator(request).stacking.release_folder(request.path_params["folder_id"])
    return JSON({"success": True, "data": {"released": released}})


async def stats(request: Request) -> JSON:
    """Task counts by status over every stacking task (O(1): one counters hash).
    ---
    auth: admin
    data: StackingStats
    """
    return JSON({"success": True, "data": _operator(request).stacking.stats()})


BULK_PREFIXES = ("/api/v1/admin/stacking/requests",)
routes = [
    Route("/api/v1/admin/servers", create_server, methods=["POST"]),
    Route("/api/v1/admin/servers", list_servers, methods=["GET"]),
    Route("/api/v1/admin/servers/{server_id}", get_server, methods=["GET"]),
    Route("/api/v1/admin/servers/{server_id}", delete_server, methods=["DELETE"]),
    Route("/api/v1/admin/servers/{server_id}/status", set_server_status, methods=["POST"]),
    Route("/api/v1/admin/stacking/stats", stats, methods=["GET"]),
    Route("/api/v1/admin/stacking/requests", create_request, methods=["POST"]),
    Route("/api/v1/admin/stacking/requests/{request_id}", get_request, methods=["GET"]),
    Route("/api/v1/admin/stacking/requests/{request_id}/cancel", cancel_request, methods=["POST"]),
    Route("/api/v1/admin/stacking/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/api/v1/admin/stacking/folders/{folder_id}/release", release_folder, methods=["POST"]),
]
