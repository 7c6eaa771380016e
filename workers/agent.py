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

Single-threaded and time-driven (no thread per device). HTTP goes through
``workers.client.DeviceAgentClient``, which backs off and retries while the web
process is unreachable or answers 503. On SIGTERM/SIGINT it claims nothing
more and finishes the tasks it runs (beating meanwhile) for up to ``grace``
seconds; what still runs then stays running on the server and is adopted by
the next agent on these serials (or fails "agent lost" after TASKHUB_RUN_TTL).
"""
from __future__ import annotations

import logging
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from workers.client import Cancelled, ClientError, Conflict, DeviceAgentClient, NotFound, Unavailable

log = logging.getLogger("taskhub.agent")


@dataclass
class Device:
    serial: str
    accounts: list[str]
    task: int | None = None
    ends_at: float = 0.0


@dataclass
class Simulator:
    client: DeviceAgentClient
    devices: int
    prefix: str = "sim"
    interval: float = 2.0
    min_s: float = 2.0
    max_s: float = 10.0
    fail_rate: float = 0.1
    agent: str = "simulator"
    rng: random.Random = field(default_factory=random.Random)
    grace: float = 15.0
    stopping: bool = False

    def __post_init__(self) -> None:
        self.fleet = {f"{self.prefix}-{i:03d}": Device(f"{self.prefix}-{i:03d}",
                                                      [f"{self.prefix}-{i:03d}-a1", f"{self.prefix}-{i:03d}-a2"])
                      for i in range(1, self.devices + 1)}
        self.done = {"completed": 0, "failed": 0, "stopped": 0, "adopted": 0}

    def _run(self, device: Device, task: int) -> None:
        device.task, device.ends_at = task, time.monotonic() + self.rng.uniform(self.min_s, self.max_s)

    def beat(self) -> None:
        data = self.client.heartbeat(list(self.fleet), {s: d.accounts for s, d in self.fleet.items()})
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
        tasks = self.client.claim(idle, agent=self.agent)
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
                finish = self.client.fail if failed else self.client.complete
                if finish(device.task, remark, agent=self.agent):
                    self.done["failed" if failed else "completed"] += 1
                    log.info("%s task=%s serial=%s", verb, device.task, device.serial)
            except (Conflict, NotFound) as exc:  # stopped or deleted meanwhile: nothing to report
                log.info("task=%s no longer running (%s)", device.task, exc.message)
            device.task = None

    def busy(self) -> int:
        return sum(1 for d in self.fleet.values() if d.task is not None)

    def run(self, seconds: float | None = None) -> dict:
        """Loop until stopped (SIGTERM/SIGINT) or ``seconds`` passed; returns the counts.

        Once stopping, it claims nothing more and finishes what it runs, for up to ``grace`` seconds."""
        started = time.monotonic()
        next_beat = 0.0
        stopped_at: float | None = None
        while True:
            if stopped_at is None and (self.stopping or (seconds is not None
                                                         and time.monotonic() - started >= seconds)):
                stopped_at = time.monotonic()
                self.client.cancel.set()  # abandon the backoff of heartbeats and claims
            if stopped_at is not None and (not self.busy() or time.monotonic() - stopped_at >= self.grace):
                break
            try:
                self.finish_due()
                if time.monotonic() >= next_beat:
                    self.beat()
                    if stopped_at is None:
                        self.claim()
                    next_beat = time.monotonic() + self.interval
            except (Unavailable, Cancelled) as exc:
                log.warning("device API unreachable (%s)", exc)
                next_beat = time.monotonic() + self.interval
            except ClientError as exc:
                log.warning("device API refused: %s", exc)
                time.sleep(1)
            time.sleep(0.05)
        return self.done


def main(url: str, token: str, devices: int, **options: Any) -> int:
    sim = Simulator(DeviceAgentClient(url, token), devices, **options)

    def stop(signum: int, frame: Any) -> None:
        sim.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("simulating %d devices against %s", devices, url)
    done = sim.run()
    log.info("stopped: %s", done)
    return 0
