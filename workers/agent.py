"""A simulated device agent: ``taskhub agent --simulate N`` (not an RQ job: a client of the agent API).

It drives N simulated phones through the HTTP agent API exactly as a real
agent would, so a new user can watch device tasks move:

- every ``interval`` seconds: ``POST /api/v1/agent/heartbeat`` with every
  serial and its accounts (``<serial>-a1``, ``<serial>-a2``), which extends the
  run leases of its running tasks; ids in ``data.stop`` are aborted locally;
  tasks the server says run on our serials but that this process does not
  know (it was restarted) are adopted and finished, so a restart loses and
  repeats nothing;
- then ``POST /api/v1/agent/claim`` for its idle serials;
- each claimed task "runs" for a random duration, then is completed, or
  failed with probability ``fail_rate``.

Single-threaded and time-driven (no thread per device). While the web process
is unreachable it waits and tries again.
"""
from __future__ import annotations

import http.client
import json
import logging
import random
import signal
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("taskhub.agent")


class ApiError(Exception):
    def __init__(self, status: int, body: dict) -> None:
        super().__init__(f"HTTP {status}: {body.get('message')}")
        self.status, self.body = status, body


class AgentClient:
    """A keep-alive JSON client of the device API (stdlib only)."""

    def __init__(self, url: str, token: str = "", timeout: float = 10.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token, self.timeout = token, timeout
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                resp = self.conn.getresponse()
                data = json.loads(resp.read() or b"{}")
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                # Only the heartbeat (idempotent) is sent again on a fresh connection, for a
                # keep-alive connection the server closed; claim/complete/fail may have run.
                if attempt == 2 or method != "POST" or not path.endswith("/heartbeat"):
                    raise
        if resp.status != 200 or data.get("code") != 0:
            raise ApiError(resp.status, data)
        return data["data"]


@dataclass
class Device:
    serial: str
    accounts: list[str]
    task: int | None = None
    ends_at: float = 0.0


@dataclass
class Simulator:
    client: AgentClient
    devices: int
    prefix: str = "sim"
    interval: float = 2.0
    min_s: float = 2.0
    max_s: float = 10.0
    fail_rate: float = 0.1
    agent: str = "simulator"
    rng: random.Random = field(default_factory=random.Random)
    stopping: bool = False

    def __post_init__(self) -> None:
        self.fleet = {f"{self.prefix}-{i:03d}": Device(f"{self.prefix}-{i:03d}",
                                                      [f"{self.prefix}-{i:03d}-a1", f"{self.prefix}-{i:03d}-a2"])
                      for i in range(1, self.devices + 1)}
        self.done = {"completed": 0, "failed": 0, "stopped": 0, "adopted": 0}

    def _run(self, device: Device, task: int) -> None:
        device.task, device.ends_at = task, time.monotonic() + self.rng.uniform(self.min_s, self.max_s)

    def beat(self) -> None:
        data = self.client.call("POST", "/api/v1/agent/heartbeat", {
            "serials": list(self.fleet), "accounts": {s: d.accounts for s, d in self.fleet.items()}})
        stop = set(data.get("stop", []))
        for device in self.fleet.values():
            if device.task is not None and device.task in stop:
                log.info("stop task=%s serial=%s", device.task, device.serial)
                device.task = None
                self.done["stopped"] += 1
        for serial, task in data.get("running", {}).items():
            device = self.fleet.get(serial)
            if device is not None and device.task is None and task not in stop:
                log.info("adopt task=%s serial=%s (running before this agent started)", task, serial)
                self._run(device, task)
                self.done["adopted"] += 1

    def claim(self) -> None:
        idle = [s for s, d in self.fleet.items() if d.task is None]
        if not idle:
            return
        tasks = self.client.call("POST", "/api/v1/agent/claim", {"serials": idle, "agent": self.agent})["tasks"]
        for task in tasks:
            self._run(self.fleet[task["serial"]], task["id"])
            log.info("run task=%s serial=%s script=%s", task["id"], task["serial"], task["script_name"])

    def finish_due(self) -> None:
        now = time.monotonic()
        for device in self.fleet.values():
            if device.task is None or device.ends_at > now:
                continue
            failed = self.rng.random() < self.fail_rate
            verb = "fail" if failed else "complete"
            remark = "simulated failure" if failed else "simulated success"
            try:
                self.client.call("POST", f"/api/v1/agent/task/{device.task}/{verb}", {"remark": remark,
                                                                                      "agent": self.agent})
                self.done["failed" if failed else "completed"] += 1
                log.info("%s task=%s serial=%s", verb, device.task, device.serial)
            except ApiError as exc:  # stopped or deleted meanwhile: nothing to report
                if exc.status not in (404, 409):
                    raise
                log.info("task=%s no longer running (%s)", device.task, exc.body.get("message"))
            device.task = None

    def run(self, seconds: float | None = None) -> dict:
        """Loop until stopped (SIGTERM/SIGINT) or ``seconds`` passed; returns the counts."""
        started = time.monotonic()
        next_beat = 0.0
        while not self.stopping and (seconds is None or time.monotonic() - started < seconds):
            try:
                self.finish_due()
                if time.monotonic() >= next_beat:
                    self.beat()
                    self.claim()
                    next_beat = time.monotonic() + self.interval
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                log.warning("device API unreachable (%s); retrying", exc)
                time.sleep(1)
            except ApiError as exc:
                log.warning("device API refused: %s", exc)
                time.sleep(1)
            time.sleep(0.05)
        return self.done


def main(url: str, token: str, devices: int, **options: Any) -> int:
    sim = Simulator(AgentClient(url, token), devices, **options)

    def stop(signum: int, frame: Any) -> None:
        sim.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("simulating %d devices against %s", devices, url)
    done = sim.run()
    log.info("stopped: %s", done)
    return 0
