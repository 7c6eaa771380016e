"""The engine context of one contract: client, settings, its keys, its scripts.

One ``Core`` per contract per process (or per test), all sharing one client.
Contract modules take theirs and never build keys or load scripts themselves.
Every script gets the same leading ARGV (tagged prefix, now in ms, events cap),
which the shared Lua includes rely on.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import redis

from .config import Settings
from .keys import Keys
from .calls import MAX_ITEMS, Call, Command, Rounds, Script, run_batch, run_transaction
from .scripts import ScriptSet


class Core:
    def __init__(self, client: redis.Redis, settings: Settings, keys: Keys, scripts: ScriptSet | None = None) -> None:
        self.r = client
        self.settings = settings
        self.keys = keys
        self.scripts = scripts or ScriptSet(client, keys.contract)

    def node(self) -> redis.Redis:
        """A plain client of the server holding this core's keys: the client itself, or on a
        cluster the node owning this shard's slot (for a MULTI, which a cluster pipeline
        cannot hold with scripts in it)."""
        from redis.cluster import RedisCluster

        if isinstance(self.r, RedisCluster):
            return self.r.get_redis_connection(self.r.get_node_from_key(self.keys.prefix))
        return self.r

    def now(self) -> int:
        return self.settings.clock()

    def script(self, verb: str, keys: Sequence[str], *args: Any) -> Script:
        """A script command for a ``Call``, with the standard leading ARGV: prefix, now, events cap."""
        return Script(verb, keys, self._argv(*args))

    def items(self, verb: str, keys: Sequence[str], shared: Sequence[Any], item: Sequence[Any]) -> Script:
        """A command of a script that takes items (``Script.each``): ``shared`` args after the
        standard ones, then this call's ``item``. Commands alike in a batch share one script call."""
        return Script(verb, keys, self._argv(*shared, *item), each=len(item))

    def call_items(self, verb: str, keys: Sequence[str], shared: Sequence[Any], items: Sequence[Sequence[Any]],
                   finish: Callable[[list], Any]) -> list[tuple[bool, Any]]:
        """Many items of one item script, in one round trip: per item ``(True, finish([reply]))``
        or ``(False, error)``, in order.

        What ``call_many`` of one ``items(...)`` call per item gives (the same
        script calls of at most MAX_ITEMS items, the same outcomes), without
        building a Call per item and merging them again: for a worker's pulled
        batch that is most of the Python a transition costs (BENCHMARKS.md,
        Lifecycle). A script call that fails whole (an error reply) fails each
        of its items with that error.
        """
        head = self._argv(*shared)
        chunks = [items[i:i + MAX_ITEMS] for i in range(0, len(items), MAX_ITEMS)]
        calls = [Call((Script(verb, keys, head + tuple(a for item in chunk for a in item)),), _only_reply)
                 for chunk in chunks]
        out: list[tuple[bool, Any]] = []
        for chunk, (ok, replies) in zip(chunks, run_batch(self.r, self.scripts, calls) if calls else []):
            if not ok:
                out.extend((False, replies) for _ in chunk)
                continue
            for reply in replies:
                try:
                    out.append((True, finish([reply])))
                except Exception as exc:  # noqa: BLE001 - this item's outcome, handed to the caller
                    out.append((False, exc))
        return out

    def transaction(self, commands: Sequence[Script | Command]) -> list:
        """``commands`` (keys of this core's shard only) in one MULTI/EXEC, one round trip;
        EXEC's replies. See ``calls.run_transaction`` for what a lost script costs."""
        return run_transaction(self.node(), self.scripts, commands)

    def call(self, call: Call) -> Any:
        """Run one ``Call`` now, in one round trip; returns its result or raises its error."""
        ok, result = run_batch(self.r, self.scripts, [call])[0]
        if not ok:
            raise result
        return result

    def perform(self, op: Call | Rounds) -> Any:
        """Run a ``Call`` (one round trip) or ``Rounds`` (one call per round) now; its result."""
        return op.run(self.call) if isinstance(op, Rounds) else self.call(op)

    def call_many(self, calls: Sequence[Call]) -> list[tuple[bool, Any]]:
        """Run independent calls in one round trip (a worker starting or completing a
        batch it pulled); returns ``(True, result)`` or ``(False, error)`` per call."""
        return run_batch(self.r, self.scripts, calls) if calls else []

    def run(self, verb: str, keys: Sequence[str], *args: Any, client: Any = None) -> Any:
        """Run script ``verb`` with the standard leading ARGV: prefix, now, events cap.

        ``client`` may be a pipeline, to run the script inside a MULTI.
        """
        return self.scripts.run(verb, keys, self._argv(*args), client=client)

    def _argv(self, *args: Any) -> tuple:
        """The standard leading ARGV every script expects (prefix, now ms, events cap), then ``args``."""
        return (self.keys.prefix, self.now(), self.settings.events_maxlen, *args)


def _only_reply(replies: list) -> Any:
    return replies[0]
