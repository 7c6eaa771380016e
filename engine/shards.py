"""A contract split over N hash-tag shards: which shard holds a thing, and the order pulls visit them.

With ``TASKHUB_SHARDS_<CONTRACT>`` = 1 (the default) a contract is one shard
with the tag ``{<contract>}``, exactly as before sharding existed. With N > 1,
shard i has the tag ``shard_tag(contract, i, N)`` (``engine/keys.py``), one
``Core`` each, all on one client and one set of loaded scripts. Every script
runs on one shard: its keys share that shard's tag, so on Redis Cluster it
runs on the one node owning the slot. What needs several shards is several
script calls: a fan-out read is one ``Call`` with a command per shard (one
round trip per node, ``engine/calls.py``); a pull visits shards one after
another until it has its tasks.

Placement is a pure function of the thing's name (``for_name``: CRC32 mod N),
or is carried in the id the engine hands out (``encode_id`` / ``shard_of_id``
for numeric ids: ``local * N + shard``), so any process finds a thing without a
directory lookup. Changing N moves where names map to: see the README,
"Changing the number of shards".
"""
from __future__ import annotations

import itertools
import zlib
from typing import Callable, Iterable, Iterator, Sequence

import redis

from .config import Settings
from .core import Core
from .keys import Keys
from .scripts import ScriptSet


def add_counts(hashes: Iterable[dict]) -> dict[str, int]:
    """Counter hashes (HGETALL replies, one per shard) added up, names decoded: how every
    figure kept per shard (stats, totals) is reported for the whole contract."""
    total: dict[str, int] = {}
    for h in hashes:
        for k, v in h.items():
            name = k.decode() if isinstance(k, bytes) else k
            total[name] = total.get(name, 0) + int(v)
    return total


class Shards:
    """The ``Core`` of each shard of one contract."""

    def __init__(self, client: redis.Redis, settings: Settings, keys: Callable[[int | None, int], Keys],
                 n: int = 1) -> None:
        if n < 1 or n > 256:
            raise ValueError(f"a contract has 1 to 256 shards, not {n}")
        first = keys(None if n == 1 else 0, n)
        scripts = ScriptSet(client, first.contract)
        self.cores: list[Core] = [Core(client, settings, first, scripts)]
        self.cores += [Core(client, settings, keys(i, n), scripts) for i in range(1, n)]
        self.n = n
        self._turns: dict[str, Iterator[int]] = {}

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Core]:
        return iter(self.cores)

    def __getitem__(self, i: int) -> Core:
        return self.cores[i]

    @property
    def home(self) -> Core:
        """Shard 0: where what is not split lives (settings, the clock)."""
        return self.cores[0]

    def for_name(self, name: str | bytes) -> Core:
        """The shard of a thing placed by its name (a stacking request id, a device serial...)."""
        if self.n == 1:
            return self.cores[0]
        raw = name.encode() if isinstance(name, str) else name
        return self.cores[zlib.crc32(raw) % self.n]

    def index_for_name(self, name: str | bytes) -> int:
        raw = name.encode() if isinstance(name, str) else name
        return zlib.crc32(raw) % self.n if self.n > 1 else 0

    def encode_id(self, local: int, shard: int) -> int:
        """A global numeric id from a shard's own sequence number: unique across shards, and
        its shard is ``id % N`` (with one shard, the id is the sequence number itself)."""
        return local * self.n + shard

    def shard_of_id(self, task_id: int) -> Core:
        return self.cores[task_id % self.n]

    def visit_order(self, caller: str) -> Sequence[Core]:
        """Every shard once, starting at this caller's next offset: a caller's successive pulls
        start one shard further on, and different callers start at different shards, so no
        shard is always drained first."""
        if self.n == 1:
            return self.cores
        turn = self._turns.get(caller)
        if turn is None:
            if len(self._turns) > 100_000:  # bounded: callers come and go
                self._turns.clear()
            turn = self._turns.setdefault(caller, itertools.count(zlib.crc32(caller.encode())))
        start = next(turn) % self.n
        return self.cores[start:] + self.cores[:start]
