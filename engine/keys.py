"""Every Redis key name, built in one place (see ``engine/KEYS.md`` for types and writers).

A key is ``<namespace>:{<tag>}:<suffix>``. The hash tag is the contract, or
the contract and a shard number (``{stacking}``, ``{devices}``, ``{tasks}``,
``{stacking:3}``): every key one script touches shares it, so every script is
valid on Redis Cluster, and sharding a contract is a matter of configuration
(``Keys(namespace, contract, shard)``), not a rewrite. Scripts that derive
per-task or per-folder keys receive the tagged prefix (``Keys.prefix``) as
``ARGV[1]`` and append the same suffixes written here.

``Keys`` holds what every contract has (tasks, leases, the retry schedule,
counters, events, an id sequence); each contract subclasses it for its own.
"""
from __future__ import annotations


SLOTS = 16384


def shard_tag(contract: str, shard: int, shards: int) -> str:
    """The hash tag of shard ``shard`` of ``shards``: ``<contract>:<shard>``, or with the
    smallest suffix ``.<n>`` that puts its slot in the ``shard``-th ``shards``-th of the
    slot space.

    ``redis-cli --cluster create`` gives each of M masters an equal run of
    slots, so shards placed in equal runs of their own land on different
    masters whenever shards <= M (with plain ``{stacking:0}``..``{stacking:2}``
    two of three shards share a master). The tag is a pure function of its
    arguments, so every process agrees on it; changing ``shards`` changes tags
    (README, "Changing the number of shards").
    """
    from redis.crc import key_slot

    low, high = shard * SLOTS // shards, (shard + 1) * SLOTS // shards
    base = f"{contract}:{shard}"
    if low <= key_slot(base.encode()) < high:
        return base
    n = 0
    while not low <= key_slot(f"{base}.{n}".encode()) < high:
        n += 1
    return f"{base}.{n}"


class Keys:
    """Key builder for one contract (and shard) in one namespace (tests give each test its own).

    ``shard`` None (one shard, the default) keeps the tag ``{<contract>}``.
    """

    def __init__(self, namespace: str, contract: str, shard: int | None = None, shards: int = 1) -> None:
        self.contract = contract
        self.shard = shard
        self.tag = contract if shard is None else shard_tag(contract, shard, max(shards, shard + 1))
        self.prefix = f"{namespace}:{{{self.tag}}}:"

    def _k(self, suffix: str) -> str:
        return self.prefix + suffix

    def task(self, task_id: str | int) -> str:
        return self._k(f"t:{task_id}")

    # leases, retries, counters, events
    @property
    def claim_leases(self) -> str:
        return self._k("lease:claim")

    @property
    def run_leases(self) -> str:
        return self._k("lease:run")

    @property
    def retries(self) -> str:
        return self._k("retry")

    @property
    def stats(self) -> str:
        return self._k("stats")

    @property
    def totals(self) -> str:
        """Monotonic counters of what happened (claims, lapsed leases, retries...; ``lua/includes/totals.lua``)."""
        return self._k("totals")

    @property
    def events(self) -> str:
        return self._k("events")

    @property
    def seq(self) -> str:
        return self._k("seq")


class StackingKeys(Keys):
    """Requests, folders, task bodies and servers of the stacking contract."""

    def __init__(self, namespace: str, shard: int | None = None, shards: int = 1) -> None:
        super().__init__(namespace, "stacking", shard, shards)

    def folder(self, folder_id: str) -> str:
        return self._k(f"f:{folder_id}")

    def folder_ready(self, phase: int, folder_id: str) -> str:
        return self._k(f"fr:{phase}:{folder_id}")

    def folder_counts(self, folder_id: str) -> str:
        return self._k(f"fc:{folder_id}")

    def folder_server_counts(self, folder_id: str, server_id: str) -> str:
        return self._k(f"fs:{folder_id}:{server_id}")

    def unbound(self, phase: int) -> str:
        return self._k(f"fu:{phase}")

    def bound(self, phase: int, server_id: str) -> str:
        return self._k(f"fb:{phase}:{server_id}")

    def server_folders(self, server_id: str) -> str:
        return self._k(f"sf:{server_id}")

    def request(self, request_id: str) -> str:
        return self._k(f"r:{request_id}")

    def request_counts(self, request_id: str) -> str:
        return self._k(f"rc:{request_id}")

    def request_folders(self, request_id: str) -> str:
        return self._k(f"rf:{request_id}")

    @property
    def bodies(self) -> str:
        return self._k("bodies")

    @property
    def requests(self) -> str:
        return self._k("requests")

    @property
    def imports(self) -> str:
        return self._k("imports")

    # servers
    def server(self, server_id: str) -> str:
        return self._k(f"s:{server_id}")

    def server_key(self, key_hash: str) -> str:
        return self._k(f"skey:{key_hash}")

    @property
    def servers(self) -> str:
        return self._k("servers")

    @property
    def servers_gone(self) -> str:
        return self._k("servers:gone")


class DeviceKeys(Keys):
    """Device tasks: list indexes, per-device queues, devices and their accounts."""

    def __init__(self, namespace: str, shard: int | None = None, shards: int = 1) -> None:
        super().__init__(namespace, "devices", shard, shards)

    def index(self, name: str, value: str | int | None = None) -> str:
        """A list index, score = task id: ``all``, ``st`` (status), ``se`` (serial), ``sc`` (script), ``src``."""
        return self._k("ix:all" if name == "all" else f"ix:{name}:{value}")

    @property
    def scratch(self) -> str:
        return self._k("ix:scratch")

    def queue(self, serial: str) -> str:
        return self._k(f"q:{serial}")

    def scheduled(self, serial: str) -> str:
        return self._k(f"sched:{serial}")

    def stops(self, serial: str) -> str:
        return self._k(f"stops:{serial}")

    def accounts(self, serial: str) -> str:
        return self._k(f"acc:{serial}")

    @property
    def running(self) -> str:
        return self._k("running")

    @property
    def active(self) -> str:
        return self._k("active")

    @property
    def devices(self) -> str:
        return self._k("devices")

    @property
    def users(self) -> str:
        return self._k("users")


class TaskCenterKeys(Keys):
    """Task center: users, tokens, channels, prices, the ledger, task indexes and cells.

    A *cell* is one sorted set per combination of the low-cardinality list
    filters (platform, action, status, channel), scored by task id, kept once
    for all tasks (``cg:``) and once per user (``cu:<uid>:``); ``cells`` and
    ``cells:<uid>`` register which cells exist. Every task is in exactly one
    global and one user cell, so any combination of filters is a union of a few
    cells: exact totals by ZCOUNT, pages by merging their heads.
    """

    def __init__(self, namespace: str, shard: int | None = None, shards: int = 1) -> None:
        super().__init__(namespace, "tasks", shard, shards)

    @property
    def public_ids(self) -> str:
        return self._k("pub")

    def user(self, uid: int | str) -> str:
        return self._k(f"u:{uid}")

    @property
    def user_seq(self) -> str:
        return self._k("useq")

    @property
    def user_names(self) -> str:
        return self._k("uname")

    @property
    def access_tokens(self) -> str:
        return self._k("uaccess")

    def token(self, key: str) -> str:
        return self._k(f"k:{key}")

    def user_tokens(self, uid: int | str) -> str:
        return self._k(f"ut:{uid}")

    def channel(self, cid: int | str) -> str:
        return self._k(f"c:{cid}")

    @property
    def channels(self) -> str:
        return self._k("chans")

    @property
    def channel_seq(self) -> str:
        return self._k("cseq")

    @property
    def prices(self) -> str:
        return self._k("prices")

    @property
    def ledger(self) -> str:
        return self._k("ledger")

    @property
    def meta(self) -> str:
        return self._k("meta")

    @property
    def queue(self) -> str:
        """Tasks waiting to be submitted upstream, score = due time (ms)."""
        return self._k("q")

    @property
    def polls(self) -> str:
        """Tasks upstream, score = last polled (ms): least recently polled first."""
        return self._k("poll")

    @property
    def active(self) -> str:
        """Unfinished tasks, score = submit time (ms), for the timeout sweep."""
        return self._k("active")

    @property
    def seconds(self) -> str:
        """First task id of each submit second (member id, score second): time filters as id ranges."""
        return self._k("secs")

    def index(self, uid: int | str | None = None) -> str:
        return self._k("ix:all" if uid is None else f"ix:u:{uid}")

    def cell(self, name: str) -> str:
        """One global cell (``<pf>|<AC>|<ST>|<ch>``, as listed in ``cells``): its tasks by id."""
        return self._k(f"cg:{name}")

    def cells(self, uid: int | str | None = None) -> str:
        return self._k("cells" if uid is None else f"cells:{uid}")
