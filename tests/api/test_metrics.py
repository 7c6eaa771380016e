"""Prometheus /metrics: the figures move by exactly the work done, on both backends.

Cluster-wide figures (tasks by status, claims, lease lapses, retries, refunds)
come from Redis, so every assertion is an exact number. Per-process histograms
(request latency per route, claim batch sizes, Redis round trips) live in this
process's registry, shared by every test, so those are asserted as deltas
between two scrapes.
"""
from __future__ import annotations

import dataclasses
import os

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from api import metrics
from api.app import create_app
from engine import Engine
from tests.helpers import request_doc, link, online_server

START = "/api/v1/stacking/links/{task_id}/start"


def scrape(client: TestClient, **kwargs) -> dict[tuple, float]:
    """Every sample as ``{(name, (label, value), ...): value}``."""
    resp = client.get("/metrics", **kwargs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def val(samples: dict, name: str, **labels) -> float:
    return samples.get((name, *sorted(labels.items())), 0.0)


def diff(after: dict, before: dict, name: str, **labels) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, access_log=False))


def tasks(samples: dict, contract: str) -> dict[str, float]:
    """The ``taskhub_tasks`` gauge of one contract, zero statuses left out."""
    return {dict(k[1:])["status"]: v for k, v in samples.items()
            if k[0] == "taskhub_tasks" and dict(k[1:])["contract"] == contract and v}


# ---- stacking ------------------------------------------------------------------------------
def test_stacking_work_moves_every_figure_by_exactly_what_was_done(engine, client, clock):
    caller, key = online_server(engine)
    h = {"X-API-Key": key}
    s0 = scrape(client)
    assert val(s0, "taskhub_redis_up") == 1
    assert tasks(s0, "stacking") == {}

    engine.stacking.create_request(request_doc(tasks=4, max_retries=3))
    pulled = client.get("/api/v1/stacking/links?limit=3", headers=h).json()["data"]
    a, b, c = (t["id"] for t in pulled)
    assert client.post(f"/api/v1/stacking/links/{a}/start", headers=h).status_code == 200
    assert client.post(f"/api/v1/stacking/links/{a}/complete", headers=h, json={"link_post": link(1)}).status_code == 200
    assert client.post(f"/api/v1/stacking/links/{b}/start", headers=h).status_code == 200
    assert client.post(f"/api/v1/stacking/links/{b}/fail", headers=h, json={"error_message": "x"}).status_code == 200
    s1 = scrape(client)
    assert tasks(s1, "stacking") == {"register": 2, "profiled": 1, "profile_failed": 1}
    assert val(s1, "taskhub_claimed_tasks_total", contract="stacking") == 3
    # per process: one pull of 3, two starts through the start route, whatever the task id
    assert diff(s1, s0, "taskhub_claim_batch_size_count", contract="stacking") == 1
    assert diff(s1, s0, "taskhub_claim_batch_size_sum", contract="stacking") == 3
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_count",
                method="POST", route=START, status="2xx") == 2
    assert diff(s1, s0, "taskhub_redis_roundtrip_seconds_count", source="batch") >= 4  # start/complete/start/fail
    assert diff(s1, s0, "taskhub_redis_roundtrip_seconds_count", source="scrape") == 1  # s1's own read

    # the retry manager sends b back (a retry); c's claim lapses (not a retry)
    clock.advance(31)
    engine.stacking.run_retries()
    s2 = scrape(client)
    assert val(s2, "taskhub_retries_total", contract="stacking") == 1
    assert val(s2, "taskhub_lease_lapses_total", contract="stacking", lease="claim") == 0
    clock.advance(300)
    engine.stacking.sweep()
    s3 = scrape(client)
    assert val(s3, "taskhub_lease_lapses_total", contract="stacking", lease="claim") == 1
    assert tasks(s3, "stacking") == {"register": 3, "profiled": 1}

    # a started task whose server stops heartbeating: its run lease lapses and the task fails
    engine.servers.heartbeat(caller, {})
    [d] = (t["id"] for t in client.get("/api/v1/stacking/links?limit=1", headers=h).json()["data"])
    assert client.post(f"/api/v1/stacking/links/{d}/start", headers=h).status_code == 200
    clock.advance(1801)
    engine.stacking.sweep()
    s4 = scrape(client)
    assert val(s4, "taskhub_lease_lapses_total", contract="stacking", lease="run") == 1
    assert val(s4, "taskhub_claimed_tasks_total", contract="stacking") == 4
    assert tasks(s4, "stacking") == {"register": 2, "profiled": 1, "profile_failed": 1}
    assert val(s4, "taskhub_retries_total", contract="stacking") == 1
    assert tasks(s4, "stacking") == {k: v for k, v in engine.stacking.stats().items() if v}


def test_an_empty_pull_is_a_claim_of_zero(engine, client):
    _, key = online_server(engine)
    s0 = scrape(client)
    assert client.get("/api/v1/stacking/links?limit=5", headers={"X-API-Key": key}).json()["data"] == []
    s1 = scrape(client)
    assert diff(s1, s0, "taskhub_claim_batch_size_bucket", contract="stacking", le="0.0") == 1
    assert diff(s1, s0, "taskhub_claim_batch_size_sum", contract="stacking") == 0
    assert val(s1, "taskhub_claimed_tasks_total", contract="stacking") == 0


# ---- device tasks --------------------------------------------------------------------------
def test_device_work_moves_its_figures(engine, client, clock):
    body = {"serials": ["s1", "s2"], "script_name": "post", "script_config": {"captions": "hi"}}
    ids = client.post("/api/v1/task", json=body).json()["data"]["task_ids"]
    s0 = scrape(client)
    assert tasks(s0, "devices") == {"pending": 2}
    claimed = client.post("/api/v1/agent/claim", json={"serials": ["s1", "s2"], "agent": "a"}).json()["data"]
    assert len(claimed["tasks"]) == 2
    assert client.post(f"/api/v1/agent/task/{ids[0]}/complete", json={}).status_code == 200
    assert client.post(f"/api/v1/agent/task/{ids[1]}/fail", json={"remark": "x"}).status_code == 200
    s1 = scrape(client)
    assert tasks(s1, "devices") == {"completed": 1, "failed": 1}
    assert val(s1, "taskhub_claimed_tasks_total", contract="devices") == 2
    assert diff(s1, s0, "taskhub_claim_batch_size_sum", contract="devices") == 2
    assert diff(s1, s0, "taskhub_claim_batch_size_count", contract="devices") == 1

    assert client.post(f"/api/v1/task/{ids[1]}/retry").status_code == 200
    client.post("/api/v1/agent/claim", json={"serials": ["s2"], "agent": "a"})
    clock.advance(1801)  # no agent heartbeat for the run TTL: "agent lost"
    engine.devices.sweep()
    s2 = scrape(client)
    assert val(s2, "taskhub_retries_total", contract="devices") == 1
    assert val(s2, "taskhub_claimed_tasks_total", contract="devices") == 3
    assert val(s2, "taskhub_lease_lapses_total", contract="devices", lease="run") == 1
    assert tasks(s2, "devices") == {"completed": 1, "failed": 1}
    assert engine.devices.get(ids[1])["remark"] == "agent lost"


# ---- task center ---------------------------------------------------------------------------
def test_task_center_retries_lapses_and_refunds(engine, client, clock):
    user = engine.tasks.create_user("amy", 200_000, "common")
    h = {"Authorization": f"Bearer {user['api_key']}"}
    for prompt in ("one", "two"):
        assert client.post("/suno/submit/music", headers=h, json={"prompt": prompt}).status_code == 200
    s0 = scrape(client)
    assert tasks(s0, "tasks") == {"NOT_START": 2}

    first, second = engine.tasks.claim_submissions()
    assert engine.tasks.submit_failed(first.id, None, "upstream 503", permanent=False) == "retry"
    clock.advance(150)  # past the backoff, and past the second submission's lease: its submitter "died"
    engine.tasks.sweep()
    s1 = scrape(client)
    assert val(s1, "taskhub_claimed_tasks_total", contract="tasks") == 2
    assert val(s1, "taskhub_retries_total", contract="tasks") == 1
    assert val(s1, "taskhub_lease_lapses_total", contract="tasks", lease="claim") == 1
    assert val(s1, "taskhub_refunds_total", contract="tasks") == 0

    again = engine.tasks.claim_submissions()
    assert sorted(s.id for s in again) == sorted([first.id, second.id])
    engine.tasks.submit_failed(first.id, None, "bad request", permanent=True)
    s2 = scrape(client)
    assert val(s2, "taskhub_claimed_tasks_total", contract="tasks") == 4
    assert val(s2, "taskhub_refunds_total", contract="tasks") == 1
    assert val(s2, "taskhub_refunded_quota_total", contract="tasks") == 50_000
    assert tasks(s2, "tasks") == {"NOT_START": 1, "FAILURE": 1}
    # a second failure report of the same task refunds nothing more
    engine.tasks.submit_failed(first.id, None, "bad request", permanent=True)
    assert val(scrape(client), "taskhub_refunds_total", contract="tasks") == 1


# ---- routes, auth, switches ----------------------------------------------------------------
def test_request_histogram_is_labelled_by_route_template_never_the_raw_path(client):
    s0 = scrape(client)
    for tid in ("t1", "t2", "t3"):
        assert client.post(f"/api/v1/stacking/links/{tid}/start").status_code == 401
    for path in ("/nope", "/nope/again", "/api/v1/unknown"):
        assert client.get(path).status_code == 404
    s1 = scrape(client)
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_count", method="POST", route=START, status="4xx") == 3
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_count", method="GET", route="unmatched",
                status="4xx") == 3
    routes = {dict(k[1:]).get("route") for k in s1 if k[0] == "taskhub_http_request_duration_seconds_count"}
    assert not any(r and ("t1" in r or "nope" in r) for r in routes)
    # the +Inf bucket holds every observation; the sum is a positive duration
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_bucket", method="POST", route=START,
                status="4xx", le="+Inf") == 3
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_sum", method="POST", route=START, status="4xx") > 0


def test_made_up_methods_share_one_label(client):
    s0 = scrape(client)
    for method in ("FOO", "BAR", "BAZ"):
        client.request(method, "/api/v1/stacking/links/x/start")
    s1 = scrape(client)
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_count", method="OTHER", route=START, status="4xx") == 3
    assert not any(dict(k[1:]).get("method") in ("FOO", "BAR", "BAZ") for k in s1)


def test_metrics_takes_the_admin_token_when_one_is_set(redis_client, settings):
    engine = Engine(redis_client, dataclasses.replace(settings, admin_token="s3cret"))
    client = TestClient(create_app(engine, access_log=False))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert val(scrape(client, headers={"Authorization": "Bearer s3cret"}), "taskhub_redis_up") == 1


def test_without_a_token_only_loopback_clients_may_scrape(engine):
    remote = TestClient(create_app(engine, access_log=False), client=("203.0.113.9", 4000))
    resp = remote.get("/metrics")
    assert resp.status_code == 403 and "TASKHUB_ADMIN_TOKEN" in resp.json()["message"]


def test_redis_away_still_answers_with_redis_up_zero(tmp_path, settings):
    engine = Engine(redis.Redis(unix_socket_path=str(tmp_path / "none.sock")), settings)
    samples = scrape(TestClient(create_app(engine, access_log=False)))
    assert val(samples, "taskhub_redis_up") == 0
    assert not any(k[0] == "taskhub_tasks" for k in samples)
    assert any(k[0] == "taskhub_http_request_duration_seconds_count" for k in samples)


def test_taskhub_metrics_0_leaves_the_request_histogram_out(engine, monkeypatch):
    monkeypatch.setenv("TASKHUB_METRICS", "0")
    assert metrics.observers() == []
    client = TestClient(create_app(engine, access_log=False))
    s0 = scrape(client)
    client.post("/api/v1/stacking/links/x/start")
    s1 = scrape(client)
    assert diff(s1, s0, "taskhub_http_request_duration_seconds_count", method="POST", route=START, status="4xx") == 0
    monkeypatch.setenv("TASKHUB_METRICS", "1")
    assert len(metrics.observers()) == 1


def test_prepare_multiprocess_empties_the_directory_only_for_several_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")  # unset for prepare_multiprocess; restored after the test
    assert metrics.prepare_multiprocess(1, tmp_path) is None
    old = tmp_path / "metrics" / "histogram_123.db"
    old.parent.mkdir()
    old.write_bytes(b"stale")
    keep = tmp_path / "metrics" / "README"
    keep.write_text("not ours")
    assert metrics.prepare_multiprocess(2, tmp_path) == str(tmp_path / "metrics")
    assert os.environ[metrics.MULTIPROC_ENV] == str(tmp_path / "metrics")
    assert not old.exists() and keep.exists()


def test_the_loop_histogram_renders_what_prometheus_clients_would():
    """Same observations, same text: bucket edges (an amount equal to a bound is in it), +Inf,
    several children, label values given as numbers."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    bounds = (0, 0.0005, 0.001, 0.0025, 0.01, 1)
    loop = metrics.LoopHistogram("t_seconds", "doc", ["route", "n"], bounds, registry=ours)
    ref = Histogram("t_seconds", "doc", ["route", "n"], buckets=bounds, registry=theirs)
    for amount in (0, 0.0005, 0.00051, 0.001, 0.0024, 0.0025, 0.3, 1, 1.5, 99, -0.1):
        for labels in (("a", 1), ("b/{id}", 2)):
            loop.labels(*labels).observe(amount * len(labels[0]))
            ref.labels(*labels).observe(amount * len(labels[0]))
    text = generate_latest(ours).decode()
    assert text == generate_latest(theirs).decode()
    assert 't_seconds_bucket{le="+Inf",n="1",route="a"} 11.0' in text
    assert 't_seconds_bucket{le="0.0005",n="1",route="a"} 3.0' in text  # -0.1, 0 and 0.0005
    with pytest.raises(ValueError):
        loop.labels("a")
    with pytest.raises(ValueError):
        metrics.LoopHistogram("u", "doc", [], (1, 0.5))


def test_a_locked_child_counts_every_observation_from_many_threads():
    """The scrape's own round trip is observed on the threadpool, several scrapes at once."""
    from concurrent.futures import ThreadPoolExecutor

    hist = metrics.LoopHistogram("v_seconds", "doc", ["source"], (0.001, 0.01))
    child = hist.labels("scrape", locked=True)

    def hammer(i: int) -> None:
        for _ in range(20_000):
            child.observe(0.005)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hammer, range(8)))
    (family,) = hist.collect()
    got = {s.name: s.value for s in family.samples if s.name != "v_seconds_bucket"}
    assert got == {"v_seconds_count": 160_000, "v_seconds_sum": pytest.approx(800.0)}


def test_several_workers_get_prometheus_clients_histogram(monkeypatch, tmp_path):
    """Their observations must reach the shared sample files at once: LoopHistogram is one process's."""
    from prometheus_client import CollectorRegistry, Histogram

    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    assert isinstance(metrics.histogram("w1", "doc", ["x"], (1,), registry=CollectorRegistry()),
                      metrics.LoopHistogram)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    assert isinstance(metrics.histogram("w2", "doc", ["x"], (1,), registry=CollectorRegistry()), Histogram)
