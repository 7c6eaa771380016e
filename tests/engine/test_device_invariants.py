"""Device tasks under real concurrency, and a seeded random walk with every derived structure rebuilt
from the task hashes after each step (counters, indexes, queues, running map, leases, device limit)."""
from __future__ import annotations

import random
import threading
from collections import Counter, defaultdict

import pytest

from engine.errors import EngineError

SCRIPTS = ("post", "follow", "login")


def scan_tasks(core) -> dict[int, dict]:
    """The task hashes of one device shard."""
    r, k = core.r, core.keys
    out = {}
    for key in r.scan_iter(match=k.prefix + "t:*", count=1000):
        h = {f.decode(): v.decode() for f, v in r.hgetall(key).items()}
        out[int(key.decode().rsplit(":", 1)[1])] = h
    return out


def zmembers(core, key: str) -> set[int]:
    return {int(m) for m in core.r.zrange(key, 0, -1)}


def check_invariants(engine) -> None:
    """Every derived structure of every shard rebuilt from that shard's task hashes; every task
    and binding on the shard its id and serial say; the summed counters equal to the recount."""
    d, shards = engine.devices, engine.device_shards
    names = {"0": "pending", "1": "running", "2": "completed", "3": "failed"}
    everything: Counter = Counter()
    bound: dict[str, str] = {}
    for index, core in enumerate(shards):
        r, k = core.r, core.keys
        tasks = scan_tasks(core)
        everything.update(t["st"] for t in tasks.values())
        assert all(i % shards.n == index for i in tasks)  # the id names its shard
        assert all(shards.index_for_name(t["se"]) == index for t in tasks.values())  # so does the serial
        assert {s.decode(): int(n) for s, n in r.hgetall(k.stats).items() if int(n)} == {
            s: n for s, n in Counter(t["st"] for t in tasks.values()).items()}
        assert zmembers(core, k.index("all")) == set(tasks)
        for st in names:
            assert zmembers(core, k.index("st", st)) == {i for i, t in tasks.items() if t["st"] == st}
        for field, ix in (("se", "se"), ("sc", "sc"), ("src", "src")):
            for value in {t[field] for t in tasks.values()}:
                assert zmembers(core, k.index(ix, value)) == {i for i, t in tasks.items() if t[field] == value}
        running = {i for i, t in tasks.items() if t["st"] == "1"}
        run_map = {s.decode(): int(i) for s, i in r.hgetall(k.running).items()}
        assert set(run_map.values()) == running  # every running task is its device's one running task
        assert all(tasks[i]["se"] == s for s, i in run_map.items())
        assert zmembers(core, k.run_leases) == running
        active = Counter(t["se"] for t in tasks.values() if t["st"] in ("0", "1"))
        assert {s.decode(): int(n) for s, n in r.hgetall(k.active).items()} == dict(active)
        for serial in {t["se"] for t in tasks.values()}:
            queued = zmembers(core, k.queue(serial))
            scheduled = zmembers(core, k.scheduled(serial))
            assert not queued & scheduled
            assert queued | scheduled == {i for i, t in tasks.items() if t["st"] == "0" and t["se"] == serial}
        retries = zmembers(core, k.retries)
        assert all(tasks[i]["st"] == "3" and tasks[i].get("stop") != "1" for i in retries if i in tasks)
        for user, serial in r.hgetall(k.users).items():
            user, serial = user.decode(), serial.decode()
            assert shards.index_for_name(serial) == index and user not in bound  # one binding, on its shard
            assert r.sismember(k.accounts(serial), user)
            bound[user] = serial
    assert d.stats() == {"total": sum(everything.values()), **{n: everything.get(s, 0) for s, n in names.items()}}


@pytest.mark.parametrize("seed", [3, 17])
def test_random_walk_keeps_every_derived_structure_exact(engine, clock, settings, seed):
    rng = random.Random(seed)
    settings.auto_retry, settings.run_ttl_ms, settings.max_retry_count = True, 120_000, 2
    d = engine.devices
    serials = [f"s{i}" for i in range(8)]
    d.heartbeat({"serials": serials, "accounts": {s: [f"{s}-u{j}" for j in range(rng.randint(1, 3))]
                                                  for s in serials}})
    known: list[int] = []
    for _ in range(300):
        op = rng.choice(["create", "create", "claim", "claim", "complete", "fail", "stop", "retry", "retry_all",
                         "delete", "heartbeat", "sweep", "auto_retry", "clock"])
        tid = rng.choice(known) if known else 1
        try:
            if op == "create":
                body = {"serials": rng.sample(serials, rng.randint(1, 3)), "script_name": rng.choice(SCRIPTS),
                        "script_config": {"target_users": "a,b"}}
                if rng.random() < 0.3:
                    body["start_time"] = f"{rng.randint(0, 23):02d}:{rng.choice([0, 30]):02d}"
                known += d.create(body, source=rng.choice(["api", "ui"]))["task_ids"]
            elif op == "claim":
                d.claim({"serials": rng.sample(serials, rng.randint(1, 8))})
            elif op == "complete":
                d.complete(tid)
            elif op == "fail":
                d.fail(tid, "x")
            elif op == "stop":
                d.stop(tid)
            elif op == "retry":
                d.retry(tid)
            elif op == "retry_all":
                d.retry_all()
            elif op == "delete":
                d.delete_many(rng.sample(known, min(len(known), 3)) or [1])
            elif op == "heartbeat":
                d.heartbeat({"serials": rng.sample(serials, 4)})
            elif op == "sweep":
                d.sweep()
            elif op == "auto_retry":
                d.run_retries()
            else:
                clock.advance(rng.choice([1, 30, 90, 3600, 6 * 3600]))
        except EngineError:
            pass
        check_invariants(engine)


def test_16_threads_claiming_for_50_devices_never_double_run(engine):
    d = engine.devices
    serials = [f"dev{i:02d}" for i in range(50)]
    d.s.plan = "business"
    for _ in range(6):
        d.create({"serials": serials, "script_name": "post", "script_config": {}})
    total = 300
    claimed: list[list[int]] = [[] for _ in range(16)]
    errors: list[BaseException] = []
    start = threading.Barrier(16)
    done = threading.Event()

    def agent(i: int) -> None:
        rng = random.Random(i)
        try:
            start.wait()
            while not done.is_set():
                got = d.claim({"serials": rng.sample(serials, 10), "agent": f"a{i}"})["tasks"]
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
        t.join(timeout=120)
    assert not errors
    everything = [tid for part in claimed for tid in part]
    assert len(everything) == total and len(set(everything)) == total  # none handed out twice
    assert sum(1 for part in claimed if part) > 1
    # The event stream is the order Redis ran the scripts in: per serial, starts and
    # ends alternate, so no serial ever had two running tasks.
    serial_of = {t["id"]: t["serial"] for t in d.list(page_size="100")["items"]}
    for page in range(2, 4):
        serial_of.update({t["id"]: t["serial"] for t in d.list(page=str(page), page_size="100")["items"]})
    running: dict[str, int | None] = defaultdict(lambda: None)
    stream = [e for c in engine.device_shards for e in c.r.xrange(c.keys.events)]  # a serial's: one shard's
    for _, e in stream:
        tid, old, new = int(e[b"task"]), e[b"from"], e[b"to"]
        serial = serial_of[tid]
        if new == b"1":
            assert running[serial] is None, f"{serial} ran {running[serial]} and {tid} at once"
            running[serial] = tid
        elif old == b"1":
            assert running[serial] == tid
            running[serial] = None
    check_invariants(engine)
