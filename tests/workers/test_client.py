"""The worker client (workers/client.py) against the real app served by uvicorn, on both backends;
its backoff against a scripted fake server; SIGTERM in a real subprocess; the README's worker."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from api.app import create_app
from engine import Engine
from tests.helpers import events, free_port, request_doc, serving
from workers.client import (AuthError, Conflict, DeviceAgentClient, InvalidRequest, NotFound, StackingClient,
                            StackingWorker, Transport, Unavailable)

REPO = Path(__file__).resolve().parents[2]
DRIVE = "https://drive.google.com/drive/folders/"


@pytest.fixture
def live(engine):
    """The base URL of the real app, on the test's engine, serving on a free loopback port."""
    with serving(create_app(engine, access_log=False)) as url:
        yield url


def _server(engine: Engine, name: str = "tool-1") -> str:
    return engine.servers.create(name, ["stacking"])["api_key"]


def _wait(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _transitions(engine: Engine) -> Counter:
    """(task, to) -> how many events moved that task to that status."""
    return Counter((f[b"task"].decode(), f[b"to"].decode())
                   for _, f in events(engine))


# ---- the runner ------------------------------------------------------------------

def test_a_worker_drives_a_request_through_both_phases(engine, live):
    key = _server(engine)
    rid = engine.stacking.create_request(request_doc(folders=2, tasks=3))["request_id"]
    seen: list[dict] = []

    def handle(task: dict) -> dict:
        seen.append(task)
        if task["status"] == "register":
            return {"link_post": DRIVE + task["id"]}
        return {"note": f"{len(task['connect_links'])} links"}

    worker = StackingWorker(StackingClient(live, key), handle, concurrency=3, server_name="tool-1",
                            heartbeat_interval=0.1, idle_sleep=0.05)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        _wait(lambda: engine.stacking.request(rid)["status"] == "completed", what="the request to complete")
    finally:
        worker.stop()
        runner.join(timeout=20)
    assert not runner.is_alive()
    assert worker.counts == {"completed": 12, "failed": 0, "settled_elsewhere": 0, "refused": 0, "abandoned": 0,
                             "left_to_lapse": 0}
    phases = Counter(t["status"] for t in seen)
    assert phases == {"register": 6, "connect": 6}
    # phase 2 carried the chain computed from phase 1's links: per folder, 2 links over 3 files
    assert sum(len(t["connect_links"]) for t in seen if t["status"] == "connect") == 4
    assert all(link.startswith(DRIVE) for t in seen for link in t.get("connect_links", []))
    moves = _transitions(engine)
    assert {n for (tid, to), n in moves.items() if to in ("profiled", "completed")} == {1}
    assert sum(1 for (tid, to) in moves if to == "completed") == 6
    [server] = [s for s in engine.servers.list() if s["name"] == "tool-1"]
    assert server["last_heartbeat_ms"]


def _failed_by_worker(engine: Engine, live: str, key: str, handle, n: int) -> list[dict]:
    """Run a StackingWorker with ``handle`` until it has failed ``n`` tasks; their states."""
    worker = StackingWorker(StackingClient(live, key), handle, concurrency=2, idle_sleep=0.05)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        _wait(lambda: worker.counts["failed"] == n, what=f"{n} failures")
    finally:
        worker.stop()
        runner.join(timeout=20)
    return [engine.stacking.task_state(tid) for (tid, to) in _transitions(engine) if to == "profile_failed"]


def test_a_handler_exception_fails_the_task_with_its_text(engine, live):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=2, max_retries=0))

    def handle(task: dict) -> dict:
        raise RuntimeError(f"Drive quota exceeded for {task['title']}")

    failed = _failed_by_worker(engine, live, key, handle, 2)
    assert sorted(t["error_message"] for t in failed) == [
        "RuntimeError: Drive quota exceeded for Title 0-0", "RuntimeError: Drive quota exceeded for Title 0-1"]


@pytest.mark.parametrize("result, reason", [
    ({"link": "https://drive.google.com/x"}, "TypeError: the handler returned"),  # a key complete() has not
    (None, "complete refused: "),  # phase 1 needs link_post: the server answers 400
])
def test_a_result_the_server_cannot_take_fails_the_task_instead_of_leaving_it_started(engine, live, result, reason):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=2, max_retries=0))
    failed = _failed_by_worker(engine, live, key, lambda task: result, 2)
    assert len(failed) == 2 and all(t["error_message"].startswith(reason) for t in failed)


# ---- one call at a time: the lifecycle and the typed refusals ---------------------

def test_each_call_and_each_refusal_is_typed_and_never_retried(engine, live):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=3))
    client = StackingClient(live, key)
    with pytest.raises(AuthError) as refused:
        client.pull(2)  # a new server is not online until its first heartbeat
    assert (refused.value.status, refused.value.code) == (403, "server_not_online")
    assert "/api/v1/worker/health" in refused.value.message

    assert client.heartbeat(server_name="tool-1", active_tasks=0)["server_name"] == "tool-1"
    a, b = client.pull(2)
    assert (a["status"], b["status"]) == ("register", "register")
    assert client.start(a["id"]) is True
    with pytest.raises(InvalidRequest) as refused:
        client.complete(a["id"])  # phase 1 needs link_post
    assert refused.value.status == 400
    assert client.complete(a["id"], link_post=DRIVE + "a", note="made") is True
    assert client.get(a["id"])["status"] == "profiled" and client.get(a["id"])["link_post"] == DRIVE + "a"

    with pytest.raises(Conflict) as refused:
        client.start(a["id"])
    assert (refused.value.status, refused.value.code) == (409, "invalid_state")
    assert "profiled" in refused.value.message and not refused.value.maybe_ran
    with pytest.raises(Conflict) as refused:
        client.complete(b["id"], link_post=DRIVE + "b")  # pulled, not started
    assert refused.value.code == "invalid_state"

    other = StackingClient(live, _server(engine, "tool-2"))
    other.heartbeat()
    with pytest.raises(Conflict) as refused:
        other.start(b["id"])
    assert refused.value.code == "not_task_owner"
    with pytest.raises(NotFound) as refused:
        client.start("no-such-task")
    assert (refused.value.status, refused.value.message) == (404, "task not found")
    with pytest.raises(AuthError) as refused:
        StackingClient(live, "thk_wrong").pull()
    assert (refused.value.status, refused.value.message) == (401, "invalid api key")

    assert client.start(b["id"]) and client.fail(b["id"], "Drive quota exceeded") is True
    assert engine.stacking.task_state(b["id"])["status"] == "profile_failed"
    assert engine.stacking.task_state(b["id"])["error_message"] == "Drive quota exceeded"
    status = client.connect_status(a["folder_id"])
    assert status["folder_id"] == a["folder_id"] and status["ready"] is False and status["profiled"] == 1
    assert client.t.retries == 0 and other.t.retries == 0


# ---- backoff -------------------------------------------------------------------

class Scripted(BaseHTTPRequestHandler):
    """Answers each request with the next (status, headers, body) of the server's script; records arrivals."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.arrivals.append(time.monotonic())
        status, headers, body = self.server.script.pop(0) if self.server.script else self.server.last
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json",
                            "Content-Length": str(len(payload))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    server.script, server.arrivals = [], []
    server.last = (503, {}, {"success": False, "message": "storage temporarily unavailable; retry shortly",
                             "code": "unavailable"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


UNAVAILABLE = {"success": False, "message": "storage temporarily unavailable; retry shortly", "code": "unavailable"}


def test_503_and_429_are_retried_after_their_retry_after(scripted):
    scripted.script = [(503, {"Retry-After": "1"}, UNAVAILABLE),
                       (429, {"Retry-After": "1"}, {"success": False, "message": "slow down"}),
                       (200, {}, {"success": True, "data": [{"id": "t1"}]})]
    client = StackingClient(f"http://127.0.0.1:{scripted.server_port}", "k", backoff_base=0.01)
    assert client.pull(1) == [{"id": "t1"}]
    gaps = [b - a for a, b in zip(scripted.arrivals, scripted.arrivals[1:])]
    assert len(scripted.arrivals) == 3 and client.t.retries == 2
    assert all(0.95 <= gap < 1.5 for gap in gaps), gaps


def test_without_retry_after_the_backoff_grows_and_is_capped_then_gives_up(scripted):
    client = StackingClient(f"http://127.0.0.1:{scripted.server_port}", "k", backoff_base=0.05,
                            backoff_cap=0.2, retry_for=1.2)
    started = time.monotonic()
    with pytest.raises(Unavailable) as gave_up:
        client.pull()
    assert time.monotonic() - started <= 1.3
    assert gave_up.value.status == 503 and "still failing" in gave_up.value.message
    gaps = [b - a for a, b in zip(scripted.arrivals, scripted.arrivals[1:])]
    assert 0.025 <= gaps[0] <= 0.1 and all(0.1 <= gap <= 0.3 for gap in gaps[3:]), gaps
    assert len(scripted.arrivals) >= 6


def test_the_delay_is_jittered_between_half_and_all_of_the_capped_exponential():
    transport = Transport("http://x", {}, backoff_base=0.5, backoff_cap=30)
    for attempt in range(12):
        ceiling = min(30, 0.5 * 2 ** attempt)
        delays = {transport.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays) and len(delays) > 1
    assert transport.delay(0, retry_after=7) == 7


def test_connection_refused_until_the_server_appears(engine):
    key = _server(engine)
    engine.servers.heartbeat(engine.servers.authenticate(key), {})
    engine.stacking.create_request(request_doc(folders=1, tasks=2))
    port = free_port()
    client = StackingClient(f"http://127.0.0.1:{port}", key, backoff_base=0.05, backoff_cap=0.2)
    got: list = []
    puller = threading.Thread(target=lambda: got.append(client.pull(5)))
    puller.start()
    time.sleep(0.8)
    assert puller.is_alive() and client.t.retries >= 2  # still trying
    with serving(create_app(engine, access_log=False), port):
        puller.join(timeout=10)
        assert [t["status"] for t in got[0]] == ["register", "register"]


# ---- replies lost after the server acted -----------------------------------------

class Lossy(httpx.BaseTransport):
    """Real HTTP, but the first request whose path ends with ``lose`` is processed and its answer
    replaced by a read timeout; with ``refuse``, the first such request never leaves (ConnectError)."""

    def __init__(self, lose: str = "", refuse: str = "") -> None:
        self.inner, self.lose, self.refuse = httpx.HTTPTransport(), lose, refuse

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.refuse and path.endswith(self.refuse):
            self.refuse = ""
            raise httpx.ConnectError("connection refused", request=request)
        response = self.inner.handle_request(request)
        if self.lose and path.endswith(self.lose):
            self.lose = ""
            response.read()
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def _lossy(live: str, key: str, **kw) -> StackingClient:
    return StackingClient(live, key, http=httpx.Client(base_url=live, transport=Lossy(**kw)), backoff_base=0.01)


def test_a_lost_reply_is_retried_and_its_409_read_as_done(engine, live):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=2, max_retries=0))
    plain = StackingClient(live, key)
    plain.heartbeat()
    a, b = plain.pull(2)
    assert _lossy(live, key, lose="/start").start(a["id"]) is True
    assert _lossy(live, key, lose="/complete").complete(a["id"], link_post=DRIVE + "a") is False
    assert plain.start(b["id"])
    assert _lossy(live, key, lose="/fail").fail(b["id"], "boom") is False
    moves = _transitions(engine)
    assert moves[(a["id"], "registering")] == moves[(a["id"], "profiled")] == 1
    assert moves[(b["id"], "profile_failed")] == 1
    assert engine.stacking.task_state(a["id"])["status"] == "profiled"


def test_a_409_after_a_refused_connection_is_a_real_refusal(engine, live):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=1))
    plain = StackingClient(live, key)
    plain.heartbeat()
    [a] = plain.pull(1)
    client = _lossy(live, key, refuse="/complete")
    with pytest.raises(Conflict) as refused:  # never started: nothing of ours ran, so the 409 stands
        client.complete(a["id"], link_post=DRIVE + "a")
    assert client.t.retries == 1 and not refused.value.maybe_ran
    client = _lossy(live, key, refuse="/start")
    assert client.start(a["id"]) is True and client.t.retries == 1


# ---- shutdown on SIGTERM, in a real process --------------------------------------

WORKER = """
import sys, threading, time
from workers.client import StackingClient, StackingWorker

say = threading.Lock()  # handlers run on threads: one whole line at a time

def handle(task):
    with say:
        print("start", task["id"], flush=True)
    time.sleep(float(sys.argv[3]))
    return {"link_post": "https://drive.google.com/drive/folders/" + task["id"]}

counts = StackingWorker(StackingClient(sys.argv[1], sys.argv[2]), handle, concurrency=3,
                        grace=float(sys.argv[4]), idle_sleep=0.05).run()
print("counts", counts, flush=True)
"""


def _sigterm_after_three_starts(tmp_path: Path, live: str, key: str, work_s: float, grace_s: float):
    (tmp_path / "worker.py").write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), live, key, str(work_s), str(grace_s)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = []
    for _ in range(3):
        line = proc.stdout.readline()
        if not line.startswith("start "):
            proc.kill()
            raise AssertionError(f"the worker said {line!r} before three starts; stderr:\n{proc.communicate()[1]}")
        started.append(line.split()[1])
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    return proc.returncode, time.monotonic() - sent, started, out, err


def test_sigterm_lets_the_tasks_in_hand_finish_and_completes_them(engine, live, tmp_path):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=6))
    rc, took, started, out, err = _sigterm_after_three_starts(tmp_path, live, key, work_s=1.5, grace_s=30)
    assert rc == 0, err
    assert took < 10
    assert "'completed': 3" in out and "'abandoned': 0" in out
    states = {tid: engine.stacking.task_state(tid) for tid, _ in _transitions(engine)}
    assert {tid for tid, s in states.items() if s["status"] == "profiled"} == set(started)
    # nothing else was taken: the three other tasks are still free to pull
    assert engine.stacking.stats().get("register") == 3
    assert sum(c.r.zcard(c.keys.claim_leases) for c in engine.stacking.shards) == 0


def test_sigterm_fails_what_outlives_the_grace_period(engine, live, tmp_path):
    key = _server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=6))
    rc, took, started, out, err = _sigterm_after_three_starts(tmp_path, live, key, work_s=60, grace_s=0.5)
    assert rc == 0, err
    assert took < 10  # did not wait for the handlers
    assert "'abandoned': 3" in out
    for tid in started:
        state = engine.stacking.task_state(tid)
        assert state["status"] == "profile_failed" and state["error_message"] == StackingWorker.SHUTDOWN


# ---- the README's worker ---------------------------------------------------------

def test_readme_worker_runs_as_written_and_stops_on_sigterm(engine, live, tmp_path):
    """The README's python block, as written (only the address differs), drives a request through
    both phases against the live app, then SIGTERM stops it cleanly."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## Writing a worker in Python\n.*?```python\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    (tmp_path / "worker.py").write_text(block.replace("http://localhost:8000", live))
    key = _server(engine)
    rid = engine.stacking.create_request(request_doc(folders=2, tasks=3))["request_id"]
    proc = subprocess.Popen([sys.executable, str(tmp_path / "worker.py")], cwd=tmp_path,
                            env={"KEY": key, "PATH": "/usr/bin:/bin"}, stderr=subprocess.PIPE, text=True)
    try:
        _wait(lambda: engine.stacking.request(rid)["status"] == "completed", what="the README worker")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert engine.stacking.request(rid)["by_status"] == {"completed": 6}
    [server] = [s for s in engine.servers.list() if s["name"] == "tool-1"]
    assert server["last_heartbeat_ms"]


# ---- the device agent path ----------------------------------------------------------

def test_device_agent_client_heartbeats_claims_and_finishes(engine, live):
    ids = engine.devices.create({"serials": ["p1", "p2"], "script_name": "post", "script_config": {}})["task_ids"]
    agent = DeviceAgentClient(live)
    assert agent.heartbeat(["p1", "p2"], {"p1": ["alice"]})["stop"] == []
    tasks = agent.claim(["p1", "p2"], agent="a1")
    assert sorted(t["id"] for t in tasks) == ids and all(t["status"] == 1 for t in tasks)
    assert agent.claim(["p1", "p2"]) == []  # one task at a time per device
    assert agent.complete(ids[0], "ok", agent="a1") is True
    with pytest.raises(Conflict) as refused:
        agent.complete(ids[0], "again")
    assert (refused.value.status, refused.value.code) == (409, 40901)
    engine.devices.stop(ids[1])
    assert agent.heartbeat(["p1", "p2"])["stop"] == [ids[1]]
    with pytest.raises(NotFound) as refused:
        agent.fail(999, "x")
    assert refused.value.code == 40401
    assert [engine.devices.get(i)["status"] for i in ids] == [2, 3]
    assert agent.t.retries == 0
    # usernames mode resolves the account the heartbeat bound
    got = engine.devices.create({"usernames": ["@alice"], "script_name": "post", "script_config": {}})
    assert engine.devices.get(got["task_ids"][0])["serial"] == "p1"


def test_device_agent_lost_complete_reply_is_done_and_a_token_is_required_when_set(engine, live, settings):
    [tid] = engine.devices.create({"serials": ["p1"], "script_name": "post", "script_config": {}})["task_ids"]
    agent = DeviceAgentClient(live, http=httpx.Client(base_url=live, transport=Lossy(lose="/complete")),
                              backoff_base=0.01)
    agent.claim(["p1"])
    assert agent.complete(tid, "done") is False and engine.devices.get(tid)["status"] == 2
    settings.device_token = "s3cret"
    with pytest.raises(AuthError) as refused:
        DeviceAgentClient(live).heartbeat(["p1"])
    assert (refused.value.status, refused.value.code) == (401, 40101)
    assert DeviceAgentClient(live, "s3cret").heartbeat(["p1"])["stop"] == []
