"""OpenAPI 3.1 document of every route (issue 10): being built; ``routes`` is wired into create_app."""
from __future__ import annotations

routes: list = []
