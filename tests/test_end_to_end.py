"""End to end with real processes: the Procfile (embedded Redis, web, RQ worker, RQ
scheduler) under honcho, two simulated tool servers as separate processes, one of
them SIGKILLed mid-run. 1,000 tasks in 50 folders go through both phases with 10%
random failures; every task must end completed or final_failed, and the event
stream must show no task completed (or profiled) twice.

Runs once (it starts its own embedded Redis); TTLs are shortened to seconds.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("web did not start")


def _requests() -> list[dict]:
    return [
        {"website": f"https://site{r}.example", "stacking_mode": ["chain", "ring", "all", "wheel", "chain"][r],
         "max_retries": 3,
         "folders": [{"folder_id": f"E2E-{r}-{f}", "tasks": [
             {"domain": "docs.google.com", "title": f"doc {r}-{f}-{t}", "about": "<p>x</p>"} for t in range(20)]}
             for f in range(10)]}
        for r in range(5)
    ]


@contextlib.contextmanager
def running_system(tmp_path: Path, **settings: str):
    """The Procfile under honcho on its own embedded Redis; yields (env, port)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "TASKHUB_VAR": str(tmp_path / "var"),
                "TASKHUB_PORT": str(port), **settings})
    log = open(tmp_path / "honcho.log", "w")
    system = subprocess.Popen([str(BIN / "honcho"), "-f", str(REPO / "Procfile"), "-d", str(REPO), "start"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(port)
        yield env, port
    finally:
        os.killpg(system.pid, signal.SIGTERM)
        try:
            system.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(system.pid, signal.SIGKILL)
        log.close()


def test_readme_walk_through_runs_as_written(tmp_path):
    """Every shell block of the README after the two install commands, run with bash -e
    against a running system (only the port differs: a free one instead of 8000)."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)[2:]
    assert len(blocks) >= 2
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    with running_system(tmp_path) as (env, port):
        script = "set -eo pipefail\n" + "\n".join(blocks).replace("localhost:8000", f"localhost:{port}")
        out = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"ready":true' in out.stdout and '"connect_links":[' in out.stdout
    assert '"status":"completed"' in out.stdout.rsplit('"progress"', 1)[0][-400:]


def test_two_servers_one_killed_drive_1000_tasks_to_the_end(tmp_path):
    sims: list[subprocess.Popen] = []
    with running_system(
        tmp_path, TASKHUB_CLAIM_TTL="2", TASKHUB_RUN_TTL="3", TASKHUB_REASSIGN_AFTER="2",
        TASKHUB_RETRY_BASE="0.2", TASKHUB_RETRY_CAP="1", TASKHUB_SWEEP_INTERVAL="1",
        TASKHUB_RETRY_INTERVAL="1", TASKHUB_REASSIGN_INTERVAL="1",
    ) as (env, port):
        try:
            keys = []
            for name in ("tool-a", "tool-b"):
                out = subprocess.run([str(BIN / "taskhub"), "server", "create", name], env=env, check=True,
                                     capture_output=True, text=True).stdout
                keys.append(json.loads(out)["api_key"])
            (tmp_path / "requests.json").write_text(json.dumps(_requests()))
            subprocess.run([str(BIN / "taskhub"), "import", str(tmp_path / "requests.json"), "--quiet"],
                           env=env, check=True, capture_output=True)
            base = f"http://127.0.0.1:{port}"
            for i, (name, key) in enumerate(zip(("tool-a", "tool-b"), keys)):
                sims.append(subprocess.Popen(
                    [sys.executable, "-m", "tests.sim_worker", base, key, name, "--seed", str(i)],
                    cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            victim = sims[0]
            for line in victim.stdout:  # let tool-a get well into the work, then kill it
                if int(line.rsplit(" ", 1)[1]) >= 150:
                    break
            victim.send_signal(signal.SIGKILL)
            victim.wait()

            r = redis.Redis(unix_socket_path=str(tmp_path / "var" / "redis.sock"))
            stats_key = "taskhub:{stacking}:stats"
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                stats = {k.decode(): int(v) for k, v in r.hgetall(stats_key).items() if int(v)}
                if stats.get("completed", 0) + stats.get("final_failed", 0) == 1000:
                    break
                time.sleep(0.5)
            assert set(stats) <= {"completed", "final_failed"}, stats
            assert sum(stats.values()) == 1000
            assert stats["completed"] > 900

            completed, profiled = Counter(), Counter()
            for _, fields in r.xrange("taskhub:{stacking}:events"):
                if fields[b"to"] == b"completed":
                    completed[fields[b"task"]] += 1
                elif fields[b"to"] == b"profiled":
                    profiled[fields[b"task"]] += 1
            assert max(completed.values()) == 1 and len(completed) == stats["completed"]
            assert max(profiled.values()) == 1
            # tool-a's folders were released when it went silent and finished by tool-b
            starters: dict[bytes, set] = {}
            for _, f in r.xrange("taskhub:{stacking}:events"):
                if f[b"to"] in (b"registering", b"connecting"):
                    folder = r.hget(b"taskhub:{stacking}:t:" + f[b"task"], "fo")
                    starters.setdefault(folder, set()).add(f[b"by"])
            assert any(len(servers) == 2 for servers in starters.values())
            for rid in r.zrange("taskhub:{stacking}:requests", 0, -1):
                assert r.hget(f"taskhub:{{stacking}}:r:{rid.decode()}", "st") == b"completed"
        finally:
            for sim in sims:
                if sim.poll() is None:
                    sim.kill()
                    sim.wait()
