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

from typing import Any, Awaitable, Callable, Generator, NamedTuple, Sequence

import hiredis
from redis.cluster import RedisCluster
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AskError, DataError, MovedError, NoScriptError, ResponseError, TryAgainError

from .scripts import ScriptSet


class Script(NamedTuple):
    """EVALSHA of a script of ``engine/lua`` (``args`` include the standard leading ARGV).

    ``each`` > 0: the script takes items (its last ``each`` args are this call's
    one item) and answers a list of item replies. The commands of a batch that
    are the same script with the same keys and the same other args (the clock
    aside) go out as one script call carrying all their items (``merge``), and
    each call sees its own item's reply, as if it had gone alone.
    """

    verb: str
    keys: Sequence[str]
    args: Sequence[Any]
    each: int = 0


class Command(NamedTuple):
    """A plain read command, e.g. ``Command(("HMGET", key, "st"))``."""

    args: tuple


class Call(NamedTuple):
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


MAX_ITEMS = 1000  # items per merged script call (its ARGV stays far below Lua's unpack limit)


class Plan:
    """The commands that carry a batch of calls, with item scripts merged, and the way back.

    ``commands``: what goes to Redis, in order. ``where[i]``: for each command of
    call ``i``, the index of the command that carries it and its item's index in
    that command's reply (-1: the reply is its own).
    """

    def __init__(self, calls: Sequence[Call]) -> None:
        self.commands: list[Script | Command] = []
        self.where: list[list[tuple[int, int]]] = []
        items: dict[int, list] = {}  # command index -> its items so far
        open_groups: dict[tuple, int] = {}
        for call in calls:
            spots = []
            for c in call.commands:
                if isinstance(c, Script) and c.each:
                    head = tuple(c.args[:len(c.args) - c.each])
                    key = (c.verb, tuple(c.keys), head[:1], head[2:])  # head[1]: the clock
                    at = open_groups.get(key)
                    if at is None or len(items[at]) >= MAX_ITEMS:
                        at = open_groups[key] = len(self.commands)
                        self.commands.append(Script(c.verb, c.keys, head))
                        items[at] = []
                    spots.append((at, len(items[at])))
                    items[at].append(c.args[len(c.args) - c.each:])
                else:
                    spots.append((len(self.commands), -1))
                    self.commands.append(c)
            self.where.append(spots)
        for at, rows in items.items():
            base = self.commands[at]
            assert isinstance(base, Script)
            self.commands[at] = Script(base.verb, base.keys, (*base.args, *(a for row in rows for a in row)))

    def wire(self, scripts: ScriptSet) -> list[tuple]:
        """The commands as argument tuples (EVALSHA by hand: redis-py's pipeline would
        ask SCRIPT EXISTS first, a second round trip on every execute)."""
        return [("EVALSHA", scripts.sha(c.verb, len(c.keys)), len(c.keys), *c.keys, *c.args)
                if isinstance(c, Script) else c.args for c in self.commands]

    def replies(self, flat: Sequence[Any]) -> list[list]:
        """Each call's replies from the commands' (an error reply of a merged call is every item's)."""
        return [[flat[at] if item < 0 or isinstance(flat[at], Exception) else flat[at][item]
                 for at, item in spots] for spots in self.where]


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


def finish_all(calls: Sequence[Call], replies: Sequence[list]) -> list[tuple[bool, Any]]:
    """Each call's ``finish`` over its replies: ``(True, result)``, or ``(False, exception)`` (an
    error reply of its own, or what ``finish`` raised). A plain loop finds the error reply:
    a generator per call was a tenth of a web batch's Python (py-spy)."""
    out: list[tuple[bool, Any]] = []
    for call, rs in zip(calls, replies):
        try:
            for r in rs:
                if isinstance(r, Exception):
                    raise r
            out.append((True, call.finish(rs)))
        except Exception as exc:  # noqa: BLE001 - handed to the caller of that call
            out.append((False, exc))
    return out


def _execute(client: Any, scripts: ScriptSet, calls: Sequence[Call]) -> list[list]:
    plan = Plan(calls)
    if isinstance(client, RedisCluster):
        flat = _execute_on_cluster(client, scripts, plan.commands)
    else:
        flat = _send(client, plan.wire(scripts))
    return plan.replies(flat)


def _send(client: Any, wire: list[tuple], transaction: bool = False) -> Any:
    """``wire`` in one round trip on a plain client: its replies (an error reply as its
    exception), or with ``transaction`` EXEC's reply (a list, or EXECABORT's exception).
    A plain connection goes through ``_execute_plain``; fakeredis and other kinds
    through redis-py's own pipeline."""
    if client.connection_pool.connection_class in _PLAIN_CONNECTIONS:
        if not transaction:
            return _execute_plain(client, wire)
        return _execute_plain(client, [("MULTI",), *wire, ("EXEC",)])[-1]
    pipe = client.pipeline(transaction=transaction)
    for args in wire:
        pipe.execute_command(*args)
    return pipe.execute(raise_on_error=False)


_PLAIN_CONNECTIONS = (Connection, UnixDomainSocketConnection, SSLConnection)


def run_transaction(client: Any, scripts: ScriptSet, commands: Sequence[Script | Command]) -> list:
    """``commands`` in one MULTI/EXEC, one round trip, on a plain client (a cluster node's own
    client, for keys of one slot); returns EXEC's replies, or raises the first error reply.

    Unlike redis-py's transaction pipeline with a script in it, no SCRIPT EXISTS
    round trip first. The price: a script Redis lost (NOSCRIPT) fails inside
    EXEC after the commands before it ran. Then every script is loaded and the
    transaction sent once more, so its commands must be safe to apply twice (an
    import's HSET of bodies writes the same values again). A MULTI Redis
    refused whole (EXECABORT, nothing ran) raises, as do connection errors.
    """
    wire = Plan([Call(commands, list)]).wire(scripts)
    for attempt in range(2):
        replies = _send(client, wire, transaction=True)
        if isinstance(replies, Exception):
            raise replies
        if attempt == 0 and any(isinstance(r, NoScriptError) for r in replies):
            scripts.load_all()
            continue
        break
    error = next((r for r in replies if isinstance(r, Exception)), None)
    if error is not None:
        raise error
    return replies


def _execute_plain(client: Any, wire: list[tuple]) -> list:
    """``wire`` as one pipeline on one pooled connection; a reply per command (an error reply
    as its exception).

    What redis-py's pipeline does, without what it costs here: its encoder
    walks every argument in Python before hiredis packs them (a thousand-item
    script call has 2,000-4,000), and its ``execute`` adds retry and telemetry
    wrappers we do not use (the engine's connection never retries). hiredis
    packs str, bytes, int and float exactly as redis-py does; anything else is
    refused before a byte is sent. A connection error or timeout drops the
    connection and propagates: nothing is sent again.
    """
    try:
        packed = b"".join([hiredis.pack_command(args) for args in wire])
    except TypeError as exc:
        raise DataError(f"cannot send {exc}") from None
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed])
        out: list[Any] = []
        for args in wire:
            try:
                out.append(client.parse_response(conn, args[0]))
            except ResponseError as exc:
                out.append(exc)
        return out
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


MAX_REDIRECTS = 5


def _first_key(c: Script | Command) -> str:
    return c.keys[0] if isinstance(c, Script) else c.args[1]


def _execute_on_cluster(rc: RedisCluster, scripts: ScriptSet, flat: Sequence[Script | Command]) -> list:
    """``flat`` (a batch's commands), one plain pipeline per node that owns their slots.

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
