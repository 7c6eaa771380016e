"""The task center API (task-center.md, seed 002): platform-facing ``/suno/...``, the
management ``/api/user/self`` and ``/api/task/...``, and the operators' endpoints.

Two envelopes, as the clients already speak them:

- ``/suno/...`` (API token ``Authorization: Bearer sk-...``):
  ``{"code": "success" | <error code>, "message": ..., "data": ...}``;
- ``/api/user/...`` and ``/api/task...`` (access token + ``New-Api-User``):
  ``{"success": bool, "message": ..., "data"?: ...}``. A storage failure on a
  task list is a 500 ``"failed to get task list"`` (the spec's wording; it
  also carries ``Retry-After: 1``).

Operators manage users, tokens, channels and prices under ``/api/v1/admin/``
(``TASKHUB_ADMIN_TOKEN``, loopback only when unset, stacking's admin envelope).
Every handler: authenticate, parse, one engine call, render; no rule lives here.
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from engine.calls import Call, Rounds
from engine.errors import EngineError, Forbidden, InvalidInput, NotFound, Unavailable
from engine.taskcenter import NotSignedIn, TaskCenter, bearer_value

from .admin import _operator
from .http import JSON, PayloadTooLarge, read_json

log = logging.getLogger("taskhub.api")

SUNO_PREFIX = "/suno/"
MANAGEMENT_PREFIXES = ("/api/user/", "/api/task")
ADMIN_ROLE, USER_ROLE = 10, 1


# ---- envelopes -------------------------------------------------------------------------
def suno_error(exc: EngineError) -> JSON:
    if isinstance(exc, (InvalidInput,)):
        status, code = 400, "invalid_request"
    elif isinstance(exc, PayloadTooLarge):
        status, code = 413, "payload_too_large"
    elif isinstance(exc, NotSignedIn):
        status, code = 401, "unauthorized"
    elif isinstance(exc, Forbidden):
        status, code = 403, exc.code
    elif isinstance(exc, NotFound):
        status, code = 404, "task_not_exist"
    elif isinstance(exc, Unavailable):
        status, code = 503, "unavailable"
    else:
        status, code = 500, "internal_error"
    return JSON({"code": code, "message": exc.message, "data": None}, status_code=status)


class ListFailed(EngineError):
    code = "list_failed"


MANAGEMENT_STATUS = ((InvalidInput, 400), (PayloadTooLarge, 413), (NotSignedIn, 401), (Forbidden, 403),
                     (NotFound, 404), (Unavailable, 503), (ListFailed, 500))


def management_error(exc: EngineError) -> JSON:
    status = next((s for cls, s in MANAGEMENT_STATUS if isinstance(exc, cls)), 500)
    response = JSON({"success": False, "message": exc.message}, status_code=status)
    if isinstance(exc, ListFailed):
        response.headers["Retry-After"] = "1"
    return response


def _ok_suno(data: Any) -> JSON:
    return JSON({"code": "success", "message": "", "data": data})


def _ok(data: Any) -> JSON:
    return JSON({"success": True, "message": "", "data": data})


def _tasks(request: Request) -> TaskCenter:
    return request.app.state.engine.tasks


async def _run(request: Request, call: Call) -> Any:
    return await request.app.state.tasks_batch.run(call)


def _api_token(request: Request) -> str:
    given = bearer_value(request.headers.get("authorization"))
    if not given:
        raise NotSignedIn("an API token is required: Authorization: Bearer sk-...")
    request.state.caller = "api-token"
    return given


# ---- platform-facing -------------------------------------------------------------------
async def submit(request: Request) -> JSON:
    """Submit a platform task: the price is charged at once, the task id returned at once.
    ---
    auth: api_token
    path:
      action: {description: "music or lyrics, case-insensitive (stored upper-case)"}
    body: SubmitBody
    body_required: false
    data: {type: string, description: the task's public id (task_...)}
    errors: [404]
    """
    tasks = _tasks(request)
    token = _api_token(request)
    body = await read_json(request, required=False)
    result = await _run(request, tasks.submit_call(token, "suno", request.path_params["action"], body))
    request.state.caller = f"task:{result['id']}"
    if result["kick"]:
        _kick_submitter(request)
    return _ok_suno(result["task_id"])


def _kick_submitter(request: Request) -> None:
    """The queue was empty: start a submit job now rather than at the next periodic one.
    Best effort: if it cannot be enqueued, the periodic job submits the task."""
    try:
        from workers.jobs import enqueue_submit

        enqueue_submit(request.app.state.engine.rq_client())
    except Exception as exc:  # noqa: BLE001 - the periodic job covers it
        log.warning("could not enqueue the submit job (the periodic one will submit): %s", exc)


async def fetch_one(request: Request) -> JSON:
    """One of the caller's tasks.
    ---
    auth: api_token
    data: CenterTask
    errors: [400, 404]
    """
    tasks = _tasks(request)
    token = _api_token(request)
    return _ok_suno(await _run(request, tasks.fetch_call(token, request.path_params["task_id"], many=False)))


async def fetch_many(request: Request) -> JSON:
    """Several of the caller's tasks (unknown or another user's ids are left out).
    ---
    auth: api_token
    body: FetchBody
    data: {type: array, items: {$ref: CenterTask}}
    """
    tasks = _tasks(request)
    token = _api_token(request)
    body = await read_json(request)
    return _ok_suno(await _run(request, tasks.fetch_call(token, body.get("ids"), many=True)))


# ---- management (access token + New-Api-User) -------------------------------------------
async def _user(request: Request, min_role: int) -> dict:
    tasks = _tasks(request)
    call = tasks.whoami_call(request.headers.get("authorization"), request.headers.get("new-api-user"), min_role)
    user = await _run(request, call)
    request.state.caller = f"user:{user['id']}"
    return user


async def user_self(request: Request) -> JSON:
    """The caller's own account, so a user can see a charge and its refund.
    ---
    auth: access_token
    data: User
    """
    return _ok(await _user(request, USER_ROLE))


async def _list(request: Request, call: Call | Rounds) -> JSON:
    """One page: a ``Call`` joins the batcher; ``Rounds`` (an admin list merged over shards) sends
    each of its rounds through the batcher in turn."""
    try:
        if isinstance(call, Rounds):
            return _ok(await call.run_async(lambda step: _run(request, step)))
        return _ok(await _run(request, call))
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        log.warning("task list failed: %s: %s", type(exc).__name__, exc)
        raise ListFailed("failed to get task list") from None


async def task_self(request: Request) -> JSON:
    """The caller's tasks, newest first, filtered and paged.
    ---
    auth: access_token
    query:
      p: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      page_size: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      platform: {type: string}
      task_id: {type: string}
      status: {enum: [NOT_START, SUBMITTED, QUEUED, IN_PROGRESS, SUCCESS, FAILURE, UNKNOWN]}
      action: {type: string}
      start_timestamp: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      end_timestamp: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
    data: CenterTaskPage
    errors: [400, 500]
    """
    user = await _user(request, USER_ROLE)
    return await _list(request, _tasks(request).list_call(dict(request.query_params), user["id"], admin=False))


async def task_all(request: Request) -> JSON:
    """Every user's tasks (role >= 10), newest first, filtered and paged.
    ---
    auth: access_token
    query:
      p: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      page_size: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      platform: {type: string}
      task_id: {type: string}
      status: {enum: [NOT_START, SUBMITTED, QUEUED, IN_PROGRESS, SUCCESS, FAILURE, UNKNOWN]}
      action: {type: string}
      start_timestamp: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      end_timestamp: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      channel_id: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
      user_id: {type: integer, minimum: -9007199254740992, maximum: 9007199254740992}
    data: CenterTaskAdminPage
    errors: [400, 500]
    """
    await _user(request, ADMIN_ROLE)
    return await _list(request, _tasks(request).list_call(dict(request.query_params), None, admin=True))


# ---- operators ------------------------------------------------------------------------------
def _admin_ok(data: Any, status: int = 200) -> JSON:
    return JSON({"success": True, "data": data}, status_code=status)


def _field(body: dict, name: str, kind: type, default: Any = None, required: bool = False) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise InvalidInput(f"{name} is required")
        return default
    value = body[name]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput(f"{name} must be an integer")
    if kind is not int and not isinstance(value, kind):
        raise InvalidInput(f"{name} must be a {kind.__name__}")
    return value


async def create_user(request: Request) -> JSON:
    """Create a task-center user with an access token and a first API token (both shown once).
    ---
    auth: admin
    body: UserCreate
    status: 201
    data: UserCreated
    errors: [409]
    """
    eng = _operator(request)
    body = await read_json(request)
    created = eng.tasks.create_user(_field(body, "name", str, required=True), _field(body, "quota", int, 0),
                                    _field(body, "role", str, "common"))
    return _admin_ok(created, 201)


async def list_users(request: Request) -> JSON:
    """Every task-center user.
    ---
    auth: admin
    data: {type: array, items: {$ref: User}}
    """
    return _admin_ok(await run_in_threadpool(_operator(request).tasks.users))


async def get_user(request: Request) -> JSON:
    """One user.
    ---
    auth: admin
    data: User
    errors: [404]
    """
    return _admin_ok(_operator(request).tasks.user(request.path_params["user_id"]))


async def update_user(request: Request) -> JSON:
    """Enable or disable a user, or change its role.
    ---
    auth: admin
    body: UserUpdate
    data: User
    errors: [404]
    """
    eng = _operator(request)
    body = await read_json(request)
    uid = request.path_params["user_id"]
    eng.tasks.set_user(uid, _field(body, "status", str), _field(body, "role", str))
    return _admin_ok(eng.tasks.user(uid))


async def grant_quota(request: Request) -> JSON:
    """Add quota to a user (negative: take back).
    ---
    auth: admin
    body: QuotaGrant
    data: QuotaGranted
    errors: [404, 409]
    """
    eng = _operator(request)
    body = await read_json(request)
    quota = eng.tasks.grant(request.path_params["user_id"], _field(body, "amount", int, required=True))
    return _admin_ok({"user_id": int(request.path_params["user_id"]), "quota": quota})


async def create_token(request: Request) -> JSON:
    """Another API token for a user, optionally with its own quota.
    ---
    auth: admin
    body: TokenCreate
    body_required: false
    status: 201
    data: TokenCreated
    errors: [404]
    """
    eng = _operator(request)
    body = await read_json(request, required=False)
    created = eng.tasks.create_token(request.path_params["user_id"], _field(body, "name", str, ""),
                                     _field(body, "quota", int))
    return _admin_ok(created, 201)


async def list_channels(request: Request) -> JSON:
    """Every upstream channel (keys are never shown).
    ---
    auth: admin
    data: {type: array, items: {$ref: Channel}}
    """
    return _admin_ok(_operator(request).tasks.channel_views())


async def add_channel(request: Request) -> JSON:
    """Add an upstream channel.
    ---
    auth: admin
    body: ChannelCreate
    status: 201
    data: ChannelId
    """
    eng = _operator(request)
    body = await read_json(request)
    status = _field(body, "status", str, "enabled")
    if status not in ("enabled", "disabled"):
        raise InvalidInput("status must be 'enabled' or 'disabled'")
    cid = eng.tasks.add_channel(_field(body, "platform", str, required=True), _field(body, "base_url", str,
                                required=True), _field(body, "key", str, ""), _field(body, "weight", int, 1),
                                status == "enabled", _field(body, "name", str, ""))
    return _admin_ok({"id": cid}, 201)


async def update_channel(request: Request) -> JSON:
    """Change a channel's status, weight, base URL or key.
    ---
    auth: admin
    body: ChannelUpdate
    data: ChannelId
    errors: [404]
    """
    eng = _operator(request)
    body = await read_json(request)
    status = _field(body, "status", str)
    if status not in (None, "enabled", "disabled"):
        raise InvalidInput("status must be 'enabled' or 'disabled'")
    eng.tasks.set_channel(request.path_params["channel_id"], None if status is None else status == "enabled",
                          _field(body, "weight", int), _field(body, "base_url", str), _field(body, "key", str))
    return _admin_ok({"id": int(request.path_params["channel_id"])})


async def delete_channel(request: Request) -> JSON:
    """Delete a channel (its unfinished tasks are refunded by the sweep).
    ---
    auth: admin
    data: ChannelId
    errors: [404]
    """
    _operator(request).tasks.delete_channel(request.path_params["channel_id"])
    return _admin_ok({"id": int(request.path_params["channel_id"])})


async def get_prices(request: Request) -> JSON:
    """The quota price of each platform action.
    ---
    auth: admin
    data: Prices
    """
    return _admin_ok(_operator(request).tasks.prices())


async def set_price(request: Request) -> JSON:
    """Set the quota price of a platform action.
    ---
    auth: admin
    body: PriceSet
    data: Prices
    """
    eng = _operator(request)
    body = await read_json(request)
    eng.tasks.set_price(_field(body, "platform", str, required=True), _field(body, "action", str, required=True),
                        _field(body, "quota", int, required=True))
    return _admin_ok(eng.tasks.prices())


async def audit(request: Request) -> JSON:
    """Prove every balance equals its grants minus the ledger.
    ---
    auth: admin
    data: Audit
    """
    rows = await run_in_threadpool(_operator(request).tasks.audit)
    return _admin_ok({"ok": all(r["ok"] for r in rows), "users": rows})


routes = [
    Route("/suno/submit/{action}", submit, methods=["POST"]),
    Route("/suno/fetch/{task_id}", fetch_one, methods=["GET"]),
    Route("/suno/fetch", fetch_many, methods=["POST"]),
    Route("/api/user/self", user_self, methods=["GET"]),
    Route("/api/task/self", task_self, methods=["GET"]),
    Route("/api/task/", task_all, methods=["GET"]),
    Route("/api/task", task_all, methods=["GET"]),
    Route("/api/v1/admin/users", create_user, methods=["POST"]),
    Route("/api/v1/admin/users", list_users, methods=["GET"]),
    Route("/api/v1/admin/users/{user_id:int}", get_user, methods=["GET"]),
    Route("/api/v1/admin/users/{user_id:int}", update_user, methods=["PATCH"]),
    Route("/api/v1/admin/users/{user_id:int}/quota", grant_quota, methods=["POST"]),
    Route("/api/v1/admin/users/{user_id:int}/tokens", create_token, methods=["POST"]),
    Route("/api/v1/admin/channels", list_channels, methods=["GET"]),
    Route("/api/v1/admin/channels", add_channel, methods=["POST"]),
    Route("/api/v1/admin/channels/{channel_id:int}", update_channel, methods=["PATCH"]),
    Route("/api/v1/admin/channels/{channel_id:int}", delete_channel, methods=["DELETE"]),
    Route("/api/v1/admin/prices", get_prices, methods=["GET"]),
    Route("/api/v1/admin/prices", set_price, methods=["PUT"]),
    Route("/api/v1/admin/quota/audit", audit, methods=["GET"]),
]
