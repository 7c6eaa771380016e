"""A simulated stacking tool server, for the end-to-end test (run as a process so it can be killed).

Loop: heartbeat about once a second, pull up to 25 tasks of either phase,
start each, then fail it with probability ``--fail-rate`` or complete it
(phase 1 with a Drive link, phase 2 without). Runs until terminated.
Usage: python -m tests.sim_worker BASE_URL API_KEY NAME [--fail-rate 0.1] [--seed N]
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import httpx


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("key")
    p.add_argument("name")
    p.add_argument("--fail-rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = random.Random(a.seed)
    http = httpx.Client(base_url=a.base, headers={"X-API-Key": a.key}, timeout=10)
    last_beat = 0.0
    done = 0
    while True:
        if time.monotonic() - last_beat > 1:
            http.post("/api/v1/worker/health", json={"server_name": a.name, "active_tasks": 0})
            last_beat = time.monotonic()
        reply = http.get("/api/v1/stacking/links", params={"limit": 25})
        tasks = reply.json().get("data") if reply.status_code == 200 else None
        if not tasks:
            time.sleep(0.1)
            continue
        for task in tasks:
            path = f"/api/v1/stacking/links/{task['id']}"
            if http.post(f"{path}/start").status_code != 200:
                continue  # lapsed and handed to someone else meanwhile
            if rng.random() < a.fail_rate:
                http.post(f"{path}/fail", json={"error_message": "simulated failure"})
            elif task["status"] == "register":
                http.post(f"{path}/complete",
                          json={"link_post": f"https://drive.google.com/drive/folders/{task['id']}"})
            else:
                http.post(f"{path}/complete", json={"note": "links inserted"})
            done += 1
        print(f"{a.name} handled {done}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
