"""The task center split over 3 shards (issue 11): users on the shard of their name, tokens and
public ids carrying their shard, refunds exactly once under 16 concurrent clients on a real
3-master cluster, stats equal to a recount, and admin lists merged over the shards equal to a
brute-force listing at any depth.

The merge and placement tests also run on fakeredis with 3 shards on one server (same keys,
same scripts, one process), which is fast and catches logic errors; the concurrency test needs
real servers and real clients, so it runs on the cluster only.
"""
from __future__ import annotations

import random
import threading
import uuid
from collections import Counter

import fakeredis
import pytest

from engine import Engine, Settings
from engine.connection import connect
from engine.errors import NotFound
from engine.calls import Rounds
from engine.taskcenter import NotSignedIn, map_report, marked_shard, shard_mark

MUSIC = 50_000
N = 3


@pytest.fixture(params=["fake", "cluster"])
def center(request, clock):
    """An engine whose task center has 3 shards: on one fakeredis, or on the 3-master cluster."""
    settings = Settings(namespace=f"tc{uuid.uuid4().hex[:10]}", clock=clock, shards_tasks=N)
    if request.param == "fake":
        client, url = fakeredis.FakeRedis(server=fakeredis.FakeServer()), None
    else:
        url = request.getfixturevalue("redis_cluster").url
        client = connect(url)
    eng = Engine(client, settings)
    eng.url = url
    yield eng
    client.close()


def _names_on_every_shard(eng: Engine, per_shard: int, prefix: str = "user") -> list[str]:
    """Names placed ``per_shard`` on each shard (placement is CRC32 of the name)."""
    got: dict[int, list[str]] = {i: [] for i in range(N)}
    i = 0
    while any(len(v) < per_shard for v in got.values()):
        name = f"{prefix}-{i}"
        shard = eng.tasks.shards.index_for_name(name)
        if len(got[shard]) < per_shard:
            got[shard].append(name)
        i += 1
    return [got[s][j] for j in range(per_shard) for s in range(N)]


def _recount(eng: Engine) -> tuple[Counter, list[Counter]]:
    """Tasks per status, read task by task on every shard: overall and per shard."""
    per_shard = []
    for core in eng.tasks.shards:
        ids = core.r.zrange(core.keys.index(), 0, -1)
        statuses = eng.tasks._read([("HGET", core.keys.task(int(i)), "st") for i in ids])
        per_shard.append(Counter(st.decode() for st in statuses))
    return sum(per_shard, Counter()), per_shard


def _ledger(eng: Engine) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items()}
            for c in eng.tasks.shards for _, f in c.r.xrange(c.keys.ledger)]


# ---- placement -------------------------------------------------------------------------------
def test_users_tokens_and_tasks_live_on_the_shard_of_the_user_name(center):
    tc = center.tasks
    names = _names_on_every_shard(center, 1)
    users = [tc.create_user(name, 10 * MUSIC) for name in names]
    for shard, (name, u) in enumerate(zip(names, users)):
        assert u["id"] % N == shard and tc.shards.index_for_name(name) == shard
        assert marked_shard(u["access_token"], N) == shard and marked_shard(u["api_key"], N) == shard
        assert len(u["access_token"]) == 32 and len(u["api_key"]) == 51  # same lengths as with one shard
        token = tc.create_token(u["id"], "second", MUSIC)
        assert marked_shard(token["api_key"], N) == shard
        sub = tc.submit(token["api_key"], "suno", "music", {"prompt": name})
        assert sub["id"] % N == shard and marked_shard(sub["task_id"], N) == shard and len(sub["task_id"]) == 37
        core = tc.shards[shard]
        assert core.r.hget(core.keys.task(sub["id"]), "u") == str(u["id"]).encode()
        assert tc.user_id(name) == u["id"] and tc.user(u["id"])["quota"] == 9 * MUSIC
    assert [u["id"] for u in tc.users()] == sorted(u["id"] for u in users)
    with pytest.raises(Exception, match="already exists"):  # names stay unique: checked on their shard
        tc.create_user(names[1])


def test_a_token_or_task_id_naming_no_shard_or_another_shard_matches_nobody(center):
    tc = center.tasks
    a, b = (tc.create_user(name, 10 * MUSIC) for name in _names_on_every_shard(center, 1)[:2])
    mine = tc.submit(a["api_key"], "suno", "music", {})["task_id"]
    theirs = tc.submit(b["api_key"], "suno", "music", {})["task_id"]
    before = tc.stats(), _ledger(center)
    for bad in ("sk-nobody", a["api_key"][:-2] + shard_mark(N), a["api_key"][:-2] + "!!",
                a["api_key"][:-2] + shard_mark((a["id"] + 1) % N)):  # valid shard, but not where it lives
        with pytest.raises(NotSignedIn):
            tc.submit(bad, "suno", "music", {})
        with pytest.raises(NotSignedIn):
            center.tasks.core.call(tc.fetch_call(bad, mine, many=False))
    with pytest.raises(NotSignedIn):
        center.tasks.core.call(tc.whoami_call(a["access_token"][:-2] + shard_mark(N), str(a["id"]), 1))
    with pytest.raises(NotFound):  # another shard's task is not the caller's
        center.tasks.core.call(tc.fetch_call(a["api_key"], theirs, many=False))
    assert [t["task_id"] for t in center.tasks.core.call(tc.fetch_call(a["api_key"], [theirs, mine], many=True))] == [mine]
    assert tc.list({"task_id": theirs[:-2] + shard_mark(N)})["total"] == 0
    assert tc.list({"task_id": theirs})["total"] == 1
    assert (tc.stats(), _ledger(center)) == before
    with pytest.raises(NotFound):
        tc.set_token_status(a["api_key"][:-2] + shard_mark(N), False)


def test_prices_are_mirrored_on_every_shard(center):
    tc = center.tasks
    tc.set_price("suno", "music", 123)
    users = [tc.create_user(name, 1000) for name in _names_on_every_shard(center, 1)]
    assert [tc.submit(u["api_key"], "suno", "music", {})["quota"] for u in users] == [123] * N
    assert tc.prices()["suno:MUSIC"] == 123


def test_admin_first_page_is_newest_first_across_shards(center, clock):
    """Task ids are anchored to the clock (ms): tasks of different shards interleave by creation."""
    tc = center.tasks
    users = [tc.create_user(name, 100 * MUSIC) for name in _names_on_every_shard(center, 1)]
    for _ in range(3):  # three in one ms: shard 0's sequence runs 2 ms ahead of the clock
        tc.submit(users[0]["api_key"], "suno", "lyrics", {})
    made = []
    for i in range(12):
        clock.advance(0.01)
        made.append(tc.submit(users[i % N]["api_key"], "suno", "music", {})["id"])
    assert made == sorted(made)
    page = tc.list({"page_size": 12, "action": "music"})
    assert [t["id"] for t in page["items"]] == made[::-1] and page["total"] == 12


# ---- merged admin lists -------------------------------------------------------------------------
def _drive(tc, params: dict) -> tuple[dict, int]:
    """An admin list and the number of round trips it took."""
    op = tc.list_call(params, None, admin=True)
    if not isinstance(op, Rounds):
        return tc.core.call(op), 1
    rounds = []

    def call(step):
        rounds.append(step)
        return tc.core.call(step)

    return op.run(call), len(rounds)


def test_admin_lists_merged_over_shards_equal_a_brute_force_listing_at_any_depth(center, clock):
    """2,700 tasks, most of them on one shard (skew), 2 actions, 3 channels, several statuses, over
    hours: totals are the sum over shards and every page, first or deep (the id threshold search),
    equals a listing computed in Python. Stats equal a recount of the tasks, per shard too."""
    tc = center.tasks
    names = _names_on_every_shard(center, 1, "lister")
    users = [tc.create_user(name, 10**12) for name in names]
    owners = [0] * 1500 + [1] * 700 + [2] * 500
    random.Random(3).shuffle(owners)
    calls = []
    for i, owner in enumerate(owners):
        calls.append(tc.submit_call(users[owner]["api_key"], "suno", "music" if i % 3 else "lyrics",
                                    {"prompt": str(i)}))
        if i % 300 == 0:  # one batch per 300 tasks, an hour apart
            for ok, _ in center.tasks.core.call_many(calls):
                assert ok
            calls = []
            clock.advance(3600)
    for ok, _ in center.tasks.core.call_many(calls):
        assert ok
    rng = random.Random(5)
    while subs := tc.claim_submissions(1000):
        for s in subs:
            tc.submitted(s.id, rng.choice([1, 2, 3]), f"up-{s.id}")
    truth = []
    for core in tc.shards:
        for tid in core.r.zrange(core.keys.index(), 0, -1):
            truth.append(int(tid))
    reports = [map_report(i, {"status": rng.choice(["SUCCESS", "FAILURE", "QUEUED", "IN_PROGRESS"])})
               for i in truth if i % 7]
    for i in range(0, len(reports), 500):
        tc.apply(reports[i:i + 500])
    rows = []
    fields = tc._read([("HMGET", tc.shard_of_task(t).keys.task(t), "u", "ac", "st", "ch", "sbt") for t in truth])
    for tid, f in zip(truth, fields):
        rows.append((tid, int(f[0]), f[1].decode(), f[2].decode(), int(f[3]), int(f[4])))
    assert len(rows) == len(owners) and {r[0] % N for r in rows} == set(range(N))
    by_time = sorted(r[5] for r in rows)
    mid, late = by_time[len(rows) // 2], by_time[-200]
    cases = [{}, {"status": "SUCCESS"}, {"action": "music", "channel_id": "2"}, {"start_timestamp": str(mid)},
             {"status": "FAILURE", "end_timestamp": str(mid)}, {"platform": "suno"},
             {"platform": "suno", "end_timestamp": str(late)}, {"status": "NOT_START"}]
    worst = 0
    for params in cases:
        want = [r for r in rows if params.get("status", r[3]) == r[3]
                and params.get("action", r[2]).upper() == r[2] and int(params.get("channel_id", r[4])) == r[4]
                and int(params.get("start_timestamp", 0)) <= r[5] <= int(params.get("end_timestamp", 10**12))]
        want_ids = sorted((r[0] for r in want), reverse=True)
        last = max(len(want_ids) // 37 + 1, 1)
        for page, size in ((1, 20), (1, 100), (2, 100), (11, 100), (20, 100), (21, 100), (26, 100), (27, 100),
                           (last, 37), (last + 1, 37), (2000, 1)):
            got, rounds = _drive(tc, {**params, "p": page, "page_size": size})
            worst = max(worst, rounds)
            assert got["total"] == len(want_ids), params
            assert [t["id"] for t in got["items"]] == want_ids[(page - 1) * size:page * size], (params, page, size)
            assert all(t["username"] == names[t["user_id"] % N] for t in got["items"])
    assert worst <= 12  # bounded: a few narrowing rounds, then ids and records
    # the per-user and per-task-id lists stay one call on one shard
    for u, name in zip(users, names):
        got, rounds = _drive(tc, {"user_id": str(u["id"]), "page_size": 5, "p": 3})
        mine = sorted((r[0] for r in rows if r[1] == u["id"]), reverse=True)
        assert rounds == 1 and got["total"] == len(mine) and [t["id"] for t in got["items"]] == mine[10:15]
    # stats: the sum of the shards' counters equals a recount, shard by shard too
    total, per_shard = _recount(center)
    assert tc.stats() == {s: total.get(s, 0) for s in tc.stats()}
    for core, counted in zip(tc.shards, per_shard):
        stored = {k.decode(): int(v) for k, v in core.r.hgetall(core.keys.stats).items() if int(v)}
        assert stored == dict(counted)


# ---- real concurrency ---------------------------------------------------------------------------
def test_16_clients_submit_claim_and_fail_concurrently_each_task_claimed_once_refunded_once(
        redis_cluster, clock):
    """16 threads, each with its own engine and cluster client, on users spread over 3 shards:
    they submit, claim submissions, fail some at once (submit refused: FAILURE + refund), hand
    the others to a channel and then race each other replaying FAILURE reports and the sweep.
    Every task is claimed exactly once, every FAILURE refunded exactly once (ledger), balances
    are exact, the audit balances, and stats equal a recount."""
    settings = Settings(namespace=f"tcc{uuid.uuid4().hex[:10]}", clock=clock, shards_tasks=N)
    main = Engine(connect(redis_cluster.url), settings)
    tc = main.tasks
    names = _names_on_every_shard(main, 2, "racer")
    users = [tc.create_user(name, 10**9) for name in names]
    assert {u["id"] % N for u in users} == set(range(N))
    cid = tc.add_channel("suno", "http://stub", "")
    threads_n, rounds, per_round = 16, 12, 3
    lock = threading.Lock()
    submitted: list[int] = []
    claimed: list[int] = []
    handed: list[int] = []
    refused: list[int] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(threads_n)

    def client(i: int) -> None:
        eng = Engine(connect(redis_cluster.url), settings)  # its own client and connections
        mine = eng.tasks
        rng = random.Random(i)
        try:
            gate.wait()
            for _ in range(rounds):
                made = [mine.submit(users[(i + j) % len(users)]["api_key"], "suno", "music", {"prompt": str(i)})["id"]
                        for j in range(per_round)]
                subs = mine.claim_submissions(rng.randint(1, 4))
                with lock:
                    submitted.extend(made)
                    claimed.extend(s.id for s in subs)
                for s in subs:
                    if s.id % 2:
                        assert mine.submit_failed(s.id, None, "refused by the platform", permanent=True) == "failed"
                        with lock:
                            refused.append(s.id)
                    else:
                        assert mine.submitted(s.id, cid, f"up-{s.id}")
                        with lock:
                            handed.append(s.id)
                with lock:
                    sample = rng.sample(handed, min(len(handed), 6))
                mine.apply([map_report(t, {"status": "FAILURE", "fail_reason": f"race {i}"}) for t in sample])
                if rng.random() < 0.3:
                    mine.sweep()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            eng.r.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors[:3]
    while subs := tc.claim_submissions(100):  # what no thread claimed
        claimed.extend(s.id for s in subs)
        for s in subs:
            tc.submitted(s.id, cid, f"up-{s.id}")
    assert len(submitted) == threads_n * rounds * per_round == len(set(submitted))
    counts = Counter(claimed)
    assert set(counts) == set(submitted) and set(counts.values()) == {1}  # each claimed exactly once
    assert {t % N for t in submitted} == set(range(N))
    failures = {}
    for t in submitted:
        core = tc.shard_of_task(t)
        st, u, rf = core.r.hmget(core.keys.task(t), "st", "u", "rf")
        if st == b"FAILURE":
            assert rf == b"1"
            failures[t] = int(u)
    assert refused and set(refused) <= set(failures)
    refunds = Counter(int(e["task"]) for e in _ledger(main) if e["reason"] == "refund")
    assert refunds == Counter(set(failures))  # every FAILURE refunded, exactly once
    charges = Counter(int(e["task"]) for e in _ledger(main) if e["reason"] == "charge")
    assert set(charges) == set(submitted) and set(charges.values()) == {1}
    owner = {}
    for t in submitted:
        core = tc.shard_of_task(t)
        owner[t] = int(core.r.hget(core.keys.task(t), "u"))
    for u in users:
        tasks = sum(1 for t in submitted if owner[t] == u["id"])
        failed = sum(1 for t in failures if owner[t] == u["id"])
        view = tc.user(u["id"])
        assert (view["quota"], view["used_quota"]) == (10**9 - (tasks - failed) * MUSIC, (tasks - failed) * MUSIC)
    assert all(row["ok"] for row in tc.audit())
    total, _ = _recount(main)
    assert tc.stats() == {s: total.get(s, 0) for s in tc.stats()}
    assert tc.stats()["FAILURE"] == len(failures)
    assert tc.list({})["total"] == len(submitted)
    main.r.close()


def test_concurrent_submit_jobs_on_their_own_clients_submit_every_task_once(redis_cluster, clock):
    """Four copies of the submit job at once, each with its own engine and cluster client, over
    tasks on 3 shards: each job claims per shard, each task's lease is on its shard, so the
    platform receives every task exactly once."""
    from workers import jobs

    settings = Settings(namespace=f"tcs{uuid.uuid4().hex[:10]}", clock=clock, shards_tasks=N)
    main = Engine(connect(redis_cluster.url), settings)
    tc = main.tasks
    users = [tc.create_user(name, 10**9) for name in _names_on_every_shard(main, 1, "job")]
    tc.add_channel("suno", "http://stub", "")
    made = [tc.submit(users[i % N]["api_key"], "suno", "lyrics", {"prompt": f"task {i}"})["id"] for i in range(300)]
    lock = threading.Lock()
    received: Counter = Counter()

    class Platform:
        def submit(self, channel, action, body):
            with lock:
                received[body] += 1
            return f"up-{len(received)}"

    errors: list[BaseException] = []

    def job() -> None:
        eng = Engine(connect(redis_cluster.url), settings)
        try:
            jobs.submit_tasks(eng, client=Platform(), workers=4)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            eng.r.close()

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(received) == 300 and set(received.values()) == {1}
    assert tc.stats()["SUBMITTED"] == 300 and {t % N for t in made} == set(range(N))
    main.r.close()
