"""What the /metrics request middleware costs per request, in process (no HTTP server, no sockets).

Two apps in the same run, the same engine, one with ``api.metrics.RouteLatency``
and one without (``TASKHUB_METRICS=0``), driven by calling the ASGI app
directly, alternating rounds so drift hits both alike:

- ``unmatched``: ``GET /nope`` (404, no Redis): the middleware's own cost
  stands out against the rest of the stack;
- ``start+complete``: a worker's ``start`` then ``complete`` on a real
  redis-server (the embedded binary, on a unix socket), the hot path of
  issue 7's req/s comparison.

``python -m bench.metrics_overhead [requests]`` (default 20,000 per app and case).
"""
from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid

from bench.common import RedisServer, machine_info  # puts the repository root on sys.path

import orjson  # noqa: E402

from api.app import create_app  # noqa: E402
from engine import Engine, Settings  # noqa: E402
from engine.servers import ApiKey  # noqa: E402


async def call(app, method: str, path: str, headers: list, body: bytes = b"") -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers + [(b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def build(engine: Engine, metrics_on: bool):
    os.environ["TASKHUB_METRICS"] = "1" if metrics_on else "0"
    return create_app(engine, access_log=False)


async def unmatched(app, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await call(app, "GET", "/nope", [])
    return (time.perf_counter() - started) / n


async def start_complete(app, engine: Engine, key: str, n: int) -> float:
    """n requests: n/2 tasks started then completed (pulled beforehand, untimed)."""
    h = [(b"x-api-key", key.encode()), (b"content-type", b"application/json")]
    tids: list[str] = []
    while len(tids) < n // 2:
        _, tasks = engine.stacking.pull(ApiKey(key), min(1000, n // 2 - len(tids)))
        tids += [orjson.loads(t)["id"] for t in tasks]
    body = orjson.dumps({"link_post": "https://drive.google.com/drive/folders/x"})
    started = time.perf_counter()
    for tid in tids:
        st = await call(app, "POST", f"/api/v1/stacking/links/{tid}/start", h)
        assert st == 200, st
        assert await call(app, "POST", f"/api/v1/stacking/links/{tid}/complete", h, body) == 200
    return (time.perf_counter() - started) / (2 * len(tids))


def main(n: int = 20_000, rounds: int = 4) -> None:
    rs = RedisServer()
    try:
        for name, value in machine_info(rs).items():
            if name != "http stack":  # no HTTP server here: the ASGI app is called directly
                print(f"{name}: {value}")
        engine = Engine(rs.client(), Settings(namespace=f"b{uuid.uuid4().hex[:8]}"))
        created = engine.servers.create("bench", ["stacking"])
        engine.servers.heartbeat(engine.servers.authenticate(created["api_key"]), {})
        warm = 200
        folders = (n + 2 * warm) // 1000 + 1  # enough tasks for both apps' warm-up and start+complete rounds
        engine.stacking.create_request({"website": "https://b.example", "stacking_mode": "disable", "folders": [
            {"folder_id": f"B{f}", "tasks": [{"domain": "docs.google.com", "title": str(t)} for t in range(1000)]}
            for f in range(folders)]})
        apps = {"with": build(engine, True), "without": build(engine, False)}
        assert len(apps["with"].user_middleware) == len(apps["without"].user_middleware) + 1
        loop = asyncio.new_event_loop()
        for app in apps.values():  # warm-up: caches, script loading, connection pool
            loop.run_until_complete(unmatched(app, warm))
            loop.run_until_complete(start_complete(app, engine, created["api_key"], warm))
        per = n // rounds
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(rounds):
            for name, app in apps.items():
                results.setdefault(("unmatched", name), []).append(loop.run_until_complete(unmatched(app, per)))
                results.setdefault(("start+complete", name), []).append(
                    loop.run_until_complete(start_complete(app, engine, created["api_key"], per)))
        for case in ("unmatched", "start+complete"):
            w, wo = min(results[(case, "with")]), min(results[(case, "without")])
            print(f"{case:15s} {n} requests per app (best of {rounds} rounds): with {w * 1e6:7.1f} us/req, "
                  f"without {wo * 1e6:7.1f} us/req, middleware {(w - wo) * 1e6:+.1f} us/req ({(w / wo - 1) * 100:+.1f}%)")
    finally:
        rs.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
