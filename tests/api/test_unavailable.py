"""Redis away: every endpoint answers 503 in the contract's envelope, never a 500, and the
web process serves again by itself once Redis is back (issue 7)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from api.app import create_app
from engine import Engine, Settings
from engine.connection import CLIENT_OPTIONS, redis_server_binary

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ENVELOPE = {"success": False, "message": "storage temporarily unavailable; retry shortly", "code": "unavailable"}
ENDPOINTS = [
    ("GET", "/api/v1/stacking/links?limit=5", None),
    ("POST", "/api/v1/stacking/links/t1/start", None),
    ("POST", "/api/v1/stacking/links/t1/complete", {"link_post": "https://drive.google.com/x"}),
    ("POST", "/api/v1/stacking/links/t1/fail", {"error_message": "x"}),
    ("GET", "/api/v1/stacking/links/t1", None),
    ("GET", "/api/v1/stacking/folders/F1/connect-status", None),
    ("POST", "/api/v1/worker/health", {"server_name": "tool-1"}),
    ("GET", "/api/v1/admin/servers", None),
    ("POST", "/api/v1/admin/servers", {"name": "tool-2"}),
    ("GET", "/api/v1/admin/stacking/stats", None),
    ("POST", "/api/v1/admin/stacking/requests",
     {"website": "https://likepion.com", "folders": [{"folder_id": "F9", "tasks": [
         {"domain": "docs.google.com", "title": "t"}]}]}),
]


def _app(client: redis.Redis) -> TestClient:
    engine = Engine(client, Settings(namespace="unavail", admin_token=TOKEN))
    return TestClient(create_app(engine, access_log=False), raise_server_exceptions=False)


def _send(http: TestClient, method: str, path: str, body: dict | None):
    return http.request(method, path, json=body, headers={"X-API-Key": "thk_unknown", **ADMIN})


def _assert_503(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == ENVELOPE
    assert response.headers["retry-after"] == "1"


class FakeRedis:
    """A unix socket that answers every command with ``reply`` (or never answers, if None)."""

    def __init__(self, reply: bytes | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="taskhub-fake-redis-"))
        self.path = str(self.dir / "redis.sock")
        self.reply = reply
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(64)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if self.reply is not None:
                    try:
                        conn.sendall(self.reply * max(1, data.count(b"\r\n*")))
                    except OSError:  # the client gave up first (the timeout case): nothing to answer
                        return

    def close(self) -> None:
        self.server.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("method,path,body", ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
def test_socket_gone_answers_503_with_the_envelope(method, path, body, tmp_path, caplog):
    http = _app(redis.Redis(unix_socket_path=str(tmp_path / "gone.sock"), **CLIENT_OPTIONS))
    with caplog.at_level(logging.INFO):
        _assert_503(_send(http, method, path, body))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]  # no traceback


def test_loading_and_timeouts_answer_503():
    loading = FakeRedis(b"-LOADING Redis is loading the dataset in memory\r\n")
    silent = FakeRedis(None)
    try:
        _assert_503(_send(_app(redis.Redis(unix_socket_path=loading.path, **CLIENT_OPTIONS)),
                          "GET", "/api/v1/stacking/links", None))
        # A batched request (the pipelined connection, api/pipelined.py): LOADING is a 503 too.
        _assert_503(_send(_app(redis.Redis(unix_socket_path=loading.path, **CLIENT_OPTIONS)),
                          "POST", "/api/v1/worker/health", {"server_name": "tool-1"}))
        timing_out = redis.Redis(unix_socket_path=silent.path, **{**CLIENT_OPTIONS, "socket_timeout": 0.2})
        _assert_503(_send(_app(timing_out), "POST", "/api/v1/worker/health", {"server_name": "tool-1"}))
    finally:
        loading.close()
        silent.close()


def test_an_outage_logs_one_warning_not_one_per_request(tmp_path, caplog):
    http = _app(redis.Redis(unix_socket_path=str(tmp_path / "gone.sock"), **CLIENT_OPTIONS))
    with caplog.at_level(logging.INFO, logger="taskhub.api"):
        for _ in range(20):
            _assert_503(_send(http, "GET", "/api/v1/stacking/links", None))
    warnings = [r for r in caplog.records if r.name == "taskhub.api"]
    assert len(warnings) <= 1 and all(r.levelno == logging.WARNING and not r.exc_info for r in warnings)


def _start_redis(directory: Path) -> subprocess.Popen:
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--dir", str(directory),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(unix_socket_path=str(sock)).ping():
                return proc
        except redis.ConnectionError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "redis-server did not start"
        time.sleep(0.02)


def test_the_web_serves_again_by_itself_once_redis_is_back(tmp_path):
    """Same app, same client and pool: 200, SIGKILL Redis, 503, restart it on the same socket, 200."""
    proc = _start_redis(tmp_path)
    try:
        http = _app(redis.Redis(unix_socket_path=str(tmp_path / "redis.sock"), **CLIENT_OPTIONS))
        created = http.post("/api/v1/admin/servers", json={"name": "tool-1"}, headers=ADMIN)
        assert created.status_code == 201, created.text
        key = {"X-API-Key": created.json()["data"]["api_key"]}
        health = {"server_name": "tool-1"}
        for _ in range(3):  # several pooled connections' worth
            assert http.post("/api/v1/worker/health", json=health, headers=key).status_code == 200
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(3):
            _assert_503(http.post("/api/v1/worker/health", json=health, headers=key))
            _assert_503(http.get("/api/v1/stacking/links", headers=key))
        proc = _start_redis(tmp_path)
        # the first request after the restart already succeeds: stale pooled connections are
        # replaced when checked out, and no command is ever resent
        assert http.post("/api/v1/worker/health", json=health, headers=key).status_code == 200
        pulled = http.get("/api/v1/stacking/links", headers=key)
        assert pulled.status_code == 200 and pulled.json() == {"success": True, "data": []}
    finally:
        proc.kill()
        proc.wait()


def test_task_center_endpoints_answer_503_in_their_own_envelopes(tmp_path):
    http = _app(redis.Redis(unix_socket_path=str(tmp_path / "gone.sock"), **CLIENT_OPTIONS))
    submit = http.post("/suno/submit/music", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-x"})
    assert submit.status_code == 503 and submit.headers["retry-after"] == "1"
    assert submit.json() == {"code": "unavailable", "message": "storage temporarily unavailable; retry shortly",
                             "data": None}
    for path in ("/api/user/self", "/api/task/self", "/api/task/"):
        got = http.get(path, headers={"Authorization": "Bearer tok", "New-Api-User": "1"})
        assert got.status_code == 503, path
        assert got.json() == {"success": False, "message": "storage temporarily unavailable; retry shortly"}


def test_a_task_list_that_fails_in_redis_is_a_500_failed_to_get_task_list(redis_client, monkeypatch):
    """The spec's wording (the original hid such errors as an empty success)."""
    from engine.calls import Call

    engine = Engine(redis_client, Settings(namespace=f"tl{os.getpid()}"))
    user = engine.tasks.create_user("admin", 0, "admin")
    http = TestClient(create_app(engine, access_log=False), raise_server_exceptions=False)

    def broken(*args, **kwargs):
        def finish(replies):
            raise redis.ConnectionError("connection reset while reading the list")
        return Call([], finish)

    monkeypatch.setattr(engine.tasks, "list_call", broken)
    headers = {"Authorization": f"Bearer {user['access_token']}", "New-Api-User": str(user["id"])}
    for path in ("/api/task/self", "/api/task/", "/api/task"):
        got = http.get(path, headers=headers)
        assert got.status_code == 500 and got.json() == {"success": False, "message": "failed to get task list"}
