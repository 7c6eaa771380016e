"""taskhub engine: task state in Redis hashes, every transition one Lua script.

``Core`` holds the client, settings, keys and scripts; ``Stacking`` and
``Servers`` are the stacking contract's operations on it.
"""
from .config import Settings
from .core import Core
from .servers import Servers
from .stacking import Stacking
from .service import Engine

__all__ = ["Core", "Engine", "Servers", "Settings", "Stacking"]
