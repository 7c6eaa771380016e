"""Worker servers: creation (API key shown once, stored as a SHA-256), auth, heartbeat, status.

A server hash ``s:<id>`` holds ``name``, ``services`` (comma list), ``st``
(online/offline/maintenance/deleted), ``hb`` (last heartbeat, ms), ``kh`` (key
hash), ``max_threads``, ``metrics`` (last heartbeat body, JSON) and ``ca``.
"Online" as the API means it is derived, not stored: status ``online`` and a
heartbeat within ``server_offline_after``. A new server has no heartbeat, so it
must call ``/api/v1/worker/health`` before it can pull.
"""
from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union

import orjson

from .calls import Call
from .core import Core
from .errors import InvalidInput, InvalidKey, NotFound, raise_for

if TYPE_CHECKING:
    from .shards import Shards

T = TypeVar("T")
STACKING_SERVICES = frozenset({"stacking", "google_stacking"})
OPERATOR_STATUSES = ("online", "offline", "maintenance")


class ApiKey(str):
    """An API key as an HTTP client presented it. Engine operations that take a
    caller accept either this (resolved and authorized inside the script that
    acts: one round trip) or a server id (a trusted caller: jobs, CLI, tests)."""


@dataclass(frozen=True)
class Caller:
    """An authenticated server, as the auth script saw it."""

    id: str
    status: str
    services: frozenset[str]
    heartbeat_ms: int
    name: str


METRIC_MAX = 1_000_000


def _usage(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 <= v <= METRIC_MAX


def _count(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= METRIC_MAX


def _text(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 200


# heartbeat field -> (check, what the error message says it must be)
METRIC_FIELDS = {
    **{f: (_usage, f"a number between 0 and {METRIC_MAX}") for f in ("cpu_usage", "ram_usage", "disk_usage")},
    **{f: (_count, f"an integer between 0 and {METRIC_MAX}") for f in ("active_threads", "active_tasks")},
    **{f: (_text, "a string of at most 200 characters") for f in ("server_name", "ip")},
}


def validate_metrics(body: dict) -> dict:
    """The documented heartbeat fields of ``body``, checked; raises InvalidInput."""
    out: dict = {}
    for field, (valid, must_be) in METRIC_FIELDS.items():
        value = body.get(field)
        if value is None:
            continue
        if not valid(value):
            raise InvalidInput(f"{field} must be {must_be}")
        out[field] = value
    return out


@lru_cache(maxsize=4096)
def hash_key(api_key: str) -> str:
    """SHA-256 of an API key, as stored (``skey:<hash>``). Remembered for the few thousand
    keys a fleet uses: every worker request hashes its key, and a key that is deleted
    still stops working at once (the script resolves ``skey:<hash>`` on each request)."""
    return hashlib.sha256(api_key.encode()).hexdigest()


Who = Union[str, ApiKey, Caller]


def caller_key(core: Core, who: Who) -> str:
    """KEYS[1] of a script that authenticates (includes/auth.lua): ``skey:<hash>``
    for an API key, ``s:<id>`` for a trusted server id. Raises InvalidKey for
    an empty key without asking Redis."""
    if isinstance(who, ApiKey):
        if not who:
            raise InvalidKey("invalid api key")
        return core.keys.server_key(hash_key(who))
    return core.keys.server(who.id if isinstance(who, Caller) else who)


def check_caller(core: Core, who: Who, stacking: bool = True) -> str:
    """Authenticate (and for stacking, authorize) ``who`` alone; returns the server id.

    For the error path: a request that fails validation still reports an
    authentication failure first, as stacking.md orders them.
    """
    reply = raise_for(core.run("auth", [caller_key(core, who)], "1" if stacking else "0",
                               core.settings.server_offline_after_ms), "server")
    return reply[1].decode()


def auth_first(core: Core, who: Who, check: Callable[[], T], stacking: bool = True) -> T:
    """``check()`` (input validation); if it refuses an HTTP caller, an auth failure wins."""
    try:
        return check()
    except InvalidInput:
        if isinstance(who, ApiKey):
            check_caller(core, who, stacking)
        raise


class Servers:
    """Worker servers of the stacking contract.

    With several stacking shards, every shard holds a copy of the server
    registry (``s:``, ``skey:``, ``sname:``, ``servers``), because each
    shard's transition scripts authenticate the caller inside themselves
    (includes/auth.lua) and a script may only touch its own shard. Writes
    (create, heartbeat, status, delete) go to every shard in one call, one
    round trip per node; reads (get, list, authenticate) use shard 0. A write
    is atomic per shard, not across shards: if Redis fails midway, the
    operator's command reports the error and running it again converges
    (create excepted: a name taken on some shards is refused, and the partial
    server is deleted again).
    """

    def __init__(self, shards: "Shards") -> None:
        self.shards = shards
        self.core = shards.home
        self.k = self.core.keys

    def _everywhere(self, verb: str, keys: Callable[[Core], list[str]], *args: Any) -> list:
        """Run script ``verb`` on every shard in one call; the replies, shard by shard."""
        return self.core.call(Call([c.script(verb, keys(c), *args) for c in self.shards], lambda replies: replies))

    def create(self, name: Any, services: Any = None, max_threads: Any = 10) -> dict:
        """Create a server; the returned ``api_key`` is never stored and cannot be shown again.

        ``services``: a list of names or a comma-separated string (default ``["stacking"]``).
        """
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 200:
            raise InvalidInput("name is required (a string of at most 200 characters)")
        name = name.strip()
        if services is None:
            services = ["stacking"]
        elif isinstance(services, str):
            services = services.split(",")
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise InvalidInput("services must be a list of strings")
        services = [s.strip() for s in services if s.strip()]
        if not services:
            raise InvalidInput("at least one service is required")
        if not isinstance(max_threads, int) or isinstance(max_threads, bool) or not 1 <= max_threads <= 100_000:
            raise InvalidInput("max_threads must be an integer between 1 and 100000")
        sid = uuid.uuid4().hex
        api_key = "thk_" + secrets.token_urlsafe(32)
        kh = hash_key(api_key)
        replies = self._everywhere("create_server", lambda c: [c.keys.server(sid), c.keys.server_key(kh),
                                                               c.keys.servers],
                                   name, ",".join(services), kh, max_threads)
        refused = next((r for r in replies if r[0] != b"ok"), None)
        if refused is not None:
            if any(r[0] == b"ok" for r in replies):  # taken on some shards only: undo the rest
                self._everywhere("set_server_status", lambda c: [c.keys.server(sid)], "deleted")
            raise_for(refused, "server")
        return {"id": sid, "name": name, "services": services, "max_threads": max_threads, "api_key": api_key}

    def authenticate(self, api_key: str | None) -> Caller:
        """The server behind ``api_key`` (any service, any status but deleted).

        Raises InvalidKey (401) when unknown or deleted. The HTTP API does not
        call this: its scripts authenticate inside themselves.
        """
        reply = raise_for(self.core.run("auth", [caller_key(self.core, ApiKey(api_key or ""))], "0",
                                        self.core.settings.server_offline_after_ms), "server")
        sid, st, services, hb, name = (v.decode() for v in reply[1:])
        return Caller(sid, st, frozenset(s for s in services.split(",") if s), int(hb), name)

    def heartbeat(self, who: Who, body: Any) -> dict:
        """Validate and record a heartbeat; returns the health response's ``data``.

        ``who``: an ApiKey (checked in the same script), a Caller or a server id.
        Only the documented fields are kept: usages are numbers in 0..1e6 (percent
        or units, the worker's choice), counts are integers in 0..1e6, names and
        ips strings of at most 200 characters. Anything else is refused, not stored.
        """
        return self.core.call(self.heartbeat_call(who, body))

    def heartbeat_call(self, who: Who, body: Any) -> Call:
        metrics = auth_first(self.core, who, lambda: validate_metrics(body), stacking=False)

        def finish(replies: list) -> dict:
            reply = raise_for(replies[0], "server")
            return {"status": "ok", "server_id": reply[3].decode(), "server_name": reply[2].decode()}

        encoded, ip = orjson.dumps(metrics), metrics.get("ip") or ""
        return Call([c.script("heartbeat", [caller_key(c, who)], encoded, ip) for c in self.shards], finish)

    def set_status(self, sid: str, status: str) -> str:
        """Operator sets online/offline/maintenance; returns the previous status."""
        if status not in OPERATOR_STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(OPERATOR_STATUSES)}")
        replies = self._everywhere("set_server_status", lambda c: [c.keys.server(sid)], status)
        return raise_for(replies[0], "server")[1].decode()

    def delete(self, sid: str) -> None:
        raise_for(self._everywhere("set_server_status", lambda c: [c.keys.server(sid)], "deleted")[0], "server")

    def get(self, sid: str) -> dict:
        raw = self.core.r.hgetall(self.k.server(sid))
        if not raw or raw.get(b"st") == b"deleted":
            raise NotFound("server not found")
        return self._render(sid, raw)

    def list(self, limit: int = 1000) -> list[dict]:
        """Servers, oldest first, at most ``limit`` (no unbounded lists)."""
        ids = [i.decode() for i in self.core.r.zrange(self.k.servers, 0, limit - 1)]
        pipe = self.core.r.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(self.k.server(sid))
        return [self._render(sid, raw) for sid, raw in zip(ids, pipe.execute()) if raw]

    def _render(self, sid: str, raw: dict[bytes, bytes]) -> dict:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        metrics = orjson.loads(f.get("metrics") or "{}")
        hb = int(f.get("hb") or 0)
        fresh = hb and self.core.now() - hb <= self.core.settings.server_offline_after_ms
        active = metrics.get("active_tasks")
        active = active if isinstance(active, int) and 0 <= active <= METRIC_MAX else 0
        max_threads = int(f.get("max_threads") or 0)
        return {
            "id": sid,
            "name": f.get("name", ""),
            "services": [s for s in f.get("services", "").split(",") if s],
            "status": f.get("st", ""),
            "online": bool(f.get("st") == "online" and fresh),
            "last_heartbeat_ms": hb or None,
            "max_threads": max_threads,
            "active_tasks": active,
            "free_slots": max(0, max_threads - active),
            "metrics": metrics,
        }
