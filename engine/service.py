"""``Engine``: every contract's operations on one Redis, as the API and workers use them."""
from __future__ import annotations

from datetime import datetime, timezone

import redis

from .config import Settings
from .connection import connect
from .core import Core
from .devices import Devices
from .keys import DeviceKeys, StackingKeys, TaskCenterKeys
from .servers import Servers
from .stacking import Stacking
from .taskcenter import TaskCenter


class Engine:
    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.core = Core(client, settings, StackingKeys(settings.namespace))
        self.servers = Servers(self.core)
        self.stacking = Stacking(self.core)
        self.devices = Devices(Core(client, settings, DeviceKeys(settings.namespace)))
        self.tasks = TaskCenter(Core(client, settings, TaskCenterKeys(settings.namespace)))

    @classmethod
    def from_env(cls) -> "Engine":
        """``REDIS_URL`` or the embedded Redis, settings from ``TASKHUB_*``."""
        return cls(connect(), Settings.from_env())

    def iso_now(self) -> str:
        """The engine clock as ISO 8601 UTC (``server_time`` of the health response)."""
        ms = self.core.now()
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z")
