"""/metrics under ``taskhub web`` with two worker processes, against a real Redis.

The per-process histograms of both workers must add up in every scrape,
whichever worker serves it (prometheus_client's multiprocess mode), and the
figures read from Redis must not be multiplied by the number of workers.
A stale sample file left by an earlier run must not leak into the counts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import free_port, wait_until_answers

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START = "/api/v1/stacking/links/{task_id}/start"
TASKS = 120


def _samples(base: str) -> dict[tuple, float]:
    resp = httpx.get(f"{base}/metrics", timeout=10)  # a new connection each time: any worker may answer
    assert resp.status_code == 200, resp.text
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _val(samples: dict, name: str, **labels) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)


def _served_by_file(directory: Path) -> dict[str, float]:
    """Requests each worker has observed, from its own histogram file (one per process)."""
    out = {}
    for path in directory.glob("histogram_*.db"):
        out[path.name] = sum(s.value for m in MultiProcessCollector.merge([str(path)], accumulate=True)
                             if m.name == "taskhub_http_request_duration_seconds"
                             for s in m.samples if s.name.endswith("_count"))
    return out


@pytest.fixture
def web(tmp_path, real_redis_socket):
    port = free_port()
    stale = tmp_path / "var" / "metrics" / "histogram_999999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 64)  # an earlier run's file: taskhub web must remove it
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "TASKHUB_ADMIN_TOKEN")}
    env.update(REDIS_URL=f"unix://{real_redis_socket}", TASKHUB_NAMESPACE=f"mp{uuid.uuid4().hex[:10]}",
               TASKHUB_VAR=str(tmp_path / "var"), TASKHUB_WEB_WORKERS="2", TASKHUB_PORT=str(port),
               TASKHUB_ACCESS_LOG="0")
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen([str(BIN / "taskhub"), "web"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{base}/metrics", proc, tmp_path / "web.log")
        assert not stale.exists()
        yield base, tmp_path / "var" / "metrics"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_two_web_workers_add_up_in_every_scrape(web):
    base, directory = web
    created = httpx.post(f"{base}/api/v1/admin/servers", json={"name": "mp-1"}).json()["data"]
    h = {"X-API-Key": created["api_key"]}
    doc = {"website": "https://mp.example", "folders": [
        {"folder_id": "MP-0", "tasks": [{"domain": "docs.google.com", "title": f"t{i}"} for i in range(TASKS)]}]}
    assert httpx.post(f"{base}/api/v1/admin/stacking/requests", json=doc, timeout=30).status_code in (200, 201)
    assert httpx.post(f"{base}/api/v1/worker/health", headers=h, json={}).status_code == 200
    pulled = httpx.get(f"{base}/api/v1/stacking/links?limit={TASKS}", headers=h, timeout=30).json()["data"]
    assert len(pulled) == TASKS

    def start(tid: str) -> int:
        return httpx.post(f"{base}/api/v1/stacking/links/{tid}/start", headers=h, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(start, [t["id"] for t in pulled])) == {200}
        # Unmatched paths until both workers have served requests (read from each worker's own
        # sample file), counting how many were sent: the sums must be exact whoever served what.
        unmatched = 0
        while min(_served_by_file(directory).values(), default=0) == 0 and unmatched < 4000:
            assert set(pool.map(lambda _: httpx.get(f"{base}/nope").status_code, range(40))) == {404}
            unmatched += 40
    served = _served_by_file(directory)
    assert len(served) == 2 and min(served.values()) > 0, served
    # + the readiness probe's scrape and the four setup requests (server, import, heartbeat, pull)
    assert sum(served.values()) == TASKS + unmatched + 5

    for _ in range(6):  # any worker may serve a scrape: every one sees the same sums
        s = _samples(base)
        assert _val(s, "taskhub_http_request_duration_seconds_count", method="POST", route=START,
                    status="2xx") == TASKS
        assert _val(s, "taskhub_http_request_duration_seconds_count", method="GET", route="unmatched",
                    status="4xx") == unmatched
        assert _val(s, "taskhub_claim_batch_size_count", contract="stacking") == 1
        assert _val(s, "taskhub_claim_batch_size_sum", contract="stacking") == TASKS
        # read from Redis: once, not once per worker
        assert _val(s, "taskhub_claimed_tasks_total", contract="stacking") == TASKS
        assert _val(s, "taskhub_tasks", contract="stacking", status="registering") == TASKS
        assert _val(s, "taskhub_redis_up") == 1
        assert _val(s, "taskhub_redis_roundtrip_seconds_count", source="batch") >= 1
