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

Shards (``TASKHUB_SHARDS_DEVICES`` = N, ``engine/shards.py``; with N = 1, the
default, every call below is the single script call it always was):

- **Placement by serial.** A device lives on ``shards.for_name(serial)``: its
  queue, schedule, running task, stop signals, accounts and every task for it.
  An account binding (``users``) lives on its device's shard; a heartbeat that
  reports an account for a device of shard X also drops the account's binding
  on every other shard (the heartbeat script of each shard, one call), so the
  last device to report an account wins, as with one shard. Two agents
  reporting the same account at the same moment may briefly leave it bound on
  two shards (a create then takes the lowest shard's) or on none, until the
  next heartbeat.
- **Global ids.** Each shard stores and returns global ids: local number * N +
  shard index, so ``id % N`` finds a task's shard with no lookup; get, stop,
  retry, delete, complete and fail go straight there. A sharded create numbers
  its tasks above every shard's sequence (read by its probe), in the call's
  order, so a call's ids follow its identities as with one shard and a create
  that starts after another ended has larger ids on every shard. Ids of one
  shard only grow; only creates overlapping in time interleave across shards.
- **Create across shards** is all or nothing. One probe call reads every
  shard (bindings of the usernames, which serials are active, accounts of
  multi-account devices, sequences); Python then makes every check of the
  script (unbound username, device without accounts, more than 1,000 tasks,
  device limit counted over all shards), so a refusal changes nothing. Then
  one create per shard touched, in one call; each script checks again
  atomically, counting as ``others`` the active devices of the other shards
  plus this call's new ones there. If a shard still refuses (another writer got
  in between: a binding moved, accounts changed, another create took the last
  device slots), the tasks the other shards made are deleted with the delete
  script (actor ``create_refused``: their creation and deletion stay in the
  event streams, and their ids are not reused) and the refusal is raised; they
  were pending, and only an agent claiming that serial in that window could
  have taken one. Two concurrent creates on different shards may together
  exceed the device limit by the devices each added (each checked the other's
  shard before the other wrote); within one shard the limit stays exact.
- **Claim** groups the serials by shard: one claim script per shard in one
  call, results in the caller's serial order. With a ``limit`` below the
  number of serials, a shard may only take a quota (its share of the next
  serials in order); a shard that takes less than its quota has no more, and
  the rest is offered to the others in another round (at most one per shard).
  Heartbeats are one script per shard touched, in one call.
- **List** sums every shard's exact total and merges their newest-first
  orders by id. Up to ``MAX_PAGE_SIZE`` deep (page * page_size), each shard
  returns its first page * page_size records in one call; deeper, each returns
  that many ids, and a second call reads the page's records. Pages beyond
  ``MAX_MERGED_RANK`` (10,000) are refused unless the list is filtered by serial
  (one shard). **Stats** add every shard's counters (one call). Retry-all, the
  auto-retry job and the sweep walk the shards one after another.
- ``Rounds``: what needs more than one round trip with N > 1 (a create, a
  limited claim, a deep page) is returned as ``Rounds`` instead of a ``Call``: a
  generator of calls, each of which the API sends through its batcher (the
  event loop never blocks); direct callers run each call at once.
"""
from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from functools import lru_cache
from typing import Any, Awaitable, Callable, Generator
from zoneinfo import ZoneInfo

import orjson

from .calls import Call, Command, Rounds, Script
from .core import Core
from .device_scripts import NoAccount, format_time, identities, parse_create
from .errors import Conflict, Forbidden, InvalidInput, NotFound, raise_for
from .keys import DeviceKeys
from .shards import Shards, add_counts

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
# With several shards, a list page is merged from every shard's first page*page_size entries:
# deeper pages are refused (filter to go further; one shard pages any depth).
MAX_MERGED_RANK = 10_000
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
    def __init__(self, shards: Shards) -> None:
        self.shards = shards
        self.n = shards.n
        self.core = shards.home
        self.k = self.core.keys
        self.s = self.core.settings
        self.tz = ZoneInfo(self.s.tz)

    def _index(self, core: Core) -> int:
        return core.keys.shard or 0

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
    def _create_script(self, core: Core, spec: Any, mode: str, source: str, who: list, others: int = 0,
                       starts: list[int] | None = None) -> Script:
        k = core.keys
        if starts is not None:
            who = [x for pair in zip(who, starts) for x in pair]
        return core.script(
            "create", [k.seq, k.users, k.active], mode, "1" if spec.multi_account else "0", spec.script_name,
            source, "" if spec.due_ms is None else spec.due_ms, PLAN_LIMITS.get(self.s.plan, 0), others,
            MAX_TASKS_PER_CALL, self.n, self._index(core), "0" if starts is None else "1", len(spec.configs),
            *spec.configs, *who)

    def create_call(self, body: Any, source: str = "api") -> Call | Rounds:
        # The count before account fan-out is checked here; create-3 checks it after.
        spec = parse_create(body, self.core.now(), self.tz, max_tasks=MAX_TASKS_PER_CALL)
        mode = "usernames" if spec.usernames else "serials"
        if self.n > 1:
            return Rounds(lambda: self._create_sharded(spec, mode, source))

        def finish(replies: list) -> dict:
            reply = raise_for(replies[0], refusals=REFUSALS)
            ids = [int(i) for i in reply[1:]]
            return {"task_ids": ids, "created_count": len(ids)}

        return Call([self._create_script(self.core, spec, mode, source, spec.usernames or spec.serials)], finish)

    def create(self, body: Any, source: str = "api") -> dict:
        self.require_api()
        return self.core.perform(self.create_call(body, source))

    def _create_sharded(self, spec: Any, mode: str, source: str) -> Generator[Call, Any, dict]:
        """A create over several shards (module docstring, "Shards"): one probe of every shard,
        every refusal checked in Python, one create per shard touched in one call; a refusal
        there (a race with another writer) deletes what the other shards created."""
        shards, nconf, multi = self.shards, len(spec.configs), spec.multi_account
        who = spec.usernames or spec.serials
        if mode == "usernames":
            asked = {i: who for i in range(self.n)}
        else:
            asked = {}
            for serial in who:
                asked.setdefault(shards.index_for_name(serial), []).append(serial)
        probe = yield Call([c.script("probe", [c.keys.seq, c.keys.users, c.keys.active], mode,
                                     "1" if multi else "0", *asked.get(i, ())) for i, c in enumerate(shards)],
                           lambda r: r)
        seqs = [int(p[0]) for p in probe]
        active_n = [int(p[1]) for p in probe]
        found: dict[str, tuple[int, str, bool, int]] = {}  # identity -> (shard, serial, active, accounts)
        for i, p in enumerate(probe):
            for name, se, act, accs in zip(asked.get(i, ()), p[2], p[3], p[4]):
                if se and name not in found:  # a username bound on two shards (a race): the lowest shard
                    found[name] = (i, se.decode(), bool(act), int(accs))
        # the script's checks, in its order: identities, batch size, device limit
        counts = []
        for name in who:
            if name not in found:
                raise REFUSALS["no_account"]([name])
            if multi and found[name][3] == 0:
                raise REFUSALS["no_device_accounts"]([name])
            counts.append(nconf * (found[name][3] if multi else 1))
        total = sum(counts)
        if total > MAX_TASKS_PER_CALL:
            raise REFUSALS["too_many"]([total])
        new = [0] * self.n
        for i, se in {(f[0], f[1]) for f in found.values() if not f[2]}:
            new[i] += 1
        limit = PLAN_LIMITS.get(self.s.plan, 0)
        would = sum(active_n) + sum(new)
        if sum(new) > 0 and would > limit:
            raise REFUSALS["device_limit"]([limit, would])
        # number the call's tasks in its order, above every shard's sequence
        first, starts, groups = max(seqs) + 1, [], {}
        for name, c in zip(who, counts):
            starts.append(first)
            first += c
        for pos, name in enumerate(who):
            groups.setdefault(found[name][0], []).append(pos)
        order = sorted(groups)
        cmds = [self._create_script(shards[i], spec, mode, source, [who[p] for p in groups[i]],
                                    would - active_n[i] - new[i], [starts[p] for p in groups[i]]) for i in order]
        replies = yield Call(cmds, lambda r: r)
        made = {i: rep for i, rep in zip(order, replies) if rep[0] == b"ok"}
        refused = [rep for rep in replies if rep[0] != b"ok"]
        if not refused and sum(len(rep[1]) for rep in made.values()) > MAX_TASKS_PER_CALL:
            refused = [[b"too_many", sum(len(rep[1]) for rep in made.values())]]
        if refused:
            undo = [self.shards[i].script("delete", [self.shards[i].keys.running], "create_refused",
                                          *(int(t) for t in rep[1])) for i, rep in made.items() if rep[1]]
            if undo:  # the tasks the accepting shards made go (module docstring)
                yield Call(undo, lambda r: r)
            kinds = [b"no_account", b"no_device_accounts", b"too_many", b"device_limit"]
            raise_for(min(refused, key=lambda rep: kinds.index(rep[0]) if rep[0] in kinds else -1),
                      refusals=REFUSALS)
        # the ids in the call's order: each shard's come in its identities' order
        per_pos: dict[int, list[int]] = {}
        for i, rep in made.items():
            ids = iter(int(t) for t in rep[1])
            for pos, c in zip(groups[i], rep[2]):
                per_pos[pos] = [next(ids) for _ in range(int(c))]
        ids = [t for pos in range(len(who)) for t in per_pos.get(pos, ())]
        return {"task_ids": ids, "created_count": len(ids)}

    def list_call(self, params: dict[str, Any]) -> Call | Rounds:
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
        values = (status, serial, script, source)
        flags = "".join("0" if v is None else "1" for v in values)
        off = (page - 1) * size

        def keys(k: DeviceKeys) -> list[str]:
            filters = [(status, "st"), (serial, "se"), (script, "sc"), (source, "src")]
            return [k.index("all")] + [k.index(ix, v) if v is not None else k.index("all")
                                       for v, ix in filters] + [k.scratch]

        def result(total: int, items: list) -> dict:
            return {"items": items, "total": total, "page": page, "page_size": size}

        cores = self.shards.cores if serial is None else [self.shards.for_name(serial)]
        if len(cores) == 1:  # one shard, or a serial's tasks (all on its shard)
            def finish(replies: list) -> dict:
                reply = replies[0]
                return result(int(reply[0]), [self.render(r) for r in reply[1:]])

            return Call([cores[0].script("list", keys(cores[0].keys), flags, off, size)], finish)
        if off + size > MAX_MERGED_RANK:
            raise InvalidInput(f"page * page_size must be at most {MAX_MERGED_RANK} when device tasks are"
                               " sharded (TASKHUB_SHARDS_DEVICES > 1); filter the list to page further")
        if off + size <= MAX_PAGE_SIZE:  # each shard's first off+size records, merged: one round trip
            def merge(replies: list) -> dict:
                rows = heapq.merge(*(reply[1:] for reply in replies), key=lambda r: int(r[0]), reverse=True)
                page_rows = list(itertools.islice(rows, off, off + size))
                return result(sum(int(reply[0]) for reply in replies), [self.render(r) for r in page_rows])

            return Call([c.script("list", keys(c.keys), flags, 0, off + size) for c in cores], merge)

        def deep() -> Generator[Call, Any, dict]:  # each shard's first off+size ids, merged; then records
            replies = yield Call([c.script("list", keys(c.keys), flags, 0, off + size, "ids") for c in cores],
                                 lambda r: r)
            ids = heapq.merge(*([int(i) for i in reply[1:]] for reply in replies), reverse=True)
            page_ids = list(itertools.islice(ids, off, off + size))
            rows = (yield Call([Command(("HMGET", self.shards.shard_of_id(t).keys.task(t), *FIELDS))
                                for t in page_ids], lambda r: r)) if page_ids else []
            items = [self.render([str(t).encode(), *row]) for t, row in zip(page_ids, rows)
                     if row[0] is not None]  # deleted between the two reads
            return result(sum(int(reply[0]) for reply in replies), items)

        return Rounds(deep)

    def list(self, **params: Any) -> dict:
        return self.core.perform(self.list_call({k: v for k, v in params.items() if v is not None}))

    def get_call(self, task_id: Any) -> Call:
        tid = _task_id(task_id)

        def finish(replies: list) -> dict:
            if replies[0][0] is None:
                raise NotFound("task not found")
            return self.render([str(tid).encode(), *replies[0]])

        return Call([Command(("HMGET", self.shards.shard_of_id(tid).keys.task(tid), *FIELDS))], finish)

    def get(self, task_id: Any) -> dict:
        return self.core.call(self.get_call(task_id))

    def delete_call(self, ids: Any, actor: str = "api") -> Call:
        if not isinstance(ids, list) or not ids:
            raise InvalidInput("task_ids must be a non-empty array of task ids")
        if len(ids) > MAX_IDS:
            raise InvalidInput(f"task_ids holds {len(ids)} ids; at most {MAX_IDS} per call")
        tids = list(dict.fromkeys(_task_id(i, "task_ids") for i in ids))
        if self.n == 1:
            def finish(replies: list) -> dict:
                deleted, missing = replies[0]
                return {"deleted": int(deleted), "not_found": [int(i) for i in missing]}

            return Call([self.core.script("delete", [self.k.running], actor, *tids)], finish)
        groups: dict[int, list[int]] = {}
        for t in tids:
            groups.setdefault(t % self.n, []).append(t)

        def merge(replies: list) -> dict:
            missing = {int(i) for _, gone in replies for i in gone}
            return {"deleted": sum(int(d) for d, _ in replies), "not_found": [t for t in tids if t in missing]}

        return Call([self.shards[i].script("delete", [self.shards[i].keys.running], actor, *group)
                     for i, group in groups.items()], merge)

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

    def _one_call(self, verb: str, keys: Callable[[DeviceKeys], list[str]], tid: int, status: int,
                  *args: Any) -> Call:
        """A single-task transition on the task's shard; its result is ``{"task_id", "status"}``."""
        core = self.shards.shard_of_id(tid)

        def finish(replies: list) -> dict:
            _ok(replies)
            return {"task_id": tid, "status": status}

        return Call([core.script(verb, keys(core.keys), tid, *args)], finish)

    def stop_call(self, task_id: Any, actor: str = "api") -> Call:
        tid = _task_id(task_id)
        return self._one_call("stop", lambda k: [k.task(tid), k.running, k.run_leases], tid, 3, actor)

    def stop(self, task_id: Any, actor: str = "api") -> dict:
        return self.core.call(self.stop_call(task_id, actor))

    def retry_call(self, task_id: Any, actor: str = "api") -> Call:
        tid = _task_id(task_id)
        return self._one_call("retry", lambda k: [k.task(tid)], tid, 0, actor)

    def retry(self, task_id: Any, actor: str = "api") -> dict:
        return self.core.call(self.retry_call(task_id, actor))

    def retry_all(self, actor: str = "api", progress: Callable[[int, int], None] | None = None) -> dict:
        """Every failed task under the retry limit back to pending, in bounded batches, shard
        after shard. ``progress(failed tasks looked at, failed tasks at the start)`` after each
        batch (the CLI's bar; approximate while tasks keep failing, exact at the end)."""
        total, before = 0, 0
        failed = [c.r.zcard(c.keys.index("st", 3)) for c in self.shards] if progress else [0] * self.n
        for core, failed_here in zip(self.shards, failed):
            cursor, k, batches = "0", core.keys, 0
            while True:
                retried, nxt = core.run("retry_all", [k.index("st", 3)], cursor, RETRY_ALL_BATCH,
                                        self.s.max_retry_count, actor)
                total += int(retried)
                batches += 1
                if progress:
                    here = failed_here if not nxt else min(failed_here, batches * RETRY_ALL_BATCH)
                    progress(before + here, sum(failed))
                if not nxt:
                    break
                cursor = nxt.decode() if isinstance(nxt, bytes) else str(nxt)
            before += failed_here
        return {"retried": total}

    def stats_call(self) -> Call:
        def finish(replies: list) -> dict:
            raw = add_counts(replies)
            counts = {name: raw.get(st, 0) for st, name in STATUS_NAMES.items()}
            return {"total": sum(counts.values()), **counts}

        return Call([Command(("HGETALL", c.keys.stats)) for c in self.shards], finish)

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

        def finish(replies: list) -> dict:
            stops = sorted({int(i) for reply in replies for i in reply[0]})
            running = {}
            for _, pairs in replies:
                running.update({pairs[i].decode(): int(pairs[i + 1]) for i in range(0, len(pairs), 2)})
            return {"stop": stops, "running": running}

        def script(core: Core, unbind: list[str], args: list) -> Script:
            k = core.keys
            return core.script("heartbeat", [k.devices, k.users, k.running, k.run_leases], self.s.run_ttl_ms,
                               len(unbind), *unbind, *args)

        args: dict[int, list[Any]] = {}
        owner: dict[str, int] = {}  # username -> shard of the last serial reporting it
        for serial in serials:
            i = self.shards.index_for_name(serial)
            users = accounts.get(serial)
            if users is None:
                args.setdefault(i, []).extend((serial, -1))
            else:
                users = list(dict.fromkeys(u.strip().lstrip("@") for u in users))
                args.setdefault(i, []).extend((serial, len(users), *users))
                owner.update(dict.fromkeys(users, i))
        if self.n == 1:
            return Call([script(self.core, [], args[0])], finish)
        cmds = []
        for i, core in enumerate(self.shards):
            unbind = [u for u, at in owner.items() if at != i]
            if i in args or unbind:
                cmds.append(script(core, unbind, args.get(i, [])))
        return Call(cmds, finish)

    def heartbeat(self, body: Any) -> dict:
        return self.core.call(self.heartbeat_call(body))

    def _claim_script(self, core: Core, serials: list[str], limit: int, agent: str) -> Script:
        return core.script("claim", [core.keys.running, core.keys.run_leases], self.s.run_ttl_ms, limit, agent,
                           self.s.sweep_batch, *self._retry_args(), *serials)

    def claim_call(self, body: Any) -> Call | Rounds:
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        serials = identities("serials", body.get("serials"))
        limit = body.get("limit", len(serials))
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_SERIALS:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_SERIALS}")
        agent = _agent(body)
        if self.n == 1:
            def finish(replies: list) -> dict:
                return {"tasks": [self.render(r) for r in replies[0][1:]]}

            return Call([self._claim_script(self.core, serials, limit, agent)], finish)
        groups: dict[int, list[str]] = {}
        for serial in serials:
            groups.setdefault(self.shards.index_for_name(serial), []).append(serial)
        pos = {s: p for p, s in enumerate(serials)}

        def merge(replies: list) -> dict:
            rows = sorted((r for reply in replies for r in reply[1:]), key=lambda r: pos[r[2].decode()])
            return {"tasks": [self.render(r) for r in rows]}

        if len(groups) == 1 or limit >= len(serials):  # no shard can take more than its serials: one call
            return Call([self._claim_script(self.shards[i], group, min(limit, len(group)), agent)
                         for i, group in groups.items()], merge)
        def rounds() -> Generator[Call, Any, dict]:
            return merge((yield from self._claim_rounds(serials, groups, limit, agent)))

        return Rounds(rounds)

    def _claim_rounds(self, serials: list[str], groups: dict[int, list[str]], limit: int,
                      agent: str) -> Generator[Call, Any, list]:
        """A claim whose limit is below its serial count, over several shards: each round gives
        each shard a quota of the next serials in the caller's order (one call); a shard that
        takes less than its quota has no more to give. At most one round per shard."""
        taken: set[str] = set()
        done: set[int] = set()
        out: list = []
        got = 0
        while got < limit:
            want = [s for s in serials if s not in taken and self.shards.index_for_name(s) not in done]
            quota = Counter(self.shards.index_for_name(s) for s in want[:limit - got])
            if not quota:
                break
            order = list(quota)
            replies = yield Call([self._claim_script(self.shards[i], [s for s in groups[i] if s not in taken],
                                                     quota[i], agent) for i in order], lambda r: r)
            for i, reply in zip(order, replies):
                rows = reply[1:]
                out.append(reply)
                got += len(rows)
                taken.update(r[2].decode() for r in rows)
                if len(rows) < quota[i]:
                    done.add(i)
        return out

    def claim(self, body: Any) -> dict:
        return self.core.perform(self.claim_call(body))

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
        return self._one_call("finish", lambda k: [k.task(tid), k.running, k.run_leases], tid, 2 if ok else 3,
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
        """One pass of the auto-retry job over due failures, one batch per shard (idempotent: the
        script decides)."""
        retried = left = 0
        for core in self.shards:
            r, l_ = core.run("auto_retry", [core.keys.retries], batch, self.s.max_retry_count)
            retried, left = retried + r, left + l_
        return {"retried": retried, "due_left": left}

    def sweep(self, batch: int | None = None) -> dict:
        """One batch of run-lease recovery ("agent lost") per shard."""
        lost = 0
        for core in self.shards:
            lost += core.run("sweep", [core.keys.run_leases], batch or self.s.sweep_batch, *self._retry_args())
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
