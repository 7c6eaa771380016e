"""End to end with real processes: the Procfile (embedded Redis, web, RQ worker, RQ
scheduler) under honcho, two simulated tool servers as separate processes, one of
them SIGKILLed mid-run. 1,000 tasks in 50 folders go through both phases with 10%
random failures; every task must end completed or final_failed, and the event
stream must show no task completed (or profiled) twice.

Runs once (it starts its own embedded Redis); TTLs are shortened to seconds.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import redis

from engine.connection import embedded_pid, process_alive
from tests.test_embedded_redis import kill_servers_of, servers_of
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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


class System(NamedTuple):
    env: dict[str, str]
    port: int
    honcho: subprocess.Popen
    log: Path


@contextlib.contextmanager
def running_system(tmp_path: Path, **settings: str):
    """The Procfile under honcho on its own embedded Redis; yields a ``System`` (env, port, ...).

    Afterwards no redis-server of its directory is left running, whatever happened."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "TASKHUB_VAR": str(tmp_path / "var"),
                "TASKHUB_PORT": str(port), "TASKHUB_SANDBOX_PORT": str(free_port()), **settings})
    log = open(tmp_path / "honcho.log", "w")
    system = subprocess.Popen([str(BIN / "honcho"), "-f", str(REPO / "Procfile"), "-d", str(REPO), "start"],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(port)
        yield System(env, port, system, tmp_path / "honcho.log")
    except BaseException:
        log.flush()
        print("---- honcho.log (tail) ----\n" + (tmp_path / "honcho.log").read_text()[-6000:])  # shown on failure
        raise
    finally:
        for sig in (signal.SIGCONT, signal.SIGTERM):  # SIGCONT: a test may have paused a process
            with contextlib.suppress(ProcessLookupError):
                os.killpg(system.pid, sig)
        try:
            system.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(system.pid, signal.SIGKILL)
        log.close()
        kill_servers_of(tmp_path / "var")


def _run_blocks(blocks: list[str], cwd: Path, env: dict, address: str, ours: str,
                timeout: float) -> subprocess.CompletedProcess:
    """README shell blocks as one ``bash -e`` script, the documented address swapped for ours."""
    script = "set -eo pipefail\n" + "\n".join(blocks).replace(address, ours)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_readme_walk_through_runs_as_written(tmp_path):
    """Every shell block of the README after the two install commands, run with bash -e
    against a running system (only the port differs: a free one instead of 8000)."""
    blocks = re.findall(r"```sh\n(.*?)```", (REPO / "README.md").read_text(), re.S)[2:]
    assert len(blocks) >= 2
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    with running_system(tmp_path) as (env, port, *_):
        out = _run_blocks(blocks, tmp_path, env, "localhost:8000", f"localhost:{port}", timeout=60)
    assert out.returncode == 0, out.stderr
    assert '"ready":true' in out.stdout and '"connect_links":[' in out.stdout
    assert '"status":"completed"' in out.stdout.rsplit('"progress"', 1)[0][-400:]


def test_two_servers_one_killed_drive_1000_tasks_to_the_end(tmp_path):
    sims: list[subprocess.Popen] = []
    with running_system(
        tmp_path, TASKHUB_CLAIM_TTL="2", TASKHUB_RUN_TTL="3", TASKHUB_REASSIGN_AFTER="2",
        TASKHUB_RETRY_BASE="0.2", TASKHUB_RETRY_CAP="1", TASKHUB_SWEEP_INTERVAL="1",
        TASKHUB_RETRY_INTERVAL="1", TASKHUB_REASSIGN_INTERVAL="1",
    ) as (env, port, *_):
        try:
            keys = []
            for name in ("tool-a", "tool-b"):
                out = subprocess.run([str(BIN / "taskhub"), "server", "create", name, "--json"], env=env, check=True,
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


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``root``."""
    parent, cmdline = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline[int(entry)] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in found:
                found[child] = cmdline.get(child, "")
                frontier.append(child)
    return {pid: cmd for pid, cmd in found.items() if process_alive(pid)}


def _procfile_pids(honcho: int) -> dict[str, int]:
    """The python process of each Procfile line (redis, web, worker, scheduler); not the worker's
    work horses, forked children with the same command line."""
    found: dict[str, set[int]] = {}
    for pid, cmd in _descendants(honcho).items():
        words = cmd.split()
        for i, word in enumerate(words[:-1]):
            if word.endswith("/taskhub") and words[i + 1] in ("redis", "web", "worker", "scheduler"):
                found.setdefault(words[i + 1], set()).add(pid)
    pids = {}
    for name, candidates in found.items():
        top = [pid for pid in candidates if _parent(pid) not in candidates]
        if top:
            pids[name] = min(top)
    return pids


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _call(port: int, method: str, path: str, body: dict | None = None, key: str | None = None):
    """(status, headers, parsed body) on a fresh connection; a reset or refusal raises."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read() or b"null")
    finally:
        conn.close()


UNAVAILABLE = {"success": False, "message": "storage temporarily unavailable; retry shortly", "code": "unavailable"}


def test_kill_9_of_redis_while_workers_pull_keeps_the_system_up(tmp_path):
    """kill -9 of the embedded redis-server: the `redis` line restarts it, web answers 503
    meanwhile (never a 500 or a reset), web/worker/scheduler keep running and serve again by
    themselves, and every write acknowledged before the kill (TASKHUB_FSYNC=always) is there."""
    with running_system(tmp_path, TASKHUB_FSYNC="always", TASKHUB_SWEEP_INTERVAL="1", TASKHUB_RETRY_INTERVAL="1",
                        TASKHUB_REASSIGN_INTERVAL="1") as system:
        port, var = system.port, tmp_path / "var"
        keys = {}
        for name in ("tool-1", "tool-2"):
            status, _, body = _call(port, "POST", "/api/v1/admin/servers", {"name": name})
            assert status == 201, body
            keys[name] = body["data"]["api_key"]
            assert _call(port, "POST", "/api/v1/worker/health", {"server_name": name}, keys[name])[0] == 200
        doc = {"website": "https://likepion.com", "folders": [
            {"folder_id": f"K9-{f}", "tasks": [{"domain": "docs.google.com", "title": f"t{f}-{t}"} for t in range(20)]}
            for f in range(10)]}  # 20 per folder: completing 10 does not open a folder's barrier
        assert _call(port, "POST", "/api/v1/admin/stacking/requests", doc)[0] == 201

        # acknowledged before the kill: 10 tasks pulled, started and completed by tool-1
        status, _, pulled = _call(port, "GET", "/api/v1/stacking/links?limit=10", key=keys["tool-1"])
        assert status == 200 and len(pulled["data"]) == 10
        done = [t["id"] for t in pulled["data"]]
        for task in done:
            assert _call(port, "POST", f"/api/v1/stacking/links/{task}/start", key=keys["tool-1"])[0] == 200
            assert _call(port, "POST", f"/api/v1/stacking/links/{task}/complete",
                         {"link_post": f"https://drive.google.com/{task}"}, keys["tool-1"])[0] == 200

        # tool-2 keeps pulling and heartbeating throughout: only 200 or 503, never a 500 or a reset
        seen: list = []
        stop = threading.Event()

        def pull_forever() -> None:
            while not stop.is_set():
                for method, path, body in (("POST", "/api/v1/worker/health", {"server_name": "tool-2"}),
                                           ("GET", "/api/v1/stacking/links?limit=2", None)):
                    try:
                        status, headers, answer = _call(port, method, path, body, keys["tool-2"])
                        seen.append((status, answer if status != 200 else None, headers.get("retry-after")))
                    except Exception as exc:  # noqa: BLE001 - a reset or refusal is the failure we look for
                        seen.append(("error", repr(exc), None))
                time.sleep(0.02)

        # every process is past its own start (a process still starting would start a server itself,
        # legitimately): the `redis` line watches, the scheduler has enqueued a job, the worker ran it
        deadline = time.monotonic() + 60
        while not all(marker in system.log.read_text() for marker in ("job=", "| embedded redis (pid")):
            assert time.monotonic() < deadline, "the system did not settle"
            time.sleep(0.1)
        puller = threading.Thread(target=pull_forever, daemon=True)
        puller.start()
        procs = _procfile_pids(system.honcho.pid)
        assert set(procs) == {"redis", "web", "worker", "scheduler"}, _descendants(system.honcho.pid)
        old = embedded_pid(var)
        assert servers_of(var) == [old]

        # hold the outage open: pause the `redis` line, kill the server, look, then let it act
        os.kill(procs["redis"], signal.SIGSTOP)
        try:
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(old):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            outage_seen = len(seen)
            for _ in range(15):  # ~1.5 s: the scheduler's and the worker's next Redis calls fail too
                status, headers, body = _call(port, "GET", "/api/v1/stacking/links?limit=1", key=keys["tool-1"])
                assert (status, body, headers.get("retry-after")) == (503, UNAVAILABLE, "1")
                status, _, body = _call(port, "POST", f"/api/v1/stacking/links/{done[0]}/start", key=keys["tool-1"])
                assert (status, body) == (503, UNAVAILABLE)
                time.sleep(0.1)
            assert embedded_pid(var) is None  # nobody else restarted it while the `redis` line was paused
            for name in ("web", "worker", "scheduler"):
                assert process_alive(procs[name]), f"{name} exited while Redis was away"
        finally:
            os.kill(procs["redis"], signal.SIGCONT)

        deadline = time.monotonic() + 30
        while True:  # back by itself: the `redis` line restarts the server, the web reconnects
            status, _, body = _call(port, "GET", "/api/v1/stacking/links?limit=5", key=keys["tool-1"])
            if status == 200:
                break
            assert (status, body) == (503, UNAVAILABLE)
            assert time.monotonic() < deadline, "the system did not come back"
            time.sleep(0.1)
        new = embedded_pid(var)
        assert new not in (None, old) and servers_of(var) == [new]
        assert len(body["data"]) == 5  # pulls work again
        task = body["data"][0]["id"]
        assert _call(port, "POST", f"/api/v1/stacking/links/{task}/start", key=keys["tool-1"])[0] == 200
        for task in done:  # every transition acknowledged before the kill survived it
            status, _, detail = _call(port, "GET", f"/api/v1/stacking/links/{task}", key=keys["tool-1"])
            assert status == 200 and detail["data"]["status"] == "profiled", detail

        log = system.log.read_text()
        restarted_at = log.index("restarting it")
        assert re.search(rf"redis\.1 .*embedded redis \(pid {old}\) died \(.*\); restarting it", log), log[-3000:]
        # the worker runs scheduled jobs again (the scheduler enqueued them, the worker ran them)
        deadline = time.monotonic() + 30
        while "job=" not in system.log.read_text()[restarted_at:]:
            assert time.monotonic() < deadline, "no job ran after the restart"
            time.sleep(0.2)
        stop.set()
        puller.join(timeout=30)
        assert _procfile_pids(system.honcho.pid) == procs  # nothing exited, nothing was restarted by honcho
        log = system.log.read_text()
        assert "stopped (rc=" not in log and "Traceback" not in log, log[-3000:]
    statuses = Counter(entry[0] for entry in seen)
    assert set(statuses) <= {200, 503}, [entry for entry in seen if entry[0] not in (200, 503)][:5]
    assert statuses[503] >= 1 and all(e[1] == UNAVAILABLE and e[2] == "1" for e in seen if e[0] == 503)
    assert outage_seen < len(seen) and statuses[200] > 2


def _agent(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "taskhub"), "agent", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_readme_device_walk_through_runs_as_written(tmp_path):
    """The README's device `bash` blocks, run against the Procfile plus the simulated agent of
    Procfile.demo (started here as its own process; honcho's line is the first block)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert blocks[0].strip().startswith("honcho start -f Procfile.demo")
    demo = (REPO / "Procfile.demo").read_text()
    agent_args = re.search(r"^agent: taskhub agent (.*)$", demo, re.M).group(1).split()
    with running_system(tmp_path) as (env, port, *_):
        agent = _agent(env, *agent_args)
        try:
            out = _run_blocks(blocks[1:], tmp_path, env, "127.0.0.1:8000", f"127.0.0.1:{port}", timeout=60)
        finally:
            _stop(agent)
    assert out.returncode == 0, out.stderr
    lines, text, decoder = [], out.stdout.strip(), json.JSONDecoder()
    while text:  # curl prints the bodies back to back, without newlines
        doc, end = decoder.raw_decode(text)
        lines.append(doc)
        text = text[end:].lstrip()
    assert lines[0] == {"code": 0, "message": "success", "data": {"task_ids": [1, 2], "created_count": 2}}
    assert lines[1]["data"] == {"task_ids": [3, 4], "created_count": 2}
    listing = lines[2]["data"]
    assert listing["total"] == 3 and [t["id"] for t in listing["items"]] == [4, 3, 2]
    assert listing["items"][0]["start_time"] and listing["items"][0]["status"] == 0  # scheduled: not yet run
    assert lines[3]["data"]["total"] == 4
    assert lines[4]["data"] == {"task_id": 1, "status": 3} and lines[5]["data"] == {"task_id": 1, "status": 0}
    assert lines[6]["code"] == 40901
    assert lines[8]["data"]["plan_name"] == "pro"


def test_simulated_agent_killed_and_restarted_runs_1000_tasks_over_50_devices_once(tmp_path):
    with running_system(tmp_path, TASKHUB_PLAN="business") as (env, port, *_):
        serials = [f"sim-{i:03d}" for i in range(1, 51)]
        bodies = [{"serials": serials, "script_name": "post", "script_config": {"captions": f"round {n}"}}
                  for n in range(20)]
        (tmp_path / "tasks.json").write_text(json.dumps(bodies))
        subprocess.run([str(BIN / "taskhub"), "devices", "create", str(tmp_path / "tasks.json")], env=env,
                       check=True, capture_output=True)
        args = ("--simulate", "50", "--min-seconds", "0.01", "--max-seconds", "0.3", "--interval", "0.2",
                "--fail-rate", "0", "--url", f"http://127.0.0.1:{port}")
        r = redis.Redis(unix_socket_path=str(tmp_path / "var" / "redis.sock"))
        stats_key = "taskhub:{devices}:stats"
        agents = [_agent(env, *args)]
        try:
            deadline = time.monotonic() + 60
            while int(r.hget(stats_key, "2") or 0) < 300 and time.monotonic() < deadline:
                time.sleep(0.05)
            agents[0].send_signal(signal.SIGKILL)  # mid-run: some of its tasks are running
            agents[0].wait()
            running_at_kill = r.hlen("taskhub:{devices}:running")
            agents.append(_agent(env, *args))
            deadline = time.monotonic() + 120
            while int(r.hget(stats_key, "2") or 0) < 1000 and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            for agent in agents:
                _stop(agent)
        assert {k.decode(): int(v) for k, v in r.hgetall(stats_key).items() if int(v)} == {"2": 1000}
        assert running_at_kill > 0  # the kill did interrupt work, which the new agent adopted
        starts, ends = Counter(), Counter()
        for _, f in r.xrange("taskhub:{devices}:events"):
            if f[b"to"] == b"1":
                starts[f[b"task"]] += 1
            elif f[b"from"] == b"1":
                ends[f[b"task"]] += 1
        assert len(starts) == 1000 and set(starts.values()) == {1}  # none run twice
        assert len(ends) == 1000 and set(ends.values()) == {1}


def test_readme_task_center_walk_through_runs_as_written(tmp_path):
    """The README's task-center `shell` blocks, run as written against the Procfile, whose
    sandbox line registered itself as the suno channel (only the port and the sandbox's
    pace differ: jobs of 3 s, polls every second, no random failures)."""
    blocks = re.findall(r"```shell\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 2
    with running_system(tmp_path, TASKHUB_SANDBOX_DURATION="3", TASKHUB_POLL_INTERVAL="1",
                        TASKHUB_SANDBOX_FAIL_RATE="0") as (env, port, *_):
        out = _run_blocks(blocks, tmp_path, env, "127.0.0.1:8000", f"127.0.0.1:{port}", timeout=90)
    assert out.returncode == 0, out.stderr + out.stdout
    docs, text, decoder = [], out.stdout, json.JSONDecoder()
    for start in [m.start() for m in re.finditer(r'\{"(code|success)"', text)]:
        docs.append(decoder.raw_decode(text[start:])[0])
    submits = [d for d in docs if d.get("code") == "success"]
    assert len(submits) == 2 and all(d["data"].startswith("task_") for d in submits)
    selves = [d["data"] for d in docs if d.get("success") and "used_quota" in d.get("data", {})]
    assert (selves[0]["quota"], selves[0]["used_quota"]) == (50_000, 100_000)  # both charged
    assert (selves[-1]["quota"], selves[-1]["used_quota"]) == (100_000, 50_000)  # the failure refunded
    failed = next(d["data"] for d in docs if d.get("success") and "items" in d.get("data", {}))
    assert failed["total"] == 1 and failed["items"][0]["task_id"] == submits[1]["data"]
    assert failed["items"][0]["fail_reason"] == "sandbox: the prompt asked to fail"
    assert "1 users, all balance" in out.stdout
