"""The embedded Redis: started once, shared, and persistent across stops and crashes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from engine.connection import embedded_pid, ensure_embedded, process_alive, stop_embedded


@pytest.fixture
def var(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKHUB_VAR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield tmp_path
    pid = embedded_pid(tmp_path)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _client(sock) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(sock))


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)


def test_second_process_reuses_the_running_server(var):
    sock = ensure_embedded(var)
    pid = embedded_pid(var)
    out = subprocess.run(
        [sys.executable, "-c", "from engine.connection import ensure_embedded, embedded_pid;"
         "ensure_embedded(); print(embedded_pid())"],
        capture_output=True, text=True, check=True, env={**os.environ, "TASKHUB_VAR": str(var)},
    )
    assert int(out.stdout.strip()) == pid
    assert _client(sock).ping()
    assert (var / "taskhub.aof").exists() or _client(sock).config_get("appendonly")["appendonly"] == "yes"


def test_concurrent_starters_start_one_server(var):
    code = "from engine.connection import ensure_embedded, embedded_pid; ensure_embedded(); print(embedded_pid())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TASKHUB_VAR": str(var)}) for _ in range(4)]
    pids = {int(p.communicate(timeout=30)[0].strip()) for p in procs}
    assert len(pids) == 1


def test_data_survives_clean_stop_and_restart(var):
    sock = ensure_embedded(var)
    _client(sock).set("k", "v")
    pid = embedded_pid(var)
    stop_embedded(var)
    _wait_gone(pid)
    sock = ensure_embedded(var)
    assert embedded_pid(var) != pid
    assert _client(sock).get("k") == b"v"


def test_data_survives_a_crash_thanks_to_the_append_only_file(var):
    sock = ensure_embedded(var)
    _client(sock).set("crash", "safe")
    time.sleep(1.5)  # appendfsync everysec
    pid = embedded_pid(var)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    sock = ensure_embedded(var)
    assert _client(sock).get("crash") == b"safe"
