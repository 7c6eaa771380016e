"""Device tasks: scripts run on phones by agents (spec: device-tasks.md, seed 001).

Python validates input (``device_scripts``) and shapes output; every state
change is one script of ``engine/lua/devices`` built on the shared includes
(status and counters, events, leases, retries), exactly as stacking's are.

Decisions the spec leaves open, written down here:

- **Statuses** are the documented integers, stored as ``'0'..'3'``; the
  ``stats`` counter hash is keyed the same way and moved by the shared
  ``change_status``, so ``GET /task/stats`` is one HGETALL.
- **Lists** read sorted indexes scored by task id (``ix:all`` and one per
  status, serial, script and source), so a page with one filter, and its exact
  ``total``, cost O(log N + page). Several filters are intersected inside the
  list script: exact, but the cost grows with the smallest index.
- **Claim order**: each serial has a due queue scored by id (the oldest first)
  and a schedule scored by start time; claim moves due scheduled tasks (at
  most 100 per serial per call) into the queue, then pops the oldest. A
  scheduled task is therefore claimable on the first claim at or after its
  time: agents claim every few seconds, well within the 10 s the spec allows.
- **Stop** makes a pending or running task failed with remark "stopped" at
  once, and a running one's agent is told on its next heartbeat; the signal is
  repeated on every heartbeat until it is ``TASKHUB_RUN_TTL`` old, so a lost
  response loses nothing. A stopped task is never auto-retried; manual retry
  and retry-all may retry it (it is failed).
- **Agent lost**: heartbeats for a serial extend the run lease of the task
  running on it; the sweep (in every claim, and as a periodic job) fails a
  task whose lease lapsed with remark "agent lost", which auto-retry may retry.
- **Device limit** (plans): distinct serials with a pending or running task.
  Creating tasks that would add serials beyond the limit is refused with
  40301; tasks for serials already active are always accepted, and retries are
  not limited (the limit is checked at creation, as the spec says).
- **Batch bound**: at most 1,000 tasks per create call (after account
  fan-out) and 1,000 ids per batch delete, so no script call holds Redis long.
- **Heartbeat extension**: ``data.running`` maps each reported serial to the
  task running on it, so an agent that restarts can adopt its tasks instead of
  losing them.
"""
from __future__ import annotations

import random
from functools import lru_cache
from typing import Any, Callable
from zoneinfo import ZoneInfo

import orjson

from .calls import Call, Command
from .core import Core
from .device_scripts import NoAccount, format_time, identities, parse_create
from .errors import Conflict, Forbidden, InvalidInput, NotFound, raise_for

STATUS_NAMES = {"0": "pending", "1": "running", "2": "completed", "3": "failed"}
PLAN_LIMITS = {"starter": 0, "pro": 20, "team": 100, "business": 1000}
SOURCES = ("api", "ui")
MAX_TASKS_PER_CALL = 1000
MAX_IDS = 1000
MAX_SERIALS = 1000
MAX_ACCOUNTS = 100
MAX_NAME = 128
MAX_REMARK = 2000
MAX_PAGE_SIZE = 100
RETRY_ALL_BATCH = 500
# The record's hash fields after the id, as the scripts return them (includes/tasks.lua FIELDS).
FIELDS = ("st", "se", "us", "sc", "cfg", "src", "ma", "due", "sa", "fa", "rm", "rc", "ca")


class PlanRefused(Forbidden):
    """40301: the plan has no API access, or the device limit would be exceeded."""


def _name(st: str) -> str:
    return STATUS_NAMES.get(st, st)


REFUSALS = {
    "not_found": lambda d: NotFound("task not found"),
    "bad_state": lambda d: Conflict(
        f"task is {_name(d[0])} (stopped)" if len(d) > 1 and d[1] == "stopped"
        else f"task is {_name(d[0])}, which does not allow this", d[0]),
    "no_account": lambda d: NoAccount(f"no device has the account '{d[0]}' (agents report accounts"
                                      " in POST /api/v1/agent/heartbeat); no task was created"),
    "no_device_accounts": lambda d: NoAccount(f"device '{d[0]}' has no accounts for multi-account mode;"
                                              " no task was created"),
    "too_many": lambda d: InvalidInput(f"this call would create {d[0]} tasks; at most {MAX_TASKS_PER_CALL}"
                                       " per call"),
    "device_limit": lambda d: PlanRefused(f"the plan allows {d[0]} active devices; these tasks would make"
                                          f" {d[1]}"),
}


def _ok(replies: list) -> None:
    raise_for(replies[0], refusals=REFUSALS)


class Devices:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.k = core.keys
        self.s = core.settings
        self.tz = ZoneInfo(self.s.tz)

    # ---- plan ----------------------------------------------------------
    def require_api(self) -> None:
        """Raise 40301 unless the plan includes API access (every endpoint asks first)."""
        if self.s.plan not in PLAN_LIMITS:
            raise PlanRefused(f"unknown plan '{self.s.plan}' (TASKHUB_PLAN: one of {', '.join(PLAN_LIMITS)})")
        if PLAN_LIMITS[self.s.plan] == 0:
            raise PlanRefused(f"the {self.s.plan} plan does not include API access; upgrade to pro, team"
                              " or business")

    def license(self) -> dict:
        self.require_api()
        limit = PLAN_LIMITS[self.s.plan]
        return {"plan_name": self.s.plan, "api_enabled": True, "device_limit": limit,
                "message": f"{self.s.plan} plan: API enabled, up to {limit} active devices"}

    # ---- operator side -------------------------------------------------
    def create_call(self, body: Any, source: str = "api") -> Call:
        # The count before account fan-out is checked here; create-3 checks it after.
        spec = parse_create(body, self.core.now(), self.tz, max_tasks=MAX_TASKS_PER_CALL)
        mode = "usernames" if spec.usernames else "serials"
        k = self.k

        def finish(replies: list) -> dict:
            reply = raise_for(replies[0], refusals=REFUSALS)
            ids = [int(i) for i in reply[1:]]
            return {"task_ids": ids, "created_count": len(ids)}

        return Call([self.core.script(
            "create", [k.seq, k.users, k.active], mode, "1" if spec.multi_account else "0", spec.script_name,
            source, "" if spec.due_ms is None else spec.due_ms, PLAN_LIMITS.get(self.s.plan, 0),
            MAX_TASKS_PER_CALL, len(spec.configs), *spec.configs, *(spec.usernames or spec.serials))], finish)

    def create(self, body: Any, source: str = "api") -> dict:
        self.require_api()
        return self.core.call(self.create_call(body, source))

    def list_call(self, params: dict[str, Any]) -> Call:
        """One page; ``params`` as parsed query values (strings), validated here."""
        status = _opt_int(params.get("status"), "status", 0, 3)
        page = _opt_int(params.get("page"), "page", 1, 10**9) or 1
        size = _opt_int(params.get("page_size"), "page_size", 1, MAX_PAGE_SIZE)
        size = 20 if size is None else size
        serial = _opt_text(params.get("serial"), "serial")
        script = _opt_text(params.get("script_name"), "script_name")
        source = _opt_text(params.get("source"), "source")
        if source is not None and source not in SOURCES:
            raise InvalidInput("source must be 'ui' or 'api'")
        k = self.k
        filters = [(status, k.index("st", status)), (serial, k.index("se", serial)),
                   (script, k.index("sc", script)), (source, k.index("src", source))]
        flags = "".join("0" if v is None else "1" for v, _ in filters)
        keys = [k.index("all")] + [key if v is not None else k.index("all") for v, key in filters] + [k.scratch]

        def finish(replies: list) -> dict:
            reply = replies[0]
            return {"items": [self.render(r) for r in reply[1:]], "total": int(reply[0]), "page": page,
                    "page_size": size}

        return Call([self.core.script("list", keys, flags, (page - 1) * size, size)], finish)

    def list(self, **params: Any) -> dict:
        return self.core.call(self.list_call({k: v for k, v in params.items() if v is not None}))

    def get_call(self, task_id: Any) -> Call:
        tid = _task_id(task_id)

        def finish(replies: list) -> dict:
            if replies[0][0] is None:
                raise NotFound("task not found")
            return self.render([str(tid).encode(), *replies[0]])

        return Call([Command(("HMGET", self.k.task(tid), *FIELDS))], finish)

    def get(self, task_id: Any) -> dict:
        return self.core.call(self.get_call(task_id))

    def delete_call(self, ids: Any, actor: str = "api") -> Call:
        if not isinstance(ids, list) or not ids:
            raise InvalidInput("task_ids must be a non-empty array of task ids")
        if len(ids) > MAX_IDS:
            raise InvalidInput(f"task_ids holds {len(ids)} ids; at most {MAX_IDS} per call")
        tids = list(dict.fromkeys(_task_id(i, "task_ids") for i in ids))

        def finish(replies: list) -> dict:
            deleted, missing = replies[0]
            return {"deleted": int(deleted), "not_found": [int(i) for i in missing]}

        return Call([self.core.script("delete", [self.k.running], actor, *tids)], finish)

    def delete_one_call(self, task_id: Any, actor: str = "api") -> Call:
        """Delete one task (stopped first if running); NotFound when it does not exist."""
        many = self.delete_call([task_id], actor)

        def finish(replies: list) -> dict:
            result = many.finish(replies)
            if result["not_found"]:
                raise NotFound("task not found")
            return {"deleted": result["deleted"]}

        return Call(many.commands, finish)

    def delete(self, task_id: Any) -> dict:
        return self.core.call(self.delete_one_call(task_id))

    def delete_many(self, ids: Any) -> dict:
        return self.core.call(self.delete_call(ids))

    def _one_call(self, verb: str, keys: list[str], tid: int, status: int, *args: Any) -> Call:
        """A single-task transition; its result is ``{"task_id", "status"}`` (the new status)."""
        def finish(replies: list) -> dict:
            _ok(replies)
            return {"task_id": tid, "status": status}

        return Call([self.core.script(verb, keys, tid, *args)], finish)

    def stop_call(self, task_id: Any, actor: str = "api") -> Call:
        tid = _task_id(task_id)
        return self._one_call("stop", [self.k.task(tid), self.k.running, self.k.run_leases], tid, 3, actor)

    def stop(self, task_id: Any, actor: str = "api") -> dict:
        return self.core.call(self.stop_call(task_id, actor))

    def retry_call(self, task_id: Any, actor: str = "api") -> Call:
        tid = _task_id(task_id)
        return self._one_call("retry", [self.k.task(tid)], tid, 0, actor)

    def retry(self, task_id: Any, actor: str = "api") -> dict:
        return self.core.call(self.retry_call(task_id, actor))

    def retry_all(self, actor: str = "api", progress: Callable[[int, int], None] | None = None) -> dict:
        """Every failed task under the retry limit back to pending, in bounded batches.
        ``progress(failed tasks looked at, failed tasks at the start)`` after each batch (the
        CLI's bar; approximate while tasks keep failing, exact at the end)."""
        cursor, total, seen = "0", 0, 0
        failed = self.core.r.zcard(self.k.index("st", 3)) if progress else 0
        while True:
            retried, nxt = self.core.run("retry_all", [self.k.index("st", 3)], cursor, RETRY_ALL_BATCH,
                                         self.s.max_retry_count, actor)
            total += int(retried)
            if progress:
                seen = failed if not nxt else min(failed, seen + RETRY_ALL_BATCH)
                progress(seen, failed)
            if not nxt:
                return {"retried": total}
            cursor = nxt.decode() if isinstance(nxt, bytes) else str(nxt)

    def stats_call(self) -> Call:
        def finish(replies: list) -> dict:
            raw = {k.decode(): int(v) for k, v in replies[0].items()}
            counts = {name: raw.get(st, 0) for st, name in STATUS_NAMES.items()}
            return {"total": sum(counts.values()), **counts}

        return Call([Command(("HGETALL", self.k.stats))], finish)

    def stats(self) -> dict:
        return self.core.call(self.stats_call())

    # ---- agent side ----------------------------------------------------
    def heartbeat_call(self, body: Any) -> Call:
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        serials = [] if body.get("serials") is None else identities("serials", body["serials"])
        accounts = body.get("accounts")
        if accounts is None:
            accounts = {}
        if not isinstance(accounts, dict):
            raise InvalidInput("accounts must be an object mapping serials to arrays of usernames")
        for serial, users in accounts.items():
            _text(serial, "accounts key")
            if not isinstance(users, list) or len(users) > MAX_ACCOUNTS:
                raise InvalidInput(f"accounts.{serial} must be an array of at most {MAX_ACCOUNTS} usernames")
            for u in users:
                _text(u, f"accounts.{serial}[]")
            if serial not in serials:
                serials.append(serial)
        if not serials:
            raise InvalidInput("serials must be a non-empty array of device serials")
        if len(serials) > MAX_SERIALS:
            raise InvalidInput(f"at most {MAX_SERIALS} serials per heartbeat")
        args: list[Any] = []
        for serial in serials:
            users = accounts.get(serial)
            if users is None:
                args += [serial, -1]
            else:
                users = list(dict.fromkeys(u.strip().lstrip("@") for u in users))
                args += [serial, len(users), *users]
        k = self.k

        def finish(replies: list) -> dict:
            stops, running = replies[0]
            return {"stop": sorted(int(i) for i in stops),
                    "running": {running[i].decode(): int(running[i + 1]) for i in range(0, len(running), 2)}}

        return Call([self.core.script("heartbeat", [k.devices, k.users, k.running, k.run_leases],
                                      self.s.run_ttl_ms, *args)], finish)

    def heartbeat(self, body: Any) -> dict:
        return self.core.call(self.heartbeat_call(body))

    def claim_call(self, body: Any) -> Call:
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        serials = identities("serials", body.get("serials"))
        limit = body.get("limit", len(serials))
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_SERIALS:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_SERIALS}")
        agent = _agent(body)

        def finish(replies: list) -> dict:
            return {"tasks": [self.render(r) for r in replies[0][1:]]}

        return Call([self.core.script("claim", [self.k.running, self.k.run_leases], self.s.run_ttl_ms, limit,
                                      agent, self.s.sweep_batch, *self._retry_args(), *serials)], finish)

    def claim(self, body: Any) -> dict:
        return self.core.call(self.claim_call(body))

    def finish_call(self, task_id: Any, body: Any, ok: bool) -> Call:
        tid = _task_id(task_id)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        remark = body.get("remark", "")
        if remark is None:
            remark = ""
        if not isinstance(remark, str) or len(remark) > MAX_REMARK:
            raise InvalidInput(f"remark must be a string of at most {MAX_REMARK} characters")
        k = self.k
        return self._one_call("finish", [k.task(tid), k.running, k.run_leases], tid, 2 if ok else 3,
                              "2" if ok else "3", remark, _agent(body), *self._retry_args())

    def complete(self, task_id: Any, remark: str = "", agent: str = "agent") -> None:
        self.core.call(self.finish_call(task_id, {"remark": remark, "agent": agent}, True))

    def fail(self, task_id: Any, remark: str = "", agent: str = "agent") -> None:
        self.core.call(self.finish_call(task_id, {"remark": remark, "agent": agent}, False))

    def _retry_args(self) -> tuple[Any, int]:
        """Auto-retry delay for a failure happening now (random 5-60 s), or '' when off."""
        if not self.s.auto_retry:
            return "", self.s.max_retry_count
        return random.randint(5_000, 60_000), self.s.max_retry_count

    # ---- system side (RQ jobs) -----------------------------------------
    def run_retries(self, batch: int = 500) -> dict:
        """One pass of the auto-retry job over due failures (idempotent: the script decides)."""
        retried, left = self.core.run("auto_retry", [self.k.retries], batch, self.s.max_retry_count)
        return {"retried": retried, "due_left": left}

    def sweep(self, batch: int | None = None) -> dict:
        """One batch of run-lease recovery ("agent lost")."""
        lost = self.core.run("sweep", [self.k.run_leases], batch or self.s.sweep_batch, *self._retry_args())
        return {"runs_failed": lost}

    # ---- rendering -----------------------------------------------------
    def render(self, r: list) -> dict:
        """A record from a script or HMGET reply: ``[id, *FIELDS]`` (bytes)."""
        tid, st, se, us, sc, cfg, src, ma, due, sa, fa, rm, rc, ca = r
        return {
            "id": int(tid), "serial": se.decode(), "username": us.decode() or None, "script_name": sc.decode(),
            "script_config": orjson.loads(cfg), "status": int(st), "source": src.decode(),
            "enable_multi_account": ma == b"1", "start_time": self._time(due), "started_at": self._time(sa),
            "finished_at": self._time(fa), "remark": (rm or b"").decode(), "retry_count": int(rc or 0),
            "created_at": self._time(ca),
        }

    def _time(self, ms: bytes | int | None) -> str | None:
        """A stored ms time as "YYYY-MM-DD HH:MM:SS" in TASKHUB_TZ (whole seconds, cached: the
        tasks of one claim or page share a handful of seconds, and zoneinfo conversion is slow)."""
        return _format_second(int(ms) // 1000, self.s.tz) if ms else None


@lru_cache(maxsize=4096)
def _format_second(second: int, tz: str) -> str | None:
    return format_time(second * 1000, ZoneInfo(tz))


def _task_id(value: Any, field: str = "task_id") -> int:
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: task ids are positive integers")
    if isinstance(value, str) and value.isascii() and value.isdigit():  # "¹".isdigit() but int("¹") fails
        value = int(value)
    if not isinstance(value, int) or value < 1 or value > 2**53:
        raise InvalidInput(f"{field}: task ids are positive integers")
    return value


def _opt_int(raw: Any, field: str, lo: int, hi: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise InvalidInput(f"{field} must be an integer") from None
    if not lo <= value <= hi:
        raise InvalidInput(f"{field} must be between {lo} and {hi}")
    return value


def _opt_text(raw: Any, field: str) -> str | None:
    if raw is None or raw == "":
        return None
    return _text(raw, field)


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME:
        raise InvalidInput(f"{field} must be a non-empty string of at most {MAX_NAME} characters")
    return value.strip()


def _agent(body: dict) -> str:
    agent = body.get("agent", "agent")
    return _text(agent, "agent") if agent is not None else "agent"


__all__ = ["Devices", "PlanRefused", "PLAN_LIMITS", "STATUS_NAMES"]
