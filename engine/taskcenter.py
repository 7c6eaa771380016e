"""Task center: asynchronous platform jobs per user, with quota (spec: task-center.md, seed 002).

A user submits a job (a song, lyrics); one script checks the API token and
the user, charges the price and creates the task ``NOT_START``. The submit job
(``workers/jobs.py``) hands it to an upstream channel; the poll job reads its
progress; the timeout sweep ends what never finishes. Every move is a script
of ``engine/lua/tasks`` on the shared includes (status and counters, events,
leases, backoff), and ``includes/center.lua`` holds the two terminal moves.

Decisions the spec leaves open, written down here:

- **Refunds** happen in exactly one place, ``fail_task`` (center.lua): the
  move to ``FAILURE`` and the refund of the task's whole charge to the user
  (and to its API token, if limited and still there) are one script that does
  nothing to a terminal task. Every failure path (submit refused, retries
  exhausted, platform FAILURE, channel deleted, timeout) calls it, so a refund
  happens once whatever races, and is never lost between two steps.
- **Ledger**: every grant, charge and refund is an entry of a capped stream
  (``TASKHUB_EVENTS_MAXLEN``) and moves the user's running totals (``gr``,
  ``chg``, ``rfd``). ``audit`` checks ``quota = grants - charges + refunds``
  and ``used_quota = charges - refunds`` per user, cross-checks both against
  the user's tasks (each charge is a task's ``quota``; each refund a
  ``FAILURE`` task's, once), and against the stream while it is whole.
- **Tokens** (access tokens and ``sk-`` API tokens) are stored as SHA-256
  digests and shown once, when created (as stacking's server keys).
- **submit_time** is when the user submitted (the charge), never earlier than
  the previous task's: ids and submit times grow together, so the inclusive
  time filter is an id range, exact and O(log N). ``start_time`` is when the
  platform first reports ``IN_PROGRESS``; ``finish_time`` when terminal.
- **Listing**: every task is in one *cell* per combination of platform,
  action, status and channel, globally and per user (``engine/keys.py``), so
  any filter combination is a union of a few sorted sets: exact ``total`` by
  ZCOUNT, first pages by merging their heads, deep pages by a binary search on
  the id (list-4.lua): bounded work at any depth, never a scan.
- **Submission** is a periodic RQ job (and one kicked at once by the web
  process when the queue was empty) that leases due tasks, so a burst costs
  one job, not one forked work horse per task; a submitter that dies leaves a
  lease that lapses back to the queue. That lapsed try counts as one of the
  task's 1 + ``TASKHUB_SUBMIT_RETRIES`` attempts: the request may have reached
  the platform before the submitter died, and a task whose submitters keep
  dying must still end (failed and refunded) rather than loop.
- ``action`` is matched case-insensitively (stored upper-case); ``p`` below
  1 becomes 1 and ``page_size`` is clamped to 1..100; a value that is not a
  number is refused (400), as is an unknown status.

Shards (``TASKHUB_SHARDS_TASKS`` = N, ``engine/shards.py``; issue 11). With
N = 1 everything above is exactly as it was: one tag ``{tasks}``, ids from the
sequences, tokens and public ids without a shard mark, one script per call.
With N > 1:

- **A user and everything charged to them live on one shard**: the user hash,
  its access token and API tokens, its tasks, its cells (``cu:<uid>:``,
  ``cells:<uid>``, ``ix:u:<uid>``), its ledger entries. So submit (token,
  user, charge, task) and ``fail_task`` (FAILURE and the refund, once) stay
  one script on one shard, as atomic as with one Redis. A new user is placed
  by name (``Shards.for_name``), so name uniqueness (``uname``) is still
  checked inside that shard's create_user script, and ``user_id(name)`` asks
  one shard. User ids are global: ``useq * N + shard`` (``encode_id``,
  computed by the script), so ``New-Api-User`` and the operator API find the
  shard from the id.
- **Secrets carry their shard**: an access token, an ``sk-`` API token and a
  public ``task_...`` id end with two characters of their alphabet that spell
  the shard index in base 62 (same length as before, two random characters
  fewer: still ~178 bits). Only the SHA-256 of a token is stored, as before.
  A request is routed with no lookup on other shards; a token or task id
  that does not spell a shard below N matches nobody (401 / not found). Fetch
  by API token asks the token's shard only: another shard's task is not the
  caller's.
- **Task ids** are ``local * N + shard`` (``encode_id``) where the shard's
  local sequence never falls below the clock in ms: ids stay unique, give
  their shard as ``id % N``, keep growing with submit time inside a shard
  (the time filter's id ranges), and ids of different shards interleave by
  creation time, so "newest first by id" over all shards is newest first
  (to the millisecond, unless a shard takes more than 1,000 tasks a second
  for a while: its ids then run ahead of the clock). They stay below 2**53.
- **Channels** live on shard 0 only: only Python reads them (the submit and
  poll jobs, ``channels()``), and a task just stores its channel's id.
  **Prices** are read by the submit script, so they are mirrored: ``set_price``
  writes every shard, ``prices()`` reads shard 0.
- **Jobs** (claim_submissions, take_polls, apply, sweep) send one script per
  shard in one ``Call`` (one round trip per node), each bounded by the batch
  per shard; a submission's lease is on its task's shard, so two submit jobs
  never submit one task twice, whatever shard order they use.
- **Lists**: a user's own list, an admin list filtered by user or by public
  task id, are one list-4 call on that shard, unchanged. An admin list over
  every user is merged: ``total`` is the sum of each shard's exact total; the
  first page is one round trip (each shard's first page, merged); a later
  page lists ids only (each shard's top offset + size, merged) and then reads
  the page's records; a page beyond 2,000 first narrows an id threshold with
  a 33-way search on the id (each round one list-4 'probe' per shard:
  ZCOUNTs at 32 ids) until at most 1,000 ids above the page remain unseen,
  then lists below it: a few round trips, bounded at any depth, never a scan.
  The rounds are ``Rounds``: the API drives them through its batcher.
- **Stats** are the sum of every shard's ``stats`` (one fan-out call); the
  audit and ``users()`` visit every shard (each user with its own shard's
  ledger stream).
"""
from __future__ import annotations

import hashlib
import random
import secrets
import string
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Iterable

import orjson

from .calls import Call, Command, Rounds
from .core import Core
from .errors import Conflict, EngineError, Forbidden, InvalidInput, NotFound, raise_for
from .shards import Shards, add_counts

STATUSES = ("NOT_START", "SUBMITTED", "QUEUED", "IN_PROGRESS", "SUCCESS", "FAILURE", "UNKNOWN")
TERMINAL = ("SUCCESS", "FAILURE")
PROGRESS = {"NOT_START": "0%", "SUBMITTED": "10%", "QUEUED": "20%", "IN_PROGRESS": "30%",
            "SUCCESS": "100%", "FAILURE": "100%"}
ACTIONS = {"suno": ("MUSIC", "LYRICS")}
# Quota per platform:ACTION when no price is set (the gateway's defaults: $0.10 and $0.01 at
# 500,000 units per dollar); `taskhub price set` overrides them.
DEFAULT_PRICES = {"suno:MUSIC": 50_000, "suno:LYRICS": 5_000}
ROLES = {"common": 1, "admin": 10, "root": 100}
ENABLED, DISABLED = "1", "2"
MAX_PAGE_SIZE = 100
MAX_FETCH_IDS = 1000
MAX_NAME = 64
# The documented fields after the id, as the scripts return them (includes/center.lua FIELDS).
FIELDS = ("ca", "ua", "tid", "pf", "u", "ch", "q", "ac", "st", "fr", "sbt", "stt", "ft", "pg", "pr", "d")
_ALPHABET = string.ascii_letters + string.digits


class NotSignedIn(EngineError):
    """401: no credentials, or credentials that match nobody."""

    code = "unauthorized"


class Disabled(Forbidden):
    code = "user_disabled"


class TokenDisabled(Forbidden):
    code = "token_disabled"


class InsufficientQuota(Forbidden):
    code = "insufficient_user_quota"


class InsufficientTokenQuota(InsufficientQuota):
    code = "insufficient_token_quota"


class RoleTooLow(Forbidden):
    code = "forbidden"


def bearer_value(header: str | None) -> str:
    """The value of an ``Authorization``-style header, with or without its ``Bearer `` prefix
    (the seed's clients send both, even in ``New-Api-User``)."""
    value = (header or "").strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_secret(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


# Public task ids need to be unique and unguessable, not uniform: each random byte maps to
# one of the 62 characters (a slight bias, ~190 bits of entropy in 32 characters), in one
# C call instead of 32 calls of secrets.choice (a tenth of a submit's Python time).
_ID_TABLE = bytes((_ALPHABET.encode()[i % len(_ALPHABET)]) for i in range(256))


def new_task_id(shard: int | None = None) -> str:
    """``task_`` + 32 characters; with a shard index, the last two spell it (``shard_mark``)."""
    if shard is None:
        return "task_" + secrets.token_bytes(32).translate(_ID_TABLE).decode()
    return "task_" + secrets.token_bytes(30).translate(_ID_TABLE).decode() + shard_mark(shard)


_INDEX = {c: i for i, c in enumerate(_ALPHABET)}


def shard_mark(shard: int) -> str:
    """Two characters of the token alphabet spelling a shard index (0..3843) in base 62."""
    return _ALPHABET[shard // 62] + _ALPHABET[shard % 62]


def marked_shard(secret: str, n: int) -> int | None:
    """The shard a token or public task id names (its last two characters), or None when it
    names none below ``n``. With one shard, every secret is shard 0 (they carry no mark)."""
    if n == 1:
        return 0
    if len(secret) < 2:
        return None
    hi, lo = _INDEX.get(secret[-2]), _INDEX.get(secret[-1])
    if hi is None or lo is None:
        return None
    shard = hi * 62 + lo
    return shard if shard < n else None


REFUSALS = {
    "invalid_token": lambda d: NotSignedIn("invalid API token (Authorization: Bearer sk-...)"),
    "token_disabled": lambda d: TokenDisabled("this API token is disabled"),
    "user_disabled": lambda d: Disabled("this user is disabled"),
    "insufficient_user_quota": lambda d: InsufficientQuota(
        f"user quota is not enough: {d[0]} left, this task costs {d[1]}"),
    "insufficient_token_quota": lambda d: InsufficientTokenQuota(
        f"API token quota is not enough: {d[0]} left, this task costs {d[1]}"),
    "insufficient": lambda d: InvalidInput(f"quota would go below zero (it is {d[0]})"),
    "not_found": lambda d: NotFound("not found"),
}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int:
    return int(v) if v not in (None, b"", "") else 0


def _json_fragment(v: Any) -> Any:
    return orjson.Fragment(v) if v else orjson.Fragment(b"{}")


@dataclass(frozen=True)
class Submission:
    """A task leased to the submit job."""

    id: int
    platform: str
    action: str
    body: bytes
    attempt: int
    tried: tuple[int, ...]


@dataclass(frozen=True)
class Channel:
    id: int
    platform: str
    base_url: str
    key: str
    weight: int
    enabled: bool
    name: str


@dataclass(frozen=True)
class Report:
    """What the platform said about one task, mapped to our statuses (``map_report``)."""

    id: int
    status: str
    progress: str
    fail_reason: str
    data: bytes  # JSON; b"" = unchanged


def map_report(task_id: int, item: dict) -> Report:
    """The spec's status and progress mapping of one platform item (suno-compatible ``fetch``).

    Unrecognised statuses become ``UNKNOWN`` (kept polling, progress kept);
    ``IN_PROGRESS`` takes the platform's own ``NN%`` when it gives a valid one.
    """
    raw = str(item.get("status") or "").upper()
    status = raw if raw in STATUSES else "UNKNOWN"
    progress = PROGRESS.get(status, "")
    if status == "IN_PROGRESS":
        given = str(item.get("progress") or "")
        if given.endswith("%") and given[:-1].isdigit() and 0 <= int(given[:-1]) <= 100:
            progress = given
    reason = ""
    if status == "FAILURE":
        reason = str(item.get("fail_reason") or "the platform reported FAILURE")[:1000]
    data = item.get("data")
    blob = orjson.dumps(data) if isinstance(data, (dict, list)) else b""
    return Report(task_id, status, progress, reason, blob)


def choose_channel(channels: Iterable[Channel], tried: Iterable[int], rng: random.Random | None = None
                   ) -> Channel | None:
    """Weighted random choice among enabled channels, avoiding those already tried while others remain."""
    enabled = [c for c in channels if c.enabled and c.weight > 0] or [c for c in channels if c.enabled]
    if not enabled:
        return None
    tried_set = set(tried)
    fresh = [c for c in enabled if c.id not in tried_set] or enabled
    weights = [max(c.weight, 1) for c in fresh]
    return (rng or random).choices(fresh, weights=weights)[0]


# ---- query parsing ------------------------------------------------------------------
MAX_QUERY_INT = 2**53  # what JSON clients can read exactly
def _num(params: dict, name: str) -> int | None:
    raw = params.get(name)
    if raw is None or str(raw).strip() == "":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise InvalidInput(f"{name} must be an integer, got {str(raw)[:40]!r}") from None
    if abs(value) > MAX_QUERY_INT:  # a 30-digit page number would be echoed back and break the JSON encoder
        raise InvalidInput(f"{name} must be an integer between {-MAX_QUERY_INT} and {MAX_QUERY_INT}")
    return value


def _word(params: dict, name: str) -> str:
    raw = params.get(name)
    if raw is None:
        return ""
    value = str(raw).strip()
    if len(value) > MAX_NAME or any(c in value for c in "|:{} \t\r\n"):
        raise InvalidInput(f"{name} is not a valid value: {value[:40]!r}")
    return value


@dataclass(frozen=True)
class ListQuery:
    page: int
    size: int
    args: tuple  # ARGV[5..13] of list-4 after the user id


def parse_list(params: dict, admin: bool) -> tuple[ListQuery, int | None]:
    """Query values (strings) -> the list query, and the admin ``user_id`` filter if any."""
    page = max(_num(params, "p") or 1, 1)
    size = _num(params, "page_size")
    size = 20 if size is None else min(max(size, 1), MAX_PAGE_SIZE)
    status = _word(params, "status").upper()
    if status and status not in STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(STATUSES)}")
    start, end = _num(params, "start_timestamp"), _num(params, "end_timestamp")
    user_id = channel_id = None
    if admin:
        user_id, channel_id = _num(params, "user_id"), _num(params, "channel_id")
    task_id = _word(params, "task_id")
    args = (_word(params, "platform"), _word(params, "action").upper(), status,
            "" if channel_id is None else str(channel_id), task_id,
            "" if start is None else str(start), "" if end is None else str(end),
            (page - 1) * size, size)
    return ListQuery(page, size, args), user_id


LIST_DEEP = 2000  # list-4's DEEP: beyond it a merged page first narrows an id threshold
LIST_PROBES = 32  # ids probed per shard per narrowing round
LIST_UNSEEN = 1000  # narrowing stops when at most this many ids lie between the threshold and the page
LIST_MAX_ROUNDS = 24  # a safety bound (ids below 2**53 need at most 11 rounds of 33-way search)


def _replies(replies: list) -> list:
    return replies


class TaskCenter:
    def __init__(self, shards: Shards | Core) -> None:
        if isinstance(shards, Core):  # one shard given as its core (tools, older callers)
            shards = _OneShard(shards)
        self.shards = shards
        self.n = shards.n
        self.core = shards.home
        self.k = self.core.keys
        self.s = self.core.settings

    # ---- where things live -----------------------------------------------------------------
    def _index(self, core: Core) -> int:
        return core.keys.shard or 0

    def shard_of_user(self, user_id: int) -> Core:
        return self.core if self.n == 1 else self.shards[user_id % self.n]

    def shard_of_task(self, task_id: int) -> Core:
        """The shard of a numeric task id (``id % N``)."""
        return self.core if self.n == 1 else self.shards[int(task_id) % self.n]

    def shard_of_secret(self, secret: str) -> Core | None:
        """The shard an access token, API token or public task id names; None: nobody's."""
        if self.n == 1:
            return self.core
        i = marked_shard(secret, self.n)
        return None if i is None else self.shards[i]

    def _secret(self, prefix: str, length: int, core: Core) -> str:
        if self.n == 1:
            return new_secret(prefix, length)
        return new_secret(prefix, length - 2) + shard_mark(self._index(core))

    def _read(self, commands: list[tuple]) -> list:
        """Plain commands of any shards in one round trip (one pipeline per node); their replies."""
        if not commands:
            return []
        return self.core.call(Call([Command(c) for c in commands], _replies))

    # ---- platform-facing (API token) ---------------------------------------------------
    def submit_call(self, api_token: str, platform: str, action: str, body: Any) -> Call:
        """Charge and create one task; the result is ``{"id", "task_id", "quota", "kick"}``."""
        platform = (platform or "").lower()
        act = (action or "").upper()
        if platform not in ACTIONS:
            raise InvalidInput(f"unknown platform {platform!r}")
        if act not in ACTIONS[platform]:
            raise InvalidInput(f"action must be one of {', '.join(a.lower() for a in ACTIONS[platform])}")
        if not isinstance(body, dict):
            raise InvalidInput("the JSON body must be an object")
        core = self.shard_of_secret(api_token)
        if core is None:
            raise REFUSALS["invalid_token"](())
        prompt = body.get("prompt") or body.get("gpt_description_prompt") or ""
        props = orjson.dumps({"input": str(prompt)[:2000]})
        public = new_task_id(None if self.n == 1 else self._index(core))
        digest = token_hash(api_token)
        k = core.keys

        def finish(replies: list) -> dict:
            reply = raise_for(replies[0], refusals=REFUSALS)
            return {"id": int(reply[1]), "task_id": public, "quota": int(reply[2]), "kick": reply[3] == 1}

        return Call([core.script(
            "submit", [k.token(digest), k.seq, k.public_ids, k.prices], platform, act,
            DEFAULT_PRICES.get(f"{platform}:{act}", 0), public, orjson.dumps(body), props, digest,
            self.n, self._index(core))], finish)

    def submit(self, api_token: str, platform: str, action: str, body: Any) -> dict:
        return self.core.call(self.submit_call(api_token, platform, action, body))

    def fetch_call(self, api_token: str, task_ids: Any, many: bool) -> Call:
        """The caller's own tasks: one (NotFound if missing) or a list (missing ones left out).
        Asks the token's shard only: the caller's tasks are all there."""
        if many:
            if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
                raise InvalidInput("ids must be an array of task ids")
            if len(task_ids) > MAX_FETCH_IDS:
                raise InvalidInput(f"at most {MAX_FETCH_IDS} ids per call")
        ids = list(dict.fromkeys(task_ids)) if many else [task_ids]

        def finish(replies: list) -> Any:
            reply = raise_for(replies[0], refusals=REFUSALS)
            found = [self.render(r, channel=False) for r in reply[1:] if r != 0]
            if many:
                return found
            if not found:
                raise NotFound("task not found")
            return found[0]

        if not ids:
            return Call([], lambda replies: [])
        core = self.shard_of_secret(api_token)
        if core is None:
            raise REFUSALS["invalid_token"](())
        return Call([core.script("fetch", [core.keys.token(token_hash(api_token)), core.keys.public_ids],
                                 *ids)], finish)

    # ---- management API (access token + New-Api-User) ----------------------------------
    def whoami_call(self, authorization: str | None, api_user: str | None, min_role: int) -> Call:
        """Who the caller is, checked in the spec's order; the user's own fields as the result."""
        token = bearer_value(authorization)
        if not token:
            raise NotSignedIn("not signed in: no access token (Authorization: Bearer <access_token>)")
        core = self.shard_of_secret(token)
        if core is None:
            raise NotSignedIn("not signed in: invalid access token")

        def finish(replies: list) -> dict:
            reply = raise_for(replies[0], refusals={
                "invalid_token": lambda d: NotSignedIn("not signed in: invalid access token")})
            uid, name, role, status, quota, used = reply[1:7]
            header = bearer_value(api_user)  # the seed's own example sends "Bearer <id>"
            if not header:
                raise NotSignedIn("New-Api-User header not provided")
            if not (header.isascii() and header.lstrip("-").isdigit()):  # int() refuses "¹", isdigit() not
                raise NotSignedIn("New-Api-User header format error")
            if int(header) != int(uid):
                raise NotSignedIn("New-Api-User does not match logged in user")
            if _text(status) != ENABLED:
                raise Disabled("this user is disabled")
            if int(role) < min_role:
                raise RoleTooLow("insufficient privileges: this needs an admin user")
            return {"id": int(uid), "username": _text(name), "role": int(role), "status": int(status),
                    "quota": int(quota), "used_quota": int(used)}

        return Call([core.script("whoami", [core.keys.access_tokens], token_hash(token))], finish)

    def list_call(self, params: dict, user_id: int | None, admin: bool) -> Call | Rounds:
        """One page. ``user_id`` restricts to one user (``/self``, or the admin's ``user_id``).

        A ``Call`` (one script on one shard) unless an admin lists every user's tasks over
        several shards: then ``Rounds`` (the merge, module docstring)."""
        query, admin_user = parse_list(params, admin)
        uid = user_id if user_id is not None else admin_user
        if self.n == 1:
            return self._list_on(self.core, query, uid, admin)
        tid = query.args[4]
        if uid is not None:
            core = self.shard_of_user(uid)
            if tid and self.shard_of_secret(tid) is not core:
                return self._nothing(query)
            return self._list_on(core, query, uid, admin)
        if tid:
            core = self.shard_of_secret(tid)
            return self._nothing(query) if core is None else self._list_on(core, query, uid, admin)
        return Rounds(lambda: self._merged_list(query, admin))

    def _list_on(self, core: Core, query: ListQuery, uid: int | None, admin: bool) -> Call:
        k = core.keys

        def finish(replies: list) -> dict:
            reply = replies[0]
            items = [self.render(r, channel=admin, username=admin) for r in reply[1:]]
            return {"items": items, "total": int(reply[0]), "page": query.page, "page_size": query.size}

        return Call([core.script(
            "list", [k.cells(uid), k.index(uid), k.seconds, k.public_ids],
            "" if uid is None else uid, *query.args, "1" if admin else "0")], finish)

    @staticmethod
    def _nothing(query: ListQuery) -> Call:
        return Call([], lambda replies: {"items": [], "total": 0, "page": query.page, "page_size": query.size})

    def _merged_list(self, query: ListQuery, admin: bool) -> Generator[Call, Any, dict]:
        """Every user's tasks over every shard, newest (highest id) first; see the module docstring."""
        size, off = query.size, (query.page - 1) * query.size
        names = "1" if admin else "0"
        filters = query.args[:7]

        def each(mode: str, *extra: Any) -> Call:
            return Call([c.script("list", [c.keys.cells(None), c.keys.index(None), c.keys.seconds,
                                           c.keys.public_ids], "", *filters, 0, size, names, mode, *extra)
                         for c in self.shards], _replies)

        def page(total: int, records: list) -> dict:
            items = [self.render(r, channel=admin, username=admin) for r in records]
            return {"items": items, "total": total, "page": query.page, "page_size": query.size}

        if off == 0:  # the first page: each shard's first page, merged (one round trip)
            replies = yield Call([c.script("list", [c.keys.cells(None), c.keys.index(None), c.keys.seconds,
                                                    c.keys.public_ids], "", *query.args, names)
                                  for c in self.shards], _replies)
            records = sorted((r for reply in replies for r in reply[1:]), key=lambda r: int(r[0]), reverse=True)
            return page(sum(int(reply[0]) for reply in replies), records[:size])

        total, top, skip = None, "", off
        if off + size > LIST_DEEP:
            # threshold: ids >= high number c_high <= off; narrow until off - c_high <= LIST_UNSEEN
            replies = yield each("probe")
            total = sum(int(reply[0]) for reply in replies)
            if off >= total:
                return page(total, [])
            live = [reply for reply in replies if int(reply[0]) > 0]
            low, high = min(int(r[2]) for r in live), max(int(r[1]) for r in live) + 1
            c_high = 0
            for _ in range(LIST_MAX_ROUNDS):
                if off - c_high <= LIST_UNSEEN or high - low <= 1:
                    break
                width = high - low
                probes = sorted({low + width * j // (LIST_PROBES + 1) for j in range(1, LIST_PROBES + 1)} - {low})
                replies = yield each("probe", *probes)
                counts = [sum(int(reply[3 + j]) if len(reply) > 3 + j else 0 for reply in replies)
                          for j in range(len(probes))]
                for x, c in zip(probes, counts):  # counts fall as x grows
                    if c > off:
                        low = x
                    else:
                        high, c_high = x, c
                        break
            top, skip = high - 1, off - c_high
        replies = yield each("ids", top, min(skip, LIST_UNSEEN + LIST_DEEP) + size)
        if total is None:
            total = sum(int(reply[0]) for reply in replies)
        merged = sorted((int(i) for reply in replies for i in reply[1:]), reverse=True)
        chosen = merged[skip:skip + size]
        if not chosen:
            return page(total, [])
        groups: dict[int, list[int]] = {}
        for i in chosen:
            groups.setdefault(i % self.n, []).append(i)
        order = list(groups)
        replies = yield Call([self.shards[s].script("records", [self.shards[s].keys.public_ids], names,
                                                    *groups[s]) for s in order], _replies)
        found = {int(r[0]): r for reply in replies for r in reply if r != 0}
        return page(total, [found[i] for i in chosen if i in found])

    def list(self, params: dict | None = None, user_id: int | None = None, admin: bool = True) -> dict:
        return self.core.perform(self.list_call(params or {}, user_id, admin))

    def render(self, r: list, channel: bool, username: bool = False) -> dict:
        (id_, ca, ua, tid, pf, u, ch, q, ac, st, fr, sbt, stt, ft, pg, pr, d) = r[:17]
        out: dict[str, Any] = {"id": int(id_), "created_at": _int(ca), "updated_at": _int(ua) // 1000,
                               "task_id": _text(tid), "platform": _text(pf), "user_id": _int(u)}
        if channel:
            out["channel_id"] = _int(ch)
        out.update({"quota": _int(q), "action": _text(ac), "status": _text(st), "fail_reason": _text(fr or b""),
                    "submit_time": _int(sbt), "start_time": _int(stt), "finish_time": _int(ft),
                    "progress": _text(pg or b"0%"), "properties": _json_fragment(pr), "data": _json_fragment(d)})
        if username:
            out["username"] = _text(r[17]) if len(r) > 17 else ""
        return out

    # ---- operators -----------------------------------------------------------------------
    def create_user(self, name: str, quota: int = 0, role: str | int = "common") -> dict:
        """A user, its access token and a first unlimited API token (both shown only here).
        Placed on the shard of its name, where its name is checked unique."""
        name = (name or "").strip()
        if not name or len(name) > MAX_NAME:
            raise InvalidInput(f"a user name of 1 to {MAX_NAME} characters is required")
        level = ROLES.get(role) if isinstance(role, str) else role
        if level not in ROLES.values():
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
        quota = _quota(quota)
        core = self.shards.for_name(name)
        access, api_key = self._secret("", 32, core), self._secret("sk-", 48, core)
        k = core.keys
        reply = core.run("create_user", [k.user_seq, k.user_names, k.access_tokens], name, level, quota,
                         token_hash(access), token_hash(api_key), self.n, self._index(core))
        raise_for(reply, "user", refusals={"exists": lambda d: Conflict(f"user '{d[0]}' already exists")})
        return {"id": int(reply[1]), "access_token": access, "api_key": api_key}

    def create_token(self, user_id: int, name: str = "", quota: int | None = None) -> dict:
        """Another API token; ``quota`` None = unlimited (the user's quota still applies)."""
        uid = _uid(user_id)
        core = self.shard_of_user(uid)
        key = self._secret("sk-", 48, core)
        reply = core.run("create_token", [core.keys.user(uid)], uid, token_hash(key), (name or "")[:MAX_NAME],
                         "" if quota is None else _quota(quota))
        raise_for(reply, "user")
        return {"user_id": uid, "api_key": key, "quota": quota}

    def set_token_status(self, api_key: str, enabled: bool) -> None:
        core = self.shard_of_secret(api_key)
        if core is None:
            raise NotFound("token not found")
        raise_for(core.run("set_fields", [core.keys.token(token_hash(api_key))], "st",
                           ENABLED if enabled else DISABLED), "token")

    def grant(self, user_id: int, amount: int) -> int:
        """Add (negative: take back) quota; returns the new quota."""
        uid = _uid(user_id)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount == 0 or abs(amount) > MAX_QUOTA:
            # beyond 2**53 Lua's numbers round it, and HINCRBY refuses the rounded value (a 500)
            raise InvalidInput(f"amount must be a non-zero integer between {-MAX_QUOTA} and {MAX_QUOTA}")
        core = self.shard_of_user(uid)
        reply = raise_for(core.run("grant", [core.keys.user(uid)], uid, amount), "user", refusals=REFUSALS)
        return int(reply[1])

    def set_user(self, user_id: int, status: str | None = None, role: str | None = None) -> None:
        uid = _uid(user_id)
        pairs: list[Any] = []
        if status is not None:
            if status not in ("enabled", "disabled"):
                raise InvalidInput("status must be 'enabled' or 'disabled'")
            pairs += ["st", ENABLED if status == "enabled" else DISABLED]
        if role is not None:
            if role not in ROLES:
                raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
            pairs += ["role", ROLES[role]]
        if not pairs:
            raise InvalidInput("nothing to change: give status and/or role")
        core = self.shard_of_user(uid)
        raise_for(core.run("set_fields", [core.keys.user(uid)], *pairs), "user")

    def user(self, user_id: int) -> dict:
        uid = _uid(user_id)
        core = self.shard_of_user(uid)
        h = core.r.hgetall(core.keys.user(uid))
        if not h:
            raise NotFound("user not found")
        return _user_view(uid, h)

    def user_id(self, who: str | int) -> int:
        """A user given by id or by name (operators type names)."""
        if isinstance(who, int) or str(who).isdigit():
            return _uid(who)
        core = self.shards.for_name(str(who))
        uid = core.r.hget(core.keys.user_names, str(who))
        if uid is None:
            raise NotFound(f"no user named {who!r}")
        return int(uid)

    def users(self) -> list[dict]:
        """Every user of every shard, by id."""
        if self.n == 1:
            names = [self.core.r.hgetall(self.k.user_names)]
        else:
            names = self._read([("HGETALL", c.keys.user_names) for c in self.shards])
        uids = sorted(int(v) for h in names for v in h.values())
        hashes = self._read([("HGETALL", self.shard_of_user(uid).keys.user(uid)) for uid in uids])
        return [_user_view(uid, h) for uid, h in zip(uids, hashes) if h]

    def add_channel(self, platform: str, base_url: str, key: str = "", weight: int = 1, enabled: bool = True,
                    name: str = "", only_if_none: bool = False) -> int | None:
        """A new channel's id; with ``only_if_none``, None when the platform already has one.
        Channels live on shard 0 (only Python reads them)."""
        platform = (platform or "").lower()
        if platform not in ACTIONS:
            raise InvalidInput(f"unknown platform {platform!r} (known: {', '.join(ACTIONS)})")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidInput("base_url must be an http:// or https:// URL")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 10_000:
            raise InvalidInput("weight must be an integer from 0 to 10000")
        k = self.k
        reply = self.core.run("add_channel", [k.channel_seq, k.channels], platform, base_url.rstrip("/"), key or "",
                              weight, ENABLED if enabled else DISABLED, (name or platform)[:MAX_NAME],
                              "1" if only_if_none else "0")
        if _text(reply[0]) == "exists":
            return None
        return int(reply[1])

    def set_channel(self, channel_id: int, enabled: bool | None = None, weight: int | None = None,
                    base_url: str | None = None, key: str | None = None) -> None:
        pairs: list[Any] = []
        if enabled is not None:
            pairs += ["st", ENABLED if enabled else DISABLED]
        if weight is not None:
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 10_000:
                raise InvalidInput("weight must be an integer from 0 to 10000")
            pairs += ["w", weight]
        if base_url is not None:
            if not base_url.startswith(("http://", "https://")):
                raise InvalidInput("base_url must be an http:// or https:// URL")
            pairs += ["url", base_url.rstrip("/")]
        if key is not None:
            pairs += ["key", key]
        if not pairs:
            raise InvalidInput("nothing to change")
        raise_for(self.core.run("set_fields", [self.k.channel(_uid(channel_id, "channel id"))], *pairs), "channel")

    def delete_channel(self, channel_id: int) -> None:
        cid = _uid(channel_id, "channel id")
        raise_for(self.core.run("delete_channel", [self.k.channel(cid), self.k.channels], cid), "channel")

    def channels(self, platform: str | None = None) -> list[Channel]:
        ids = sorted(int(c) for c in self.core.r.smembers(self.k.channels))
        pipe = self.core.r.pipeline(transaction=False)
        for cid in ids:
            pipe.hgetall(self.k.channel(cid))
        out = []
        for cid, h in zip(ids, pipe.execute()):
            if not h or (platform and _text(h[b"pf"]) != platform):
                continue
            out.append(Channel(cid, _text(h[b"pf"]), _text(h[b"url"]), _text(h.get(b"key", b"")),
                               int(h.get(b"w", 1)), _text(h.get(b"st", b"1")) == ENABLED, _text(h.get(b"name", b""))))
        return out

    def channel_views(self) -> list[dict]:
        """Channels as operators see them (never their key)."""
        return [{"id": c.id, "platform": c.platform, "base_url": c.base_url, "weight": c.weight,
                 "status": "enabled" if c.enabled else "disabled", "name": c.name} for c in self.channels()]

    def set_price(self, platform: str, action: str, quota: int) -> None:
        """Every shard's copy (the submit script reads its own shard's)."""
        platform, act = (platform or "").lower(), (action or "").upper()
        if platform not in ACTIONS or act not in ACTIONS[platform]:
            raise InvalidInput(f"unknown platform/action {platform}/{action}")
        quota = _quota(quota)
        if self.n == 1:
            self.core.r.hset(self.k.prices, f"{platform}:{act}", quota)
        else:
            self._read([("HSET", c.keys.prices, f"{platform}:{act}", quota) for c in self.shards])

    def prices(self) -> dict[str, int]:
        out = dict(DEFAULT_PRICES)
        out.update({_text(k): int(v) for k, v in self.core.r.hgetall(self.k.prices).items()})
        return out

    def stats(self) -> dict[str, int]:
        """Tasks per status, summed over the shards (one fan-out read)."""
        if self.n == 1:
            raw = [self.core.r.hgetall(self.k.stats)]
        else:
            raw = self._read([("HGETALL", c.keys.stats) for c in self.shards])
        counts = add_counts(raw)
        return {s: counts.get(s, 0) for s in STATUSES}

    # ---- workers: submit, poll, sweep ----------------------------------------------------
    def _each_shard(self, script: Callable[[Core], Any], cores: Iterable[Core] | None = None) -> list:
        """One script per shard (``script(core)`` builds it) in one round trip per node; the replies."""
        cores = list(self.shards if cores is None else cores)
        if not cores:
            return []
        return self.core.call(Call([script(c) for c in cores], _replies))

    def claim_submissions(self, batch: int = 100, ids: Iterable[int] = ()) -> list[Submission]:
        """Up to ``batch`` due tasks per shard, each leased (given ids: those of them that are due)."""
        lease = self.s.submit_lease_ms
        if self.n == 1:
            k = self.k
            replies = [self.core.run("claim", [k.queue, k.claim_leases], batch, lease, *ids)]
        else:
            groups: dict[int, list[int]] = {}
            for i in ids:
                groups.setdefault(int(i) % self.n, []).append(i)
            cores = [self.shards[s] for s in sorted(groups)] if groups else None
            replies = self._each_shard(lambda c: c.script("claim", [c.keys.queue, c.keys.claim_leases], batch, lease,
                                                          *groups.get(self._index(c), ())), cores)
        return [Submission(int(r[0]), _text(r[1]), _text(r[2]), r[3], int(r[4]),
                           tuple(int(c) for c in _text(r[5] or b"").split(",") if c))
                for reply in replies for r in reply]

    def submitted(self, task_id: int, channel_id: int, upstream_id: str) -> bool:
        """Record the platform's acceptance; False if the task had moved on (timed out)."""
        core = self.shard_of_task(task_id)
        reply = core.run("submitted", [core.keys.claim_leases], task_id, channel_id, upstream_id)
        return _text(reply[0]) == "ok"

    def submit_failed(self, task_id: int, channel_id: int | None, reason: str, permanent: bool) -> str:
        """A failed submission: ``retry`` (later, another channel), ``failed`` (refunded) or ``stale``."""
        s = self.s
        core = self.shard_of_task(task_id)
        reply = core.run("submit_error", [core.keys.claim_leases], task_id,
                         "" if channel_id is None else channel_id, reason[:1000], "1" if permanent else "0",
                         s.submit_retries, s.submit_retry_base_ms, s.submit_retry_cap_ms)
        return _text(reply[0])

    def take_polls(self, batch: int) -> list[tuple[int, int, str, str]]:
        """Up to ``batch`` tasks per shard due for a poll: (id, channel id, upstream id, ACTION).

        Due = not polled for half the poll interval: the job runs once per interval, so each
        task is asked about once per run, and never twice in one run (take_polls marks it).
        """
        due = self.s.poll_interval_ms // 2
        if self.n == 1:
            replies = [self.core.run("take_polls", [self.k.polls], batch, due)]
        else:
            replies = self._each_shard(lambda c: c.script("take_polls", [c.keys.polls], batch, due))
        return [(int(r[0]), _int(r[1]), _text(r[2]), _text(r[3])) for reply in replies for r in reply]

    def apply(self, reports: Iterable[Report], actor: str = "poll") -> dict:
        """Apply platform reports: one update script per shard that has some (one round trip)."""
        groups: dict[int, list[Any]] = {}
        for rep in reports:
            groups.setdefault(0 if self.n == 1 else int(rep.id) % self.n, []).extend(
                (rep.id, rep.status, rep.progress, rep.fail_reason, rep.data))
        out = {"changed": 0, "succeeded": 0, "failed": 0, "skipped": 0}
        if not groups:
            return out
        if self.n == 1:
            replies = [self.core.run("update", [self.k.polls], actor, *groups[0])]
        else:
            replies = self._each_shard(lambda c: c.script("update", [c.keys.polls], actor, *groups[self._index(c)]),
                                       [self.shards[s] for s in sorted(groups)])
        for reply in replies:
            for key, value in zip(("changed", "succeeded", "failed", "skipped"), reply):
                out[key] += value
        return out

    def sweep(self) -> dict:
        """Timeouts and lapsed submissions, at most ``sweep_batch`` of each per shard."""
        s = self.s
        minutes = s.task_timeout_ms // 60_000
        if self.n == 1:
            replies = [self.core.run("sweep", [self.k.active, self.k.claim_leases], s.task_timeout_ms,
                                     s.sweep_batch, minutes)]
        else:
            replies = self._each_shard(lambda c: c.script("sweep", [c.keys.active, c.keys.claim_leases],
                                                          s.task_timeout_ms, s.sweep_batch, minutes))
        out = {"timed_out": 0, "submissions_requeued": 0, "timed_out_left": 0}
        for reply in replies:
            for key, value in zip(out, reply):
                out[key] += value
        return out

    # ---- the audit ---------------------------------------------------------------------------
    def audit(self, progress: Callable[[int, int], None] | None = None) -> list[dict]:
        """Per user: do the balance, the ledger totals, the user's tasks (and the ledger stream,
        while it is whole) agree? Read-only, in batches; a row with ``ok`` False names what differs.
        ``progress(users done, users)`` is called after each user (the CLI's bar: a user's
        tasks are read in full, so a large system takes a while). A user's ledger entries are
        in their own shard's stream, checked while that stream is whole."""
        whole: dict[int, bool] = {}
        stream: dict[int, int] = {}
        for core in self.shards:
            r, k = core.r, core.keys
            whole[self._index(core)] = ledger_whole = int(r.hget(k.meta, "ledger_n") or 0) == r.xlen(k.ledger)
            if ledger_whole:
                for _, fields in _xrange_all(r, k.ledger):
                    uid = int(fields[b"user"])
                    stream[uid] = stream.get(uid, 0) + int(fields[b"delta"])
        rows = []
        users = self.users()
        for user in users:
            uid = user["id"]
            core = self.shard_of_user(uid)
            r, k = core.r, core.keys
            ledger_whole = whole[self._index(core)]
            h = r.hgetall(k.user(uid))
            quota, used = int(h[b"quota"]), int(h[b"used"])
            granted, charged, refunded = int(h[b"gr"]), int(h[b"chg"]), int(h[b"rfd"])
            task_charged = task_refunded = unrefunded_failures = 0
            for chunk in _chunks(r.zrange(k.index(uid), 0, -1), 1000):
                for q, st, rf in self._read([("HMGET", k.task(int(tid)), "q", "st", "rf") for tid in chunk]):
                    task_charged += int(q or 0)
                    if rf == b"1":
                        task_refunded += int(q or 0)
                    elif st == b"FAILURE":
                        unrefunded_failures += 1
            problems = []
            if quota != granted - charged + refunded:
                problems.append(f"quota {quota} != grants {granted} - charges {charged} + refunds {refunded}")
            if used != charged - refunded:
                problems.append(f"used_quota {used} != charges {charged} - refunds {refunded}")
            if task_charged != charged:
                problems.append(f"tasks charged {task_charged} != ledger charges {charged}")
            if task_refunded != refunded:
                problems.append(f"refunded tasks {task_refunded} != ledger refunds {refunded}")
            if unrefunded_failures:
                problems.append(f"{unrefunded_failures} failed tasks without a refund")
            if ledger_whole and stream.get(uid, 0) != quota:
                problems.append(f"ledger stream sums to {stream.get(uid, 0)}, quota is {quota}")
            rows.append({"user_id": uid, "username": user["username"], "quota": quota, "used_quota": used,
                         "granted": granted, "charged": charged, "refunded": refunded,
                         "ledger_stream_checked": ledger_whole, "ok": not problems, "problems": problems})
            if progress:
                progress(len(rows), len(users))
        return rows


class _OneShard:
    """``Shards``' interface over one given core (``TaskCenter(core)``)."""

    n = 1

    def __init__(self, core: Core) -> None:
        self.home = core
        self.cores = [core]

    def __iter__(self):
        return iter(self.cores)

    def __getitem__(self, i: int) -> Core:
        return self.cores[i]

    def for_name(self, name: str | bytes) -> Core:
        return self.home


def _xrange_all(r: Any, key: str, count: int = 10_000):
    start = "-"
    while True:
        entries = r.xrange(key, min=start, count=count)
        if not entries:
            return
        yield from entries
        if len(entries) < count:
            return
        last = entries[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _uid(value: Any, what: str = "user id") -> int:
    try:
        uid = int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be an integer") from None
    if uid < 1:
        raise InvalidInput(f"{what} must be positive")
    return uid


MAX_QUOTA = 10**15


def _quota(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > MAX_QUOTA:
        raise InvalidInput("quota must be a non-negative integer")
    return value


def _user_view(uid: int, h: dict) -> dict:
    return {"id": uid, "username": _text(h[b"name"]), "role": int(h[b"role"]), "status": int(h[b"st"]),
            "quota": int(h[b"quota"]), "used_quota": int(h[b"used"])}
