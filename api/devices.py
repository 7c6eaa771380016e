"""The device task API (device-tasks.md, seed 001) and its agent side: routes and envelope.

Envelope: ``{"code": <int>, "message": <string>, "data": <any>}``; success is
code 0 / "success". Each engine error maps to a business code and an HTTP
status in ``CODES`` (the spec's pairing), never inside a route body.

Auth (decided by the spec): with ``TASKHUB_DEVICE_TOKEN`` set every call needs
``Authorization: Bearer <token>`` (else 401 / 40101); unset, only loopback
clients are answered (403 / 40301 with a message saying why). The plan check
(``starter`` -> 40301) comes next, then the body. Every handler: check, parse,
one engine ``Call`` awaited through the process's batcher, render.
"""
from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from engine.device_scripts import MissingScriptName, NoAccount, ScriptNotAllowed
from engine.calls import Rounds
from engine.devices import Devices, PlanRefused
from engine.errors import Conflict, EngineError, Forbidden, InvalidInput, NotFound, Unavailable

from .http import JSON, PayloadTooLarge, Unauthorized, read_json, require_bearer
from .metrics import observe_claims

PREFIXES = ("/api/v1/task", "/api/v1/license/", "/api/v1/agent/")
# Most specific first: an error is an instance of its class and of its bases.
CODES: tuple[tuple[type, int, int], ...] = (
    (MissingScriptName, 40002, 400), (ScriptNotAllowed, 40003, 400), (NoAccount, 40004, 400),
    (InvalidInput, 40001, 400), (PayloadTooLarge, 40001, 413), (Unauthorized, 40101, 401),
    (PlanRefused, 40301, 403), (Forbidden, 40301, 403), (NotFound, 40401, 404), (Conflict, 40901, 409),
    (Unavailable, 50301, 503),
)


def error_response(exc: EngineError) -> JSON:
    code, status = next(((c, s) for cls, c, s in CODES if isinstance(exc, cls)), (50001, 500))
    return JSON({"code": code, "message": exc.message, "data": None}, status_code=status)


def ok(data: Any) -> JSON:
    return JSON({"code": 0, "message": "success", "data": data})


def _devices(request: Request) -> Devices:
    """Authenticate, then check the plan; returns the engine's device contract."""
    devices: Devices = request.app.state.engine.devices
    require_bearer(request, devices.s.device_token, "TASKHUB_DEVICE_TOKEN", "the device API",
                   "missing or invalid bearer token (Authorization: Bearer <TASKHUB_DEVICE_TOKEN>)")
    devices.require_api()
    request.state.caller = "device-api"
    return devices


async def _run(request: Request, call: Any) -> Any:
    """A ``Call`` joins the process's batcher; so does each round of ``Rounds`` (several round
    trips: only with shards)."""
    if isinstance(call, Rounds):
        return await call.run_async(request.app.state.device_batch.run)
    return await request.app.state.device_batch.run(call)


# ---- tasks -------------------------------------------------------------------
async def create_task(request: Request) -> JSON:
    """Create device tasks (one per device, target or account, as the script fans out).
    ---
    auth: device
    body: DeviceTaskCreate
    body_required: false
    data: DeviceTasksCreated
    """
    devices = _devices(request)
    body = await read_json(request, required=False)
    return ok(await _run(request, devices.create_call(body, "api")))


async def list_tasks(request: Request) -> JSON:
    """Device tasks, newest first, filtered and paged.
    ---
    auth: device
    query:
      status: {enum: ['0', '1', '2', '3']}
      serial: {type: string}
      script_name: {type: string}
      source: {enum: [api, ui]}
      page: {type: integer, minimum: 1}
      page_size: {type: integer, minimum: 1, maximum: 100}
    data: DeviceTaskPage
    errors: [400]
    """
    devices = _devices(request)
    return ok(await _run(request, devices.list_call(dict(request.query_params))))


async def stats(request: Request) -> JSON:
    """Task counts by status (O(1): counters).
    ---
    auth: device
    data: DeviceStats
    """
    devices = _devices(request)
    return ok(await _run(request, devices.stats_call()))


async def get_task(request: Request) -> JSON:
    """One device task.
    ---
    auth: device
    data: DeviceTask
    errors: [400, 404]
    """
    devices = _devices(request)
    return ok(await _run(request, devices.get_call(request.path_params["task_id"])))


async def delete_task(request: Request) -> JSON:
    """Delete a task (a running one is stopped first).
    ---
    auth: device
    data: Deleted
    errors: [400, 404]
    """
    devices = _devices(request)
    return ok(await _run(request, devices.delete_one_call(request.path_params["task_id"])))


async def delete_batch(request: Request) -> JSON:
    """Delete several tasks (running ones are stopped first).
    ---
    auth: device
    body: BatchDelete
    data: BatchDeleted
    """
    devices = _devices(request)
    body = await read_json(request)
    return ok(await _run(request, devices.delete_call(body.get("task_ids"))))


async def stop_task(request: Request) -> JSON:
    """Stop a pending or running task: it becomes failed with remark "stopped".
    ---
    auth: device
    data: DeviceTaskState
    errors: [400, 404, 409]
    """
    devices = _devices(request)
    return ok(await _run(request, devices.stop_call(request.path_params["task_id"])))


async def retry_task(request: Request) -> JSON:
    """Put a failed task back to pending (retry_count + 1).
    ---
    auth: device
    data: DeviceTaskState
    errors: [400, 404, 409]
    """
    devices = _devices(request)
    return ok(await _run(request, devices.retry_call(request.path_params["task_id"])))


async def retry_all(request: Request) -> JSON:
    """Retry every failed task still below the retry limit.
    ---
    auth: device
    data: Retried
    """
    devices = _devices(request)
    return ok(await run_in_threadpool(devices.retry_all))


async def license_check(request: Request) -> JSON:
    """The plan and what it allows.
    ---
    auth: device
    data: License
    """
    devices = _devices(request)
    return ok(devices.license())


# ---- agent side ----------------------------------------------------------------
async def agent_heartbeat(request: Request) -> JSON:
    """An agent's heartbeat: registers its devices and accounts; lists tasks it must stop.
    ---
    auth: device
    body: AgentHeartbeat
    data: AgentHeartbeatReply
    """
    devices = _devices(request)
    body = await read_json(request)
    return ok(await _run(request, devices.heartbeat_call(body)))


async def agent_claim(request: Request) -> JSON:
    """Claim the oldest due pending task of each listed idle device.
    ---
    auth: device
    body: AgentClaim
    data: AgentClaimed
    """
    devices = _devices(request)
    body = await read_json(request)
    claimed = await _run(request, devices.claim_call(body))
    observe_claims("devices", len(claimed["tasks"]))
    return ok(claimed)


def _agent_finish(ok_: bool):
    """complete (ok_) or fail: the same handler but for the outcome."""

    async def handler(request: Request) -> JSON:
        devices = _devices(request)
        body = await read_json(request, required=False)
        return ok(await _run(request, devices.finish_call(request.path_params["task_id"], body, ok=ok_)))

    handler.__doc__ = f"""{"Complete" if ok_ else "Fail"} the agent's running task (status {2 if ok_ else 3}).
    ---
    auth: device
    body: AgentFinish
    body_required: false
    data: AgentFinished
    errors: [400, 404, 409]
    """
    return handler


routes = [
    Route("/api/v1/task", create_task, methods=["POST"]),
    Route("/api/v1/task", list_tasks, methods=["GET"]),
    Route("/api/v1/task/stats", stats, methods=["GET"]),
    Route("/api/v1/task/batch", delete_batch, methods=["DELETE"]),
    Route("/api/v1/task/retry-all", retry_all, methods=["POST"]),
    Route("/api/v1/task/{task_id}", get_task, methods=["GET"]),
    Route("/api/v1/task/{task_id}", delete_task, methods=["DELETE"]),
    Route("/api/v1/task/{task_id}/stop", stop_task, methods=["POST"]),
    Route("/api/v1/task/{task_id}/retry", retry_task, methods=["POST"]),
    Route("/api/v1/license/check", license_check, methods=["GET"]),
    Route("/api/v1/agent/heartbeat", agent_heartbeat, methods=["POST"]),
    Route("/api/v1/agent/claim", agent_claim, methods=["POST"]),
    Route("/api/v1/agent/task/{task_id}/complete", _agent_finish(True), methods=["POST"]),
    Route("/api/v1/agent/task/{task_id}/fail", _agent_finish(False), methods=["POST"]),
]
