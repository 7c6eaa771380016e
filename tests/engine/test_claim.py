import threading

import orjson
import pytest

from engine.errors import InvalidInput
from tests.helpers import ids, online_server, request_doc

SEED_FIELDS = ["id", "request_id", "status", "domain", "website", "title", "about", "phone",
               "address", "location", "image_url", "folder_id", "link_post"]


def test_claim_returns_seed_fields_in_seed_order(engine):
    caller, _ = online_server(engine)
    req = engine.stacking.create_request(request_doc(tasks=2))
    tasks = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 5)]
    assert len(tasks) == 2
    for t in tasks:
        assert list(t) == SEED_FIELDS
        assert t["status"] == "register" and t["link_post"] == "" and t["request_id"] == req["request_id"]
        assert t["about"] == "<p>Hello <b>world</b></p>"
        assert t["folder_id"] == "F0"


def test_claimed_tasks_are_not_handed_out_again(engine):
    a, _ = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(folders=2, tasks=3))
    first = ids(engine.stacking.claim(a.id, 4))
    second = ids(engine.stacking.claim(b.id, 10))
    assert len(first) == 4 and not set(first) & set(second)


def test_limit_and_status_are_validated(engine):
    caller, _ = online_server(engine)
    for bad in (0, 1001, -1, True, "5"):
        with pytest.raises(InvalidInput):
            engine.stacking.claim(caller.id, bad)
    with pytest.raises(InvalidInput):
        engine.stacking.claim(caller.id, 5, "registering")


def test_status_connect_returns_no_phase1_tasks(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc())
    assert engine.stacking.claim(caller.id, 5, "connect") == []
    assert len(engine.stacking.claim(caller.id, 5, "register")) == 3


def test_folder_is_bound_to_first_claimer(engine):
    a, _ = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(folders=1, tasks=4))
    assert len(engine.stacking.claim(a.id, 1)) == 1
    assert engine.stacking.claim(b.id, 10) == []  # the rest of F0 belongs to a
    assert len(engine.stacking.claim(a.id, 10)) == 3


def test_oldest_request_first(engine):
    """Within a shard (with several, pulls rotate over shards: README, "running on a cluster")."""
    caller, _ = online_server(engine)
    shard = engine.stacking.shards.for_name
    new_id = next(f"NEW{i}" for i in range(1000) if shard(f"NEW{i}") is shard("OLD"))
    old = engine.stacking.create_request(request_doc(prefix="OLD") | {"id": "OLD"})
    engine.stacking.create_request(request_doc(prefix="NEW") | {"id": new_id})
    got = [orjson.loads(t)["request_id"] for t in engine.stacking.claim(caller.id, 3)]
    assert got == [old["request_id"]] * 3


def test_claim_lapse_makes_task_claimable_again_without_retry(engine, clock):
    a, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = ids(engine.stacking.claim(a.id, 1))
    assert engine.stacking.claim(a.id, 1) == []
    clock.advance(engine.core.settings.claim_ttl_ms / 1000 + 1)
    engine.servers.heartbeat(a, {})
    assert ids(engine.stacking.claim(a.id, 1)) == [tid]
    assert engine.stacking.task_state(tid)["retry_count"] == 0


def test_eight_threads_claim_ten_thousand_tasks_exactly_once(engine):
    """Real concurrency: 8 threads, each with its own server, pull until empty."""
    for r in range(10):  # ten requests of 1,000 (fakeredis parses one huge command slowly)
        engine.stacking.create_request(request_doc(folders=10, tasks=100, about="x", prefix=f"R{r}F"))
    callers = [online_server(engine, f"s{i}")[0] for i in range(8)]
    claimed: list[list[str]] = [[] for _ in callers]
    barrier = threading.Barrier(len(callers))
    errors: list[BaseException] = []

    def pull(i: int) -> None:
        try:
            barrier.wait()
            while True:
                got = ids(engine.stacking.claim(callers[i].id, 37))
                if not got:
                    return
                claimed[i].extend(got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(callers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    everything = [tid for part in claimed for tid in part]
    assert len(everything) == 10_000
    assert len(set(everything)) == 10_000
    assert sum(1 for part in claimed if part) > 1  # the work was actually shared


def _folder_core(engine, fid):
    """The shard that holds folder ``fid`` (several on the cluster backend)."""
    return next(c for c in engine.stacking.shards if c.r.exists(c.keys.folder(fid)))


def test_a_folder_hands_out_returned_tasks_first_then_the_rest_in_creation_order(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=5))
    core = _folder_core(engine, "F0")
    created = [t.decode() for t in core.r.lrange(core.keys.prefix + "ft:F0", 0, -1)]
    first = ids(engine.stacking.claim(caller.id, 2))
    assert first == created[:2]
    clock.advance(301)  # the two claims lapse; the sweep puts them back at the head
    assert engine.stacking.sweep()["claims_lapsed"] == 2
    engine.servers.heartbeat(caller, {})
    again = ids(engine.stacking.claim(caller.id, 5))
    assert sorted(again[:2]) == sorted(first) and again[2:] == created[2:]


def test_ready_sets_stored_by_an_earlier_version_are_read_as_lists(engine):
    """Before ready lists, fr:<phase>:<folder> was a zset scored by seq: such a key becomes
    the list of its members in seq order the first time a script touches it."""
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(folders=2, tasks=3))
    legacy, where = {}, {}
    for fid in ("F0", "F1"):
        core = where[fid] = _folder_core(engine, fid)
        r, k = core.r, core.keys
        key = k.folder_ready(1, fid)
        members = [t.decode() for t in r.lrange(key, 0, -1)]
        r.delete(key)
        r.zadd(key, {tid: int(r.hget(k.task(tid), "seq")) for tid in reversed(members)})
        legacy[fid] = members
    # unready (an operator's cancel) on a legacy set: LREM after the conversion
    engine.stacking.cancel_task(legacy["F1"][1])
    r, k = where["F1"].r, where["F1"].keys
    assert r.type(k.folder_ready(1, "F1")) == b"list"
    assert [t.decode() for t in r.lrange(k.folder_ready(1, "F1"), 0, -1)] == [legacy["F1"][0], legacy["F1"][2]]
    # the claim's pop on a legacy set: seq order
    assert where["F0"].r.type(where["F0"].keys.folder_ready(1, "F0")) == b"zset"
    got = ids(engine.stacking.claim(caller.id, 10))
    assert got == legacy["F0"] + [legacy["F1"][0], legacy["F1"][2]]
    assert not any(where[f].r.exists(where[f].keys.folder_ready(1, f)) for f in ("F0", "F1"))
