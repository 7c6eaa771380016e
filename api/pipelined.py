"""One Redis connection driven by the event loop: the web process's batches, never blocking it.

Why: with redis-py's blocking client, a web worker's event loop stood still
while Redis ran each batch's scripts (a complete's script is ~30 us of Redis
time); no other request was parsed or answered meanwhile. Here a batch is
written to the socket and the loop goes on; replies are parsed by hiredis as
they arrive (``data_received``) and each batch's callback runs when its last
reply is in. Batches are pipelined on the one connection: Redis answers in
order, so a FIFO of batches in flight is all the bookkeeping there is.
Measured in BENCHMARKS.md, "HTTP single-task endpoints".

What the engine sees is what redis-py's pipeline gives (``engine.calls``):
replies converted by the client's own response callbacks, error replies as
redis-py's exception objects (``NOSCRIPT`` is ``NoScriptError``), a reply that
is a ``ConnectionError`` (``LOADING``: ``BusyLoadingError``) failing its whole
batch, as the blocking pipeline raises it. Nothing is ever resent: a lost
connection fails every batch in flight with ``ConnectionError`` (the
contract's 503); the next batch opens a new connection.

Why not ``redis.asyncio``: it would not block the loop either, but each
batch would hold a pooled connection of its own until its replies are read,
and every reply passes through several awaited Python layers; here one
connection carries every batch in flight and a reply costs a hiredis
``gets()``. (Not measured side by side; the blocking client is the anchor in
BENCHMARKS.md.)

Used for a plain ``redis.Redis`` on a unix socket or TCP (the client's RESP
version, ``HELLO 3`` by default, with ``AUTH`` of user and password, ``CLIENT
SETNAME``, ``SELECT`` of a database, ``socket_timeout`` and
``socket_connect_timeout`` honoured). Everything else keeps redis-py's
blocking pipeline, correct and slower: TLS (``rediss://``), a credential
provider, fakeredis (tests), and a cluster (one blocking pipeline per node,
``engine/calls.py``). ``for_client`` decides.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any, Callable, Sequence

import hiredis
import redis
from redis._parsers import BaseParser
from redis.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import InvalidResponse
from redis.utils import DEFAULT_RESP_VERSION

PUSH = getattr(hiredis, "PushNotification", ())  # hiredis >= 3.2
Done = Callable[[list | BaseException], None]


class _Batch:
    __slots__ = ("names", "left", "replies", "done", "timer")

    def __init__(self, names: list, done: Done) -> None:
        self.names = names  # each command's name, for its response callback
        self.left = len(names)
        self.replies: list = []
        self.done = done
        self.timer: asyncio.TimerHandle | None = None


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: "PipelinedConnection") -> None:
        self.owner = owner

    def data_received(self, data: bytes) -> None:
        self.owner._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(self, exc)


class PipelinedConnection:
    """``submit(commands, done)``: send a batch; ``done(replies)`` or ``done(exception)`` later, on the loop."""

    def __init__(self, client: redis.Redis, address: tuple[str, Any], handshake: list[tuple],
                 timeout: float | None, connect_timeout: float | None) -> None:
        self.callbacks = client.response_callbacks
        self.address = address
        self.handshake = handshake
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._protocol: _Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._reader: Any = None
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._waiting: list[tuple[bytes, _Batch]] = []  # submitted while connecting
        self._connecting = False

    @classmethod
    def for_client(cls, client: Any) -> "PipelinedConnection | None":
        """The connection for ``client``'s server, or None where the blocking pipeline stays (see the module doc)."""
        if type(client) is not redis.Redis:  # fakeredis' FakeRedis subclasses it; RedisCluster does not
            return None
        pool = client.connection_pool
        kw = pool.connection_kwargs
        if kw.get("credential_provider") is not None:
            return None
        if pool.connection_class is UnixDomainSocketConnection:
            address: tuple[str, Any] = ("unix", kw["path"])
        elif pool.connection_class is Connection:
            address = ("tcp", (kw.get("host", "localhost"), int(kw.get("port", 6379))))
        else:  # SSLConnection and anything custom
            return None
        # The protocol of the client's own connections (redis-py 8 speaks RESP3 unless told
        # otherwise), so that replies, once through its response callbacks, are shaped alike.
        protocol = int(kw.get("protocol") or DEFAULT_RESP_VERSION)
        handshake: list[tuple] = []
        if protocol == 3:
            handshake.append(("HELLO", 3, "AUTH", kw.get("username") or "default", kw["password"])
                             if kw.get("password") else ("HELLO", 3))
        elif kw.get("password"):
            handshake.append(("AUTH", kw["username"], kw["password"]) if kw.get("username")
                             else ("AUTH", kw["password"]))
        if kw.get("client_name"):
            handshake.append(("CLIENT", "SETNAME", kw["client_name"]))
        if int(kw.get("db") or 0):
            handshake.append(("SELECT", int(kw["db"])))
        return cls(client, address, handshake, kw.get("socket_timeout"), kw.get("socket_connect_timeout"))

    # ---- sending -------------------------------------------------------------
    def submit(self, commands: Sequence[tuple], done: Done) -> None:
        """Send ``commands`` as one batch (never resent); ``done`` gets their replies in order."""
        if not commands:  # calls that needed no command (e.g. a fetch of no ids): nothing to wait for
            done([])
            return
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop (each TestClient request has its own)
            self._abandon(loop)
        batch = _Batch([args[0] for args in commands], done)
        data = b"".join([hiredis.pack_command(args) for args in commands])
        if self._transport is None:
            self._waiting.append((data, batch))
            if not self._connecting:
                self._connecting = True
                loop.create_task(self._connect())
            return
        self._send(data, batch)

    def _send(self, data: bytes, batch: _Batch) -> None:
        assert self._transport is not None and self._loop is not None
        self._inflight.append(batch)
        if self.timeout is not None:
            batch.timer = self._loop.call_later(self.timeout, self._timed_out, batch)
        self._transport.write(data)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            kind, where = self.address
            factory = lambda: _Protocol(self)  # noqa: E731
            if kind == "unix":
                opening = loop.create_unix_connection(factory, where)
            else:
                opening = loop.create_connection(factory, *where)
            transport, protocol = await asyncio.wait_for(opening, self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self._connecting = False
            waiting, self._waiting = self._waiting, []
            error = redis.ConnectionError(f"Error connecting to Redis at {self.address[1]}: {exc}")
            for _, batch in waiting:
                batch.done(error)
            return
        if loop is not self._loop:  # abandoned while connecting
            transport.abort()
            return
        self._connecting = False
        self._transport, self._protocol = transport, protocol
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        if self.handshake:
            self._send(b"".join([hiredis.pack_command(args) for args in self.handshake]),
                       _Batch([args[0] for args in self.handshake], self._handshaken))
        waiting, self._waiting = self._waiting, []
        for data, batch in waiting:
            self._send(data, batch)

    def _handshaken(self, replies: list | BaseException) -> None:
        error = replies if isinstance(replies, BaseException) else next(
            (r for r in replies if isinstance(r, BaseException)), None)
        if isinstance(error, redis.ConnectionError):  # e.g. LOADING: the server is there but not ready
            self._fail(error)
        elif error is not None:
            self._fail(redis.AuthenticationError(f"Redis refused the connection's handshake: {error}"))

    # ---- receiving -----------------------------------------------------------
    def _received(self, protocol: _Protocol, data: bytes) -> None:
        if protocol is not self._protocol:
            return
        reader = self._reader
        reader.feed(data)
        inflight = self._inflight
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if isinstance(reply, PUSH):  # RESP3 out-of-band data (none is asked for): not a reply
                    continue
                batch = inflight[0]
                batch.replies.append(reply)
                batch.left -= 1
                if batch.left == 0:
                    inflight.popleft()
                    if batch.timer is not None:
                        batch.timer.cancel()
                    self._finish(batch)
        except (InvalidResponse, IndexError) as exc:  # a reply nobody asked for: the stream is out of step
            self._fail(redis.ConnectionError(f"Redis protocol error: {exc!r}"))

    def _finish(self, batch: _Batch) -> None:
        """Replies as redis-py's pipeline returns them: converted by the client's response callback
        of each command; error replies stay exception objects, a ``ConnectionError`` fails the batch."""
        replies, callbacks = batch.replies, self.callbacks
        for i, (name, reply) in enumerate(zip(batch.names, replies)):
            if isinstance(reply, BaseException):
                if isinstance(reply, redis.ConnectionError):
                    batch.done(reply)
                    return
            elif name in callbacks:
                replies[i] = callbacks[name](reply)
        batch.done(replies)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._fail(redis.ConnectionError(f"Connection to Redis lost: {exc or 'closed by the server'}"))

    def _timed_out(self, batch: _Batch) -> None:
        if batch in self._inflight:
            self._fail(redis.TimeoutError(f"Timeout reading from Redis after {self.timeout} s"))

    def _fail(self, error: BaseException) -> None:
        """The connection is unusable: close it and fail every batch in flight (none is resent)."""
        transport, self._transport, self._protocol = self._transport, None, None
        inflight, self._inflight = self._inflight, collections.deque()
        if transport is not None:
            transport.abort()
        for batch in inflight:
            if batch.timer is not None:
                batch.timer.cancel()
            batch.done(error)

    def _abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start over on ``loop``: the old loop's transport cannot be used from this one."""
        transport, self._transport, self._protocol = self._transport, None, None
        if transport is not None:
            try:
                transport.abort()
            except RuntimeError:  # its loop is closed
                pass
        self._inflight.clear()
        self._waiting.clear()
        self._connecting = False
        self._loop = loop


__all__ = ["PipelinedConnection"]
