"""Small builders shared by the tests."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import orjson

from engine import Engine
from engine.servers import Caller


def request_doc(folders: int = 1, tasks: int = 3, mode: str = "chain", max_retries: int = 3,
                prefix: str = "F", about: str = "<p>Hello <b>world</b></p>") -> dict:
    return {
        "website": "https://likepion.com",
        "stacking_mode": mode,
        "max_retries": max_retries,
        "folders": [
            {"folder_id": f"{prefix}{f}", "tasks": [
                {"domain": "docs.google.com", "title": f"Title {f}-{t}", "about": about,
                 "phone": "0987654321", "address": "123 ABC", "location": "Ha Noi",
                 "image_url": "https://s3.likepion.com/stack/cover.jpg"}
                for t in range(tasks)
            ]}
            for f in range(folders)
        ],
    }


def online_server(engine: Engine, name: str = "w1", services: list[str] | None = None) -> tuple[Caller, str]:
    """A server that has sent its first heartbeat; returns (caller, api key)."""
    created = engine.servers.create(name, services or ["stacking"])
    caller = engine.servers.authenticate(created["api_key"])
    engine.servers.heartbeat(caller, {})
    return engine.servers.authenticate(created["api_key"]), created["api_key"]


def ids(tasks: list[bytes]) -> list[str]:
    return [orjson.loads(t)["id"] for t in tasks]


def link(n: int | str) -> str:
    return f"https://drive.google.com/drive/folders/{n}"


def snapshot(client, namespace: str) -> dict:
    """Every key of a namespace with its content, to prove a refusal changed nothing."""
    out = {}
    for key in sorted(client.scan_iter(match=f"{namespace}:*", count=1000)):
        kind = client.type(key).decode()
        if kind == "hash":
            out[key] = client.hgetall(key)
        elif kind == "zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            out[key] = client.lrange(key, 0, -1)
        elif kind == "set":
            out[key] = sorted(client.smembers(key))
        elif kind == "string":
            out[key] = client.get(key)
        elif kind == "stream":
            out[key] = client.xlen(key)
    return out


def events(engine, task_id: str | None = None) -> list:
    """The stacking event stream of a task's shard, or of every shard (shard by shard)."""
    cores = [engine.stacking.shard_of_task(task_id)] if task_id else list(engine.stacking.shards)
    return [entry for c in cores for entry in c.r.xrange(c.keys.events)]


def state(engine) -> dict:
    return snapshot(engine.core.r, engine.core.settings.namespace)


def assert_refused(engine, send, status: int, code: str | None = None) -> dict:
    """``send()`` is answered with ``status`` in the error envelope and changes no key."""
    before = state(engine)
    resp = send()
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and isinstance(body["message"], str) and body["message"]
    if code is None:
        assert set(body) == {"success", "message"}
    else:
        assert body["code"] == code
    assert state(engine) == before
    return body


def free_port() -> int:
    """A loopback port nothing listens on now (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(app: Any, port: int | None = None, http: str | None = None, loop: str = "auto") -> Iterator[str]:
    """The ASGI ``app`` under a real uvicorn on a thread of this process; yields its base URL.

    For tests that need real HTTP (a browser, a client's sockets and timeouts)
    while reading the same engine in-process. ``http``: uvicorn's protocol (default:
    the one ``taskhub web`` runs, ``api.protocol``'s)."""
    import uvicorn

    from api.protocol import http_protocol

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           http=http or http_protocol(), loop=loop))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def wait_until_answers(url: str, proc: Any, log: Any) -> None:
    """Poll ``url`` until it answers 200; fail with the process's log if it exits or 30 s pass."""
    import httpx

    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
