"""The device task API over HTTP: envelope, every business code with its status, auth, plan, agent side."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from tests.helpers import state

TASK = "/api/v1/task"
POST = {"serials": ["s1"], "script_name": "post", "script_config": {"captions": "hi"}}


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, access_log=False))


def ok(resp, status: int = 200):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == 0 and body["message"] == "success", body
    return body["data"]


def refused(engine, send, status: int, code: int) -> dict:
    """``send()`` answers ``status`` with business ``code`` in the envelope and changes no key."""
    before = state(engine)
    resp = send()
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "message", "data"} and body["code"] == code and body["data"] is None
    assert isinstance(body["message"], str) and body["message"]
    assert state(engine) == before
    return body


def create(client, **body) -> list[int]:
    return ok(client.post(TASK, json={**POST, **body}))["task_ids"]


def test_create_get_list_stats(client):
    data = ok(client.post(TASK, json={**POST, "serials": ["s1", "s2"]}))
    assert data["created_count"] == 2
    tid = data["task_ids"][0]
    task = ok(client.get(f"{TASK}/{tid}"))
    assert task["id"] == tid and task["script_config"] == {"captions": "hi"} and task["source"] == "api"
    assert set(task) == {"id", "serial", "username", "script_name", "script_config", "status", "source",
                         "enable_multi_account", "start_time", "started_at", "finished_at", "remark",
                         "retry_count", "created_at"}
    page = ok(client.get(TASK, params={"serial": "s2"}))
    assert page["total"] == 1 and page["items"][0]["serial"] == "s2" and page["page"] == 1
    assert page["page_size"] == 20
    assert ok(client.get(f"{TASK}/stats")) == {"total": 2, "pending": 2, "running": 0, "completed": 0,
                                                "failed": 0}


def test_agent_walk_heartbeat_claim_complete_fail(client):
    a, b = create(client, serials=["s1", "s2"])
    hb = ok(client.post("/api/v1/agent/heartbeat", json={"serials": ["s1", "s2"], "accounts": {"s1": ["amy"]}}))
    assert hb == {"stop": [], "running": {}}
    tasks = ok(client.post("/api/v1/agent/claim", json={"serials": ["s1", "s2"], "agent": "farm-1"}))["tasks"]
    assert [(t["id"], t["status"]) for t in tasks] == [(a, 1), (b, 1)]
    assert ok(client.post(f"/api/v1/agent/task/{a}/complete", json={"remark": "done"}))["status"] == 2
    assert ok(client.post(f"/api/v1/agent/task/{b}/fail", json={"remark": "captcha"}))["status"] == 3
    assert ok(client.get(f"{TASK}/{b}"))["remark"] == "captcha"


def test_stop_retry_delete_and_batch_delete(client, engine):
    a, b, c = create(client, serials=["s1", "s2", "s3"])
    ok(client.post("/api/v1/agent/claim", json={"serials": ["s1"]}))
    assert ok(client.post(f"{TASK}/{a}/stop")) == {"task_id": a, "status": 3}
    assert ok(client.post("/api/v1/agent/heartbeat", json={"serials": ["s1"]}))["stop"] == [a]
    assert ok(client.post(f"{TASK}/{a}/retry")) == {"task_id": a, "status": 0}
    ok(client.post(f"{TASK}/{b}/stop"))
    assert ok(client.post(f"{TASK}/retry-all")) == {"retried": 1}
    assert ok(client.delete(f"{TASK}/{c}")) == {"deleted": 1}
    assert ok(client.request("DELETE", f"{TASK}/batch", json={"task_ids": [a, b, 4242]})) == {
        "deleted": 2, "not_found": [4242]}
    assert ok(client.get(f"{TASK}/stats"))["total"] == 0


def test_license_check(client, engine):
    assert ok(client.get("/api/v1/license/check")) == {
        "plan_name": "pro", "api_enabled": True, "device_limit": 20,
        "message": "pro plan: API enabled, up to 20 active devices"}
    engine.devices.s.plan = "business"
    assert ok(client.get("/api/v1/license/check"))["device_limit"] == 1000


# ---- every documented error --------------------------------------------------------
def test_non_ascii_digits_in_a_task_id_are_40001_not_a_500(client, engine):
    """Found by the schema fuzzer: "¹".isdigit() is true but int("¹") raises, which answered 500."""
    create(client)
    for raw in ("%C2%B9", "%D9%A1"):  # superscript one; Arabic-Indic one, which int() would read as 1
        refused(engine, lambda: client.get(f"{TASK}/{raw}"), 400, 40001)
        refused(engine, lambda: client.post(f"{TASK}/{raw}/stop"), 400, 40001)
    refused(engine, lambda: client.request("DELETE", f"{TASK}/batch", json={"task_ids": ["\u00b9"]}), 400, 40001)


def test_40001_invalid_parameters(client, engine):
    refused(engine, lambda: client.post(TASK, json={"script_name": "post", "script_config": {}}), 400, 40001)
    refused(engine, lambda: client.post(TASK, content=b"{nope"), 400, 40001)
    refused(engine, lambda: client.post(TASK, json={**POST, "start_time": "25:00"}), 400, 40001)
    refused(engine, lambda: client.get(TASK, params={"page_size": "101"}), 400, 40001)
    refused(engine, lambda: client.get(TASK, params={"status": "7"}), 400, 40001)
    refused(engine, lambda: client.get(f"{TASK}/abc"), 400, 40001)
    refused(engine, lambda: client.request("DELETE", f"{TASK}/batch", json={"task_ids": "1"}), 400, 40001)
    refused(engine, lambda: client.post("/api/v1/agent/claim", json={"serials": []}), 400, 40001)
    refused(engine, lambda: client.post("/api/v1/agent/heartbeat", json={"serials": "s1"}), 400, 40001)


def test_40002_missing_script_name(client, engine):
    refused(engine, lambda: client.post(TASK, json={"serials": ["s1"], "script_config": {}}), 400, 40002)


def test_40003_script_not_allowed_through_the_api(client, engine):
    refused(engine, lambda: client.post(TASK, json={**POST, "script_name": "scrape_everything"}), 400, 40003)


def test_40004_unknown_username(client, engine):
    ok(client.post("/api/v1/agent/heartbeat", json={"serials": ["s1"], "accounts": {"s1": ["amy"]}}))
    body = refused(engine, lambda: client.post(TASK, json={"usernames": ["amy", "@ghost"], "script_name": "post",
                                                           "script_config": {}}), 400, 40004)
    assert "ghost" in body["message"]


def test_40301_starter_plan_everywhere(client, engine):
    engine.devices.s.plan = "starter"
    for method, path in (("POST", TASK), ("GET", TASK), ("GET", f"{TASK}/stats"), ("GET", f"{TASK}/1"),
                         ("POST", f"{TASK}/1/stop"), ("POST", f"{TASK}/retry-all"), ("GET", "/api/v1/license/check"),
                         ("POST", "/api/v1/agent/claim")):
        refused(engine, lambda: client.request(method, path, json=POST), 403, 40301)


def test_40301_device_limit_names_the_limit(client, engine):
    create(client, serials=[f"d{i}" for i in range(20)])
    body = refused(engine, lambda: client.post(TASK, json={**POST, "serials": ["d21"]}), 403, 40301)
    assert "20" in body["message"]


def test_40401_not_found(client, engine):
    for method, path in (("GET", f"{TASK}/77"), ("DELETE", f"{TASK}/77"), ("POST", f"{TASK}/77/stop"),
                         ("POST", f"{TASK}/77/retry"), ("POST", "/api/v1/agent/task/77/complete"),
                         ("GET", "/api/v1/task/77/nothing-here")):
        refused(engine, lambda: client.request(method, path), 404, 40401)


def test_40901_state_does_not_allow(client, engine):
    [tid] = create(client)
    refused(engine, lambda: client.post(f"{TASK}/{tid}/retry"), 409, 40901)
    refused(engine, lambda: client.post(f"/api/v1/agent/task/{tid}/complete"), 409, 40901)
    ok(client.post(f"{TASK}/{tid}/stop"))
    refused(engine, lambda: client.post(f"{TASK}/{tid}/stop"), 409, 40901)


def test_oversized_body_is_413_in_the_envelope(client, engine):
    big = {**POST, "script_config": {"captions": "x" * (1024 * 1024 + 1)}}
    refused(engine, lambda: client.post(TASK, json=big), 413, 40001)


# ---- auth --------------------------------------------------------------------------
def test_token_required_when_configured(engine):
    engine.devices.s.device_token = "s3cret"
    remote = TestClient(create_app(engine, access_log=False), client=("10.0.0.9", 4000))
    refused(engine, lambda: remote.get(f"{TASK}/stats"), 401, 40101)
    refused(engine, lambda: remote.get(f"{TASK}/stats", headers={"Authorization": "Bearer nope"}), 401, 40101)
    assert ok(remote.get(f"{TASK}/stats", headers={"Authorization": "Bearer s3cret"}))["total"] == 0


def test_without_token_only_loopback_clients_are_answered(engine):
    remote = TestClient(create_app(engine, access_log=False), client=("10.0.0.9", 4000))
    body = refused(engine, lambda: remote.post(TASK, json=POST), 403, 40301)
    assert "TASKHUB_DEVICE_TOKEN" in body["message"]
    local = TestClient(create_app(engine, access_log=False), client=("127.0.0.1", 4000))
    assert ok(local.get(f"{TASK}/stats"))["total"] == 0


def test_auth_is_checked_before_the_body(engine):
    engine.devices.s.device_token = "s3cret"
    client = TestClient(create_app(engine, access_log=False))
    refused(engine, lambda: client.post(TASK, content=b"{broken"), 401, 40101)


def test_50001_internal_error_is_in_the_envelope(engine, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine.devices, "stats_call", broken)
    client = TestClient(create_app(engine, access_log=False), raise_server_exceptions=False)
    resp = client.get(f"{TASK}/stats")
    assert resp.status_code == 500
    assert resp.json() == {"code": 50001, "message": "internal error", "data": None}


def test_50301_when_redis_is_unreachable(engine, monkeypatch):
    import redis

    def away(*args, **kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(engine.devices, "stats_call", away)
    resp = TestClient(create_app(engine, access_log=False)).get(f"{TASK}/stats")
    assert resp.status_code == 503 and resp.headers["Retry-After"] == "1"
    assert resp.json()["code"] == 50301 and resp.json()["data"] is None


# ---- several round trips (with shards: a create, a limited claim, a deep page) ---------------------
def test_creates_claims_and_pages_that_take_several_round_trips_answer_like_one_call(client, engine):
    engine.devices.s.plan = "business"
    serials = [f"dev{i:02d}" for i in range(40)]
    ids = [t for _ in range(3) for t in create(client, serials=serials)]
    assert len(set(ids)) == 120 and ids == sorted(ids)
    newest = sorted(ids, reverse=True)
    for page, size in ((1, 20), (2, 60), (3, 45), (4, 40)):
        got = ok(client.get(TASK, params={"page": str(page), "page_size": str(size)}))
        assert got["total"] == 120 and [t["id"] for t in got["items"]] == newest[(page - 1) * size:page * size]
    tasks = ok(client.post("/api/v1/agent/claim", json={"serials": serials[:10], "limit": 4}))["tasks"]
    assert [t["serial"] for t in tasks] == serials[:4]  # the oldest task of the first idle devices, in order
    assert [t["id"] for t in tasks] == ids[:4]
    assert ok(client.get(f"{TASK}/stats")) == {"total": 120, "pending": 116, "running": 4, "completed": 0,
                                                "failed": 0}
