"""``Engine``: every contract's operations on one Redis, as the API and workers use them."""
from __future__ import annotations

import os
import time

import redis

from .config import Settings
from .connection import ConfigError, connect, connect_rq
from .devices import Devices
from .keys import DeviceKeys, StackingKeys, TaskCenterKeys
from .servers import Servers
from .shards import Shards
from .stacking import Stacking
from .taskcenter import TaskCenter


class Engine:
    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        ns = settings.namespace
        self.r = client
        self.stacking_shards = Shards(client, settings, lambda i, n: StackingKeys(ns, i, n), settings.shards_stacking)
        self.device_shards = Shards(client, settings, lambda i, n: DeviceKeys(ns, i, n), settings.shards_devices)
        self.task_shards = Shards(client, settings, lambda i, n: TaskCenterKeys(ns, i, n), settings.shards_tasks)
        self.core = self.stacking_shards.home
        self.servers = Servers(self.stacking_shards)
        self.stacking = Stacking(self.stacking_shards)
        self.devices = Devices(self.device_shards)
        self.tasks = TaskCenter(self.task_shards)
        self._rq: redis.Redis | None = None

    def rq_client(self) -> redis.Redis:
        """Where RQ's jobs go: ``TASKHUB_RQ_URL`` when set (``engine.connection.connect_rq``),
        else this engine's own client. An engine on a cluster without ``TASKHUB_RQ_URL`` is
        refused (ConfigError): RQ needs a plain Redis, and falling back to ``connect()``
        would start an embedded server in ./var when REDIS_URL is unset (as it is for an
        engine built on a cluster client in code)."""
        from redis.cluster import RedisCluster

        if self._rq is None:
            if os.environ.get("TASKHUB_RQ_URL", "").strip():
                self._rq = connect_rq()
            elif isinstance(self.r, RedisCluster):
                raise ConfigError("task state is on a cluster: set TASKHUB_RQ_URL to a plain Redis for RQ's job queue")
            else:
                self._rq = self.r
        return self._rq

    @classmethod
    def from_env(cls) -> "Engine":
        """``REDIS_URL`` or the embedded Redis, settings from ``TASKHUB_*``."""
        return cls(connect(), Settings.from_env())

    def iso_now(self) -> str:
        """The engine clock as ISO 8601 UTC (``server_time`` of the health response)."""
        return iso_ms(self.core.now())


_iso_second: tuple[int, str] = (-1, "")  # the second last formatted, and its text


def iso_ms(ms: int) -> str:
    """``ms`` since the epoch as ``2026-12-05T23:31:40.123Z`` (what ``datetime.isoformat``
    gives, UTC, milliseconds). The seconds part is formatted once per second: a
    heartbeat answer is on the web process' hot path, and ``datetime`` costs it
    about 3% of its CPU. The cache is one tuple, read once: threads that log
    through it never pair one second with another's text."""
    global _iso_second
    second, rest = divmod(ms, 1000)
    cached = _iso_second
    if cached[0] != second:
        cached = _iso_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{rest:03d}Z"
