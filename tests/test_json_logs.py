"""TASKHUB_LOG_FORMAT=json: every line a process writes to stderr is one JSON object.

Checked on real processes (``taskhub web`` serving requests, ``taskhub worker``
running a job and failing one), where uvicorn, RQ and taskhub's own loggers
all write, and on the access log and the formatter directly.
"""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.http import AccessLog, Timed
from api.logs import JsonFormatter, configure_logging, log_format
from engine.connection import ConfigError
from tests.helpers import free_port, wait_until_answers

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
KEYS = {"ts", "level", "logger", "msg"}


def _json_lines(text: str) -> list[dict]:
    """Every non-empty line as JSON (a line that is not fails the test, naming it)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                pytest.fail(f"not a JSON line: {line!r}\n--- whole output ---\n{text}")
    return out


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _env(real_redis_socket: str, tmp_path: Path, db: int = 0, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TASKHUB_ADMIN_TOKEN", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(REDIS_URL=f"unix://{real_redis_socket}?db={db}", TASKHUB_NAMESPACE=f"jl{uuid.uuid4().hex[:10]}",
               TASKHUB_VAR=str(tmp_path / "var"), **extra)
    return env


def test_access_log_line_is_one_json_object_with_the_request_fields(engine):
    lines: list[bytes] = []
    app = create_app(engine, access_log=False)
    client = TestClient(Timed(app, [AccessLog(write=lines.append, fmt="json")]))
    assert client.get("/api/v1/admin/servers").status_code == 200
    assert client.get("/api/v1/admin/nothing/here").status_code == 404
    assert len(lines) == 2 and all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)
    ok, missing = (json.loads(line) for line in lines)
    assert KEYS | {"method", "path", "status", "ms", "caller"} <= set(ok)
    assert (ok["level"], ok["logger"], ok["method"], ok["path"], ok["status"], ok["caller"]) == (
        "INFO", "taskhub.access", "GET", "/api/v1/admin/servers", 200, "operator")
    assert ok["msg"] == "GET /api/v1/admin/servers 200" and isinstance(ok["ms"], float) and ok["ms"] >= 0
    assert ok["ts"].endswith("Z") and len(ok["ts"]) == len("2026-01-31T12:00:00.123Z")
    assert (missing["status"], missing["caller"]) == (404, "-")
    text: list[bytes] = []
    TestClient(Timed(app, [AccessLog(write=text.append, fmt="text")])).get("/api/v1/admin/servers")
    assert b" access GET /api/v1/admin/servers 200 " in text[0] and not text[0].startswith(b"{")


def test_formatter_puts_extra_fields_and_a_traceback_in_one_line():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("taskhub.test_json_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("job=%s done", "sweep", extra={"job": "sweep", "elapsed_ms": 1.5})
        try:
            raise ValueError("bad\nvalue")
        except ValueError:
            logger.exception("failed %d times", 2)
    finally:
        logger.removeHandler(handler)
    first, second = _json_lines(stream.getvalue())
    assert (first["level"], first["logger"], first["msg"], first["job"], first["elapsed_ms"]) == (
        "WARNING", "taskhub.test_json_logs", "job=sweep done", "sweep", 1.5)
    assert second["msg"] == "failed 2 times" and "ValueError: bad\nvalue" in second["exc"]


def test_log_format_refuses_an_unknown_value(monkeypatch):
    monkeypatch.setenv("TASKHUB_LOG_FORMAT", "JSON ")
    assert log_format() == "json"
    monkeypatch.setenv("TASKHUB_LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match="TASKHUB_LOG_FORMAT must be 'text' or 'json'"):
        log_format()
    with pytest.raises(ConfigError):
        configure_logging()


def test_taskhub_web_writes_only_json_lines(tmp_path, real_redis_socket):
    port = free_port()
    env = _env(real_redis_socket, tmp_path, TASKHUB_PORT=str(port), TASKHUB_ACCESS_LOG="1")
    env.pop("TASKHUB_LOG_FORMAT", None)
    err, out = open(tmp_path / "web.err", "wb"), open(tmp_path / "web.out", "wb")
    proc = subprocess.Popen([str(BIN / "taskhub"), "web", "--json"], cwd=REPO, env=env, stdout=out, stderr=err,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base}/api/v1/admin/servers", proc, tmp_path / "web.err")
        assert httpx.get(f"{base}/api/v1/task/424242").status_code == 404
        assert httpx.post(f"{base}/api/v1/stacking/links", headers={"X-API-Key": "thk_x"}).status_code in (401, 405)
    finally:
        _stop(proc)
        err.close()
        out.close()
    assert all(KEYS <= set(r) for r in _json_lines((tmp_path / "web.out").read_text()))
    records = _json_lines((tmp_path / "web.err").read_text())
    assert all(KEYS <= set(r) for r in records)
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "taskhub.access"} <= loggers, loggers
    assert any("Uvicorn running on" in r["msg"] for r in records)  # uvicorn's own lines, in JSON
    access = [r for r in records if r["logger"] == "taskhub.access"]
    assert {"method", "path", "status", "ms", "caller"} <= set(access[-1])
    assert any(r["path"] == "/api/v1/task/424242" and r["status"] == 404 for r in access)


def test_taskhub_worker_writes_rq_and_job_lines_as_json(tmp_path, real_redis_socket):
    import redis
    from rq import Queue

    env = _env(real_redis_socket, tmp_path, db=7, TASKHUB_LOG_FORMAT="json")
    conn = redis.Redis(unix_socket_path=real_redis_socket, db=7)
    conn.flushdb()
    queue = Queue("taskhub", connection=conn)
    queue.enqueue("workers.jobs.run_device_retries", result_ttl=60)
    queue.enqueue("workers.jobs.no_such_job", result_ttl=60)  # RQ logs its failure, traceback included
    err = open(tmp_path / "worker.err", "wb")
    proc = subprocess.Popen([str(BIN / "taskhub"), "worker"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while queue.count or conn.llen("rq:queue:taskhub"):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "worker.err").read_text()
            time.sleep(0.2)
        time.sleep(1.0)  # the second job's failure is logged after it leaves the queue
    finally:
        _stop(proc)
        err.close()
        out = proc.stdout.read().decode()
        proc.stdout.close()
        conn.flushdb()
        conn.close()
    assert out.strip() == "", out  # RQ's own coloured stdout handler is not installed
    records = _json_lines((tmp_path / "worker.err").read_text())
    assert all(KEYS <= set(r) for r in records)
    job = next(r for r in records if r["logger"] == "taskhub.jobs")
    assert job["job"] == "run_device_retries" and job["attempt"] == 1 and isinstance(job["elapsed_ms"], float)
    failed = [r for r in records if r["logger"].startswith("rq.") and r["level"] == "ERROR"]
    assert failed and any("no_such_job" in (r["msg"] + r.get("exc", "")) for r in failed), records


def test_process_commands_with_json_write_json_lines_and_a_json_fatal_error(tmp_path, monkeypatch, capsys):
    from api.cli import main

    monkeypatch.setenv("TASKHUB_LOG_FORMAT", "text")  # main() sets it to json for the process; restored after
    monkeypatch.setenv("TASKHUB_VAR", str(tmp_path / "var"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["redis", "--stop", "--json"]) == 0
    [line] = _json_lines(capsys.readouterr().out)
    assert (line["logger"], line["msg"]) == ("taskhub.redis", "no embedded redis was running")
    monkeypatch.setenv("TASKHUB_FSYNC", "no")
    assert main(["redis", "--json"]) == 2
    captured = capsys.readouterr()
    [error] = _json_lines(captured.err)
    assert captured.out == "" and (error["level"], error["code"], error["exit"]) == ("ERROR", "config", 2)
    assert "TASKHUB_FSYNC must be 'always' or 'everysec'" in error["msg"]
