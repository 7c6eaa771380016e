"""Device tasks in the engine: create, claim, finish, stop, retry, delete, list, stats, leases, auto-retry."""
from __future__ import annotations

import pytest

from engine.device_scripts import NoAccount
from engine.devices import PLAN_LIMITS, PlanRefused
from engine.errors import Conflict, InvalidInput, NotFound
from tests.helpers import state

FOLLOW = {"target_users": ["alice", "bob"]}


def post(serials=("s1",), **extra) -> dict:
    return {"serials": list(serials), "script_name": "post", "script_config": {"captions": "hi"}, **extra}


def claim(engine, *serials, limit=None, agent="a1") -> list[dict]:
    body = {"serials": list(serials), "agent": agent}
    if limit:
        body["limit"] = limit
    return engine.devices.claim(body)["tasks"]


def events(engine) -> list[dict]:
    """Every device shard's event stream, shard after shard (one stream per shard)."""
    raw = [e for c in engine.device_shards for e in c.r.xrange(c.keys.events)]
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in raw]


def recount(engine) -> dict:
    """Stats from a full scan of every task of every shard: what the O(1) counters must equal."""
    counts = {"pending": 0, "running": 0, "completed": 0, "failed": 0}
    names = ["pending", "running", "completed", "failed"]
    for core in engine.device_shards:
        r, k = core.r, core.keys
        for key in r.scan_iter(match=k.prefix + "t:*", count=1000):
            counts[names[int(r.hget(key, "st"))]] += 1
    return {"total": sum(counts.values()), **counts}


# ---- create ------------------------------------------------------------------
def test_create_returns_increasing_ids_and_tasks_are_pending(engine):
    first = engine.devices.create(post(["s1", "s2"]))
    second = engine.devices.create(post(["s3"]))
    assert first["created_count"] == 2 and len(first["task_ids"]) == 2
    assert first["task_ids"][0] < first["task_ids"][1] < second["task_ids"][0]
    task = engine.devices.get(first["task_ids"][1])
    assert task["serial"] == "s2" and task["status"] == 0 and task["source"] == "api"
    assert task["username"] is None and task["retry_count"] == 0 and task["start_time"] is None
    assert task["script_name"] == "post" and task["enable_multi_account"] is False
    assert task["created_at"] and task["started_at"] is None and task["finished_at"] is None
    assert engine.devices.stats() == {"total": 3, "pending": 3, "running": 0, "completed": 0, "failed": 0}


def test_follow_fans_out_per_target_and_device(engine):
    got = engine.devices.create({"serials": ["s1", "s2"], "script_name": "follow", "script_config": FOLLOW})
    assert got["created_count"] == 4
    tasks = [engine.devices.get(i) for i in got["task_ids"]]
    assert [(t["serial"], t["script_config"]["target_user"]) for t in tasks] == [
        ("s1", "alice"), ("s1", "bob"), ("s2", "alice"), ("s2", "bob")]


def test_usernames_mode_resolves_bound_devices_and_is_all_or_nothing(engine):
    engine.devices.heartbeat({"serials": ["s1", "s2"], "accounts": {"s1": ["alice"], "s2": ["bob"]}})
    got = engine.devices.create({"usernames": ["@alice", "bob"], "script_name": "post", "script_config": {}})
    tasks = [engine.devices.get(i) for i in got["task_ids"]]
    assert [(t["serial"], t["username"]) for t in tasks] == [("s1", "alice"), ("s2", "bob")]
    before = state_of(engine)
    with pytest.raises(NoAccount, match="carol"):
        engine.devices.create({"usernames": ["alice", "carol"], "script_name": "post", "script_config": {}})
    assert state_of(engine) == before


def test_multi_account_makes_one_task_per_bound_account(engine):
    engine.devices.heartbeat({"serials": ["s1"], "accounts": {"s1": ["zed", "amy"]}})
    got = engine.devices.create(post(["s1"], enable_multi_account=True))
    assert [engine.devices.get(i)["username"] for i in got["task_ids"]] == ["amy", "zed"]
    with pytest.raises(NoAccount, match="s9"):
        engine.devices.create(post(["s9"], enable_multi_account=True))


def test_login_forces_multi_account(engine):
    engine.devices.heartbeat({"serials": ["s1"], "accounts": {"s1": ["amy", "bo"]}})
    got = engine.devices.create({"serials": ["s1"], "script_name": "login", "script_config": {}})
    assert got["created_count"] == 2
    assert all(engine.devices.get(i)["enable_multi_account"] for i in got["task_ids"])


def test_an_account_reported_by_another_device_moves_there(engine):
    engine.devices.heartbeat({"serials": ["s1"], "accounts": {"s1": ["amy"]}})
    engine.devices.heartbeat({"serials": ["s2"], "accounts": {"s2": ["amy"]}})
    got = engine.devices.create({"usernames": ["amy"], "script_name": "post", "script_config": {}})
    assert engine.devices.get(got["task_ids"][0])["serial"] == "s2"
    with pytest.raises(NoAccount):
        engine.devices.create(post(["s1"], enable_multi_account=True))


def test_device_limit_counts_distinct_active_serials(engine, settings):
    limit = PLAN_LIMITS["pro"]
    engine.devices.create(post([f"d{i}" for i in range(limit)]))
    engine.devices.create(post(["d0", "d1"]))  # already active: always accepted
    before = state_of(engine)
    with pytest.raises(PlanRefused, match=str(limit)):
        engine.devices.create(post(["new-one"]))
    assert state_of(engine) == before
    # a device whose tasks all finished no longer counts
    for _ in range(2):  # d0 has two tasks
        [t] = claim(engine, "d0")
        engine.devices.complete(t["id"])
    assert engine.devices.create(post(["new-one"]))["created_count"] == 1


def test_starter_plan_has_no_api(engine, settings):
    settings.plan = "starter"
    with pytest.raises(PlanRefused):
        engine.devices.create(post())
    with pytest.raises(PlanRefused):
        engine.devices.license()
    settings.plan = "team"
    assert engine.devices.license()["device_limit"] == 100


def test_more_than_1000_tasks_in_one_call_is_refused(engine):
    engine.devices.heartbeat({"serials": ["s1"], "accounts": {"s1": [f"u{i}" for i in range(100)]}})
    before = state_of(engine)
    with pytest.raises(InvalidInput, match="1000"):
        engine.devices.create({"serials": ["s1"], "script_name": "follow", "enable_multi_account": True,
                               "script_config": {"target_users": [f"t{i}" for i in range(11)]}})
    assert state_of(engine) == before


def test_more_than_1000_tasks_before_account_fan_out_is_refused_before_redis(engine):
    before = state_of(engine)
    with pytest.raises(InvalidInput, match="1002 tasks.*at most 1000 per call"):
        engine.devices.create({"serials": ["s1", "s2"], "script_name": "follow",
                               "script_config": {"target_users": [f"t{i}" for i in range(501)]}})
    assert state_of(engine) == before


# ---- claim ---------------------------------------------------------------------
def test_claim_takes_the_oldest_due_task_per_idle_serial(engine):
    a = engine.devices.create(post(["s1", "s2"]))["task_ids"]
    b = engine.devices.create(post(["s1"]))["task_ids"]
    got = claim(engine, "s1", "s2", "s3")
    assert [(t["id"], t["serial"], t["status"]) for t in got] == [(a[0], "s1", 1), (a[1], "s2", 1)]
    assert got[0]["started_at"] is not None
    assert claim(engine, "s1", "s2") == []  # one running task per serial
    engine.devices.complete(a[0])
    assert [t["id"] for t in claim(engine, "s1")] == b


def test_claim_respects_limit_and_serial_order(engine):
    engine.devices.create(post(["s1", "s2", "s3"]))
    assert [t["serial"] for t in claim(engine, "s3", "s1", "s2", limit=2)] == ["s3", "s1"]


def test_scheduled_task_is_claimable_from_its_time_not_a_second_before(engine, clock, settings):
    from datetime import datetime, timedelta
    from zoneinfo import ZoneInfo
    now = datetime.fromtimestamp(clock.ms / 1000, ZoneInfo(settings.tz))
    at = (now + timedelta(minutes=5)).strftime("%H:%M")
    [tid] = engine.devices.create(post(["s1"], start_time=at))["task_ids"]
    task = engine.devices.get(tid)
    assert task["start_time"].endswith(at + ":00")
    due_ms = int(datetime.strptime(task["start_time"], "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=ZoneInfo(settings.tz)).timestamp() * 1000)
    clock.ms = due_ms - 1000
    assert claim(engine, "s1") == []
    clock.ms = due_ms
    assert [t["id"] for t in claim(engine, "s1")] == [tid]


def test_an_older_scheduled_task_goes_before_a_newer_due_one(engine, clock):
    from datetime import datetime, timedelta
    at = (datetime.utcfromtimestamp(clock.ms / 1000) + timedelta(minutes=2)).strftime("%H:%M")
    [old] = engine.devices.create(post(["s1"], start_time=at))["task_ids"]
    [new] = engine.devices.create(post(["s1"]))["task_ids"]
    clock.advance(3 * 60)
    assert [t["id"] for t in claim(engine, "s1")] == [old]
    engine.devices.complete(old)
    assert [t["id"] for t in claim(engine, "s1")] == [new]


# ---- finish ----------------------------------------------------------------------
def test_complete_and_fail_record_remark_and_free_the_device(engine):
    ids = engine.devices.create(post(["s1"]))["task_ids"] + engine.devices.create(post(["s1"]))["task_ids"]
    [t] = claim(engine, "s1")
    engine.devices.complete(t["id"], "posted")
    done = engine.devices.get(t["id"])
    assert done["status"] == 2 and done["remark"] == "posted" and done["finished_at"]
    [t2] = claim(engine, "s1")
    engine.devices.fail(t2["id"], "captcha")
    assert engine.devices.get(ids[1])["status"] == 3 and engine.devices.get(ids[1])["remark"] == "captcha"
    assert engine.devices.stats() == {"total": 2, "pending": 0, "running": 0, "completed": 1, "failed": 1}


def test_finishing_a_task_that_is_not_running_is_refused_and_changes_nothing(engine):
    [tid] = engine.devices.create(post())["task_ids"]
    before = state_of(engine)
    with pytest.raises(Conflict, match="pending"):
        engine.devices.complete(tid)
    with pytest.raises(NotFound):
        engine.devices.fail(tid + 100)
    assert state_of(engine) == before


# ---- stop, retry, delete ---------------------------------------------------------
def test_stop_running_task_fails_it_and_reaches_the_agent_on_its_next_heartbeat(engine):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    claim(engine, "s1")
    assert engine.devices.heartbeat({"serials": ["s1"]}) == {"stop": [], "running": {"s1": tid}}
    engine.devices.stop(tid)
    task = engine.devices.get(tid)
    assert task["status"] == 3 and task["remark"] == "stopped"
    assert engine.devices.heartbeat({"serials": ["s1"]})["stop"] == [tid]
    assert engine.devices.heartbeat({"serials": ["s2"]})["stop"] == []
    with pytest.raises(Conflict, match="stopped"):
        engine.devices.complete(tid)
    with pytest.raises(Conflict):
        engine.devices.stop(tid)


def test_a_retried_task_is_not_stopped_by_the_signal_of_its_previous_run(engine):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    claim(engine, "s1")
    engine.devices.stop(tid)
    engine.devices.retry(tid)
    assert [t["id"] for t in claim(engine, "s1")] == [tid]
    assert engine.devices.heartbeat({"serials": ["s1"]}) == {"stop": [], "running": {"s1": tid}}


def test_stop_pending_task_takes_it_out_of_the_queue(engine):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    engine.devices.stop(tid)
    assert engine.devices.get(tid)["status"] == 3
    assert claim(engine, "s1") == []


def test_retry_puts_a_failed_task_back_due_now(engine):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    with pytest.raises(Conflict):
        engine.devices.retry(tid)
    engine.devices.stop(tid)
    engine.devices.retry(tid)
    task = engine.devices.get(tid)
    assert task["status"] == 0 and task["retry_count"] == 1 and task["remark"] == ""
    assert [t["id"] for t in claim(engine, "s1")] == [tid]


def test_retry_all_retries_failed_tasks_under_the_limit(engine, settings):
    settings.max_retry_count = 1
    ids = engine.devices.create(post(["s1", "s2", "s3"]))["task_ids"]
    for tid in ids:
        engine.devices.stop(tid)
    engine.devices.retry(ids[0])
    engine.devices.stop(ids[0])  # retry_count 1: at the limit
    assert engine.devices.retry_all() == {"retried": 2}
    assert [engine.devices.get(i)["status"] for i in ids] == [3, 0, 0]
    assert engine.devices.retry_all() == {"retried": 0}


def test_retry_all_walks_more_than_one_batch(engine, monkeypatch):
    import engine.devices as devices_module
    monkeypatch.setattr(devices_module, "RETRY_ALL_BATCH", 3)
    ids = engine.devices.create(post([f"s{i}" for i in range(10)]))["task_ids"]
    for tid in ids:
        engine.devices.stop(tid)
    assert engine.devices.retry_all() == {"retried": 10}
    assert engine.devices.stats()["pending"] == 10


def test_delete_stops_running_tasks_and_removes_every_trace(engine):
    ids = engine.devices.create(post(["s1", "s2"]))["task_ids"]
    claim(engine, "s1")
    assert engine.devices.delete_many([ids[0], ids[1], 999]) == {"deleted": 2, "not_found": [999]}
    assert engine.devices.heartbeat({"serials": ["s1"]})["stop"] == [ids[0]]
    with pytest.raises(NotFound):
        engine.devices.get(ids[0])
    assert engine.devices.stats() == {"total": 0, "pending": 0, "running": 0, "completed": 0, "failed": 0}
    assert engine.devices.list()["total"] == 0
    for core in engine.device_shards:
        r, k = core.r, core.keys
        assert r.hlen(k.running) == 0 and r.hlen(k.active) == 0 and r.zcard(k.run_leases) == 0
    with pytest.raises(NotFound):
        engine.devices.delete(ids[0])


# ---- list, stats -----------------------------------------------------------------
def test_list_filters_paginates_newest_first_with_exact_totals(engine):
    a = engine.devices.create(post(["s1", "s2"]))["task_ids"]
    b = engine.devices.create({"serials": ["s1"], "script_name": "follow", "script_config": FOLLOW},
                              source="ui")["task_ids"]
    claim(engine, "s2")
    d = engine.devices
    assert [t["id"] for t in d.list()["items"]] == sorted(a + b, reverse=True)
    assert d.list(serial="s1")["total"] == 3
    assert d.list(status="1")["total"] == 1 and d.list(status="1")["items"][0]["id"] == a[1]
    assert d.list(script_name="follow")["total"] == 2
    assert d.list(source="ui")["total"] == 2 and d.list(source="api")["total"] == 2
    assert d.list(serial="s1", script_name="post")["total"] == 1
    assert d.list(serial="s1", status="0", source="ui")["total"] == 2
    page = d.list(page="2", page_size="3")
    assert page["total"] == 4 and [t["id"] for t in page["items"]] == [min(a)]
    assert d.list(page="9")["items"] == [] and d.list(page="9")["total"] == 4
    assert d.list(serial="nobody") == {"items": [], "total": 0, "page": 1, "page_size": 20}


@pytest.mark.parametrize("params", [{"status": "4"}, {"status": "x"}, {"page": "0"}, {"page_size": "101"},
                                    {"page_size": "0"}, {"source": "web"}])
def test_bad_list_parameters_are_refused(engine, params):
    with pytest.raises(InvalidInput):
        engine.devices.list(**params)


def test_stats_match_a_full_recount(engine):
    ids = engine.devices.create(post(["s1", "s2", "s3"]))["task_ids"]
    claim(engine, "s1", "s2")
    engine.devices.complete(ids[0])
    engine.devices.stop(ids[2])
    assert engine.devices.stats() == recount(engine) == {
        "total": 3, "pending": 0, "running": 1, "completed": 1, "failed": 1}


# ---- leases, auto-retry ------------------------------------------------------------
def test_agent_lost_when_heartbeats_stop_for_the_run_ttl(engine, clock, settings):
    settings.run_ttl_ms = 60_000
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    claim(engine, "s1")
    clock.advance(50)
    engine.devices.heartbeat({"serials": ["s1"]})
    clock.advance(50)
    assert engine.devices.sweep() == {"runs_failed": 0}
    clock.advance(11)
    assert engine.devices.sweep() == {"runs_failed": 1}
    task = engine.devices.get(tid)
    assert task["status"] == 3 and task["remark"] == "agent lost"
    assert engine.devices.sweep() == {"runs_failed": 0}


def test_auto_retry_retries_failures_once_and_never_stopped_tasks(engine, clock, settings):
    settings.auto_retry, settings.max_retry_count = True, 1
    ids = engine.devices.create(post(["s1", "s2"]))["task_ids"]
    claim(engine, "s1", "s2")
    engine.devices.fail(ids[0], "boom")
    engine.devices.stop(ids[1])
    assert engine.devices.run_retries()["retried"] == 0  # not due yet (5-60 s)
    clock.advance(61)
    assert engine.devices.run_retries() == {"retried": 1, "due_left": 0}
    assert engine.devices.run_retries()["retried"] == 0  # a second run acts on nothing
    assert [engine.devices.get(i)["status"] for i in ids] == [0, 3]
    assert engine.devices.get(ids[0])["retry_count"] == 1
    [t] = claim(engine, "s1")
    engine.devices.fail(t["id"], "again")  # retry_count 1 = max: no more automatic retries
    clock.advance(61)
    assert engine.devices.run_retries()["retried"] == 0
    assert engine.devices.get(ids[0])["status"] == 3


def test_without_auto_retry_failures_stay_failed(engine, clock):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    claim(engine, "s1")
    engine.devices.fail(tid)
    clock.advance(120)
    assert engine.devices.run_retries()["retried"] == 0


def test_every_status_change_is_one_event(engine):
    [tid] = engine.devices.create(post(["s1"]))["task_ids"]
    claim(engine, "s1", agent="phone-farm-1")
    engine.devices.complete(tid)
    mine = [e for e in events(engine) if e["task"] == str(tid)]  # one serial: one shard, one stream
    assert [(e["from"], e["to"]) for e in mine] == [("", "0"), ("0", "1"), ("1", "2")]
    assert mine[1]["by"] == "phone-farm-1"


def state_of(engine) -> dict:
    """Every key of both contracts in the test's namespace."""
    return state(engine)
