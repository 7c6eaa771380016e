"""A simulated stacking tool server, for the end-to-end test (run as a process so it can be killed).

The worker client's loop (workers/client.py ``StackingWorker``): heartbeat every
second, pull what it has room for (either phase), start each, then fail it with
probability ``--fail-rate`` or complete it (phase 1 with a Drive link, phase 2
without). Prints ``<name> handled <n>`` after each task (the test reads these
lines, so the client's own log lines are kept off stdout). Runs until
terminated; SIGTERM stops it cleanly.
Usage: python -m tests.sim_worker BASE_URL API_KEY NAME [--fail-rate 0.1] [--seed N] [--concurrency 25]
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
import threading

from workers.client import StackingClient, StackingWorker


class SimulatedFailure(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("key")
    p.add_argument("name")
    p.add_argument("--fail-rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=25)
    a = p.parse_args()
    logging.getLogger("taskhub").addHandler(logging.NullHandler())
    logging.getLogger("taskhub").propagate = False
    rng, lock = random.Random(a.seed), threading.Lock()
    done = 0

    def handle(task: dict) -> dict:
        nonlocal done
        with lock:
            done += 1
            print(f"{a.name} handled {done}", flush=True)
            if rng.random() < a.fail_rate:
                raise SimulatedFailure("simulated failure")
        if task["status"] == "register":
            return {"link_post": f"https://drive.google.com/drive/folders/{task['id']}"}
        return {"note": "links inserted"}

    client = StackingClient(a.base, a.key, timeout=10)
    StackingWorker(client, handle, concurrency=a.concurrency, server_name=a.name, heartbeat_interval=1.0,
                   idle_sleep=0.1).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
