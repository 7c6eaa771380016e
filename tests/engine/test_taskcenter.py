"""Task center engine: charges, submissions, polling, timeouts, refunds exactly once, the audit.

Every test runs on fakeredis, on a real redis-server and on a 3-master cluster with the
task center in 3 shards (the ``engine`` fixture): keys are read through the shard that
holds them (``shard_of_task`` / ``shard_of_user`` / ``shard_of_secret``), streams of every
shard are read together. The upstream is the sandbox platform (api/sandbox.py) through
the real httpx client, or a small stub where a test needs threads.
"""
from __future__ import annotations

import random
import threading
from collections import Counter

import orjson
import pytest
from starlette.testclient import TestClient

from api.sandbox import create_sandbox_app
from engine.errors import InvalidInput, NotFound
from engine.taskcenter import Channel, InsufficientQuota, NotSignedIn, choose_channel, map_report, token_hash
from redis.cluster import RedisCluster
from workers import jobs
from workers.upstream import PlatformClient

MUSIC = 50_000


def _user(engine, quota=10 * MUSIC, name="alice"):
    return engine.tasks.create_user(name, quota)


def _sandbox(clock, **kw):
    """The sandbox platform on the engine's clock, reached through the real PlatformClient."""
    app = create_sandbox_app(clock=lambda: clock.ms / 1000, seed=7, **kw)
    return PlatformClient(client=TestClient(app))


def _task(engine, task_id):
    core = engine.tasks.shard_of_task(task_id)
    return core.r.hgetall(core.keys.task(task_id))


def _stream(engine, name):
    """Every shard's entries of a stream (``ledger``, ``events``)."""
    return [f for c in engine.tasks.shards for _, f in c.r.xrange(getattr(c.keys, name))]


def _ledger(engine):
    return [{k.decode(): v.decode() for k, v in f.items()} for f in _stream(engine, "ledger")]


def _all_keys(engine):
    r = engine.core.r
    pattern = f"{engine.core.settings.namespace}:*"
    if isinstance(r, RedisCluster):
        return r.keys(pattern, target_nodes=RedisCluster.ALL_NODES)
    return r.keys(pattern)


def _zcard_all(engine, name):
    return sum(c.r.zcard(getattr(c.keys, name)) for c in engine.tasks.shards)


def _refunds(engine):
    return Counter(e["task"] for e in _ledger(engine) if e["reason"] == "refund")


def test_submit_charges_the_user_and_the_limited_token_and_creates_one_task(engine):
    tc = engine.tasks
    u = _user(engine, quota=3 * MUSIC)
    limited = tc.create_token(u["id"], "ci", quota=MUSIC + 10)
    first = tc.submit(limited["api_key"], "suno", "MuSiC", {"prompt": "a song"})
    assert first["quota"] == MUSIC and first["task_id"].startswith("task_") and len(first["task_id"]) == 37
    assert tc.user(u["id"])["quota"] == 2 * MUSIC and tc.user(u["id"])["used_quota"] == MUSIC
    with pytest.raises(InsufficientQuota) as refused:  # the token has 10 left
        tc.submit(limited["api_key"], "suno", "music", {"prompt": "again"})
    assert refused.value.code == "insufficient_token_quota"
    t = _task(engine, first["id"])
    assert t[b"st"] == b"NOT_START" and t[b"ac"] == b"MUSIC" and t[b"q"] == str(MUSIC).encode()
    assert orjson.loads(t[b"pr"]) == {"input": "a song"}
    assert [e["reason"] for e in _ledger(engine)] == ["grant", "charge"]


def test_a_refused_submit_changes_nothing(engine):
    tc = engine.tasks
    u = _user(engine, quota=MUSIC - 1)
    r = engine.core.r

    def snapshot() -> dict:
        return {k: r.dump(k) for k in _all_keys(engine)}

    before = snapshot()
    with pytest.raises(InsufficientQuota):
        tc.submit(u["api_key"], "suno", "music", {"prompt": "x"})
    with pytest.raises(NotSignedIn):
        tc.submit("sk-nobody", "suno", "music", {"prompt": "x"})
    with pytest.raises(InvalidInput):
        tc.submit(u["api_key"], "suno", "video", {"prompt": "x"})
    assert snapshot() == before
    tc.set_user(u["id"], status="disabled")
    before = snapshot()
    with pytest.raises(Exception, match="disabled"):
        tc.submit(u["api_key"], "suno", "lyrics", {"prompt": "x"})
    assert snapshot() == before


def test_the_submit_job_submits_and_the_poll_job_walks_the_task_to_success(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    cid = tc.add_channel("suno", "http://sandbox", "")
    http = _sandbox(clock, duration_s=10, fail_rate=0)
    sub = tc.submit(u["api_key"], "suno", "music", {"prompt": "a song"})
    assert jobs.submit_tasks(engine, client=http, workers=1)["submitted"] == 1
    assert _task(engine, sub["id"])[b"st"] == b"SUBMITTED" and _task(engine, sub["id"])[b"ch"] == str(cid).encode()
    seen = []
    for _ in range(8):
        clock.advance(2)
        jobs.poll_tasks(engine, client=http, workers=1)
        t = _task(engine, sub["id"])
        seen.append((t[b"st"].decode(), t[b"pg"].decode()))
    statuses = [s for s, _ in seen]
    assert statuses[-1] == "SUCCESS" and "IN_PROGRESS" in statuses
    assert [s for s in dict.fromkeys(statuses)] == [s for s in ("SUBMITTED", "QUEUED", "IN_PROGRESS", "SUCCESS")
                                                    if s in statuses]
    t = _task(engine, sub["id"])
    assert t[b"pg"] == b"100%" and int(t[b"stt"]) > 0 and int(t[b"ft"]) >= int(t[b"stt"])
    assert orjson.loads(t[b"d"])["clips"][0]["duration"] == 120
    assert tc.user(u["id"])["used_quota"] == MUSIC  # success keeps the charge
    assert not _zcard_all(engine, "polls") and not _zcard_all(engine, "active")


def test_platform_failure_refunds_once_however_often_it_is_reported(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    token = tc.create_token(u["id"], "limited", quota=2 * MUSIC)
    tc.add_channel("suno", "http://sandbox", "")
    http = _sandbox(clock, duration_s=1, fail_rate=0)
    sub = tc.submit(token["api_key"], "suno", "music", {"prompt": "this one should fail, please"})
    jobs.submit_tasks(engine, client=http, workers=1)
    clock.advance(20)
    jobs.poll_tasks(engine, client=http, workers=1)
    t = _task(engine, sub["id"])
    assert t[b"st"] == b"FAILURE" and b"asked to fail" in t[b"fr"] and t[b"rf"] == b"1"
    for _ in range(3):  # late and duplicate reports, the sweep after the timeout
        tc.apply([map_report(sub["id"], {"status": "FAILURE", "fail_reason": "again"})])
        tc.apply([map_report(sub["id"], {"status": "SUCCESS"})])
        clock.advance(2 * 86400)
        tc.sweep()
    assert tc.user(u["id"])["quota"] == 10 * MUSIC and tc.user(u["id"])["used_quota"] == 0
    shard = tc.shard_of_secret(token["api_key"])
    assert shard.r.hget(shard.keys.token(token_hash(token["api_key"])), "rq") == str(2 * MUSIC).encode()
    assert _refunds(engine) == {str(sub["id"]): 1}
    assert _task(engine, sub["id"])[b"fr"] == t[b"fr"]  # a terminal task never changes again
    assert all(row["ok"] for row in tc.audit())


def test_transient_errors_retry_on_another_channel_then_fail_with_a_refund(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    a = tc.add_channel("suno", "http://a", "")
    b = tc.add_channel("suno", "http://b", "")
    http = _sandbox(clock, error_rate=1.0)  # every submit answers 503
    sub = tc.submit(u["api_key"], "suno", "lyrics", {"prompt": "x"})
    tried = []
    for attempt in range(1, 5):
        assert jobs.submit_tasks(engine, client=http, workers=1)["claimed"] == 1
        t = _task(engine, sub["id"])
        if attempt < 4:
            assert t[b"st"] == b"NOT_START" and b"503" in t[b"le"]
            tried = t[b"tried"].decode().split(",")
            assert jobs.submit_tasks(engine, client=http, workers=1)["claimed"] == 0  # backoff: not yet due
            clock.advance(120)
    assert sorted(set(tried[:2])) == sorted({str(a), str(b)})  # the second try used the other channel
    t = _task(engine, sub["id"])
    assert t[b"st"] == b"FAILURE" and b"503" in t[b"fr"] and int(t[b"at"]) == 4  # 1 + TASKHUB_SUBMIT_RETRIES
    assert tc.user(u["id"])["quota"] == 10 * MUSIC and _refunds(engine) == {str(sub["id"]): 1}


def test_a_permanent_error_fails_at_once_and_no_channel_retries(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    sub = tc.submit(u["api_key"], "suno", "music", {"prompt": "x"})
    jobs.submit_tasks(engine, client=_sandbox(clock), workers=1)  # no channel yet: transient
    assert _task(engine, sub["id"])[b"le"] == b"no enabled channel for platform suno"
    tc.add_channel("suno", "http://sandbox", "wrong-key")
    clock.advance(120)
    jobs.submit_tasks(engine, client=_sandbox(clock, key="right-key"), workers=1)  # 401: permanent
    t = _task(engine, sub["id"])
    assert t[b"st"] == b"FAILURE" and b"401" in t[b"fr"] and int(t[b"at"]) == 2
    assert tc.user(u["id"])["used_quota"] == 0


def test_timeout_fails_and_refunds_tasks_that_never_finish_even_before_submission(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    waiting = tc.submit(u["api_key"], "suno", "music", {"prompt": "never submitted"})
    clock.advance(60)
    upstream = tc.submit(u["api_key"], "suno", "music", {"prompt": "stuck upstream"})
    tc.claim_submissions(10)
    tc.submitted(upstream["id"], 1, "up-1")
    clock.advance(1440 * 60 - 30)  # the first is over the limit, the second not yet
    assert tc.sweep()["timed_out"] == 1
    assert _task(engine, waiting["id"])[b"fr"] == b"task timed out after 1440 minutes"
    assert _task(engine, upstream["id"])[b"st"] == b"SUBMITTED"
    clock.advance(60)
    assert tc.sweep() == {"timed_out": 1, "submissions_requeued": 0, "timed_out_left": 0}
    assert tc.user(u["id"])["quota"] == 10 * MUSIC and len(_refunds(engine)) == 2


def test_tasks_of_a_deleted_channel_are_failed_and_refunded_by_the_poll(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    cid = tc.add_channel("suno", "http://sandbox", "")
    http = _sandbox(clock, duration_s=1000)
    ids = [tc.submit(u["api_key"], "suno", "music", {"prompt": str(i)})["id"] for i in range(3)]
    jobs.submit_tasks(engine, client=http, workers=1)
    tc.delete_channel(cid)
    with pytest.raises(NotFound):
        tc.delete_channel(cid)
    clock.advance(30)
    assert jobs.poll_tasks(engine, client=http, workers=1)["failed"] == 3
    assert {_task(engine, i)[b"fr"] for i in ids} == {f"channel {cid} was deleted".encode()}
    assert tc.user(u["id"])["quota"] == 10 * MUSIC


def test_a_submitter_that_dies_leaves_a_lease_that_lapses_back_to_the_queue(engine, clock):
    tc = engine.tasks
    u = _user(engine)
    sub = tc.submit(u["api_key"], "suno", "music", {"prompt": "x"})
    assert [s.id for s in tc.claim_submissions(10)] == [sub["id"]]
    assert tc.claim_submissions(10) == []  # leased: a second submitter gets nothing
    clock.advance(engine.core.settings.submit_lease_ms / 1000 + 1)
    assert tc.sweep()["submissions_requeued"] == 1
    again = tc.claim_submissions(10)
    assert [(s.id, s.attempt) for s in again] == [(sub["id"], 2)]
    assert tc.submitted(sub["id"], 1, "up") and not tc.submitted(sub["id"], 1, "up-dup")  # second is stale


def test_polls_go_least_recently_polled_first_so_a_backlog_never_starves_new_tasks(engine, clock):
    tc = engine.tasks
    u = _user(engine, quota=100 * MUSIC)
    ids = []
    for i in range(6):
        ids.append(tc.submit(u["api_key"], "suno", "music", {"prompt": str(i)})["id"])
        clock.advance(1)
    tc.claim_submissions(10)
    for i in ids[:4]:
        tc.submitted(i, 1, f"up-{i}")
    clock.advance(30)
    assert [t[0] for t in tc.take_polls(2)] == ids[:2]
    clock.advance(1)
    for i in ids[4:]:  # new tasks arrive while the backlog is polled
        tc.submitted(i, 1, f"up-{i}")
    clock.advance(30)
    assert [t[0] for t in tc.take_polls(2)] == ids[2:4]  # not the two just polled
    clock.advance(30)
    # round robin: polled longest ago first; the new ones come before a third poll of 3 and 4
    assert [t[0] for t in tc.take_polls(2)] == ids[:2]
    assert [t[0] for t in tc.take_polls(2)] == ids[4:6]
    assert [t[0] for t in tc.take_polls(10)] == ids[2:4]
    assert tc.take_polls(10) == []  # every task was just polled


def test_grants_and_the_audit_catch_a_balance_that_does_not_add_up(engine):
    tc = engine.tasks
    u = _user(engine, quota=MUSIC)
    assert tc.grant(u["id"], MUSIC) == 2 * MUSIC
    with pytest.raises(InvalidInput):
        tc.grant(u["id"], -3 * MUSIC)
    tc.submit(u["api_key"], "suno", "music", {"prompt": "x"})
    assert [row["ok"] for row in tc.audit()] == [True]
    shard = tc.shard_of_user(u["id"])
    shard.r.hincrby(shard.keys.user(u["id"]), "quota", 1)  # a balance changed behind the ledger's back
    row = tc.audit()[0]
    assert not row["ok"] and any("quota" in p for p in row["problems"])


def test_status_mapping_and_weighted_channel_choice():
    assert map_report(1, {"status": "in_progress", "progress": "55%"}).progress == "55%"
    assert map_report(1, {"status": "IN_PROGRESS", "progress": "555%"}).progress == "30%"
    assert map_report(1, {"status": "QUEUED"}).progress == "20%"
    weird = map_report(1, {"status": "PAUSED"})
    assert (weird.status, weird.progress) == ("UNKNOWN", "")
    assert map_report(1, {"status": "FAILURE"}).fail_reason
    chans = [Channel(1, "suno", "u", "", 1, True, ""), Channel(2, "suno", "u", "", 3, True, ""),
             Channel(3, "suno", "u", "", 50, False, "")]
    picks = Counter(choose_channel(chans, (), random.Random(i)).id for i in range(2000))
    assert set(picks) == {1, 2} and 2.4 < picks[2] / picks[1] < 3.7  # weights 1:3; disabled never
    assert {choose_channel(chans, (2,), random.Random(i)).id for i in range(50)} == {1}
    assert choose_channel([chans[2]], ()) is None


def test_1000_failures_with_two_pollers_the_sweep_and_duplicate_jobs_are_refunded_exactly_once(engine, clock):
    """Real threads on one Redis: two poll jobs, the timeout sweep and duplicated jobs replaying
    the same FAILURE reports race for 1,000 failing tasks. Each is refunded once; the audit balances."""
    tc = engine.tasks
    users = [tc.create_user(f"u{i}", 300 * MUSIC) for i in (0, 2, 3, 7)]  # with 3 shards: on all three
    cid = tc.add_channel("suno", "http://stub", "")
    calls = [tc.submit_call(users[i % 4]["api_key"], "suno", "music", {"prompt": str(i)}) for i in range(1000)]
    ids = []
    for ok, result in tc.core.call_many(calls):
        assert ok
        ids.append(result["id"])
    while subs := tc.claim_submissions(1000):
        for s in subs:
            assert tc.submitted(s.id, cid, f"up-{s.id}")
    clock.advance(1440 * 60 + 1)  # every task is due for a poll and past the timeout

    class FailingPlatform:
        def fetch(self, channel, ups):
            return {up: {"task_id": up, "status": "FAILURE", "fail_reason": "upstream said no"} for up in ups}

    platform = FailingPlatform()
    reports = [map_report(i, {"status": "FAILURE", "fail_reason": "duplicate job"}) for i in ids]
    errors = []

    def run(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    workers = [
        lambda: jobs.poll_tasks(engine, client=platform, workers=2),
        lambda: jobs.poll_tasks(engine, client=platform, workers=2),
        lambda: jobs.sweep_task_timeouts(engine),
        lambda: [tc.apply(reports[i:i + 50], actor="dup") for i in range(0, 1000, 50)],
        lambda: [tc.apply(reports[i:i + 50], actor="dup") for i in range(0, 1000, 50)],
    ]
    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert tc.stats()["FAILURE"] == 1000
    refunds = _refunds(engine)
    assert len(refunds) == 1000 and set(refunds.values()) == {1}
    terminal = Counter(f[b"task"] for f in _stream(engine, "events") if f[b"to"] == b"FAILURE")
    assert len(terminal) == 1000 and set(terminal.values()) == {1}
    for u in users:
        view = tc.user(u["id"])
        assert (view["quota"], view["used_quota"]) == (300 * MUSIC, 0)
    assert all(row["ok"] and row["ledger_stream_checked"] for row in tc.audit())


def test_every_page_at_any_depth_equals_a_brute_force_listing(engine, clock):
    """2,400 tasks over 3 users, 2 actions, 3 channels and several statuses: pages deep enough
    to take the binary-search path (offset + size > 2,000) agree with a listing computed in Python."""
    tc = engine.tasks
    users = [tc.create_user(name, 10**12) for name in ("p0", "p2", "u6")]  # with 3 shards: on all three
    calls, truth = [], []
    for i in range(2400):
        u = users[i % 3]
        calls.append(tc.submit_call(u["api_key"], "suno", "music" if i % 3 else "lyrics", {"prompt": str(i)}))
        if i % 400 == 0:
            clock.advance(3600)
    ids = []
    for ok, result in tc.core.call_many(calls):
        assert ok
        ids.append(result["id"])
    rng = random.Random(5)
    while subs := tc.claim_submissions(1000):
        for s in subs:
            tc.submitted(s.id, rng.choice([1, 2, 3]), f"up-{s.id}")
    reports = [map_report(i, {"status": rng.choice(["SUCCESS", "FAILURE", "QUEUED", "IN_PROGRESS"])})
               for n, i in enumerate(ids, 1) if n % 7]
    for i in range(0, len(reports), 500):
        tc.apply(reports[i:i + 500])
    for tid in ids:
        core = tc.shard_of_task(tid)
        f = core.r.hmget(core.keys.task(tid), "u", "ac", "st", "ch", "sbt")
        truth.append((tid, int(f[0]), f[1].decode(), f[2].decode(), int(f[3]), int(f[4])))
    mid = truth[1200][5]
    cases = [({}, None), ({"status": "SUCCESS"}, None), ({"action": "music", "channel_id": "2"}, None),
             ({"start_timestamp": str(mid)}, None), ({"status": "FAILURE", "end_timestamp": str(mid)}, None),
             ({"action": "MUSIC"}, users[1]["id"]), ({"platform": "suno"}, None),  # deep: binary search
             ({"platform": "suno", "end_timestamp": str(truth[2300][5])}, None)]
    for params, uid in cases:
        assert params.get("platform", "suno") == "suno"
        want = [t for t in truth if (uid is None or t[1] == uid)
                and params.get("status", t[3]) == t[3] and params.get("action", t[2]).upper() == t[2]
                and int(params.get("channel_id", t[4])) == t[4]
                and int(params.get("start_timestamp", 0)) <= t[5] <= int(params.get("end_timestamp", 10**12))]
        want_ids = [t[0] for t in sorted(want, reverse=True)]
        for page, size in ((1, 20), (2, 100), (11, 100), (21, 100), (16, 100), (len(want_ids) // 37 + 1, 37)):
            got = tc.list({**params, "p": page, "page_size": size}, user_id=uid, admin=uid is None)
            assert got["total"] == len(want_ids), params
            assert [t["id"] for t in got["items"]] == want_ids[(page - 1) * size:page * size], (params, page, size)
