"""Component schemas of the OpenAPI document (api/openapi.py): the objects the three contracts
exchange, written once and referenced by name from the handlers' docstrings.

Only the *shapes* live here. Which operation uses which schema is said next to the
handler (the YAML after ``---`` in its docstring), and the error envelopes are built
by api/openapi.py from each contract's own error table, so neither is restated here.
Response objects list the fields the engine always renders as ``required`` and leave
``additionalProperties`` open (a new field is not a breaking change); request bodies
are open too, because every handler ignores unknown fields.
"""
from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
NUM: Schema = {"type": "number"}
ANY_OBJ: Schema = {"type": "object"}
STR_LIST: Schema = {"type": "array", "items": STR}
INT_LIST: Schema = {"type": "array", "items": INT}
NULLABLE_STR: Schema = {"type": ["string", "null"]}
COUNTS: Schema = {"type": "object", "additionalProperties": INT}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] | list[str] = (), **properties: Schema) -> Schema:
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def all_required(**properties: Schema) -> Schema:
    return obj(tuple(properties), **properties)


# ---- stacking (stacking.md) -----------------------------------------------------------------
STACKING_STATUSES = ["pending", "queued", "running", "register", "registering", "profile_failed", "profiled",
                     "connect", "connecting", "connect_failed", "completed", "final_failed", "cancel"]
METRIC = {"type": "number", "minimum": 0, "maximum": 1_000_000}
COUNT = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
SHORT = {"type": "string", "maxLength": 200}
HTTPS = {"type": "string", "pattern": "^https://", "maxLength": 2048}
NAMES = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1, "maxLength": 128}}

STACKING = {
    "StackingTask": obj(
        ("id", "request_id", "status", "domain", "website", "title", "about", "phone", "address", "location",
         "image_url", "folder_id", "link_post"),
        id=STR, request_id=STR, status={"enum": STACKING_STATUSES}, domain=STR, website=STR, title=STR, about=STR,
        phone=STR, address=STR, location=STR, image_url=STR, folder_id=STR, link_post=STR,
        connect_links=STR_LIST),
    "CompleteBody": obj(link_post={**HTTPS, "description": "required in phase 1"}, note=STR),
    "FailBody": obj(("error_message",), error_message={**STR, "maxLength": 1000}, note=STR),
    "ConnectStatus": all_required(success={"const": True}, folder_id=STR, ready=BOOL, total_tasks=INT,
                                  phase1_active=INT, profiled=INT, connect_count=INT, by_status=COUNTS),
    "Heartbeat": obj(server_name=SHORT, ip=SHORT, cpu_usage=METRIC, ram_usage=METRIC, disk_usage=METRIC,
                     active_threads=COUNT, active_tasks=COUNT),
    "HeartbeatReply": all_required(status={"const": "ok"}, server_id=STR, server_name=STR,
                                   server_time={**STR, "format": "date-time"}),
}

# ---- operators of stacking (admin.py) ---------------------------------------------------------
SERVER_STATUS = {"enum": ["online", "offline", "maintenance"]}
SERVICES = {"type": "array", "items": STR, "minItems": 1}
NEW_TASK = obj(("domain", "title"), domain={"enum": ["docs.google.com", "slides.google.com", "sheets.google.com"]},
               title=STR, about=STR, phone=STR, address=STR, location=STR, image_url=STR)
FOLDER_VIEW = obj(("folder_id", "server_id", "phase", "total_tasks", "by_status"), folder_id=STR,
                  server_id=NULLABLE_STR, phase=INT, total_tasks=INT, phase1_active=INT, open=INT,
                  by_status=COUNTS)

ADMIN = {
    "ServerCreate": obj(("name",), name={**STR, "minLength": 1, "maxLength": 200}, services=SERVICES,
                        max_threads={**INT, "minimum": 1}),
    "ServerCreated": all_required(id=STR, name=STR, services=STR_LIST, max_threads=INT,
                                  api_key={**STR, "description": "shown only here; stored as a hash"}),
    "Server": obj(("id", "name", "services", "status", "max_threads", "active_tasks", "free_slots"), id=STR,
                  name=STR, services=STR_LIST, status={"enum": ["online", "offline", "maintenance", "deleted"]},
                  online=BOOL, last_heartbeat_ms={"type": ["integer", "null"]}, max_threads=INT, active_tasks=INT,
                  free_slots=INT, metrics=ANY_OBJ),
    "ServerStatusBody": all_required(status=SERVER_STATUS),
    "ServerStatusChange": all_required(id=STR, status=SERVER_STATUS, previous=STR),
    "RequestCreate": obj(("website", "folders"), website=HTTPS,
                         stacking_mode={"enum": ["chain", "ring", "all", "wheel", "disable"]},
                         max_retries={**INT, "minimum": 0},
                         folders={"type": "array", "minItems": 1, "items": obj(
                             ("folder_id", "tasks"), folder_id={**STR, "minLength": 1},
                             tasks={"type": "array", "minItems": 1, "items": NEW_TASK})}),
    "RequestCreated": all_required(request_id=STR, folders=INT, tasks=INT),
    "RequestView": obj(("id", "status", "website", "stacking_mode", "total_tasks", "by_status", "folders"),
                       id=STR, status=STR, website=STR, stacking_mode=STR, max_retries=INT, total_tasks=INT,
                       open_tasks=INT, progress=NUM, by_status=COUNTS,
                       folders={"type": "array", "items": FOLDER_VIEW}),
    "Cancelled": all_required(cancelled=INT),
    "Released": all_required(released=BOOL),
    "StackingStats": COUNTS,
}

# ---- device tasks (device-tasks.md) ---------------------------------------------------------------
DEVICE_TASK = obj(
    ("id", "serial", "username", "script_name", "script_config", "status", "source", "enable_multi_account",
     "start_time", "started_at", "finished_at", "remark", "retry_count", "created_at"),
    id=INT, serial=STR, username=NULLABLE_STR, script_name=STR, script_config=ANY_OBJ,
    status={"enum": [0, 1, 2, 3], "description": "0 pending, 1 running, 2 completed, 3 failed"},
    source={"enum": ["api", "ui"]}, enable_multi_account=BOOL, start_time=NULLABLE_STR, started_at=NULLABLE_STR,
    finished_at=NULLABLE_STR, remark=STR, retry_count=INT, created_at=STR)

DEVICES = {
    "DeviceTask": DEVICE_TASK,
    "DeviceTaskCreate": {"oneOf": [{"required": ["serials"], "not": {"required": ["usernames"]}},
                                   {"required": ["usernames"], "not": {"required": ["serials"]}}]} | obj(
        ("script_name", "script_config"), serials=NAMES, usernames=NAMES,
        script_name={"enum": ["post", "follow", "unfollow", "comment", "account_warmup", "login", "profile",
                              "match_accounts"]},
        script_config=ANY_OBJ, enable_multi_account=BOOL,
        start_time={**STR, "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description": "HH:MM in TASKHUB_TZ"}),
    "DeviceTasksCreated": all_required(task_ids=INT_LIST, created_count=INT),
    "DeviceTaskPage": all_required(items={"type": "array", "items": ref("DeviceTask")}, total=INT, page=INT,
                                   page_size=INT),
    "DeviceStats": all_required(total=INT, pending=INT, running=INT, completed=INT, failed=INT),
    "Deleted": all_required(deleted=INT),
    "BatchDelete": all_required(task_ids={"type": "array", "minItems": 1,
                                          "items": {"type": "integer", "minimum": 1, "maximum": 2**53}}),
    "BatchDeleted": all_required(deleted=INT, not_found={"type": "array"}),
    "Retried": all_required(retried=INT),
    "License": all_required(plan_name=STR, api_enabled=BOOL, device_limit=INT, message=STR),
    "AgentHeartbeat": obj(("serials",), serials=NAMES,
                          accounts={"type": "object", "additionalProperties": STR_LIST,
                                    "propertyNames": {"minLength": 1, "maxLength": 128}}),
    "AgentHeartbeatReply": obj(("stop",), stop=INT_LIST, running=ANY_OBJ),
    "AgentClaim": obj(("serials",), serials=NAMES, limit={**INT, "minimum": 1, "maximum": 1000}),
    "AgentClaimed": all_required(tasks={"type": "array", "items": ref("DeviceTask")}),
    "AgentFinish": obj(remark=STR),
    "AgentFinished": all_required(task_id=INT, status={"enum": [2, 3]}),
    "DeviceTaskState": all_required(task_id=INT, status={"enum": [0, 1, 2, 3]}),
}

# ---- task center (task-center.md) -------------------------------------------------------------------
CENTER_STATUSES = ["NOT_START", "SUBMITTED", "QUEUED", "IN_PROGRESS", "SUCCESS", "FAILURE", "UNKNOWN"]
CENTER_TASK_FIELDS = dict(
    id=INT, created_at=INT, updated_at=INT, task_id=STR, platform=STR, user_id=INT, quota=INT, action=STR,
    status={"enum": CENTER_STATUSES}, fail_reason=STR, submit_time=INT, start_time=INT, finish_time=INT,
    progress={**STR, "pattern": "^[0-9]{1,3}%$"}, properties={}, data={})
QUOTA = {"type": "integer", "minimum": 0, "maximum": 10**15}
USER_VIEW = all_required(id=INT, username=STR, role={"enum": [1, 10, 100]}, status={"enum": [1, 2]}, quota=INT,
                         used_quota=INT)


def page_of(item: str) -> Schema:
    return all_required(items={"type": "array", "items": ref(item)}, total=INT, page=INT, page_size=INT)


TASK_CENTER = {
    "CenterTask": obj(tuple(CENTER_TASK_FIELDS), **CENTER_TASK_FIELDS),
    "CenterTaskAdmin": obj((*CENTER_TASK_FIELDS, "channel_id", "username"), **CENTER_TASK_FIELDS,
                           channel_id=INT, username=STR),
    "CenterTaskPage": page_of("CenterTask"),
    "CenterTaskAdminPage": page_of("CenterTaskAdmin"),
    "SubmitBody": {"type": "object", "description": "passed through to the platform as is"},
    "FetchBody": all_required(ids={"type": "array", "items": STR}),
    "User": USER_VIEW,
    "UserCreate": obj(("name",), name={**STR, "minLength": 1}, quota=QUOTA,
                      role={"enum": ["common", "admin", "root"]}),
    "UserCreated": all_required(id=INT, access_token=STR, api_key=STR),
    "UserUpdate": {**obj(status={"enum": ["enabled", "disabled"]}, role={"enum": ["common", "admin", "root"]}),
                   "anyOf": [{"required": ["status"]}, {"required": ["role"]}]},
    "QuotaGrant": all_required(amount={**INT, "not": {"const": 0}, "minimum": -10**15, "maximum": 10**15}),
    "QuotaGranted": all_required(user_id=INT, quota=INT),
    "TokenCreate": obj(name=STR, quota={**QUOTA, "type": ["integer", "null"]}),
    "TokenCreated": all_required(user_id=INT, api_key=STR, quota={"type": ["integer", "null"]}),
    "Channel": obj(("id", "platform", "base_url", "weight", "status"), id=INT, platform=STR, base_url=STR,
                   weight=INT, status={"enum": ["enabled", "disabled"]}, name=STR),
    "ChannelCreate": obj(("platform", "base_url"), platform={"enum": ["suno"]},
                         base_url={**STR, "pattern": "^https?://"}, key=STR,
                         weight={**INT, "minimum": 0, "maximum": 10_000}, status={"enum": ["enabled", "disabled"]},
                         name=STR),
    "ChannelUpdate": {**obj(status={"enum": ["enabled", "disabled"]}, weight={**INT, "minimum": 0, "maximum": 10_000},
                            base_url={**STR, "pattern": "^https?://"}, key=STR),
                      "anyOf": [{"required": [name]} for name in ("status", "weight", "base_url", "key")]},
    "ChannelId": all_required(id=INT),
    "Prices": {"type": "object", "additionalProperties": INT,
               "description": "quota per '<platform>:<ACTION>'"},
    "PriceSet": all_required(platform={"enum": ["suno"]}, action={"enum": ["MUSIC", "LYRICS"]},
                             quota=QUOTA),
    "Audit": all_required(ok=BOOL, users={"type": "array", "items": obj(("user_id", "ok"), user_id=INT, ok=BOOL,
                                                                         problems=STR_LIST)}),
}

SCHEMAS: dict[str, Schema] = {**STACKING, **ADMIN, **DEVICES, **TASK_CENTER}

SECURITY_SCHEMES: dict[str, Schema] = {
    "serverKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                  "description": "a stacking server's API key (returned once when the operator creates it)"},
    "adminToken": {"type": "http", "scheme": "bearer",
                   "description": "TASKHUB_ADMIN_TOKEN; with none configured, loopback clients only"},
    "deviceToken": {"type": "http", "scheme": "bearer",
                    "description": "TASKHUB_DEVICE_TOKEN; with none configured, loopback clients only"},
    "apiToken": {"type": "http", "scheme": "bearer", "description": "a task-center user's API token (sk-...)"},
    "accessToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "a task-center user's access token ('Bearer ' prefix optional)"},
    "apiUser": {"type": "apiKey", "in": "header", "name": "New-Api-User",
                "description": "the numeric id of the access token's user"},
}
# The YAML of a handler names one of these; the task center's management API needs both headers.
SECURITY: dict[str, list[dict[str, list]]] = {
    "server": [{"serverKey": []}], "admin": [{"adminToken": []}], "device": [{"deviceToken": []}],
    "api_token": [{"apiToken": []}], "access_token": [{"accessToken": [], "apiUser": []}],
}
