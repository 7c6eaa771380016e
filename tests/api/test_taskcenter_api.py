"""The task center over HTTP (task-center.md): /suno submit and fetch, the management auth
matrix, the task lists (every filter, pairs, time bounds, pagination) and the operator API.
Every test runs on fakeredis, on a real redis-server and on a 3-master cluster with the task
center in 3 shards (the ``engine`` fixture; the ledger is read on every shard)."""
from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from engine.taskcenter import map_report

MUSIC, LYRICS = 50_000, 5_000
TASK_KEYS = ["id", "created_at", "updated_at", "task_id", "platform", "user_id", "quota", "action", "status",
             "fail_reason", "submit_time", "start_time", "finish_time", "progress", "properties", "data"]
ADMIN_KEYS = TASK_KEYS[:6] + ["channel_id"] + TASK_KEYS[6:] + ["username"]


@pytest.fixture
def client(engine):
    return TestClient(create_app(engine, access_log=False))


# ---- helpers -----------------------------------------------------------------------------
def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def mgmt(user: dict, header: str | None = None) -> dict:
    return {"Authorization": f"Bearer {user['access_token']}",
            "New-Api-User": str(user["id"]) if header is None else header}


def ledger_len(engine) -> int:
    return sum(c.r.xlen(c.keys.ledger) for c in engine.tasks.shards)


def snapshot(engine, uid: int) -> tuple:
    u = engine.tasks.user(uid)
    return (u["quota"], u["used_quota"], engine.tasks.list({}, admin=True)["total"], ledger_len(engine))


def suno_ok(resp):
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["code"] == "success" and body["message"] == "", body
    return body["data"]


def suno_refused(engine, uid: int, send, status: int, code: str) -> dict:
    """``send()`` is refused with ``status``/``code`` and changes no quota, task or ledger entry."""
    before = snapshot(engine, uid)
    resp = send()
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"code", "message", "data"}, body
    assert body["code"] == code and body["data"] is None, body
    assert isinstance(body["message"], str) and body["message"]
    assert snapshot(engine, uid) == before
    return body


def ok(resp, status: int = 200):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is True, body
    return body["data"]


def failed(resp, status: int, message: str | None = None, extra: frozenset = frozenset()) -> str:
    """``{"success": false, "message": ...}`` exactly (``extra``: keys also allowed, e.g. the
    operator API's stacking envelope adds ``code`` to a conflict)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert {"success", "message"} <= set(body) <= {"success", "message"} | extra, body
    assert body["success"] is False, body
    assert isinstance(body["message"], str) and body["message"]
    if message is not None:
        assert body["message"] == message
    return body["message"]


def submit(client, key: str, action: str = "music", body=None):
    return client.post(f"/suno/submit/{action}", headers=bearer(key), json={"prompt": "a song"} if body is None
                       else body)


# ---- 1. submit ---------------------------------------------------------------------------
def test_submit_success_charges_user_and_creates_task(client, engine):
    u = engine.tasks.create_user("amy", 200_000, "common")
    q0, used0, total0, ledger0 = snapshot(engine, u["id"])
    tid = suno_ok(submit(client, u["api_key"], "music"))
    assert re.fullmatch(r"task_[A-Za-z0-9]{32}", tid)
    assert snapshot(engine, u["id"]) == (q0 - MUSIC, used0 + MUSIC, total0 + 1, ledger0 + 1)
    tid2 = suno_ok(submit(client, u["api_key"], "LYRICS"))  # case-insensitive action
    assert tid2 != tid and re.fullmatch(r"task_[A-Za-z0-9]{32}", tid2)
    assert snapshot(engine, u["id"]) == (q0 - MUSIC - LYRICS, MUSIC + LYRICS, total0 + 2, ledger0 + 2)
    engine.tasks.set_price("suno", "music", 100)
    suno_ok(submit(client, u["api_key"], "Music"))
    assert engine.tasks.user(u["id"])["quota"] == q0 - MUSIC - LYRICS - 100
    item = suno_ok(client.get(f"/suno/fetch/{tid}", headers=bearer(u["api_key"])))
    assert item["quota"] == MUSIC and item["action"] == "MUSIC" and item["status"] == "NOT_START"
    assert item["properties"] == {"input": "a song"} and item["user_id"] == u["id"]


def test_submit_refusals_change_nothing(client, engine):
    u = engine.tasks.create_user("amy", 200_000, "common")
    uid, key = u["id"], u["api_key"]
    suno_ok(submit(client, key))  # some state to keep unchanged
    url = "/suno/submit/music"
    suno_refused(engine, uid, lambda: client.post(url, json={"prompt": "x"}), 401, "unauthorized")
    suno_refused(engine, uid, lambda: submit(client, "sk-nobody"), 401, "unauthorized")
    suno_refused(engine, uid, lambda: client.post(url, json={}, headers={"Authorization": "Bearer "}),
                 401, "unauthorized")
    suno_refused(engine, uid, lambda: submit(client, key, "video"), 400, "invalid_request")
    suno_refused(engine, uid, lambda: submit(client, key, body=[1, 2]), 400, "invalid_request")
    suno_refused(engine, uid, lambda: submit(client, key, body="a string"), 400, "invalid_request")
    suno_refused(engine, uid, lambda: client.post(url, content=b"null", headers={
        **bearer(key), "Content-Type": "application/json"}), 400, "invalid_request")
    suno_refused(engine, uid, lambda: client.post(url, content=b"{not json", headers={
        **bearer(key), "Content-Type": "application/json"}), 400, "invalid_request")
    # a disabled token, then a disabled user
    other = engine.tasks.create_token(uid, "second", None)
    engine.tasks.set_token_status(other["api_key"], False)
    suno_refused(engine, uid, lambda: submit(client, other["api_key"]), 403, "token_disabled")
    engine.tasks.set_user(uid, status="disabled")
    suno_refused(engine, uid, lambda: submit(client, key), 403, "user_disabled")
    engine.tasks.set_user(uid, status="enabled")
    suno_ok(submit(client, key))


def test_submit_insufficient_user_quota(client, engine):
    u = engine.tasks.create_user("poor", MUSIC - 1, "common")
    suno_refused(engine, u["id"], lambda: submit(client, u["api_key"], "music"), 403, "insufficient_user_quota")
    suno_ok(submit(client, u["api_key"], "lyrics"))  # affordable
    assert engine.tasks.user(u["id"])["quota"] == MUSIC - 1 - LYRICS


def test_limited_token_quota_is_charged_and_enforced(client, engine):
    u = engine.tasks.create_user("amy", 1_000_000, "common")
    limited = engine.tasks.create_token(u["id"], "lim", MUSIC + LYRICS)
    suno_ok(submit(client, limited["api_key"], "music"))
    suno_ok(submit(client, limited["api_key"], "lyrics"))  # exactly used up
    body = suno_refused(engine, u["id"], lambda: submit(client, limited["api_key"], "lyrics"), 403,
                        "insufficient_token_quota")
    assert body["message"]
    assert engine.tasks.user(u["id"])["quota"] == 1_000_000 - MUSIC - LYRICS
    suno_ok(submit(client, u["api_key"], "lyrics"))  # the user's unlimited token still works
    # a FAILURE refunds the limited token too: its music task's price can be spent again
    [first] = [t for t in engine.tasks.list({"action": "music"})["items"]]
    engine.tasks.claim_submissions(100)
    assert engine.tasks.submitted(first["id"], engine.tasks.add_channel("suno", "http://x", "key"), "up-1")
    engine.tasks.apply([map_report(first["id"], {"status": "FAILURE", "fail_reason": "nope"})])
    assert engine.tasks.user(u["id"])["used_quota"] == 2 * LYRICS
    suno_ok(submit(client, limited["api_key"], "music"))
    suno_refused(engine, u["id"], lambda: submit(client, limited["api_key"], "lyrics"), 403,
                 "insufficient_token_quota")


# ---- 2. fetch ----------------------------------------------------------------------------
def test_fetch_one_and_many_only_own_tasks(client, engine):
    a = engine.tasks.create_user("amy", 1_000_000, "common")
    b = engine.tasks.create_user("bobby", 1_000_000, "common")  # with 3 shards, not amy's
    a1 = suno_ok(submit(client, a["api_key"]))
    a2 = suno_ok(submit(client, a["api_key"], "lyrics"))
    b1 = suno_ok(submit(client, b["api_key"]))
    item = suno_ok(client.get(f"/suno/fetch/{a1}", headers=bearer(a["api_key"])))
    assert list(item.keys()) == TASK_KEYS
    assert item["task_id"] == a1 and item["user_id"] == a["id"] and item["platform"] == "suno"
    assert item["progress"] == "0%" and item["data"] == {} and item["fail_reason"] == ""
    for tid, key in ((b1, a["api_key"]), (a1, b["api_key"]), ("task_" + "x" * 32, a["api_key"])):
        suno_refused(engine, a["id"], lambda: client.get(f"/suno/fetch/{tid}", headers=bearer(key)),
                     404, "task_not_exist")
    suno_refused(engine, a["id"], lambda: client.get(f"/suno/fetch/{a1}"), 401, "unauthorized")
    many = suno_ok(client.post("/suno/fetch", headers=bearer(a["api_key"]),
                               json={"ids": [a1, b1, "task_nope", a2]}))
    assert sorted(t["task_id"] for t in many) == sorted([a1, a2])
    assert all(list(t.keys()) == TASK_KEYS and t["user_id"] == a["id"] for t in many)
    assert [t["task_id"] for t in suno_ok(client.post("/suno/fetch", headers=bearer(b["api_key"]),
                                                      json={"ids": [a1, a2, b1]}))] == [b1]
    assert suno_ok(client.post("/suno/fetch", headers=bearer(b["api_key"]), json={"ids": []})) == []
    for bad in ({"ids": "task_x"}, {"ids": [1, 2]}, {"ids": None}, {}):
        suno_refused(engine, a["id"], lambda: client.post("/suno/fetch", headers=bearer(a["api_key"]), json=bad),
                     400, "invalid_request")
    suno_refused(engine, a["id"], lambda: client.post("/suno/fetch", json={"ids": [a1]}), 401, "unauthorized")


# ---- 3. management auth --------------------------------------------------------------------
ENDPOINTS = ["/api/user/self", "/api/task/self", "/api/task/", "/api/task"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_management_auth_matrix(client, engine, path):
    admin = engine.tasks.create_user("boss", 0, "admin")
    other = engine.tasks.create_user("other", 0, "admin")
    tok = admin["access_token"]
    failed(client.get(path), 401)
    failed(client.get(path, headers={"Authorization": "Bearer nope", "New-Api-User": str(admin["id"])}), 401)
    failed(client.get(path, headers={"Authorization": f"Bearer {tok}"}), 401, "New-Api-User header not provided")
    failed(client.get(path, headers=mgmt(admin, "")), 401, "New-Api-User header not provided")
    failed(client.get(path, headers=mgmt(admin, "abc")), 401, "New-Api-User header format error")
    failed(client.get(path, headers=mgmt(admin, "1.5")), 401, "New-Api-User header format error")
    failed(client.get(path, headers=mgmt(admin, str(other["id"]))), 401,
           "New-Api-User does not match logged in user")
    # accepted forms: bearer or bare token; plain id or "Bearer <id>"
    ok(client.get(path, headers=mgmt(admin)))
    ok(client.get(path, headers={"Authorization": tok, "New-Api-User": str(admin["id"])}))
    ok(client.get(path, headers=mgmt(admin, f"Bearer {admin['id']}")))
    engine.tasks.set_user(admin["id"], status="disabled")
    failed(client.get(path, headers=mgmt(admin)), 403)
    common = engine.tasks.create_user("joe", 0, "common")
    if path.startswith("/api/task/self") or path == "/api/user/self":
        ok(client.get(path, headers=mgmt(common)))
    else:
        failed(client.get(path, headers=mgmt(common)), 403)
        root = engine.tasks.create_user("root", 0, "root")
        ok(client.get(path, headers=mgmt(root)))


def test_non_ascii_digits_in_new_api_user_are_a_format_error_not_a_500(client, engine):
    """Found by the schema fuzzer: "¹".isdigit() is true but int("¹") raises, which answered 500."""
    admin = engine.tasks.create_user("boss", 0, "admin")
    for value in ("\u00b9".encode("latin-1"), "-\u00b2".encode("latin-1")):
        headers = {"Authorization": f"Bearer {admin['access_token']}", "New-Api-User": value}
        before = engine.core.r.dbsize()
        failed(client.get("/api/user/self", headers=headers), 401, "New-Api-User header format error")
        assert engine.core.r.dbsize() == before


@pytest.mark.parametrize("param", ["p", "page_size", "start_timestamp", "user_id"])
def test_list_numbers_beyond_2_53_are_400_not_a_500(client, engine, param):
    """Found by the schema fuzzer: ?p=2793901751617265336320 was echoed back as the page and the JSON
    encoder failed on it (500)."""
    admin = engine.tasks.create_user("boss", 0, "admin")
    before = engine.core.r.dbsize()
    for path in ("/api/task/self", "/api/task/") if param != "user_id" else ("/api/task/",):  # admin-only filter
        message = failed(client.get(path, headers=mgmt(admin), params={param: str(2**70)}), 400)
        assert param in message
    assert ok(client.get("/api/task/", headers=mgmt(admin), params={param: str(2**53)}))["items"] == []
    assert engine.core.r.dbsize() == before


def test_a_grant_beyond_the_quota_bound_is_400_not_a_500(client, engine):
    """Found by the schema fuzzer: amount=200942636312884224 reached HINCRBY rounded by Lua and failed (500)."""
    user = engine.tasks.create_user("amy", 5)
    before = engine.core.r.dbsize(), engine.tasks.user(user["id"])
    for amount in (200942636312884224, -(10**15) - 1, 10**15 + 1):
        message = failed(client.post(f"/api/v1/admin/users/{user['id']}/quota", json={"amount": amount}), 400)
        assert "amount" in message
    assert (engine.core.r.dbsize(), engine.tasks.user(user["id"])) == before
    assert ok(client.post(f"/api/v1/admin/users/{user['id']}/quota", json={"amount": 10**15}))["quota"] == 10**15 + 5


def test_user_self(client, engine):
    u = engine.tasks.create_user("amy", 120_000, "admin")
    suno_ok(submit(client, u["api_key"]))
    resp = client.get("/api/user/self", headers=mgmt(u))
    assert resp.status_code == 200
    assert resp.json() == {"success": True, "message": "", "data": {
        "id": u["id"], "username": "amy", "role": 10, "status": 1, "quota": 70_000, "used_quota": MUSIC}}


# ---- 4. lists ------------------------------------------------------------------------------
@pytest.fixture
def world(client, engine, clock):
    """admin + alice + bob; six tasks, 10 s apart, in every interesting status and channel.
    With 3 shards the three users are on three different shards (names placed by CRC32).

    t1 alice MUSIC SUCCESS c1 | t2 alice LYRICS IN_PROGRESS c2 | t3 bob MUSIC FAILURE c1
    t4 alice MUSIC IN_PROGRESS c2 | t5 bob LYRICS SUCCESS c1 | t6 alice MUSIC NOT_START (no channel)
    """
    t = engine.tasks
    admin = t.create_user("eve", 0, "admin")
    alice = t.create_user("alice", 1_000_000, "common")
    bob = t.create_user("bobby", 1_000_000, "common")
    c1, c2 = t.add_channel("suno", "http://one", "k1"), t.add_channel("suno", "http://two", "k2")
    plan = [(alice, "music"), (alice, "lyrics"), (bob, "music"), (alice, "music"), (bob, "lyrics")]
    made = []
    for who, action in plan:
        made.append(t.submit(who["api_key"], "suno", action, {"prompt": action}))
        clock.advance(10)
    assert {s.id for s in t.claim_submissions(100)} == {m["id"] for m in made}
    for m, ch in zip(made, (c1, c2, c1, c2, c1)):
        assert t.submitted(m["id"], ch, f"up-{m['id']}")
    clock.advance(1)
    t.apply([map_report(made[0]["id"], {"status": "SUCCESS", "data": {"audio": "a.mp3"}}),
             map_report(made[1]["id"], {"status": "IN_PROGRESS", "progress": "40%"}),
             map_report(made[2]["id"], {"status": "FAILURE", "fail_reason": "boom"}),
             map_report(made[3]["id"], {"status": "IN_PROGRESS"}),
             map_report(made[4]["id"], {"status": "SUCCESS", "data": {"audio": "b.mp3"}})])
    clock.advance(9)
    made.append(t.submit(alice["api_key"], "suno", "music", {"prompt": "last"}))
    return {"admin": admin, "alice": alice, "bob": bob, "c1": c1, "c2": c2,
            "ids": [m["id"] for m in made], "pub": [m["task_id"] for m in made]}


def ids_of(data) -> list[int]:
    return [it["id"] for it in data["items"]]


def admin_list(client, w, **params):
    return ok(client.get("/api/task/", headers=mgmt(w["admin"]), params=params))


def self_list(client, w, who="alice", **params):
    return ok(client.get("/api/task/self", headers=mgmt(w[who]), params=params))


def test_lists_items_fields_and_order(client, engine, world):
    w, (t1, t2, t3, t4, t5, t6) = world, world["ids"]
    data = admin_list(client, w)
    assert data["total"] == 6 and data["page"] == 1 and data["page_size"] == 20
    assert ids_of(data) == [t6, t5, t4, t3, t2, t1]
    by_id = {it["id"]: it for it in data["items"]}
    assert all(list(it.keys()) == ADMIN_KEYS for it in data["items"])
    assert [by_id[i]["username"] for i in (t1, t3)] == ["alice", "bobby"]
    assert [by_id[i]["channel_id"] for i in (t1, t2, t3, t4, t5, t6)] == [w["c1"], w["c2"], w["c1"], w["c2"],
                                                                        w["c1"], 0]
    assert [by_id[i]["status"] for i in (t1, t2, t3, t4, t5, t6)] == [
        "SUCCESS", "IN_PROGRESS", "FAILURE", "IN_PROGRESS", "SUCCESS", "NOT_START"]
    assert by_id[t1]["data"] == {"audio": "a.mp3"} and by_id[t1]["progress"] == "100%"
    assert by_id[t1]["finish_time"] >= by_id[t1]["submit_time"] > 0
    assert by_id[t2]["progress"] == "40%" and by_id[t2]["start_time"] > 0 and by_id[t2]["finish_time"] == 0
    assert by_id[t3]["fail_reason"] == "boom" and by_id[t3]["finish_time"] > 0
    assert by_id[t6]["start_time"] == 0 and by_id[t6]["task_id"] == w["pub"][5]
    subs = [by_id[i]["submit_time"] for i in (t1, t2, t3, t4, t5, t6)]
    assert subs == sorted(subs) and len(set(subs)) == 6
    # the FAILURE refunded bob: only his lyrics task stays charged
    assert engine.tasks.user(w["bob"]["id"])["used_quota"] == LYRICS
    mine = self_list(client, w)
    assert mine["total"] == 4 and ids_of(mine) == [t6, t4, t2, t1]
    assert all(list(it.keys()) == TASK_KEYS and it["user_id"] == w["alice"]["id"] for it in mine["items"])
    assert ids_of(self_list(client, w, "bob")) == [t5, t3]
    assert ids_of(admin_list(client, w, user_id=w["bob"]["id"])) == [t5, t3]
    assert ok(client.get("/api/task", headers=mgmt(w["admin"])))["total"] == 6


def test_self_never_shows_other_users_tasks(client, world):
    w, (t1, t2, t3, t4, t5, t6) = world, world["ids"]
    assert ids_of(self_list(client, w, user_id=w["bob"]["id"])) == [t6, t4, t2, t1]
    assert ids_of(self_list(client, w, channel_id=w["c1"])) == [t6, t4, t2, t1]  # admin-only: ignored
    assert self_list(client, w, task_id=w["pub"][2])["total"] == 0  # bob's task
    assert self_list(client, w, "bob", task_id=w["pub"][2])["total"] == 1
    assert self_list(client, w, "admin")["total"] == 0


@pytest.mark.parametrize("params,expect", [
    ({"platform": "suno"}, [6, 5, 4, 3, 2, 1]),
    ({"platform": "udio"}, []),
    ({"action": "music"}, [6, 4, 3, 1]),
    ({"action": "LYRICS"}, [5, 2]),
    ({"status": "success"}, [5, 1]),
    ({"status": "IN_PROGRESS"}, [4, 2]),
    ({"status": "failure"}, [3]),
    ({"status": "NOT_START"}, [6]),
    ({"status": "QUEUED"}, []),
    ({"channel_id": "c1"}, [5, 3, 1]),
    ({"channel_id": "c2"}, [4, 2]),
    ({"channel_id": "999"}, []),
    ({"user_id": "bob"}, [5, 3]),
    ({"user_id": "alice"}, [6, 4, 2, 1]),
    ({"user_id": "999"}, []),
    ({"task_id": 3}, [3]),
    ({"task_id": "task_" + "z" * 32}, []),
    ({"status": "SUCCESS", "channel_id": "c1"}, [5, 1]),
    ({"status": "in_progress", "channel_id": "c1"}, []),
    ({"user_id": "alice", "status": "IN_PROGRESS"}, [4, 2]),
    ({"user_id": "bob", "action": "music"}, [3]),
    ({"platform": "suno", "action": "music", "status": "in_progress"}, [4]),
    ({"platform": "suno", "action": "lyrics", "status": "success", "user_id": "bob", "channel_id": "c1"}, [5]),
    ({"task_id": 1, "status": "FAILURE"}, []),
    ({"task_id": 1, "status": "SUCCESS", "user_id": "alice"}, [1]),
    ({"task_id": 1, "user_id": "bob"}, []),
])
def test_admin_list_filters(client, world, params, expect):
    w, ids = world, world["ids"]
    names = {"c1": w["c1"], "c2": w["c2"], "bob": w["bob"]["id"], "alice": w["alice"]["id"]}
    q = {k: (w["pub"][v - 1] if k == "task_id" and isinstance(v, int) else names.get(v, v))
         for k, v in params.items()}
    data = admin_list(client, w, **q)
    assert ids_of(data) == [ids[n - 1] for n in expect]
    assert data["total"] == len(expect)


def test_self_list_filters(client, world):
    w, (t1, t2, t3, t4, t5, t6) = world, world["ids"]
    assert ids_of(self_list(client, w, action="music", status="success")) == [t1]
    assert ids_of(self_list(client, w, action="Music")) == [t6, t4, t1]
    assert ids_of(self_list(client, w, status="in_progress")) == [t4, t2]
    assert ids_of(self_list(client, w, platform="suno", action="lyrics")) == [t2]
    assert ids_of(self_list(client, w, task_id=w["pub"][3], status="in_progress")) == [t4]
    assert self_list(client, w, task_id=w["pub"][3], status="success")["total"] == 0


def test_time_filters_are_inclusive(client, world):
    w, (t1, t2, t3, t4, t5, t6) = world, world["ids"]
    s = {it["id"]: it["submit_time"] for it in admin_list(client, w)["items"]}
    assert ids_of(admin_list(client, w, start_timestamp=s[t2], end_timestamp=s[t4])) == [t4, t3, t2]
    assert ids_of(admin_list(client, w, start_timestamp=s[t2] + 1, end_timestamp=s[t4] - 1)) == [t3]
    assert ids_of(admin_list(client, w, start_timestamp=s[t5])) == [t6, t5]
    assert ids_of(admin_list(client, w, end_timestamp=s[t1])) == [t1]
    assert ids_of(admin_list(client, w, start_timestamp=s[t3], end_timestamp=s[t3])) == [t3]
    assert admin_list(client, w, start_timestamp=s[t6] + 1)["total"] == 0
    assert admin_list(client, w, end_timestamp=s[t1] - 1)["total"] == 0
    assert admin_list(client, w, start_timestamp=s[t4], end_timestamp=s[t2])["total"] == 0
    data = admin_list(client, w, start_timestamp=s[t1], end_timestamp=s[t6])
    assert data["total"] == 6
    assert ids_of(admin_list(client, w, start_timestamp=s[t2], end_timestamp=s[t5], status="success")) == [t5]
    assert ids_of(admin_list(client, w, start_timestamp=s[t1], end_timestamp=s[t4],
                             user_id=w["bob"]["id"])) == [t3]
    assert ids_of(self_list(client, w, start_timestamp=s[t2], end_timestamp=s[t4])) == [t4, t2]
    assert ids_of(self_list(client, w, start_timestamp=s[t2], end_timestamp=s[t6], action="music")) == [t6, t4]


def test_pagination_edges(client, world):
    w, (t1, t2, t3, t4, t5, t6) = world, world["ids"]
    pages = [admin_list(client, w, p=p, page_size=2) for p in (1, 2, 3, 4)]
    assert [ids_of(d) for d in pages] == [[t6, t5], [t4, t3], [t2, t1], []]
    assert all(d["total"] == 6 and d["page_size"] == 2 for d in pages)
    assert [d["page"] for d in pages] == [1, 2, 3, 4]
    last = admin_list(client, w, p=2, page_size=4)
    assert ids_of(last) == [t2, t1] and last["total"] == 6  # partial last page
    for p in (0, -3):
        d = admin_list(client, w, p=p, page_size=2)
        assert d["page"] == 1 and ids_of(d) == [t6, t5]
    d = admin_list(client, w, page_size=0)
    assert d["page_size"] == 1 and ids_of(d) == [t6] and d["total"] == 6
    d = admin_list(client, w, page_size=1, p=6)
    assert ids_of(d) == [t1]
    assert admin_list(client, w, page_size=100)["page_size"] == 100
    d = admin_list(client, w, page_size=500)
    assert d["page_size"] == 100 and len(d["items"]) == 6
    d = admin_list(client, w, p=99)
    assert d["items"] == [] and d["total"] == 6 and d["page"] == 99
    d = admin_list(client, w, status="success", p=2, page_size=1)
    assert ids_of(d) == [t1] and d["total"] == 2
    d = self_list(client, w, p=2, page_size=3)
    assert ids_of(d) == [t1] and d["total"] == 4
    assert self_list(client, w, p=3, page_size=3)["items"] == []
    d = admin_list(client, w, task_id=w["pub"][0], p=2)
    assert d["items"] == [] and d["total"] == 1


def test_deep_page_over_several_cells(client, engine):
    """offset + size > 2000 over several cells takes the union path of list-5."""
    admin = engine.tasks.create_user("root", 0, "root")
    u = engine.tasks.create_user("amy", 10**12, "common")
    ids = [engine.tasks.submit(u["api_key"], "suno", ("music", "lyrics")[i % 2], {})["id"] for i in range(2010)]
    newest = ids[::-1]
    d = ok(client.get("/api/task/", headers=mgmt(admin), params={"platform": "suno", "p": 21, "page_size": 100}))
    assert d["total"] == 2010 and ids_of(d) == newest[2000:]
    d = ok(client.get("/api/task/self", headers=mgmt(u), params={"platform": "suno", "p": 20, "page_size": 100}))
    assert d["total"] == 2010 and ids_of(d) == newest[1900:2000]
    d = ok(client.get("/api/task/", headers=mgmt(admin), params={"action": "music", "p": 11, "page_size": 100}))
    assert d["total"] == 1005 and ids_of(d) == ids[::2][::-1][1000:]


@pytest.mark.parametrize("params", [
    {"p": "x"}, {"p": "1.5"}, {"page_size": "ten"}, {"start_timestamp": "abc"}, {"end_timestamp": "yesterday"},
    {"user_id": "bob"}, {"channel_id": "c1"}, {"status": "DONE"}, {"status": "success,failure"},
])
def test_list_bad_query_is_400(client, world, params):
    failed(client.get("/api/task/", headers=mgmt(world["admin"]), params=params), 400)
    if not {"user_id", "channel_id"} & set(params):
        failed(client.get("/api/task/self", headers=mgmt(world["alice"]), params=params), 400)


def test_list_on_empty_center(client, engine):
    u = engine.tasks.create_user("root", 0, "root")
    assert ok(client.get("/api/task/", headers=mgmt(u))) == {"items": [], "total": 0, "page": 1, "page_size": 20}
    assert ok(client.get("/api/task/self", headers=mgmt(u), params={"status": "success"}))["total"] == 0


# ---- 5. operators --------------------------------------------------------------------------
A = "/api/v1/admin"


def test_admin_users_tokens_quota(client, engine):
    created = ok(client.post(f"{A}/users", json={"name": "amy", "quota": 1000, "role": "admin"}), 201)
    assert set(created) == {"id", "access_token", "api_key"} and created["api_key"].startswith("sk-")
    uid = created["id"]
    failed(client.post(f"{A}/users", json={"name": "amy"}), 409, "user 'amy' already exists", frozenset({"code"}))
    failed(client.post(f"{A}/users", json={"quota": 5}), 400)
    failed(client.post(f"{A}/users", json={"name": "x", "role": "god"}), 400)
    failed(client.post(f"{A}/users", json={"name": "y", "quota": -1}), 400)
    failed(client.post(f"{A}/users", json={"name": "z", "quota": "lots"}), 400)
    failed(client.post(f"{A}/users", content=b"{oops", headers={"Content-Type": "application/json"}), 400)
    bob = ok(client.post(f"{A}/users", json={"name": "bobby"}), 201)["id"]  # with 3 shards, not amy's
    users = ok(client.get(f"{A}/users"))
    assert [u["username"] for u in users] == [name for _, name in sorted([(uid, "amy"), (bob, "bobby")])]  # by id
    assert ok(client.get(f"{A}/users/{uid}")) == {"id": uid, "username": "amy", "role": 10, "status": 1,
                                                  "quota": 1000, "used_quota": 0}
    failed(client.get(f"{A}/users/9999"), 404)
    # the created access token signs in to the management API
    assert ok(client.get("/api/user/self", headers=mgmt(created)))["username"] == "amy"
    assert ok(client.patch(f"{A}/users/{uid}", json={"status": "disabled"}))["status"] == 2
    failed(client.get("/api/user/self", headers=mgmt(created)), 403)
    assert ok(client.patch(f"{A}/users/{uid}", json={"status": "enabled"}))["status"] == 1
    failed(client.patch(f"{A}/users/{uid}", json={"status": "sleeping"}), 400)
    failed(client.patch(f"{A}/users/{uid}", json={}), 400)
    failed(client.patch(f"{A}/users/9999", json={"status": "disabled"}), 404)
    # quota
    ledger = ledger_len(engine)
    assert ok(client.post(f"{A}/users/{uid}/quota", json={"amount": 99_000})) == {"user_id": uid, "quota": 100_000}
    assert ok(client.post(f"{A}/users/{uid}/quota", json={"amount": -40_000}))["quota"] == 60_000
    failed(client.post(f"{A}/users/{uid}/quota", json={"amount": -60_001}), 400)
    failed(client.post(f"{A}/users/{uid}/quota", json={"amount": "5"}), 400)
    failed(client.post(f"{A}/users/{uid}/quota", json={}), 400)
    failed(client.post(f"{A}/users/9999/quota", json={"amount": 5}), 404)
    assert engine.tasks.user(uid)["quota"] == 60_000
    assert ledger_len(engine) == ledger + 2
    # tokens
    tok = ok(client.post(f"{A}/users/{uid}/tokens", json={"name": "lim", "quota": MUSIC}), 201)
    assert tok["api_key"].startswith("sk-") and tok["quota"] == MUSIC
    suno_ok(submit(client, tok["api_key"]))
    suno_refused(engine, uid, lambda: submit(client, tok["api_key"], "lyrics"), 403, "insufficient_token_quota")
    failed(client.post(f"{A}/users/9999/tokens", json={"name": "x"}), 404)
    failed(client.post(f"{A}/users/{uid}/tokens", json={"quota": -5}), 400)
    audit = ok(client.get(f"{A}/quota/audit"))
    assert audit["ok"] is True and [r["user_id"] for r in audit["users"]] == sorted([uid, bob])
    assert all(r["ok"] and r["problems"] == [] for r in audit["users"])


def test_admin_channels_and_prices(client, engine):
    cid = ok(client.post(f"{A}/channels", json={"platform": "suno", "base_url": "http://up/", "key": "k",
                                                "weight": 3, "name": "main"}), 201)["id"]
    assert ok(client.get(f"{A}/channels")) == [{"id": cid, "platform": "suno", "base_url": "http://up",
                                                "weight": 3, "status": "enabled", "name": "main"}]
    failed(client.post(f"{A}/channels", json={"platform": "suno", "base_url": "ftp://x"}), 400)
    failed(client.post(f"{A}/channels", json={"platform": "midjourney", "base_url": "http://x"}), 400)
    failed(client.post(f"{A}/channels", json={"platform": "suno"}), 400)
    failed(client.post(f"{A}/channels", json={"platform": "suno", "base_url": "http://x", "status": "on"}), 400)
    failed(client.post(f"{A}/channels", json={"platform": "suno", "base_url": "http://x", "weight": -1}), 400)
    assert ok(client.patch(f"{A}/channels/{cid}", json={"status": "disabled", "weight": 7})) == {"id": cid}
    [view] = ok(client.get(f"{A}/channels"))
    assert view["status"] == "disabled" and view["weight"] == 7
    failed(client.patch(f"{A}/channels/{cid}", json={"status": "paused"}), 400)
    failed(client.patch(f"{A}/channels/{cid}", json={}), 400)
    failed(client.patch(f"{A}/channels/9999", json={"weight": 1}), 404)
    assert ok(client.delete(f"{A}/channels/{cid}")) == {"id": cid}
    assert ok(client.get(f"{A}/channels")) == []
    failed(client.delete(f"{A}/channels/{cid}"), 404)
    # prices
    assert ok(client.get(f"{A}/prices")) == {"suno:MUSIC": MUSIC, "suno:LYRICS": LYRICS}
    assert ok(client.put(f"{A}/prices", json={"platform": "suno", "action": "music", "quota": 100})) == {
        "suno:MUSIC": 100, "suno:LYRICS": LYRICS}
    for bad in ({"platform": "suno", "action": "video", "quota": 1}, {"platform": "x", "action": "music", "quota": 1},
                {"platform": "suno", "action": "music", "quota": -1}, {"platform": "suno", "action": "music"},
                {"platform": "suno", "action": "music", "quota": "10"}):
        failed(client.put(f"{A}/prices", json=bad), 400)
    u = engine.tasks.create_user("amy", 150, "common")
    suno_ok(submit(client, u["api_key"]))
    assert engine.tasks.user(u["id"])["quota"] == 50


def test_admin_token_guards_operator_api(engine):
    engine.core.settings.admin_token = "s3cret"
    client = TestClient(create_app(engine, access_log=False))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        failed(client.get(f"{A}/users", headers=headers), 401)
        failed(client.post(f"{A}/users", headers=headers, json={"name": "amy"}), 401)
    assert engine.tasks.users() == []
    ok(client.post(f"{A}/users", headers={"Authorization": "Bearer s3cret"}, json={"name": "amy"}), 201)
    assert [u["username"] for u in ok(client.get(f"{A}/users", headers={"Authorization": "Bearer s3cret"}))] == [
        "amy"]
