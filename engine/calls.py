"""Engine operations as data: the Redis commands one operation needs, and how its replies become a result.

An operation (start a task, record a heartbeat, read a task...) is a ``Call``:
a short list of commands, at most one of them a script, plus ``finish``, which
turns their replies into the result or raises the engine error. Splitting the
two lets one definition run two ways:

- ``Core.call`` runs it at once, in one round trip (jobs, CLI, tests);
- the web process (``api/batch.py``) coalesces the calls of concurrent
  requests into one pipeline per event-loop tick, so Redis' round trip and
  the socket syscalls are paid once for many requests, and the event loop is
  not blocked once per request.

Every script stays atomic on its own; a pipeline only saves round trips. A
command is never resent, with one exception: a script Redis refused with
NOSCRIPT (it did not run) is loaded and its call run again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generator, Sequence

from redis.cluster import RedisCluster
from redis.exceptions import AskError, MovedError, NoScriptError, TryAgainError

from .scripts import ScriptSet


@dataclass(frozen=True)
class Script:
    """EVALSHA of a script of ``engine/lua`` (``args`` include the standard leading ARGV)."""

    verb: str
    keys: Sequence[str]
    args: Sequence[Any]


@dataclass(frozen=True)
class Command:
    """A plain read command, e.g. ``Command(("HMGET", key, "st"))``."""

    args: tuple


@dataclass(frozen=True)
class Call:
    commands: Sequence[Script | Command]
    finish: Callable[[list], Any]


class Rounds:
    """An operation that needs several round trips (only with several shards: a device create
    or limited claim across shards, a deep merged list page).

    ``steps()`` is a generator: it yields each round's ``Call`` and is sent that call's
    result; what it returns is the operation's result. ``run(call)`` drives it with direct
    calls (``Core.perform``); the web process drives it with ``run_async`` through its
    batcher, so each round joins the other requests' pipeline and the event loop never blocks.
    """

    def __init__(self, steps: Callable[[], Generator[Call, Any, Any]]) -> None:
        self.steps = steps

    def run(self, call: Callable[[Call], Any]) -> Any:
        gen, result = self.steps(), None
        while True:
            try:
                step = gen.send(result)
            except StopIteration as done:
                return done.value
            result = call(step)

    async def run_async(self, call: Callable[[Call], Awaitable[Any]]) -> Any:
        gen, result = self.steps(), None
        while True:
            try:
                step = gen.send(result)
            except StopIteration as done:
                return done.value
            result = await call(step)


def wire(scripts: ScriptSet, call: Call) -> list[tuple]:
    """``call``'s commands as argument tuples (EVALSHA by hand: redis-py's pipeline would
    ask SCRIPT EXISTS first, a second round trip on every execute)."""
    return [("EVALSHA", scripts.sha(c.verb, len(c.keys)), len(c.keys), *c.keys, *c.args) if isinstance(c, Script)
            else c.args for c in call.commands]


def queue(pipe: Any, scripts: ScriptSet, call: Call) -> None:
    """Put ``call``'s commands on a redis-py pipeline."""
    for args in wire(scripts, call):
        pipe.execute_command(*args)


def run_batch(client: Any, scripts: ScriptSet, calls: Sequence[Call]) -> list[tuple[bool, Any]]:
    """Run ``calls`` in one pipeline; returns ``(ok, result or exception)`` per call, in order.

    Connection errors propagate (the caller cannot know what ran). A call whose
    script was not loaded (NOSCRIPT: Redis restarted or SCRIPT FLUSH) is run
    again, once, after loading every script.
    """
    replies = _execute(client, scripts, calls)
    retry = unloaded(replies)
    if retry:
        scripts.load_all()
        for i, rs in zip(retry, _execute(client, scripts, [calls[i] for i in retry])):
            replies[i] = rs
    return finish_all(calls, replies)


def unloaded(replies: list[list]) -> list[int]:
    """Indexes of the calls Redis refused with NOSCRIPT (they did not run: safe to send again)."""
    return [i for i, rs in enumerate(replies) if any(isinstance(r, NoScriptError) for r in rs)]


def split(calls: Sequence[Call], flat: Sequence[Any]) -> list[list]:
    """The replies of one pipeline, cut into each call's own."""
    out, i = [], 0
    for call in calls:
        n = len(call.commands)
        out.append(list(flat[i:i + n]))
        i += n
    return out


def finish_all(calls: Sequence[Call], replies: Sequence[list]) -> list[tuple[bool, Any]]:
    """Each call's ``finish`` over its replies: ``(True, result)``, or ``(False, exception)`` (an
    error reply of its own, or what ``finish`` raised)."""
    out: list[tuple[bool, Any]] = []
    for call, rs in zip(calls, replies):
        try:
            err = next((r for r in rs if isinstance(r, Exception)), None)
            if err is not None:
                raise err
            out.append((True, call.finish(rs)))
        except Exception as exc:  # noqa: BLE001 - handed to the caller of that call
            out.append((False, exc))
    return out


def _execute(client: Any, scripts: ScriptSet, calls: Sequence[Call]) -> list[list]:
    if isinstance(client, RedisCluster):
        flat = _execute_on_cluster(client, scripts, calls)
    else:
        pipe = client.pipeline(transaction=False)
        for call in calls:
            queue(pipe, scripts, call)
        flat = pipe.execute(raise_on_error=False)
    return split(calls, flat)


MAX_REDIRECTS = 5


def _first_key(c: Script | Command) -> str:
    return c.keys[0] if isinstance(c, Script) else c.args[1]


def _execute_on_cluster(rc: RedisCluster, scripts: ScriptSet, calls: Sequence[Call]) -> list:
    """The commands of ``calls``, one plain pipeline per node that owns their slots.

    redis-py's ``ClusterPipeline`` refuses EVALSHA, so commands are grouped by
    the node that owns each one's slot (every command's keys share one slot:
    one hash tag per contract shard) and sent on that node's own connection.
    A command of a multi-shard call (a fan-out read) goes to its own node; the
    call's ``finish`` sees the replies in the order it listed them. A MOVED or
    ASK reply means the command did not run there (slots moving between
    nodes): the slot map is refreshed and only those commands are sent again,
    to the node named (ASK with ASKING first). Connection errors propagate, as
    on one Redis: nothing that may have run is resent.
    """
    flat = [c for call in calls for c in call.commands]
    replies: list[Any] = [None] * len(flat)
    todo = list(range(len(flat)))
    asking: dict[int, Any] = {}
    for attempt in range(MAX_REDIRECTS + 1):
        groups: dict[str, tuple[Any, list[int]]] = {}
        for i in todo:
            node = asking.get(i) or rc.nodes_manager.get_node_from_slot(rc.keyslot(_first_key(flat[i])))
            groups.setdefault(node.name, (node, []))[1].append(i)
        redirected: list[int] = []
        asking = {}
        for node, idx in groups.values():
            pipe = rc.get_redis_connection(node).pipeline(transaction=False)
            for i in idx:
                c = flat[i]
                if attempt and isinstance(replies[i], AskError):
                    pipe.execute_command("ASKING")
                if isinstance(c, Script):
                    pipe.execute_command("EVALSHA", scripts.sha(c.verb, len(c.keys)), len(c.keys), *c.keys, *c.args)
                else:
                    pipe.execute_command(*c.args)
            got = pipe.execute(raise_on_error=False)
            got = [g for g, keep in zip(got, _answer_mask(idx, replies, attempt)) if keep]
            for i, reply in zip(idx, got):
                replies[i] = reply
                if isinstance(reply, (MovedError, AskError, TryAgainError)) and attempt < MAX_REDIRECTS:
                    redirected.append(i)
                    if isinstance(reply, AskError):
                        asking[i] = rc.nodes_manager.get_node(host=reply.host, port=reply.port) or \
                            rc.nodes_manager.get_node(node_name=f"{reply.host}:{reply.port}")
        if not redirected:
            break
        if any(isinstance(replies[i], MovedError) for i in redirected):
            rc.nodes_manager.initialize()
        todo = redirected
    return replies


def _answer_mask(idx: list[int], replies: list, attempt: int) -> list[bool]:
    """Which pipeline replies are the commands' own (an ASKING sent before a command answers OK too)."""
    mask: list[bool] = []
    for i in idx:
        if attempt and isinstance(replies[i], AskError):
            mask.append(False)
        mask.append(True)
    return mask
