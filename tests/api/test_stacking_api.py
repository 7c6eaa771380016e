"""The worker-facing stacking contract over HTTP (stacking.md, seed 000), on both backends."""
import asyncio
from datetime import datetime, timezone

import pytest
from starlette.requests import ClientDisconnect, Request
from starlette.testclient import TestClient

from api.app import create_app
from api.http import MAX_BODY, read_body
from tests.helpers import assert_refused, link, online_server, request_doc, state, ids

SEED_FIELDS = ["id", "request_id", "status", "domain", "website", "title", "about", "phone",
               "address", "location", "image_url", "folder_id", "link_post"]
INVALID_KEY = {"success": False, "message": "invalid api key"}
OK = {"success": True}
LINKS = "/api/v1/stacking/links"
HEALTH = "/api/v1/worker/health"


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine))


@pytest.fixture
def worker(engine):
    """(server id, headers) of an online stacking server."""
    caller, key = online_server(engine, "w1")
    return caller.id, {"X-API-Key": key}


def task_ids(engine) -> list[str]:
    out = []
    for core in engine.stacking.shards:
        prefix = core.keys.task("")
        out += [k.decode()[len(prefix):] for k in core.r.scan_iter(match=prefix + "*")]
    return sorted(out)


def pull(client, headers, **params) -> list[dict]:
    resp = client.get(LINKS, headers=headers, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def started(engine, client, headers, status: str = "registering") -> str:
    """One task of a new two-task folder, claimed by ``headers``' server and taken to
    ``status`` (register = claimed only, registering, or profiled); returns its id."""
    engine.stacking.create_request(request_doc(tasks=2))
    [task] = pull(client, headers, limit=1)
    if status != "register":
        assert client.post(f"{LINKS}/{task['id']}/start", headers=headers).json() == OK
    if status == "profiled":
        assert client.post(f"{LINKS}/{task['id']}/complete", headers=headers, json={"link_post": link(1)}).json() == OK
    return task["id"]


def in_connect(engine, client, headers) -> str:
    """A one-task folder "A0" taken through phase 1 by ``headers``' server; returns the task id (now connect)."""
    engine.stacking.create_request(request_doc(tasks=1, prefix="A"))
    [task] = pull(client, headers, limit=1)
    client.post(f"{LINKS}/{task['id']}/start", headers=headers)
    assert client.post(f"{LINKS}/{task['id']}/complete", headers=headers, json={"link_post": link("a")}).json() == OK
    return task["id"]


# ---- pull ---------------------------------------------------------------

def test_pull_defaults_to_five_tasks_in_seed_shape(engine, client, worker):
    req = engine.stacking.create_request(request_doc(folders=2, tasks=4))
    resp = client.get(LINKS, headers=worker[1])
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["success", "data"] and body["success"] is True
    assert len(body["data"]) == 5
    for task in body["data"]:
        assert list(task) == SEED_FIELDS
        assert task["status"] == "register" and task["link_post"] == ""
        assert task["request_id"] == req["request_id"]
        assert task["about"] == "<p>Hello <b>world</b></p>"


def test_pull_accepts_limit_1000(engine, client, worker):
    engine.stacking.create_request(request_doc(folders=2, tasks=4))
    assert len(pull(client, worker[1], limit=1000)) == 8


def test_pull_with_nothing_ready_returns_empty_list(client, worker):
    assert client.get(LINKS, headers=worker[1]).json() == {"success": True, "data": []}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "", "2.5"])
def test_pull_with_bad_limit_is_400(engine, client, worker, limit):
    engine.stacking.create_request(request_doc())
    assert_refused(engine, lambda: client.get(LINKS, headers=worker[1], params={"limit": limit}), 400)


@pytest.mark.parametrize("status", ["bogus", "registering", "completed"])
def test_pull_with_unknown_status_is_400(engine, client, worker, status):
    engine.stacking.create_request(request_doc())
    assert_refused(engine, lambda: client.get(LINKS, headers=worker[1], params={"status": status}), 400)


def test_pull_status_filters_one_phase(engine, client, worker):
    a = in_connect(engine, client, worker[1])
    engine.stacking.create_request(request_doc(tasks=2, prefix="B"))
    assert [t["id"] for t in pull(client, worker[1], status="connect", limit=10)] == [a]
    register = pull(client, worker[1], status="register", limit=10)
    assert [(t["status"], t["folder_id"]) for t in register] == [("register", "B0")] * 2


@pytest.mark.one_redis("phase 2 before phase 1 holds within a shard; a sharded pull visits shards in rotation (README)")
def test_pull_without_status_returns_connect_tasks_before_register_tasks(engine, client, worker):
    a = in_connect(engine, client, worker[1])
    engine.stacking.create_request(request_doc(tasks=2, prefix="B"))
    tasks = pull(client, worker[1], limit=10)
    assert [t["status"] for t in tasks] == ["connect", "register", "register"]
    assert tasks[0]["id"] == a and list(tasks[0]) == SEED_FIELDS + ["connect_links"]
    assert tasks[0]["link_post"] == link("a") and tasks[0]["about"] == "Hello world"


# ---- get one task -------------------------------------------------------

def test_get_task_returns_it_without_claiming_or_changing_anything(engine, client, worker):
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = task_ids(engine)
    before = state(engine)
    resp = client.get(f"{LINKS}/{tid}", headers=worker[1])
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["success", "data"] and body["success"] is True
    assert list(body["data"]) == SEED_FIELDS and body["data"]["id"] == tid
    assert state(engine) == before
    assert pull(client, worker[1]) == [body["data"]]


def test_get_unknown_task_is_404_task_not_found(engine, client, worker):
    resp = client.get(f"{LINKS}/no-such-task", headers=worker[1])
    assert resp.status_code == 404
    assert resp.json() == {"success": False, "message": "task not found"}


# ---- start / complete / fail --------------------------------------------

def test_start_then_complete_moves_task_to_profiled(engine, client, worker):
    tid = started(engine, client, worker[1])
    assert engine.stacking.task_state(tid)["status"] == "registering"
    resp = client.post(f"{LINKS}/{tid}/complete", headers=worker[1], json={"link_post": link("x"), "note": "ok"})
    assert resp.status_code == 200 and resp.json() == OK
    assert engine.stacking.task_state(tid)["status"] == "profiled"
    assert client.get(f"{LINKS}/{tid}", headers=worker[1]).json()["data"]["link_post"] == link("x")


def test_fail_moves_task_to_profile_failed_with_its_message(engine, client, worker):
    tid = started(engine, client, worker[1])
    resp = client.post(f"{LINKS}/{tid}/fail", headers=worker[1], json={"error_message": "Drive quota exceeded"})
    assert resp.status_code == 200 and resp.json() == OK
    got = engine.stacking.task_state(tid)
    assert got["status"] == "profile_failed" and got["error_message"] == "Drive quota exceeded"


LP, ERR = {"link_post": link(1)}, {"error_message": "x"}


@pytest.mark.parametrize("verb,body,current", [
    ("start", None, "registering"), ("start", None, "profiled"), ("complete", LP, "register"),
    ("complete", LP, "profiled"), ("fail", ERR, "register"), ("fail", ERR, "profiled")])
def test_call_on_task_in_wrong_state_is_409_with_current_status(engine, client, worker, verb, body, current):
    tid = started(engine, client, worker[1], current)
    refused = assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/{verb}", headers=worker[1], json=body),
                             409, "invalid_state")
    assert f"'{current}'" in refused["message"]


@pytest.mark.parametrize("verb,body,current", [
    ("start", None, "register"), ("complete", LP, "registering"), ("fail", ERR, "registering")])
def test_call_on_task_held_by_another_server_is_refused(engine, client, worker, verb, body, current):
    tid = started(engine, client, worker[1], current)
    _, other = online_server(engine, "w2")
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/{verb}", headers={"X-API-Key": other}, json=body),
                   409, "not_task_owner")


@pytest.mark.parametrize("verb,body", [("start", None), ("complete", LP), ("fail", ERR)])
def test_call_on_unknown_task_is_404(engine, client, worker, verb, body):
    engine.stacking.create_request(request_doc(tasks=1))
    refused = assert_refused(engine, lambda: client.post(f"{LINKS}/nope/{verb}", headers=worker[1], json=body), 404)
    assert refused == {"success": False, "message": "task not found"}


@pytest.mark.parametrize("body", [None, {}, {"link_post": ""}, {"link_post": None}, {"note": "done"}])
def test_complete_in_phase1_without_link_post_is_400(engine, client, worker, body):
    tid = started(engine, client, worker[1])
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/complete", headers=worker[1], json=body), 400)


@pytest.mark.parametrize("link_post", ["http://drive.google.com/drive/folders/1", "ftp://x/y", "drive.google.com",
                                       "https://", 42, ["https://x.io"]])
def test_complete_with_link_post_not_https_url_is_400(engine, client, worker, link_post):
    tid = started(engine, client, worker[1])
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/complete", headers=worker[1],
                                               json={"link_post": link_post}), 400)


@pytest.mark.parametrize("body", [None, {}, {"error_message": ""}, {"error_message": "   "},
                                  {"error_message": 5}, {"note": "only a note"}])
def test_fail_without_error_message_is_400(engine, client, worker, body):
    tid = started(engine, client, worker[1])
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/fail", headers=worker[1], json=body), 400)


def test_fail_error_message_is_limited_to_1000_characters(engine, client, worker):
    tid = started(engine, client, worker[1])
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/fail", headers=worker[1],
                                               json={"error_message": "e" * 1001}), 400)
    resp = client.post(f"{LINKS}/{tid}/fail", headers=worker[1], json={"error_message": "e" * 1000})
    assert resp.status_code == 200
    assert engine.stacking.task_state(tid)["error_message"] == "e" * 1000


@pytest.mark.parametrize("verb", ["complete", "fail"])
@pytest.mark.parametrize("content", [b"{not json", b'{"link_post": ', b"[]", b'["https://x.io"]', b'"text"', b"42"])
def test_body_that_is_not_a_json_object_is_400(engine, client, worker, verb, content):
    tid = started(engine, client, worker[1])
    headers = {**worker[1], "Content-Type": "application/json"}
    assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/{verb}", headers=headers, content=content), 400)


def _padded(body: bytes, size: int) -> bytes:
    """``body`` (a JSON object) padded with trailing whitespace to exactly ``size`` bytes."""
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_one_mebibyte_is_413(engine, client, worker, chunked):
    tid = started(engine, client, worker[1])
    content = _padded(b'{"error_message": "boom"}', MAX_BODY + 1)
    send = (lambda: iter([content[:1000], content[1000:]])) if chunked else (lambda: content)
    refused = assert_refused(engine, lambda: client.post(f"{LINKS}/{tid}/fail", headers=worker[1], content=send()),
                             413, "payload_too_large")
    assert set(refused) == {"success", "message", "code"}


def test_a_body_sent_in_chunks_is_read_whole(engine, client, worker):
    tid = started(engine, client, worker[1])
    parts = [b'{"error_message": "dis', b'k full", ', b'"note": "retry later"}']
    assert client.post(f"{LINKS}/{tid}/fail", headers=worker[1], content=iter(parts)).json() == OK
    assert engine.stacking.task_state(tid)["error_message"] == "disk full"


def _receiving(*messages: dict) -> Request:
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_read_body_joins_chunks_and_stops_at_a_disconnect():
    whole = _receiving({"type": "http.request", "body": b"ab", "more_body": True},
                       {"type": "http.request", "body": b"", "more_body": True},
                       {"type": "http.request", "body": b"cd", "more_body": False})
    assert asyncio.run(read_body(whole)) == b"abcd"
    gone = _receiving({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.disconnect"})
    with pytest.raises(ClientDisconnect):
        asyncio.run(read_body(gone))


def test_body_of_exactly_one_mebibyte_is_accepted(engine, client, worker):
    tid = started(engine, client, worker[1])
    content = _padded(b'{"error_message": "boom"}', MAX_BODY)
    assert client.post(f"{LINKS}/{tid}/fail", headers=worker[1], content=content).json() == OK


# ---- connect-status -----------------------------------------------------

def test_connect_status_of_folder_without_my_tasks_is_all_zero(engine, client, worker):
    engine.stacking.create_request(request_doc(tasks=2))
    resp = client.get("/api/v1/stacking/folders/F0/connect-status", headers=worker[1])
    assert resp.status_code == 200
    assert resp.json() == {"success": True, "folder_id": "F0", "ready": False, "total_tasks": 0,
                           "phase1_active": 0, "profiled": 0, "connect_count": 0, "by_status": {}}


def test_connect_status_counts_my_claimed_tasks_through_the_barrier(engine, client, worker):
    headers, url = worker[1], "/api/v1/stacking/folders/F0/connect-status"
    engine.stacking.create_request(request_doc(tasks=3))
    tasks = pull(client, headers)
    assert client.get(url, headers=headers).json() == {
        "success": True, "folder_id": "F0", "ready": False, "total_tasks": 3, "phase1_active": 3,
        "profiled": 0, "connect_count": 0, "by_status": {"register": 3}}
    for t in tasks:
        client.post(f"{LINKS}/{t['id']}/start", headers=headers)
    for i, t in enumerate(tasks[:2]):
        client.post(f"{LINKS}/{t['id']}/complete", headers=headers, json={"link_post": link(i)})
    assert client.get(url, headers=headers).json() == {
        "success": True, "folder_id": "F0", "ready": False, "total_tasks": 3, "phase1_active": 1,
        "profiled": 2, "connect_count": 0, "by_status": {"profiled": 2, "registering": 1}}
    client.post(f"{LINKS}/{tasks[2]['id']}/complete", headers=headers, json={"link_post": link(2)})
    assert client.get(url, headers=headers).json() == {
        "success": True, "folder_id": "F0", "ready": True, "total_tasks": 3, "phase1_active": 0,
        "profiled": 0, "connect_count": 3, "by_status": {"connect": 3}}
    _, other = online_server(engine, "w2")
    assert client.get(url, headers={"X-API-Key": other}).json()["total_tasks"] == 0


@pytest.mark.parametrize("path", ["/api/v1/stacking/folders//connect-status",
                                  "/api/v1/stacking/folders/%20/connect-status"])
def test_connect_status_without_folder_id_is_400(engine, client, worker, path):
    assert_refused(engine, lambda: client.get(path, headers=worker[1]), 400)


# ---- auth -----------------------------------------------------------------

ENDPOINTS = [("GET", LINKS), ("GET", f"{LINKS}/x"), ("POST", f"{LINKS}/x/start"), ("POST", f"{LINKS}/x/complete"),
             ("POST", f"{LINKS}/x/fail"), ("GET", "/api/v1/stacking/folders/F0/connect-status"), ("POST", HEALTH)]


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("key", [None, "", "thk_unknown"])
def test_missing_or_unknown_api_key_is_401(engine, client, method, path, key):
    headers = {} if key is None else {"X-API-Key": key}
    assert assert_refused(engine, lambda: client.request(method, path, headers=headers), 401) == INVALID_KEY


@pytest.mark.parametrize("method,path", ENDPOINTS)
def test_deleted_server_key_is_401(engine, client, worker, method, path):
    engine.servers.delete(worker[0])
    assert assert_refused(engine, lambda: client.request(method, path, headers=worker[1]), 401) == INVALID_KEY


def test_invalid_key_is_reported_before_service_mismatch(engine, client):
    created = engine.servers.create("dev", ["device"])
    engine.servers.delete(created["id"])
    resp = client.get(LINKS, headers={"X-API-Key": created["api_key"]})
    assert (resp.status_code, resp.json()) == (401, INVALID_KEY)


def test_auth_is_checked_before_input(engine, client):
    resp = client.get(LINKS, params={"limit": "0", "status": "bogus"})
    assert (resp.status_code, resp.json()) == (401, INVALID_KEY)


@pytest.mark.parametrize("method,path", ENDPOINTS[:-1])
def test_server_without_stacking_service_is_403_service_key_mismatch(engine, client, method, path):
    _, key = online_server(engine, "dev", ["device"])
    assert_refused(engine, lambda: client.request(method, path, headers={"X-API-Key": key}),
                   403, "service_key_mismatch")


def test_google_stacking_service_is_accepted(engine, client):
    _, key = online_server(engine, "g", ["device", "google_stacking"])
    engine.stacking.create_request(request_doc(tasks=1))
    assert len(pull(client, {"X-API-Key": key})) == 1


def test_service_mismatch_is_reported_before_not_online(engine, client):
    key = engine.servers.create("dev", ["device"])["api_key"]  # never heartbeated
    assert_refused(engine, lambda: client.get(LINKS, headers={"X-API-Key": key}), 403, "service_key_mismatch")


def test_server_that_never_sent_a_heartbeat_is_403_not_online(engine, client):
    key = engine.servers.create("new", ["stacking"])["api_key"]
    refused = assert_refused(engine, lambda: client.get(LINKS, headers={"X-API-Key": key}), 403, "server_not_online")
    assert "/api/v1/worker/health" in refused["message"]


def test_server_with_stale_heartbeat_is_403_not_online(engine, client, worker, clock):
    clock.advance(300)
    assert client.get(LINKS, headers=worker[1]).status_code == 200
    clock.advance(1)
    refused = assert_refused(engine, lambda: client.get(LINKS, headers=worker[1]), 403, "server_not_online")
    assert "/api/v1/worker/health" in refused["message"]


@pytest.mark.parametrize("status", ["maintenance", "offline"])
def test_server_set_out_of_service_by_operator_is_403_not_online(engine, client, worker, status):
    engine.servers.set_status(worker[0], status)
    assert_refused(engine, lambda: client.get(LINKS, headers=worker[1]), 403, "server_not_online")


# ---- health ---------------------------------------------------------------

def test_health_records_metrics_and_returns_ok_with_server_time_in_utc(engine, client, worker, clock):
    """The reported server_name is kept with the metrics; the registered name (unique,
    set by operators) is what the response and the server list show."""
    resp = client.post(HEALTH, headers=worker[1], json={"server_name": "renamed", "cpu_usage": 12.5, "active_tasks": 4})
    assert resp.status_code == 200
    server_time = resp.json()["data"]["server_time"]
    assert resp.json() == {"success": True, "data": {"status": "ok", "server_id": worker[0],
                                                     "server_name": "w1", "server_time": server_time}}
    server = engine.servers.get(worker[0])
    assert (server["name"], server["active_tasks"], server["free_slots"]) == ("w1", 4, 6)
    assert server["metrics"]["server_name"] == "renamed"
    assert server_time.endswith("Z")
    assert datetime.fromisoformat(server_time[:-1] + "+00:00") == datetime.fromtimestamp(clock.ms / 1000, timezone.utc)


@pytest.mark.parametrize("content", [None, b"", b"{}"])
def test_health_accepts_an_empty_body(client, worker, content):
    assert client.post(HEALTH, headers=worker[1], content=content).status_code == 200


def test_server_time_is_what_datetime_isoformat_gives_for_any_millisecond():
    import random

    from engine.service import iso_ms

    rng = random.Random(5)
    for ms in [0, 999, 1000, 1_764_979_200_999, *(rng.randrange(0, 4_102_444_800_000) for _ in range(5000))]:
        expected = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
        assert iso_ms(ms) == expected.replace("+00:00", "Z"), ms


def test_health_works_for_any_service(engine, client):
    key = engine.servers.create("dev", ["device"])["api_key"]
    assert client.post(HEALTH, headers={"X-API-Key": key}).status_code == 200


def test_health_brings_a_new_or_stale_server_online(engine, client, clock):
    headers = {"X-API-Key": engine.servers.create("new", ["stacking"])["api_key"]}
    assert client.get(LINKS, headers=headers).status_code == 403
    assert client.post(HEALTH, headers=headers).status_code == 200
    assert client.get(LINKS, headers=headers).status_code == 200
    clock.advance(301)
    assert client.get(LINKS, headers=headers).status_code == 403
    assert client.post(HEALTH, headers=headers).status_code == 200
    assert client.get(LINKS, headers=headers).status_code == 200


def test_health_brings_an_offline_server_back_online(engine, client, worker):
    engine.servers.set_status(worker[0], "offline")
    assert client.get(LINKS, headers=worker[1]).status_code == 403
    assert client.post(HEALTH, headers=worker[1]).status_code == 200
    assert engine.servers.get(worker[0])["status"] == "online"
    assert client.get(LINKS, headers=worker[1]).status_code == 200


def test_health_leaves_a_maintenance_server_in_maintenance(engine, client, worker):
    engine.servers.set_status(worker[0], "maintenance")
    assert client.post(HEALTH, headers=worker[1]).json()["data"]["status"] == "ok"
    assert engine.servers.get(worker[0])["status"] == "maintenance"
    assert_refused(engine, lambda: client.get(LINKS, headers=worker[1]), 403, "server_not_online")


def test_health_heartbeats_extend_the_running_lease(engine, client, worker, clock):
    tid = started(engine, client, worker[1])
    for _ in range(7):  # 7 x 290 s = 2030 s, past the 1800 s run lease
        clock.advance(290)
        assert client.post(HEALTH, headers=worker[1]).status_code == 200
    engine.stacking.sweep()
    assert engine.stacking.task_state(tid)["status"] == "registering"
    clock.advance(1801)  # no heartbeat for longer than the run lease
    engine.stacking.sweep()
    got = engine.stacking.task_state(tid)
    assert (got["status"], got["error_message"]) == ("profile_failed", "lease expired")


@pytest.mark.parametrize("body", [{"cpu_usage": "high"}, {"ram_usage": True}, {"active_tasks": [1]},
                                  {"server_name": 7}, {"ip": "x" * 201}])
def test_health_with_bad_metric_type_is_400(engine, client, worker, body):
    assert_refused(engine, lambda: client.post(HEALTH, headers=worker[1], json=body), 400)


# ---- routing --------------------------------------------------------------

@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1/stacking/nope", f"{LINKS}/x/restart"])
def test_unknown_path_under_api_v1_is_404_in_the_envelope(engine, client, worker, path):
    assert_refused(engine, lambda: client.get(path, headers=worker[1]), 404)


def test_wrong_method_is_405_in_the_envelope(engine, client, worker):
    assert_refused(engine, lambda: client.delete(LINKS, headers=worker[1]), 405)


# ---- one round trip per request ----------------------------------------------

class RoundTrips:
    """Counts what reaches Redis: each direct command, each pipeline, and each batch written on the
    web process's pipelined connection (api/pipelined.py, a real Redis) is one round trip."""

    def __init__(self, monkeypatch, client) -> None:
        from api.pipelined import PipelinedConnection

        self.n = 0
        real_cmd, real_pipe, real_submit = client.execute_command, client.pipeline, PipelinedConnection.submit

        def submit(conn, *args, **kwargs):
            self.n += 1
            return real_submit(conn, *args, **kwargs)

        monkeypatch.setattr(PipelinedConnection, "submit", submit)

        def cmd(*args, **kwargs):
            self.n += 1
            return real_cmd(*args, **kwargs)

        def pipeline(*args, **kwargs):
            pipe = real_pipe(*args, **kwargs)
            real_execute = pipe.execute

            def execute(*a, **k):
                self.n += 1
                return real_execute(*a, **k)

            pipe.execute = execute
            return pipe

        monkeypatch.setattr(client, "execute_command", cmd)
        monkeypatch.setattr(client, "pipeline", pipeline)


@pytest.mark.one_redis("counts the plain client's pipelines; on a cluster a batch is one pipeline per node (engine/calls.py)")
def test_every_single_task_endpoint_is_one_round_trip(engine, client, worker, monkeypatch):
    """Measured after a first pass has loaded every script (a first call may add SCRIPT LOAD)."""
    engine.stacking.create_request(request_doc(tasks=6))
    tids = ids(engine.stacking.claim(worker[0], 6))

    def calls(a: str, b: str) -> list:
        return [
            ("POST", f"{LINKS}/{a}/start", None),
            ("POST", f"{LINKS}/{b}/start", None),
            ("POST", f"{LINKS}/{a}/complete", {"link_post": link(1)}),
            ("POST", f"{LINKS}/{b}/fail", {"error_message": "boom"}),
            ("GET", f"{LINKS}/{a}", None),
            ("GET", "/api/v1/stacking/folders/F0/connect-status", None),
            ("POST", HEALTH, {"cpu_usage": 1}),
        ]

    for method, path, body in calls(tids[0], tids[1]):
        assert client.request(method, path, headers=worker[1], json=body).status_code == 200
    trips = RoundTrips(monkeypatch, engine.core.r)
    for method, path, body in calls(tids[2], tids[3]):
        trips.n = 0
        resp = client.request(method, path, headers=worker[1], json=body)
        assert resp.status_code == 200, (path, resp.text)
        assert trips.n == 1, f"{method} {path}: {trips.n} round trips"


def test_maintenance_takes_effect_at_the_next_request(engine, client, worker):
    engine.stacking.create_request(request_doc(tasks=2))
    [a, b] = ids(engine.stacking.claim(worker[0], 2))
    assert client.post(f"{LINKS}/{a}/start", headers=worker[1]).status_code == 200
    engine.servers.set_status(worker[0], "maintenance")
    body = assert_refused(engine, lambda: client.post(f"{LINKS}/{b}/start", headers=worker[1]), 403,
                          "server_not_online")
    assert "maintenance" in body["message"]
