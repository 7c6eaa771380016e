"""The operator's dashboard at /dashboard (issue 10): being built; ``routes`` is wired into create_app."""
from __future__ import annotations

routes: list = []
