"""Prometheus /metrics (issue 10): being built; ``routes`` and ``middleware()`` are wired into create_app."""
from __future__ import annotations

from starlette.middleware import Middleware

routes: list = []


def middleware() -> list[Middleware]:
    return []
