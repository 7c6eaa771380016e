"""The engine context shared by every contract: client, settings, keys, scripts.

One ``Core`` per process (or per test). Contract modules (``stacking``,
``servers``) take it and never build keys or load scripts themselves.
"""
from __future__ import annotations

from typing import Any, Sequence

import redis

from .config import Settings
from .keys import Keys
from .scripts import ScriptSet


class Core:
    def __init__(self, client: redis.Redis, settings: Settings | None = None) -> None:
        self.r = client
        self.settings = settings or Settings()
        self.keys = Keys(self.settings.namespace)
        self.scripts = ScriptSet(client)

    def now(self) -> int:
        return self.settings.clock()

    def run(self, verb: str, keys: Sequence[str], *args: Any, client: Any = None) -> Any:
        """Run script ``verb`` with the standard leading ARGV: prefix, now, events cap.

        ``client`` may be a pipeline, to run the script inside a MULTI.
        """
        s = self.settings
        return self.scripts.run(verb, keys, [self.keys.prefix, self.now(), s.events_maxlen, *args], client=client)
