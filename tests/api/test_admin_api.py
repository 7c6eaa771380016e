"""The operator API under /api/v1/admin (stacking.md "Operator side"), on both backends."""
import copy

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.http import MAX_BODY
from engine.servers import hash_key
from tests.helpers import assert_refused, ids, link, online_server, request_doc, state

ADMIN = "/api/v1/admin"
SERVERS = f"{ADMIN}/servers"
REQUESTS = f"{ADMIN}/stacking/requests"
HEALTH = "/api/v1/worker/health"


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine))


def create_server(client, **body) -> dict:
    resp = client.post(SERVERS, json={"name": "w1", **body})
    assert resp.status_code == 201, resp.text
    return resp.json()["data"]


# ---- servers ----------------------------------------------------------------

def test_create_server_returns_its_api_key_once(engine, client):
    resp = client.post(SERVERS, json={"name": "w1", "services": ["stacking", "device"], "max_threads": 20})
    assert resp.status_code == 201
    body = resp.json()
    assert body["success"] is True
    data = body["data"]
    assert data == {"id": data["id"], "name": "w1", "services": ["stacking", "device"], "max_threads": 20,
                    "api_key": data["api_key"]}
    assert data["api_key"].startswith("thk_")
    assert client.post(HEALTH, headers={"X-API-Key": data["api_key"]}).status_code == 200


def test_create_server_defaults_to_stacking_and_ten_threads(client):
    data = create_server(client)
    assert (data["services"], data["max_threads"]) == (["stacking"], 10)


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": 5}, {"name": "x" * 201},
                                  {"name": "w", "services": 5}, {"name": "w", "services": [1]},
                                  {"name": "w", "services": []},
                                  {"name": "w", "max_threads": 0}, {"name": "w", "max_threads": "10"}])
def test_create_server_with_bad_input_is_400(engine, client, body):
    assert_refused(engine, lambda: client.post(SERVERS, json=body), 400)


def test_server_names_are_unique_so_a_retried_create_is_409(engine, client):
    first = create_server(client)
    body = assert_refused(engine, lambda: client.post(SERVERS, json={"name": "w1"}), 409, "invalid_state")
    assert "w1" in body["message"]
    client.delete(f"{SERVERS}/{first['id']}")
    assert create_server(client)["id"] != first["id"]  # a deleted server's name is free again


def test_server_list_and_get_never_show_the_key_or_its_hash(engine, client):
    data = create_server(client)
    key = data["api_key"]
    listed = client.get(SERVERS)
    got = client.get(f"{SERVERS}/{data['id']}")
    for resp in (listed, got):
        assert resp.status_code == 200
        assert key not in resp.text and hash_key(key) not in resp.text and "api_key" not in resp.text
    assert [s["id"] for s in listed.json()["data"]] == [data["id"]]


def test_get_server_reports_status_heartbeat_and_free_slots(engine, client, clock):
    data = create_server(client, max_threads=8)
    client.post(HEALTH, headers={"X-API-Key": data["api_key"]}, json={"active_tasks": 3})
    resp = client.get(f"{SERVERS}/{data['id']}")
    assert resp.status_code == 200
    assert resp.json() == {"success": True, "data": {
        "id": data["id"], "name": "w1", "services": ["stacking"], "status": "online", "online": True,
        "last_heartbeat_ms": clock.ms, "max_threads": 8, "active_tasks": 3, "free_slots": 5,
        "metrics": {"active_tasks": 3}}}


@pytest.mark.parametrize("active_tasks", [1e20, 10**25, -5, 2.5])
def test_out_of_range_heartbeat_metrics_are_refused_and_list_still_renders(engine, active_tasks):
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    data = create_server(client)
    resp = client.post(HEALTH, headers={"X-API-Key": data["api_key"]}, json={"active_tasks": active_tasks})
    assert resp.status_code == 400 and "active_tasks" in resp.json()["message"]
    assert client.get(SERVERS).status_code == 200
    assert client.get(f"{SERVERS}/{data['id']}").status_code == 200


def test_get_unknown_server_is_404(engine, client):
    assert assert_refused(engine, lambda: client.get(f"{SERVERS}/nope"), 404) == {
        "success": False, "message": "server not found"}


@pytest.mark.parametrize("status", ["offline", "maintenance", "online"])
def test_set_server_status(engine, client, status):
    caller, _ = online_server(engine)
    engine.servers.set_status(caller.id, "maintenance" if status == "online" else "online")
    previous = engine.servers.get(caller.id)["status"]
    resp = client.post(f"{SERVERS}/{caller.id}/status", json={"status": status})
    assert resp.status_code == 200
    assert resp.json() == {"success": True, "data": {"id": caller.id, "status": status, "previous": previous}}
    assert engine.servers.get(caller.id)["status"] == status


@pytest.mark.parametrize("body", [{"status": "bogus"}, {"status": "deleted"}, {"status": None}, {}])
def test_set_server_status_with_bad_status_is_400(engine, client, body):
    caller, _ = online_server(engine)
    assert_refused(engine, lambda: client.post(f"{SERVERS}/{caller.id}/status", json=body), 400)


def test_set_status_of_unknown_server_is_404(engine, client):
    assert_refused(engine, lambda: client.post(f"{SERVERS}/nope/status", json={"status": "offline"}), 404)


def test_deleted_server_key_stops_working_and_server_disappears(engine, client):
    data = create_server(client)
    key = data["api_key"]
    resp = client.delete(f"{SERVERS}/{data['id']}")
    assert (resp.status_code, resp.json()) == (200, {"success": True})
    resp = client.post(HEALTH, headers={"X-API-Key": key})
    assert (resp.status_code, resp.json()) == (401, {"success": False, "message": "invalid api key"})
    assert client.get(f"{SERVERS}/{data['id']}").status_code == 404
    assert client.get(SERVERS).json() == {"success": True, "data": []}
    assert_refused(engine, lambda: client.delete(f"{SERVERS}/{data['id']}"), 404)
    assert_refused(engine, lambda: client.post(f"{SERVERS}/{data['id']}/status", json={"status": "online"}), 404)


# ---- requests ---------------------------------------------------------------

def test_create_request_returns_id_and_counts(engine, client):
    resp = client.post(REQUESTS, json=request_doc(folders=2, tasks=3))
    assert resp.status_code == 201
    body = resp.json()
    assert body == {"success": True, "data": {"request_id": body["data"]["request_id"], "folders": 2, "tasks": 6}}


def test_create_request_keeps_a_given_id(client):
    resp = client.post(REQUESTS, json={**request_doc(), "id": "order-42"})
    assert resp.json()["data"] == {"request_id": "order-42", "folders": 1, "tasks": 3}


def _without(doc: dict, *path) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return doc


def _with(doc: dict, value, *path) -> dict:
    doc = copy.deepcopy(doc)
    target = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return doc


DOC = request_doc(folders=2, tasks=2)
BAD_REQUESTS = {
    "missing website": _without(DOC, "website"),
    "website not https": _with(DOC, "http://likepion.com", "website"),
    "bad stacking_mode": _with(DOC, "spiral", "stacking_mode"),
    "bad domain": _with(DOC, "drive.google.com", "folders", 0, "tasks", 1, "domain"),
    "missing domain": _without(DOC, "folders", 1, "tasks", 0, "domain"),
    "missing title": _without(DOC, "folders", 0, "tasks", 0, "title"),
    "about not a string": _with(DOC, ["x"], "folders", 0, "tasks", 0, "about"),
    "blank title": _with(DOC, "   ", "folders", 0, "tasks", 1, "title"),
    "title null": _with(DOC, None, "folders", 1, "tasks", 0, "title"),
    "phone over 100,000 characters": _with(DOC, "9" * 100_001, "folders", 1, "tasks", 1, "phone"),
    "no folders": _with(DOC, [], "folders"),
    "folders not a list": _with(DOC, {"F0": []}, "folders"),
    "folder without tasks": _with(DOC, [], "folders", 1, "tasks"),
    "missing folder_id": _without(DOC, "folders", 0, "folder_id"),
    "duplicate folder_id": _with(DOC, "F0", "folders", 1, "folder_id"),
    "folder_id with slash": _with(DOC, "a/b", "folders", 0, "folder_id"),
    "max_retries negative": _with(DOC, -1, "max_retries"),
    "max_retries over 100": _with(DOC, 101, "max_retries"),
    "max_retries a string": _with(DOC, "3", "max_retries"),
    "max_retries a bool": _with(DOC, True, "max_retries"),
    "id not a string": _with(DOC, 5, "id"),
}


@pytest.mark.parametrize("doc", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_create_request_with_bad_input_is_400_and_stores_nothing(engine, client, doc):
    assert_refused(engine, lambda: client.post(REQUESTS, json=doc), 400)


def test_create_request_over_the_task_limit_is_400(engine, client):
    engine.core.settings.max_request_tasks = 5
    assert_refused(engine, lambda: client.post(REQUESTS, json=request_doc(folders=2, tasks=3)), 400)
    assert client.post(REQUESTS, json=request_doc(folders=1, tasks=5)).status_code == 201


def test_create_request_reusing_a_folder_id_is_409_and_stores_nothing(engine, client):
    client.post(REQUESTS, json=request_doc(folders=1))  # F0
    doc = request_doc(folders=2, prefix="G")
    doc["folders"][1]["folder_id"] = "F0"
    refused = assert_refused(engine, lambda: client.post(REQUESTS, json=doc), 409, "invalid_state")
    assert "F0" in refused["message"]


def test_create_request_reusing_a_request_id_is_409(engine, client):
    client.post(REQUESTS, json={**request_doc(), "id": "order-42"})
    assert_refused(engine, lambda: client.post(REQUESTS, json={**request_doc(prefix="G"), "id": "order-42"}),
                   409, "invalid_state")


def test_create_request_accepts_a_bulk_body_over_one_mebibyte(engine, client):
    doc = request_doc(tasks=11, about="x" * 100_000)
    resp = client.post(REQUESTS, json=doc)
    assert int(resp.request.headers["content-length"]) > MAX_BODY
    assert resp.status_code == 201


def test_other_admin_bodies_over_one_mebibyte_are_413(engine, client):
    assert_refused(engine, lambda: client.post(SERVERS, json={"name": "x" * MAX_BODY}), 413, "payload_too_large")


def test_get_request_reports_progress_per_folder(engine, client):
    rid = client.post(REQUESTS, json=request_doc(folders=2, tasks=3)).json()["data"]["request_id"]
    resp = client.get(f"{REQUESTS}/{rid}")
    assert resp.status_code == 200
    folder = {"server_id": None, "phase": 1, "total_tasks": 3, "phase1_active": 3, "open": 3,
              "by_status": {"register": 3}}
    assert resp.json() == {"success": True, "data": {
        "id": rid, "status": "register", "website": "https://likepion.com", "stacking_mode": "chain",
        "max_retries": 3, "total_tasks": 6, "open_tasks": 6, "progress": 0.0, "by_status": {"register": 6},
        "folders": [{"folder_id": "F0", **folder}, {"folder_id": "F1", **folder}]}}


def test_get_request_follows_claims_and_completions(engine, client):
    rid = client.post(REQUESTS, json=request_doc(folders=1, tasks=2, mode="disable")).json()["data"]["request_id"]
    caller, _ = online_server(engine)
    tids = ids(engine.stacking.claim(caller.id, 5))
    for i, tid in enumerate(tids):
        engine.stacking.start(caller.id, tid)
        engine.stacking.complete(caller.id, tid, link(i))
    data = client.get(f"{REQUESTS}/{rid}").json()["data"]
    assert (data["status"], data["open_tasks"], data["progress"]) == ("completed", 0, 100.0)
    assert data["by_status"] == {"completed": 2}
    assert data["folders"][0]["server_id"] == caller.id and data["folders"][0]["phase"] == 2


def test_get_unknown_request_is_404(engine, client):
    assert assert_refused(engine, lambda: client.get(f"{REQUESTS}/nope"), 404) == {
        "success": False, "message": "request not found"}


# ---- admin auth -------------------------------------------------------------

def test_cancel_request_cancels_open_tasks_and_twice_cancels_nothing(engine, client):
    rid = client.post(REQUESTS, json=request_doc(folders=2, tasks=2)).json()["data"]["request_id"]
    assert client.post(f"{REQUESTS}/{rid}/cancel").json() == {"success": True, "data": {"cancelled": 4}}
    assert client.post(f"{REQUESTS}/{rid}/cancel").json() == {"success": True, "data": {"cancelled": 0}}
    assert engine.stacking.request(rid)["by_status"] == {"cancel": 4}
    assert_refused(engine, lambda: client.post(f"{REQUESTS}/nope/cancel"), 404)


def test_cancel_task_then_again_is_409(engine, client):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=2))
    [tid, _] = ids(engine.stacking.claim(caller.id, 2))
    assert client.post(f"{ADMIN}/stacking/tasks/{tid}/cancel").json() == {"success": True}
    assert engine.stacking.task_state(tid)["status"] == "cancel"
    body = assert_refused(engine, lambda: client.post(f"{ADMIN}/stacking/tasks/{tid}/cancel"), 409, "invalid_state")
    assert "cancel" in body["message"]
    assert_refused(engine, lambda: client.post(f"{ADMIN}/stacking/tasks/nope/cancel"), 404)


def test_stats_counts_tasks_by_status(engine, client):
    assert client.get(f"{ADMIN}/stacking/stats").json() == {"success": True, "data": {}}
    client.post(REQUESTS, json=request_doc(folders=2, tasks=3))
    assert client.get(f"{ADMIN}/stacking/stats").json() == {"success": True, "data": {"register": 6}}


def test_release_folder_hands_it_to_another_server(engine, client):
    a, _ = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(tasks=3))
    ids(engine.stacking.claim(a.id, 1))
    assert engine.stacking.claim(b.id, 5) == []
    release = f"{ADMIN}/stacking/folders/F0/release"
    assert client.post(release).json() == {"success": True, "data": {"released": True}}
    assert client.post(release).json() == {"success": True, "data": {"released": False}}
    assert len(engine.stacking.claim(b.id, 5)) == 2
    assert_refused(engine, lambda: client.post(f"{ADMIN}/stacking/folders/nope/release"), 404)


ENDPOINTS = [("GET", SERVERS, None), ("POST", SERVERS, {"name": "w9"}), ("GET", f"{SERVERS}/x", None),
             ("DELETE", f"{SERVERS}/x", None), ("POST", f"{SERVERS}/x/status", {"status": "offline"}),
             ("POST", REQUESTS, request_doc()), ("GET", f"{REQUESTS}/x", None),
             ("POST", f"{REQUESTS}/x/cancel", None), ("POST", f"{ADMIN}/stacking/tasks/x/cancel", None),
             ("POST", f"{ADMIN}/stacking/folders/F0/release", None), ("GET", f"{ADMIN}/stacking/stats", None)]


@pytest.mark.parametrize("method,path,body", ENDPOINTS)
@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer ", "Bearer wrong", "Bearer secretX",
                                           "Basic secret", "secret"])
def test_admin_token_is_required_when_set(engine, client, method, path, body, authorization):
    engine.core.settings.admin_token = "secret"
    headers = {} if authorization is None else {"Authorization": authorization}
    refused = assert_refused(engine, lambda: client.request(method, path, headers=headers, json=body), 401)
    assert refused == {"success": False, "message": "invalid admin token"}


def test_right_admin_token_is_accepted_from_any_client(engine):
    engine.core.settings.admin_token = "secret"
    remote = TestClient(create_app(engine), client=("10.1.2.3", 5000))
    headers = {"Authorization": "Bearer secret"}
    resp = remote.post(SERVERS, json={"name": "w1"}, headers=headers)
    assert resp.status_code == 201
    assert remote.get(SERVERS, headers=headers).json()["data"][0]["id"] == resp.json()["data"]["id"]


def test_a_worker_api_key_is_not_an_admin_token(engine, client):
    engine.core.settings.admin_token = "secret"
    _, key = online_server(engine)
    assert client.get(SERVERS, headers={"X-API-Key": key, "Authorization": f"Bearer {key}"}).status_code == 401


def test_without_admin_token_loopback_clients_are_allowed(engine):
    for host in ("testclient", "127.0.0.1", "::1"):
        assert TestClient(create_app(engine), client=(host, 5000)).get(SERVERS).status_code == 200


@pytest.mark.parametrize("method,path,body", ENDPOINTS)
def test_without_admin_token_remote_clients_are_refused(engine, method, path, body):
    remote = TestClient(create_app(engine), client=("10.1.2.3", 5000))
    assert_refused(engine, lambda: remote.request(method, path, json=body), 403)
