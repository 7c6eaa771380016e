"""taskhub on a real 3-master Redis Cluster: connection, shard placement, and stacking across shards
under real concurrency (16 threads, each with its own cluster client)."""
from __future__ import annotations

import threading
from collections import Counter

import orjson
import pytest
import redis

from engine import Engine, Settings
from engine.connection import ConfigError, cluster_nodes, connect, connect_rq
from engine.keys import SLOTS, shard_tag
from tests.helpers import events, link, online_server, request_doc


def test_cluster_urls_are_parsed_and_bad_ones_refused():
    assert cluster_nodes("redis+cluster://a:7000,b:7001/") == ([("a", 7000), ("b", 7001)], {})
    nodes, options = cluster_nodes("rediss+cluster://u:p%40ss@[::1]:7000")
    assert nodes == [("::1", 7000)] and options == {"ssl": True, "username": "u", "password": "p@ss"}
    for bad in ("redis+cluster://", "redis+cluster://host", "redis+cluster://host:port"):
        with pytest.raises(ConfigError):
            cluster_nodes(bad)


def test_rq_refuses_a_cluster(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis+cluster://127.0.0.1:7000")
    monkeypatch.delenv("TASKHUB_RQ_URL", raising=False)
    with pytest.raises(ConfigError, match="TASKHUB_RQ_URL"):
        connect_rq()
    monkeypatch.setenv("TASKHUB_RQ_URL", "redis+cluster://127.0.0.1:7000")
    with pytest.raises(ConfigError, match="plain Redis"):
        connect_rq()


def test_an_engine_on_a_cluster_client_never_starts_an_embedded_redis_for_rq(redis_cluster, monkeypatch, tmp_path):
    """Built in code on a cluster client, with REDIS_URL unset: RQ's client is refused with the
    knob to set, where it used to fall back to connect() and start an embedded server in ./var."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("TASKHUB_RQ_URL", raising=False)
    monkeypatch.setenv("TASKHUB_VAR", str(tmp_path / "var"))
    eng = Engine(connect(redis_cluster.url), Settings(namespace="rq-refused"))
    with pytest.raises(ConfigError, match="TASKHUB_RQ_URL"):
        eng.rq_client()
    assert not (tmp_path / "var").exists()
    first_node = redis_cluster.url.removeprefix("redis+cluster://").split(",")[0]
    monkeypatch.setenv("TASKHUB_RQ_URL", f"redis://{first_node}")  # a node is a plain server too
    assert eng.rq_client().ping()


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_shard_tags_fall_in_equal_runs_of_the_slot_space(n):
    from redis.crc import key_slot

    for i in range(n):
        slot = key_slot(("{" + shard_tag("stacking", i, n) + "}").encode())
        assert i * SLOTS // n <= slot < (i + 1) * SLOTS // n


def test_three_shards_sit_on_three_masters(redis_cluster):
    rc = connect(redis_cluster.url)
    eng = Engine(rc, Settings(namespace="placement", shards_stacking=3))
    nodes = {rc.get_node_from_key(c.keys.prefix).name for c in eng.stacking_shards}
    assert len(nodes) == 3


def _cluster_engine(url: str, settings: Settings) -> Engine:
    return Engine(connect(url), settings)


def test_16_concurrent_pullers_get_every_task_exactly_once_across_shards(redis_cluster, settings):
    settings.shards_stacking = 3
    eng = _cluster_engine(redis_cluster.url, settings)
    created = [eng.stacking.create_request({**request_doc(folders=6, tasks=25, prefix=f"R{r}-"), "id": f"req-{r}"})
               for r in range(6)]
    shards_used = {eng.stacking.shards.for_name(c["request_id"]).keys.shard for c in created}
    assert len(shards_used) >= 2, "the requests should spread over shards"
    total = sum(c["tasks"] for c in created)
    servers = [online_server(eng, f"w{i}")[0] for i in range(16)]
    got: list[list[str]] = [[] for _ in servers]
    errors: list[BaseException] = []
    gate = threading.Barrier(len(servers))

    def puller(i: int) -> None:
        mine = _cluster_engine(redis_cluster.url, settings)  # its own client and connections
        try:
            gate.wait()
            while True:
                batch = [orjson.loads(t)["id"] for t in mine.stacking.claim(servers[i].id, 7, "register")]
                if not batch:
                    return
                got[i] += batch
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=puller, args=(i,)) for i in range(len(servers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    claimed = [tid for batch in got for tid in batch]
    assert len(claimed) == total and len(set(claimed)) == total  # all of them, none twice
    # every claimed task is reserved for the server that got it, on its own shard
    for i, batch in enumerate(got):
        for tid in batch[:20]:
            assert eng.stacking.task_state(tid)["owner"] == servers[i].id
    assert sum(1 for batch in got if batch) > 1
    assert eng.stacking.stats() == {"register": total}


def test_barrier_and_stats_equal_a_recount_on_the_cluster(redis_cluster, settings):
    settings.shards_stacking = 3
    eng = _cluster_engine(redis_cluster.url, settings)
    for r in range(4):
        eng.stacking.create_request({**request_doc(folders=2, tasks=5, prefix=f"B{r}-"), "id": f"bar-{r}"})
    caller, _ = online_server(eng)
    phase1 = [orjson.loads(t)["id"] for t in eng.stacking.claim(caller.id, 1000, "register")]
    assert len(phase1) == 40
    # fail one task per folder first: its folder's barrier must wait for it
    held = {}
    for tid in phase1:
        folder = eng.stacking.task_state(tid)["folder_id"]
        eng.stacking.start(caller.id, tid)
        if folder not in held:
            held[folder] = tid
            continue
        eng.stacking.complete(caller.id, tid, link(tid))
    assert eng.stacking.claim(caller.id, 1000, "connect") == []  # every barrier still closed
    for tid in held.values():
        eng.stacking.complete(caller.id, tid, link(tid))
    phase2 = [orjson.loads(t)["id"] for t in eng.stacking.claim(caller.id, 1000, "connect")]
    assert sorted(phase2) == sorted(phase1)
    for tid in phase2[:15]:
        eng.stacking.start(caller.id, tid)
        eng.stacking.complete(caller.id, tid, link(tid))
    # stats (counters of every shard, merged) equal a recount of the task hashes
    recount: Counter = Counter()
    for core in eng.stacking.shards:
        for key in core.r.scan_iter(match=core.keys.task("*"), count=1000):
            recount[core.r.hget(key, "st").decode()] += 1
    assert eng.stacking.stats() == dict(recount) == {"connect": 25, "completed": 15}
    # and the events of every shard tell the same story: one entry per status change
    moves = Counter(e[b"to"].decode() for _, e in events(eng))
    assert moves["completed"] == 15 and moves["profiled"] == 40 and moves["connect"] == 40


def test_a_task_id_from_another_shard_or_none_is_not_found(redis_cluster, settings):
    from engine.errors import NotFound

    settings.shards_stacking = 3
    eng = _cluster_engine(redis_cluster.url, settings)
    caller, _ = online_server(eng)
    eng.stacking.create_request(request_doc(tasks=1))
    [tid] = [orjson.loads(t)["id"] for t in eng.stacking.claim(caller.id, 1)]
    for bogus in (tid[:-2] + "ff", tid[:-2] + "zz", "x", ""):
        with pytest.raises(NotFound):
            eng.stacking.get_task(bogus)
    wrong_shard = tid[:-2] + f"{(int(tid[-2:], 16) + 1) % 3:02x}"
    with pytest.raises(NotFound):
        eng.stacking.start(caller.id, wrong_shard)
    assert eng.stacking.start(caller.id, tid) == caller.id


def test_a_node_that_is_down_fails_the_call_and_nothing_is_resent(redis_cluster, settings, monkeypatch):
    """No command is resent after a connection error on a cluster either (engine/connection.py)."""
    settings.shards_stacking = 3
    eng = _cluster_engine(redis_cluster.url, settings)
    caller, _ = online_server(eng)
    eng.stacking.create_request(request_doc(tasks=2))
    sent = []
    real = redis.client.Pipeline.execute

    def failing(self, raise_on_error=True):
        sent.append(len(self.command_stack))
        raise redis.ConnectionError("node went away")

    monkeypatch.setattr(redis.client.Pipeline, "execute", failing)
    with pytest.raises(redis.ConnectionError):
        eng.core.call(eng.stacking.start_call(caller.id, "00000000-0000-0000-0000-000000000000"))
    assert sent == [1]
    monkeypatch.setattr(redis.client.Pipeline, "execute", real)


def test_shard_settings_default_per_contract_and_bad_values_refused(monkeypatch):
    for name in ("TASKHUB_SHARDS", "TASKHUB_SHARDS_STACKING", "TASKHUB_SHARDS_DEVICES", "TASKHUB_SHARDS_TASKS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.shards_stacking, s.shards_devices, s.shards_tasks) == (1, 1, 1)
    monkeypatch.setenv("TASKHUB_SHARDS", "3")
    monkeypatch.setenv("TASKHUB_SHARDS_DEVICES", "2")
    s = Settings.from_env()
    assert (s.shards_stacking, s.shards_devices, s.shards_tasks) == (3, 2, 3)  # the per-contract knob wins
    for bad in ("0", "257", "x", "-1", "1.5"):
        monkeypatch.setenv("TASKHUB_SHARDS_TASKS", bad)
        with pytest.raises(ValueError, match="TASKHUB_SHARDS_TASKS"):
            Settings.from_env()
