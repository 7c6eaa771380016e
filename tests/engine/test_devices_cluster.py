"""Device tasks split over shards (issue 11): placement, ids, all-or-nothing creates over shards,
merged lists and stats, and real concurrency with one client per claimer.

Every test runs on fake, real (one shard, the default layout) and cluster (3 shards on a 3-master
Redis Cluster); what only has a subject with several shards says so and is skipped on one shard.
"""
from __future__ import annotations

import random
import threading
from collections import Counter

import fakeredis
import pytest
import redis

import engine.devices as devices_module
from engine import Engine
from engine.connection import connect
from engine.device_scripts import NoAccount
from engine.calls import Rounds
from engine.devices import PLAN_LIMITS, PlanRefused
from engine.errors import EngineError, InvalidInput
from tests.conftest import is_cluster
from tests.engine.test_device_invariants import check_invariants, scan_tasks
from tests.helpers import state

SERIALS = [f"dev{i:03d}" for i in range(60)]


def post(serials, **extra) -> dict:
    return {"serials": list(serials), "script_name": "post", "script_config": {"captions": "hi"}, **extra}


@pytest.fixture
def new_engine(request, engine, redis_client, settings):
    """Another engine on its own client (its own connections) over the same namespace and shards."""
    made: list = []

    def make() -> Engine:
        if is_cluster(redis_client):
            client = connect(request.getfixturevalue("redis_cluster").url)
        elif isinstance(redis_client, fakeredis.FakeRedis):
            client = fakeredis.FakeRedis(server=redis_client.connection_pool.connection_kwargs["server"])
        else:
            client = redis.Redis(unix_socket_path=request.getfixturevalue("real_redis_socket"))
        made.append(client)
        return Engine(client, settings)

    yield make
    for client in made:
        client.close()


def sharded(engine) -> None:
    if engine.device_shards.n == 1:
        pytest.skip("needs several device shards (the cluster backend has 3)")


def all_tasks(engine) -> dict[int, dict]:
    return {i: t for core in engine.device_shards for i, t in scan_tasks(core).items()}


def task_state(engine) -> dict:
    """Every key but the event streams and id sequences (which a create undone does move); a
    status counter's zero fields count as absent (a created-then-deleted task leaves one)."""
    out = {}
    for k, v in state(engine).items():
        if k.endswith((b":events", b":seq")):
            continue
        if k.endswith(b":stats"):
            v = {f: n for f, n in v.items() if int(n)}
            if not v:
                continue
        out[k] = v
    return out


# ---- placement and ids --------------------------------------------------------------------
def test_a_device_and_its_tasks_live_on_the_shard_of_its_serial(engine):
    shards = engine.device_shards
    ids = engine.devices.create(post(SERIALS[:12]))["task_ids"]
    assert ids == sorted(ids) and len(set(ids)) == 12  # the call's order, as with one shard
    for tid, serial in zip(ids, SERIALS[:12]):
        core = shards.for_name(serial)
        assert shards.shard_of_id(tid) is core
        assert core.r.hget(core.keys.task(tid), "se") == serial.encode()
        assert engine.devices.get(tid)["serial"] == serial
    later = engine.devices.create(post(SERIALS[12:15]))["task_ids"]
    assert min(later) > max(ids)  # a create after another has larger ids on every shard
    check_invariants(engine)


def test_one_shard_ids_are_the_sequence_itself(engine):
    if engine.device_shards.n != 1:
        pytest.skip("one-shard layout")
    assert engine.devices.create(post(["a", "b", "c"]))["task_ids"] == [1, 2, 3]
    assert engine.devices.create(post(["a"]))["task_ids"] == [4]


def test_sharded_create_and_deep_list_are_steps_one_shard_stays_one_call(engine):
    d = engine.devices
    create = d.create_call(post(SERIALS[:3]))
    deep = d.list_call({"page": "3", "page_size": "50"})
    if engine.device_shards.n == 1:
        assert not isinstance(create, Rounds) and not isinstance(deep, Rounds)
        assert len(create.commands) == 1 and len(deep.commands) == 1
    else:
        assert isinstance(create, Rounds) and isinstance(deep, Rounds)
        assert len(d.list_call({}).commands) == engine.device_shards.n  # page 1: one call, every shard
        assert len(d.list_call({"serial": "dev001"}).commands) == 1  # one serial: its shard only
    assert len(d.stop_call(7).commands) == len(d.get_call(7).commands) == 1


def test_an_account_moves_to_a_device_of_another_shard(engine):
    shards = engine.device_shards
    a = "dev000"
    b = next(s for s in SERIALS if shards.index_for_name(s) != shards.index_for_name(a)) \
        if shards.n > 1 else "dev001"
    engine.devices.heartbeat({"serials": [a], "accounts": {a: ["amy", "bo"]}})
    engine.devices.heartbeat({"serials": [b], "accounts": {b: ["amy"]}})
    [tid] = engine.devices.create({"usernames": ["amy"], "script_name": "post", "script_config": {}})["task_ids"]
    assert engine.devices.get(tid)["serial"] == b and engine.devices.get(tid)["username"] == "amy"
    got = engine.devices.create(post([a], enable_multi_account=True))["task_ids"]
    assert [engine.devices.get(i)["username"] for i in got] == ["bo"]  # amy left a's accounts
    # reported by two devices in one heartbeat: the last one wins, as with one shard
    engine.devices.heartbeat({"serials": [b, a], "accounts": {b: ["cy"], a: ["cy"]}})
    [tid] = engine.devices.create({"usernames": ["cy"], "script_name": "post", "script_config": {}})["task_ids"]
    assert engine.devices.get(tid)["serial"] == a
    check_invariants(engine)


# ---- create across shards: all or nothing -------------------------------------------------------
def test_a_refusal_checked_before_writing_changes_nothing_at_all(engine):
    engine.devices.heartbeat({"serials": SERIALS[:6], "accounts": {s: [f"{s}-u"] for s in SERIALS[:6]}})
    before = state(engine)
    with pytest.raises(NoAccount, match="ghost"):
        engine.devices.create({"usernames": [f"{s}-u" for s in SERIALS[:6]] + ["ghost"], "script_name": "post",
                               "script_config": {}})
    with pytest.raises(NoAccount, match=SERIALS[7]):
        engine.devices.create(post(SERIALS[:6] + [SERIALS[7]], enable_multi_account=True))
    limit = PLAN_LIMITS["pro"]
    with pytest.raises(PlanRefused, match=str(limit)):
        engine.devices.create(post(SERIALS[:limit + 1]))
    with pytest.raises(InvalidInput, match="1200 tasks"):
        engine.devices.create({"usernames": [f"{s}-u" for s in SERIALS[:6]], "script_name": "follow",
                               "script_config": {"target_users": [f"t{i}" for i in range(200)]}})
    assert state(engine) == before  # not even the sequences or the event streams moved


def test_the_device_limit_counts_active_devices_of_every_shard(engine):
    limit = PLAN_LIMITS["pro"]
    engine.devices.create(post(SERIALS[:limit - 1]))
    engine.devices.create(post(SERIALS[:5] + [SERIALS[limit - 1]]))  # the last slot, with active ones
    before = state(engine)
    for serial in SERIALS[limit:limit + 6]:  # on every shard, one more device is one too many
        with pytest.raises(PlanRefused, match=f"{limit} active devices; these tasks would make {limit + 1}"):
            engine.devices.create(post([serial]))
    assert state(engine) == before


def _interfere_after_probe(monkeypatch, engine, act) -> None:
    """Run ``act`` once, right after the sharded create's probe call: another writer getting in
    between the probe and the creates (what the creates' own checks are for)."""
    core = engine.devices.core
    real = core.call
    fired = []

    def call(c):
        out = real(c)
        if not fired and c.commands and getattr(c.commands[0], "verb", "") == "probe":
            fired.append(1)
            act()
        return out

    monkeypatch.setattr(core, "call", call)


def test_a_shard_refusing_after_the_probe_undoes_the_other_shards(engine, new_engine, monkeypatch):
    sharded(engine)
    shards = engine.device_shards
    by_shard: dict[int, list[str]] = {}
    for s in SERIALS:
        by_shard.setdefault(shards.index_for_name(s), []).append(s)
    users = {i: f"user{i}" for i in range(shards.n)}
    engine.devices.heartbeat({"serials": [by_shard[i][0] for i in range(shards.n)],
                              "accounts": {by_shard[i][0]: [users[i]] for i in range(shards.n)}})
    engine.devices.create(post([by_shard[0][1]]))  # some history on the shards
    before = task_state(engine)
    other = new_engine()
    # user1 moves to another device of shard 2 between the probe and the creates: shard 1 refuses
    _interfere_after_probe(monkeypatch, engine, lambda: other.devices.heartbeat(
        {"serials": [by_shard[1][0], by_shard[2][1]], "accounts": {by_shard[1][0]: [], by_shard[2][1]: [users[1]]}}))
    with pytest.raises(NoAccount, match=users[1]):
        engine.devices.create({"usernames": list(users.values()), "script_name": "post", "script_config": {}})
    after = task_state(engine)
    moved = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    # only the heartbeat's own keys changed (binding, accounts, last-seen): no task, index, counter or queue
    assert all(k.split(b"}:", 1)[1].startswith((b"users", b"acc:", b"devices")) for k in moved), moved
    assert engine.devices.stats()["total"] == 1
    events = [e for c in shards for _, e in c.r.xrange(c.keys.events)]
    undone = [e for e in events if e[b"by"] == b"create_refused"]
    assert undone and all(e[b"to"] == b"" for e in undone)  # the undone tasks' creation and deletion
    check_invariants(engine)


def test_a_device_limit_reached_between_probe_and_create_is_refused_and_undone(engine, new_engine, monkeypatch):
    sharded(engine)
    shards = engine.device_shards
    limit = PLAN_LIMITS["pro"]
    engine.devices.create(post(SERIALS[:limit - 2]))
    spread = [s for s in SERIALS[limit:] if shards.index_for_name(s) == 0][:1] + \
             [s for s in SERIALS[limit:] if shards.index_for_name(s) == 1][:1]
    rival = [s for s in SERIALS[limit:] if s not in spread and shards.index_for_name(s) == 1][0]
    before = task_state(engine)
    other = new_engine()
    _interfere_after_probe(monkeypatch, engine, lambda: other.devices.create(post([rival])))
    with pytest.raises(PlanRefused, match=str(limit)):
        engine.devices.create(post(spread))
    tasks = all_tasks(engine)
    assert len(tasks) == limit - 1 and {t["se"] for t in tasks.values()} == set(SERIALS[:limit - 2]) | {rival}
    assert engine.devices.stats()["pending"] == limit - 1
    check_invariants(engine)
    assert task_state(engine) != before  # the rival's task is there, and nothing of the refused call


# ---- list: exact totals, pages merged newest first --------------------------------------------
def test_list_totals_and_pages_equal_a_brute_force_listing(engine, monkeypatch):
    rng = random.Random(5)
    d = engine.devices
    d.s.plan = "business"
    for _ in range(60):
        body = {"serials": rng.sample(SERIALS, rng.randint(1, 6)), "script_name": rng.choice(["post", "follow"]),
                "script_config": {"target_users": "a,b"}}
        d.create(body, source=rng.choice(["api", "ui"]))
    for _ in range(6):
        for task in d.claim({"serials": rng.sample(SERIALS, 30)})["tasks"]:
            (d.complete if rng.random() < 0.5 else d.fail)(task["id"])
    tasks = all_tasks(engine)
    assert len(tasks) > 200

    def brute(status=None, serial=None, script_name=None, source=None) -> list[int]:
        keep = [i for i, t in tasks.items() if (status is None or t["st"] == status)
                and (serial is None or t["se"] == serial) and (script_name is None or t["sc"] == script_name)
                and (source is None or t["src"] == source)]
        return sorted(keep, reverse=True)

    monkeypatch.setattr(devices_module, "MAX_MERGED_RANK", 300)
    for filters in ({}, {"status": "0"}, {"status": "2", "source": "ui"}, {"script_name": "follow"},
                    {"serial": SERIALS[3]}, {"serial": SERIALS[3], "status": "3"}, {"status": "1"}):
        expected = brute(**filters)
        for size in (1, 7, 20, 100):
            for page in range(1, (25 if size == 1 else 300 // size) + 1):
                got = d.list(**filters, page=str(page), page_size=str(size))
                assert got["total"] == len(expected)
                assert [t["id"] for t in got["items"]] == expected[(page - 1) * size:page * size], (filters, page)
                if page * size >= len(expected) + size:
                    break
    for item in d.list(page_size="100")["items"]:
        assert item == d.get(item["id"])  # a merged record is the task's own
    if engine.device_shards.n > 1:
        with pytest.raises(InvalidInput, match="at most 300"):
            d.list(page="4", page_size="100")
        assert d.list(serial=SERIALS[3], page="40", page_size="100")["items"] == []  # one shard: any depth


# ---- stats and concurrency ------------------------------------------------------------------------
def test_16_claimers_with_their_own_clients_take_every_task_exactly_once(engine, new_engine):
    engine.devices.s.plan = "business"
    per_serial = 5
    for _ in range(per_serial):
        engine.devices.create(post(SERIALS))
    total = per_serial * len(SERIALS)
    engines = [new_engine() for _ in range(16)]
    claimed: list[list[int]] = [[] for _ in range(16)]
    errors: list[BaseException] = []
    start = threading.Barrier(16)
    done = threading.Event()

    def agent(i: int) -> None:
        rng, d = random.Random(i), engines[i].devices
        try:
            start.wait()
            while not done.is_set():
                sample = rng.sample(SERIALS, 12)
                body = {"serials": sample, "agent": f"a{i}"}
                if rng.random() < 0.5:
                    body["limit"] = rng.randint(1, 12)  # below the serial count: the claim's rounds
                got = d.claim(body)["tasks"]
                assert len(got) <= body.get("limit", 12)
                assert len({t["serial"] for t in got}) == len(got)
                for task in got:
                    claimed[i].append(task["id"])
                    d.complete(task["id"], agent=f"a{i}")
                if d.stats()["completed"] == total:
                    done.set()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            done.set()

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    everything = [tid for part in claimed for tid in part]
    assert len(everything) == total and set(everything) == set(all_tasks(engine))  # each exactly once
    assert sum(1 for part in claimed if part) > 1
    assert engine.devices.stats() == {"total": total, "pending": 0, "running": 0, "completed": total, "failed": 0}
    check_invariants(engine)


def test_stats_equal_a_recount_after_a_concurrent_mixed_workload(engine, new_engine, clock, settings):
    settings.auto_retry, settings.max_retry_count, settings.run_ttl_ms = True, 2, 60_000
    engine.devices.s.plan = "business"
    engine.devices.heartbeat({"serials": SERIALS, "accounts": {s: [f"{s}-u{j}" for j in range(2)]
                                                               for s in SERIALS}})
    engines = [new_engine() for _ in range(8)]
    errors: list[BaseException] = []
    lock = threading.Lock()
    known: list[int] = []

    def worker(i: int) -> None:
        rng, d = random.Random(100 + i), engines[i].devices
        try:
            for _ in range(60):
                op = rng.choice(["create", "create", "claim", "claim", "stop", "retry", "delete", "heartbeat",
                                 "usernames", "retry_all", "sweep", "auto_retry"])
                with lock:
                    pick = rng.sample(known, min(3, len(known)))
                try:
                    if op == "create":
                        got = d.create(post(rng.sample(SERIALS, rng.randint(1, 8)),
                                            enable_multi_account=rng.random() < 0.2))["task_ids"]
                        with lock:
                            known.extend(got)
                    elif op == "usernames":
                        names = [f"{s}-u{rng.randint(0, 1)}" for s in rng.sample(SERIALS, 4)]
                        got = d.create({"usernames": names, "script_name": "post", "script_config": {}})["task_ids"]
                        with lock:
                            known.extend(got)
                    elif op == "claim":
                        for task in d.claim({"serials": rng.sample(SERIALS, 10), "limit": rng.randint(1, 10)})[
                                "tasks"]:
                            (d.complete if rng.random() < 0.6 else d.fail)(task["id"], agent=f"w{i}")
                    elif op == "stop" and pick:
                        d.stop(pick[0])
                    elif op == "retry" and pick:
                        d.retry(pick[0])
                    elif op == "delete" and pick:
                        d.delete_many(pick)
                    elif op == "heartbeat":
                        d.heartbeat({"serials": rng.sample(SERIALS, 10)})
                    elif op == "retry_all":
                        d.retry_all()
                    elif op == "sweep":
                        d.sweep()
                    elif op == "auto_retry":
                        d.run_retries()
                except EngineError:
                    pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[0]
    tasks = all_tasks(engine)
    counts = Counter(t["st"] for t in tasks.values())
    assert engine.devices.stats() == {"total": len(tasks), "pending": counts["0"], "running": counts["1"],
                                      "completed": counts["2"], "failed": counts["3"]}
    assert engine.devices.list()["total"] == len(tasks)
    check_invariants(engine)
    clock.advance(120)  # every run lease lapses, every failure is due
    engine.devices.sweep()
    engine.devices.run_retries()
    check_invariants(engine)
