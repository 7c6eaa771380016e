"""The dashboard over HTTP (api/dashboard.py, engine/overview.py), on both backends:
its auth, the snapshot the page is built from, the page itself, and each action with its refusals.
The real-browser test is tests/test_dashboard_browser.py."""
from __future__ import annotations

import dataclasses
import re

import orjson
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api import dashboard
from api.dashboard import COOKIE, session_value
from engine import Engine
from engine.overview import MAX_FOLDERS, MAX_REQUESTS
from tests.helpers import assert_refused, link, online_server, request_doc, state

TOKEN = "operator-secret"
ACT = {"X-Requested-With": "taskhub-dashboard"}
DEVICE_TASK = {"script_name": "post", "script_config": {"captions": "hi"}}


@pytest.fixture(autouse=True)
def fresh_snapshots(monkeypatch):
    """These tests change state and read it back at once: no sharing of snapshots between reads
    (test_open_tabs_share_one_snapshot_until_an_action covers the sharing)."""
    monkeypatch.setattr(dashboard, "SNAPSHOT_TTL_S", 0.0)


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, access_log=False), follow_redirects=False)


@pytest.fixture
def guarded(redis_client, settings):
    """(engine, client) with TASKHUB_ADMIN_TOKEN set."""
    engine = Engine(redis_client, dataclasses.replace(settings, admin_token=TOKEN))
    return engine, TestClient(create_app(engine, access_log=False), follow_redirects=False)


def snapshot(client) -> dict:
    resp = client.get("/dashboard/data")
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def pulled(engine, caller, n: int) -> list[str]:
    return [orjson.loads(t)["id"] for t in engine.stacking.claim(caller, n)]


# ---- auth ----------------------------------------------------------------------------------

def test_without_a_token_loopback_clients_are_answered_and_others_refused(engine, client):
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/data").status_code == 200
    remote = TestClient(create_app(engine, access_log=False), client=("10.1.2.3", 4000), follow_redirects=False)
    for resp in (remote.get("/dashboard"), remote.get("/dashboard/data"), remote.get("/dashboard/sections")):
        assert resp.status_code == 403
        assert "TASKHUB_ADMIN_TOKEN" in resp.json()["message"]
    assert_refused(engine, lambda: remote.post("/dashboard/actions/requests/r/cancel", headers=ACT), 403)


def test_with_a_token_a_page_without_credentials_goes_to_the_login_page(guarded):
    engine, client = guarded
    resp = client.get("/dashboard")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard/login"
    login = client.get("/dashboard/login")
    assert login.status_code == 200 and 'name="token"' in login.text
    body = assert_refused(engine, lambda: client.get("/dashboard/data"), 401)
    assert "login" in body["message"]
    assert client.get("/dashboard/data", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/dashboard/data", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_login_sets_an_httponly_samesite_strict_cookie_that_is_not_the_token(guarded):
    engine, client = guarded
    wrong = client.post("/dashboard/login", data={"token": "nope"})
    assert wrong.status_code == 401 and "wrong token" in wrong.text and "set-cookie" not in wrong.headers
    resp = client.post("/dashboard/login", data={"token": TOKEN})
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    value = re.match(rf"{COOKIE}=([^;]+)", cookie).group(1)
    assert TOKEN not in value and value == session_value(TOKEN)
    client.cookies.set(COOKIE, value)
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/data").status_code == 200


def test_a_login_form_over_the_limit_is_refused_whole_and_one_under_it_is_read_whole(guarded):
    from api.dashboard import MAX_LOGIN_BODY

    engine, client = guarded
    pad = "x" * (MAX_LOGIN_BODY - len(TOKEN) - 20)
    under = client.post("/dashboard/login", data={"pad": pad, "token": TOKEN})
    assert under.status_code == 303 and "set-cookie" in under.headers
    client.cookies.clear()
    over = client.post("/dashboard/login", data={"pad": pad + "x" * 100, "token": TOKEN})
    assert over.status_code == 413 and f"over {MAX_LOGIN_BODY} bytes" in over.text
    assert "set-cookie" not in over.headers


def test_a_wrong_cookie_is_the_login_page_and_a_token_change_logs_everyone_out(guarded):
    engine, client = guarded
    client.cookies.set(COOKIE, session_value("an older token"))
    assert client.get("/dashboard").headers["location"] == "/dashboard/login"
    assert client.get("/dashboard/sections").status_code == 401
    assert_refused(engine, lambda: client.post("/dashboard/actions/device-tasks/1/stop", headers=ACT), 401)


def test_without_a_token_the_login_page_is_not_needed(client):
    resp = client.get("/dashboard/login")
    assert resp.status_code == 303 and resp.headers["location"] == "/dashboard"


# ---- the snapshot ----------------------------------------------------------------------------

def test_snapshot_shows_servers_requests_folders_and_the_barrier(engine, client, clock):
    caller, _ = online_server(engine, "alpha")
    engine.servers.create("never-seen")
    engine.stacking.create_request({**request_doc(folders=2, tasks=2, prefix="F"), "id": "r1"})
    tids = pulled(engine, caller, 2)  # both tasks of F0: F0 binds to alpha
    for tid in tids:
        engine.stacking.start(caller, tid)
    engine.stacking.complete(caller, tids[0], link(0))
    clock.advance(7)
    data = snapshot(client)
    servers = {s["name"]: s for s in data["servers"]}
    assert servers["alpha"]["online"] is True and servers["alpha"]["heartbeat_age_s"] == 7
    assert servers["never-seen"]["online"] is False and servers["never-seen"]["heartbeat_age_s"] is None
    [req] = data["stacking"]["requests"]
    assert (req["id"], req["status"], req["total_tasks"], req["done_tasks"], req["folder_count"]) == \
        ("r1", "register", 4, 0, 2)
    f0, f1 = req["folders"]
    assert (f0["folder_id"], f0["server_name"], f0["phase1_done"], f0["total_tasks"]) == ("F0", "alpha", 1, 2)
    assert f0["barrier"] == {"phase1_done": False, "phase2_open": False}
    assert f1["server_id"] is None and f1["phase1_done"] == 0

    engine.stacking.complete(caller, tids[1], link(1))  # the barrier opens: F0 moves to phase 2
    f0 = snapshot(client)["stacking"]["requests"][0]["folders"][0]
    assert f0["barrier"] == {"phase1_done": True, "phase2_open": True}
    assert (f0["phase1_done"], f0["phase2_done"], f0["phase2_total"]) == (2, 0, 2)


def test_snapshot_shows_device_queues_with_their_running_task(engine, client):
    engine.devices.create({**DEVICE_TASK, "serials": ["A", "B"]})
    engine.devices.create({**DEVICE_TASK, "serials": ["B", "C"]})
    engine.devices.heartbeat({"serials": ["A"]})
    [running] = engine.devices.claim({"serials": ["A"]})["tasks"]
    data = snapshot(client)["devices"]
    assert data["active_serials"] == 3
    rows = {s["serial"]: s for s in data["serials"]}
    assert rows["A"]["pending"] == 0 and rows["A"]["running"]["id"] == running["id"]
    assert rows["A"]["running"]["script_name"] == "post" and rows["A"]["heartbeat_age_s"] == 0
    assert rows["B"]["pending"] == 2 and rows["B"]["running"] is None and rows["B"]["heartbeat_age_s"] is None
    engine.devices.complete(running["id"])
    assert "A" not in {s["serial"] for s in snapshot(client)["devices"]["serials"]}


def test_snapshot_shows_the_backlog_per_channel_failures_and_refunds(engine, client):
    tc = engine.tasks
    ch = tc.add_channel("suno", "https://suno.example")
    user = tc.create_user("bob", 1_000_000)
    ids = [tc.submit(user["api_key"], "suno", "music", {"prompt": str(i)})["id"] for i in range(4)]
    tc.claim_submissions(3)
    tc.submitted(ids[0], ch, "up-0")
    tc.submitted(ids[1], ch, "up-1")
    tc.submit_failed(ids[2], None, "refused", permanent=True)
    data = snapshot(client)
    backlog = {b["channel"]: b for b in data["tasks"]["backlog"]}
    assert backlog[ch]["SUBMITTED"] == 2 and backlog[ch]["total"] == 2
    assert backlog[0]["NOT_START"] == 1 and backlog[0]["total"] == 1  # ids[3], never claimed
    assert data["tasks"]["waiting_for_submission"] == 1
    assert data["tasks"]["refunds"] == [{"user": str(user["id"]), "task": str(ids[2]), "amount": 50_000,
                                         "age_s": 0}]
    [failure] = data["failures"]
    assert (failure["contract"], failure["task"], failure["to"]) == ("tasks", str(ids[2]), "FAILURE")


def test_chart_counts_every_transition_in_its_minute(engine, client, clock):
    engine.devices.create({**DEVICE_TASK, "serials": ["A", "B"]})  # 2 transitions (created)
    clock.advance(5 * 60)
    engine.devices.claim({"serials": ["A"]})  # 1
    engine.tasks.create_user("u", 0)  # no transition: a user is not a task
    chart = snapshot(client)["chart"]
    assert chart["series"]["devices"][-1] == 1 and chart["series"]["devices"][-6] == 2
    assert sum(chart["total"]) == 3 and chart["max"] == 2 and sum(chart["series"]["stacking"]) == 0
    clock.advance(60 * 60)  # older than the hour: off the chart
    assert sum(snapshot(client)["chart"]["total"]) == 0


def test_lists_are_capped_newest_requests_first_folders_in_order(engine, client, clock):
    for i in range(MAX_REQUESTS + 2):
        engine.stacking.create_request({**request_doc(folders=1, tasks=1, prefix=f"R{i}-"), "id": f"r{i:02}"})
        clock.advance(0.001)  # across shards, newest means created last (per shard, it is the order number)
    engine.stacking.create_request({**request_doc(folders=MAX_FOLDERS + 2, tasks=1, prefix="big-"), "id": "big"})
    reqs = snapshot(client)["stacking"]["requests"]
    assert len(reqs) == MAX_REQUESTS
    assert [r["id"] for r in reqs[:3]] == ["big", f"r{MAX_REQUESTS + 1:02}", f"r{MAX_REQUESTS:02}"]
    assert reqs[0]["folder_count"] == MAX_FOLDERS + 2 and reqs[0]["folders_shown"] == MAX_FOLDERS
    assert [f["folder_id"] for f in reqs[0]["folders"]] == [f"big-{i}" for i in range(MAX_FOLDERS)]


def test_reading_the_dashboard_changes_nothing(engine, client):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc())
    pulled(engine, caller, 1)
    engine.devices.create({**DEVICE_TASK, "serials": ["A"]})
    before = state(engine)
    for path in ("/dashboard", "/dashboard/data", "/dashboard/sections"):
        assert client.get(path).status_code == 200
    assert state(engine) == before


# ---- the page ---------------------------------------------------------------------------------

def test_page_is_server_rendered_escaped_and_uses_only_its_own_assets(engine, client):
    online_server(engine, "<script>alert(1)</script>")
    engine.devices.create({**DEVICE_TASK, "serials": ["PHONE-9"]})
    html = client.get("/dashboard").text
    assert "PHONE-9" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(a.startswith("/dashboard/") for a in assets)
    for asset in assets:
        if asset.startswith("/dashboard/static/"):
            assert client.get(asset).status_code == 200
    fragment = client.get("/dashboard/sections")
    assert fragment.headers["cache-control"] == "no-store" and "PHONE-9" in fragment.text
    assert "<html" not in fragment.text


# ---- actions ----------------------------------------------------------------------------------

def test_actions_without_the_page_header_are_refused_and_change_nothing(engine, client):
    engine.stacking.create_request({**request_doc(), "id": "r1"})
    [tid] = engine.devices.create({**DEVICE_TASK, "serials": ["A"]})["task_ids"]
    for path in ("/dashboard/actions/requests/r1/cancel", "/dashboard/actions/folders/F0/release",
                 f"/dashboard/actions/device-tasks/{tid}/stop", f"/dashboard/actions/device-tasks/{tid}/retry"):
        body = assert_refused(engine, lambda: client.post(path), 403)
        assert "X-Requested-With" in body["message"]
    assert client.get("/dashboard/actions/requests/r1/cancel").status_code == 405


def test_cancel_request_and_its_refusal(engine, client):
    engine.stacking.create_request({**request_doc(folders=2, tasks=2), "id": "r1"})
    resp = client.post("/dashboard/actions/requests/r1/cancel", headers=ACT)
    assert resp.status_code == 200 and resp.json() == {"success": True, "data": {"cancelled": 4}}
    assert engine.stacking.request("r1")["open_tasks"] == 0
    body = assert_refused(engine, lambda: client.post("/dashboard/actions/requests/nope/cancel", headers=ACT), 404)
    assert body["message"] == "request not found"


def test_release_folder_and_its_refusal(engine, client):
    caller, _ = online_server(engine)
    engine.stacking.create_request({**request_doc(), "id": "r1"})
    pulled(engine, caller, 1)
    resp = client.post("/dashboard/actions/folders/F0/release", headers=ACT)
    assert resp.json() == {"success": True, "data": {"released": True}}
    assert engine.stacking.request("r1")["folders"][0]["server_id"] is None
    again = client.post("/dashboard/actions/folders/F0/release", headers=ACT)
    assert again.json() == {"success": True, "data": {"released": False}}
    body = assert_refused(engine, lambda: client.post("/dashboard/actions/folders/nope/release", headers=ACT), 404)
    assert body["message"] == "folder not found"


def test_stop_and_retry_a_device_task_and_their_refusals(engine, client):
    [tid] = engine.devices.create({**DEVICE_TASK, "serials": ["A"]})["task_ids"]
    engine.devices.claim({"serials": ["A"]})
    retry_running = lambda: client.post(f"/dashboard/actions/device-tasks/{tid}/retry", headers=ACT)  # noqa: E731
    assert assert_refused(engine, retry_running, 409, "invalid_state")["message"].startswith("task is running")
    resp = client.post(f"/dashboard/actions/device-tasks/{tid}/stop", headers=ACT)
    assert resp.json() == {"success": True, "data": {"task_id": tid, "status": 3}}
    task = engine.devices.get(tid)
    assert task["status"] == 3 and task["remark"] == "stopped"
    assert_refused(engine, lambda: client.post(f"/dashboard/actions/device-tasks/{tid}/stop", headers=ACT), 409,
                   "invalid_state")
    resp = client.post(f"/dashboard/actions/device-tasks/{tid}/retry", headers=ACT)
    assert resp.json() == {"success": True, "data": {"task_id": tid, "status": 0}}
    assert engine.devices.get(tid)["status"] == 0
    assert_refused(engine, lambda: client.post("/dashboard/actions/device-tasks/999/stop", headers=ACT), 404)
    assert_refused(engine, lambda: client.post("/dashboard/actions/device-tasks/abc/retry", headers=ACT), 400)


def test_actions_with_a_token_need_the_cookie_or_the_bearer(guarded):
    engine, client = guarded
    [tid] = engine.devices.create({**DEVICE_TASK, "serials": ["A"]})["task_ids"]
    assert_refused(engine, lambda: client.post(f"/dashboard/actions/device-tasks/{tid}/stop", headers=ACT), 401)
    client.cookies.set(COOKIE, session_value(TOKEN))
    assert client.post(f"/dashboard/actions/device-tasks/{tid}/stop", headers=ACT).status_code == 200
    assert engine.devices.get(tid)["status"] == 3


def test_open_tabs_share_one_snapshot_until_an_action(engine, client, monkeypatch):
    monkeypatch.setattr(dashboard, "SNAPSHOT_TTL_S", 60.0)
    online_server(engine, "first")
    assert [s["name"] for s in snapshot(client)["servers"]] == ["first"]
    online_server(engine, "second")
    assert [s["name"] for s in snapshot(client)["servers"]] == ["first"]  # within the TTL: the shared one
    engine.devices.create({"serials": ["p1"], **DEVICE_TASK})
    task_id = engine.devices.list()["items"][0]["id"]
    assert client.post(f"/dashboard/actions/device-tasks/{task_id}/stop", headers=ACT).status_code == 200
    assert sorted(s["name"] for s in snapshot(client)["servers"]) == ["first", "second"]  # the action dropped it
