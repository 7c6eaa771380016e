"""api/pipelined.py on real redis-servers: replies shaped as redis-py's, batches in order, the
handshake (RESP3, AUTH, SELECT), and a lost connection failing what is in flight, never resending it."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from redis.cluster import RedisCluster

from api.pipelined import PipelinedConnection
from engine.connection import CLIENT_OPTIONS, redis_server_binary
from tests.helpers import free_port


class Server:
    """A private redis-server (unix socket, and a TCP port when asked), with extra options."""

    def __init__(self, *options: str, tcp: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="taskhub-pipelined-"))
        self.sock = self.dir / "redis.sock"
        self.port = free_port() if tcp else 0
        self.proc = subprocess.Popen([redis_server_binary(), "--port", str(self.port), "--unixsocket", str(self.sock),
                                      "--save", "", "--appendonly", "no", "--dir", str(self.dir), *options],
                                     stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def server():
    s = Server(tcp=True)
    yield s
    s.stop()


def run(conn: PipelinedConnection, *batches: list[tuple]) -> list[Any]:
    """Submit every batch in one go (all in flight together); each one's replies or exception."""
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        futures = []
        for commands in batches:
            future = loop.create_future()
            conn.submit(commands, lambda got, f=future: f.done() or f.set_result(got))
            futures.append(future)
        return await asyncio.wait_for(asyncio.gather(*futures), 10)

    return asyncio.run(main())


def via_redis_py(client: redis.Redis, commands: list[tuple]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for args in commands:
        pipe.execute_command(*args)
    return pipe.execute(raise_on_error=False)


def comparable(replies: list) -> list:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]


def test_replies_are_shaped_as_redis_pys_own(server):
    client = redis.Redis(unix_socket_path=str(server.sock))
    client.hset("h", mapping={"a": "1", "b": "2"})
    client.zadd("z", {"x": 1.5, "y": 2})
    client.rpush("l", "p", "q")
    script = client.script_load("return {KEYS[1], tonumber(ARGV[1]) + 1, {'nested', 7}, redis.call('HGET', KEYS[1], 'a')}")
    commands = [("HGETALL", "h"), ("HMGET", "h", "a", "nope"), ("GET", "missing"), ("INCR", "n"),
                ("ZRANGE", "z", 0, -1, "WITHSCORES"), ("ZSCORE", "z", "x"), ("LRANGE", "l", 0, -1),
                ("EXISTS", "h", "z"), ("EVALSHA", script, 1, "h", 41), ("EVALSHA", "0" * 40, 0),
                ("HINCRBY", "h", "a", "x"), ("SET", "s", "v"), ("TYPE", "z")]
    conn = PipelinedConnection.for_client(client)
    [ours] = run(conn, commands)
    client.delete("n")
    theirs = via_redis_py(client, commands)
    assert comparable(ours) == comparable(theirs)
    assert isinstance(ours[9], redis.exceptions.NoScriptError) and ours[0] == {b"a": b"1", b"b": b"2"}


def test_batches_in_flight_are_answered_in_order_each_to_its_own(server):
    conn = PipelinedConnection.for_client(redis.Redis(unix_socket_path=str(server.sock)))
    batches = [[("INCR", "n"), ("ECHO", f"batch-{i}")] for i in range(200)] + [[]]
    got = run(conn, *batches)
    assert got[:-1] == [[i + 1, f"batch-{i}".encode()] for i in range(200)] and got[-1] == []


def test_a_reply_split_over_many_reads_is_reassembled(server):
    client = redis.Redis(unix_socket_path=str(server.sock))
    client.set("big", b"x" * 3_000_000)
    [[value]] = run(PipelinedConnection.for_client(client), [("GET", "big")])
    assert value == b"x" * 3_000_000


def test_tcp_auth_and_select_as_the_client_is_configured():
    s = Server("--requirepass", "s3cret", tcp=True)
    try:
        url = f"redis://:s3cret@127.0.0.1:{s.port}/3"
        client = redis.Redis.from_url(url, **CLIENT_OPTIONS)
        conn = PipelinedConnection.for_client(client)
        assert conn is not None and conn.address == ("tcp", ("127.0.0.1", s.port))
        assert run(conn, [("SET", "k", "in-db-3"), ("CLIENT", "GETNAME")])[0][0] is True
        assert client.get("k") == b"in-db-3"
        assert redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{s.port}/0").get("k") is None
        wrong = PipelinedConnection.for_client(redis.Redis.from_url(f"redis://:nope@127.0.0.1:{s.port}/3"))
        [refused] = run(wrong, [("GET", "k")])
        assert isinstance(refused, redis.ConnectionError)  # AuthenticationError is one: the web answers 503
    finally:
        s.stop()


def test_a_lost_connection_fails_what_is_in_flight_and_the_next_batch_reconnects(server):
    client = redis.Redis(unix_socket_path=str(server.sock))
    conn = PipelinedConnection.for_client(client)

    async def main() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        first = loop.create_future()
        conn.submit([("INCR", "n")], first.set_result)
        assert await first == [1]
        slow = loop.create_future()
        # DEBUG SLEEP holds the server while it is killed under the batch: the INCR after it never runs.
        conn.submit([("DEBUG", "SLEEP", "0.5"), ("INCR", "n")], slow.set_result)
        await asyncio.sleep(0.1)
        server.proc.kill()
        server.proc.wait()
        lost = await asyncio.wait_for(slow, 5)
        later = loop.create_future()
        conn.submit([("INCR", "n")], later.set_result)
        return lost, await asyncio.wait_for(later, 10)

    lost, later = asyncio.run(main())
    assert isinstance(lost, redis.ConnectionError)
    assert isinstance(later, redis.ConnectionError)  # the server is gone: a new connection is refused


def test_a_killed_client_connection_is_never_resent(server):
    client = redis.Redis(unix_socket_path=str(server.sock))
    conn = PipelinedConnection.for_client(client)

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        conn.submit([("CLIENT", "SETNAME", "victim")], ready.set_result)
        await ready
        results = []
        for i in range(6):
            f = loop.create_future()
            conn.submit([("RPUSH", "log", i), ("CLIENT", "KILL", "SKIPME", "no", "TYPE", "normal")], f.set_result)
            results.append(await asyncio.wait_for(f, 5))
        return results

    results = asyncio.run(main())
    log = [int(x) for x in client.lrange("log", 0, -1)]
    # The kill closes the connection under each batch: a batch answered ran once; one that got
    # ConnectionError ran at most once (never resent); every later batch opened a new connection.
    assert len(log) == len(set(log))
    assert {i for i, r in enumerate(results) if isinstance(r, list)} <= set(log)
    assert all(isinstance(r, (list, redis.ConnectionError)) for r in results)
    assert any(isinstance(r, list) for r in results[1:])  # it did reconnect after a kill


def test_only_a_plain_redis_client_gets_one():
    assert PipelinedConnection.for_client(fakeredis.FakeRedis()) is None
    assert PipelinedConnection.for_client(redis.Redis.from_url("rediss://localhost:6380")) is None
    assert PipelinedConnection.for_client(RedisCluster.__new__(RedisCluster)) is None
    assert PipelinedConnection.for_client(redis.Redis(unix_socket_path="/nowhere.sock")).address == \
        ("unix", "/nowhere.sock")


def test_a_loading_server_fails_the_batch_with_busy_loading_not_an_auth_error():
    from tests.api.test_unavailable import FakeRedis

    loading = FakeRedis(b"-LOADING Redis is loading the dataset in memory\r\n")
    try:
        conn = PipelinedConnection.for_client(redis.Redis(unix_socket_path=loading.path, **CLIENT_OPTIONS))
        [refused] = run(conn, [("GET", "k")])
        assert type(refused) is redis.exceptions.BusyLoadingError
    finally:
        loading.close()
