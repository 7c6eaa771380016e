"""engine/calls.py ``Plan``: alike item scripts of a batch go out as one script call, and every
call still gets exactly the outcome it would have had alone (the seeded invariant walk in
test_invariants.py checks the same on random batches, counters and events included)."""
from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from engine.calls import MAX_ITEMS, Call, Command, Plan, Script
from engine.errors import Conflict, InvalidKey, NotFound, NotTaskOwner
from tests.helpers import events, ids, online_server, request_doc


def item(verb: str, n: int, keys=("{s}:lease:run",), now: int = 1) -> Script:
    return Script(verb, keys, ("{s}:", now, 1000, "shared", f"caller{n}", f"task{n}"), each=2)


def test_alike_item_scripts_share_one_command_and_map_back():
    calls = [Call([item("start", 1)], list), Call([item("start", 2, now=2)], list),
             Call([Command(("HGET", "{s}:x", "f")), item("complete", 3)], list),
             Call([item("start", 4, keys=("{s}:other",))], list), Call([item("start", 5)], list)]
    plan = Plan(calls)
    verbs = [c.verb if isinstance(c, Script) else c.args[0] for c in plan.commands]
    assert verbs == ["start", "HGET", "complete", "start"]
    merged = plan.commands[0]
    assert merged.args == ("{s}:", 1, 1000, "shared", "caller1", "task1", "caller2", "task2", "caller5", "task5")
    assert plan.where == [[(0, 0)], [(0, 1)], [(1, -1), (2, 0)], [(3, 0)], [(0, 2)]]
    flat = [["r1", "r2", "r5"], b"v", ["r3"], ["r4"]]
    assert plan.replies(flat) == [["r1"], ["r2"], [b"v", "r3"], ["r4"], ["r5"]]
    boom = RuntimeError("NOSCRIPT")
    assert plan.replies([boom, b"v", ["r3"], ["r4"]])[4] == [boom]  # a merged call's error is each item's


def test_a_merged_call_holds_at_most_max_items():
    plan = Plan([Call([item("start", i)], list) for i in range(MAX_ITEMS * 2 + 1)])
    assert [(len(c.args) - 4) // 2 for c in plan.commands] == [MAX_ITEMS, MAX_ITEMS, 1]
    assert plan.where[MAX_ITEMS * 2] == [(2, 0)]


def test_call_many_of_starts_is_one_script_call_with_each_calls_own_outcome(engine, monkeypatch):
    a, key_a = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(folders=2, tasks=3))
    mine, theirs = ids(engine.stacking.claim(a.id, 3)), ids(engine.stacking.claim(b.id, 3))
    st = engine.stacking
    sent = Counter()
    real_sha = type(engine.core.scripts).sha
    monkeypatch.setattr(type(engine.core.scripts), "sha",
                        lambda self, verb, n: sent.update([verb]) or real_sha(self, verb, n))
    from engine.servers import ApiKey
    calls = [st.start_call(a.id, mine[0]), st.start_call(ApiKey(key_a), mine[1]), st.start_call(a.id, theirs[0]),
             st.start_call(b.id, theirs[0]), st.start_call(a.id, mine[0]), st.start_call(a.id, "nope"),
             st.start_call(ApiKey("thk_unknown"), mine[2])]
    results = engine.core.call_many(calls)
    assert [ok for ok, _ in results] == [True, True, False, True, False, False, False]
    assert [r for ok, r in results if ok] == [a.id, a.id, b.id]
    assert [type(r) for ok, r in results if not ok] == [NotTaskOwner, Conflict, NotFound, InvalidKey]
    # One script call per shard holding these tasks (one on one Redis).
    assert sent["start"] == len({st.shard_of_task(t).keys.prefix for t in mine + theirs + ["nope"]})
    assert st.task_state(mine[2])["status"] == "register"
    assert st.stats()["registering"] == 3 and st.stats()["register"] == 3
    moves = [(e[b"from"], e[b"to"]) for t in mine + theirs for _, e in events(engine, t) if e[b"task"] == t.encode()]
    assert moves.count((b"register", b"registering")) == 3


def test_concurrent_batches_start_each_task_exactly_once(engine):
    servers = [online_server(engine, f"w{i}")[0] for i in range(2)]
    engine.stacking.create_request(request_doc(folders=10, tasks=20))
    held = {s.id: ids(engine.stacking.claim(s.id, 100)) for s in servers}
    results: list[list] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        calls = [engine.stacking.start_call(sid, tid) for sid, tids in held.items() for tid in tids]
        rng.shuffle(calls)
        results.append(engine.core.call_many(calls))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = Counter()
    for res in results:
        for ok, value in res:
            assert ok or isinstance(value, Conflict)
    all_tids = [t for tids in held.values() for t in tids]
    for tid in all_tids:
        moves = [e for _, e in events(engine, tid) if e[b"task"] == tid.encode() and e[b"to"] == b"registering"]
        started[len(moves)] += 1
    assert started == Counter({1: 200})
    assert sum(ok for res in results for ok, _ in res) == 200
    stats = engine.stacking.stats()
    assert stats["registering"] == 200 and stats.get("register", 0) == 0


@pytest.mark.parametrize("verb", ["complete", "fail"])
def test_merged_completes_and_fails_end_as_single_calls_do(engine, verb):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(folders=2, tasks=4, mode="disable"))
    tids = ids(engine.stacking.claim(caller.id, 8))
    engine.core.call_many([engine.stacking.start_call(caller.id, t) for t in tids])
    st = engine.stacking
    make = (lambda t: st.complete_call(caller.id, t, f"https://drive.google.com/{t}")) if verb == "complete" \
        else (lambda t: st.fail_call(caller.id, t, "boom"))
    results = engine.core.call_many([make(t) for t in tids] + [make(tids[0])])
    assert [ok for ok, _ in results] == [True] * 8 + [False] and isinstance(results[-1][1], Conflict)
    final = {st.task_state(t)["status"] for t in tids}
    # disable mode: the last complete of each folder fires its barrier, which ends the folder's tasks.
    assert final == ({"completed"} if verb == "complete" else {"profile_failed"})
    stats = {k: v for k, v in st.stats().items() if v}
    assert stats == ({"completed": 8} if verb == "complete" else {"profile_failed": 8})


def test_a_batch_with_an_argument_redis_cannot_take_sends_nothing(engine):
    """Packing happens before a byte is sent (hiredis on a plain client, redis-py's encoder on
    fakeredis): the batch is refused whole with redis-py's DataError, nothing ran, and the
    connection still answers in order afterwards."""
    from redis.exceptions import DataError

    a, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = ids(engine.stacking.claim(a.id, 1))
    shard = engine.stacking.shard_of_task(tid)  # on a cluster: the same node, so the same pipeline
    bad = Call([Command(("HSET", shard.keys.task(tid), "st", None))], list)
    with pytest.raises(DataError):
        shard.call_many([engine.stacking.start_call(a.id, tid), bad])
    assert engine.stacking.task_state(tid)["status"] == "register"
    [(ok, sid)] = shard.call_many([engine.stacking.start_call(a.id, tid)])
    assert ok and sid == a.id and engine.stacking.task_state(tid)["status"] == "registering"


def test_error_replies_of_plain_commands_are_each_calls_own(engine):
    """An error reply (here WRONGTYPE) fails its own call only; the other calls of the batch
    see their replies, in order."""
    k = engine.core.keys.task("x")
    engine.core.r.set(k, "a string")
    results = engine.core.call_many([Call([Command(("HGET", k, "st"))], list), Call([Command(("GET", k))], list)])
    assert not results[0][0] and "WRONGTYPE" in str(results[0][1])
    assert results[1] == (True, [b"a string"])


def _count_sent(engine, monkeypatch) -> Counter:
    sent: Counter = Counter()
    real_sha = type(engine.core.scripts).sha
    monkeypatch.setattr(type(engine.core.scripts), "sha",
                        lambda self, verb, n: sent.update([verb]) or real_sha(self, verb, n))
    return sent


def test_start_many_gives_each_task_what_start_alone_gives(engine, monkeypatch):
    import engine.core as core_module
    from engine.servers import ApiKey

    a, key_a = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(folders=2, tasks=3))
    st = engine.stacking
    mine, theirs = ids(st.claim(a.id, 3)), ids(st.claim(b.id, 3))
    monkeypatch.setattr(core_module, "MAX_ITEMS", 2)  # 6 items: 3 script calls per shard
    sent = _count_sent(engine, monkeypatch)
    results = st.start_many(ApiKey(key_a), [mine[0], mine[1], theirs[0], mine[0], "nope", mine[2]])
    assert [ok for ok, _ in results] == [True, True, False, False, False, True]
    assert {r for ok, r in results if ok} == {a.id}
    assert [type(r) for ok, r in results if not ok] == [NotTaskOwner, Conflict, NotFound]
    per_shard = Counter(st.shard_of_task(t).keys.prefix for t in [mine[0], mine[1], theirs[0], mine[0], "nope",
                                                                   mine[2]])
    assert sent["start"] == sum((n + 1) // 2 for n in per_shard.values())  # script calls of at most 2 items
    assert [st.task_state(t)["status"] for t in mine] == ["registering"] * 3
    assert st.task_state(theirs[0])["status"] == "register"
    assert all(not ok and isinstance(r, InvalidKey) for ok, r in st.start_many(ApiKey(""), mine[:2]))
    assert all(not ok and isinstance(r, InvalidKey) for ok, r in st.start_many(ApiKey("thk_unknown"), theirs))
    assert st.start_many(a.id, []) == []


def test_complete_many_and_fail_many_end_as_single_calls_do(engine):
    from engine.errors import InvalidInput
    from engine.servers import ApiKey

    caller, key = online_server(engine)
    st = engine.stacking
    st.create_request(request_doc(folders=2, tasks=4, mode="disable"))
    tids = ids(st.claim(caller.id, 8))
    assert all(ok for ok, _ in st.start_many(caller.id, tids))
    done, failed = tids[:6], tids[6:]
    results = st.complete_many(ApiKey(key), [(t, f"https://drive.google.com/{t}", "ok") for t in done[:5]]
                               + [(done[5], "not a url"), (done[5], None), (done[0], "https://drive.google.com/x")])
    assert [ok for ok, _ in results] == [True] * 5 + [False] * 3
    assert [type(r) for _, r in results[5:]] == [InvalidInput, InvalidInput, Conflict]
    assert st.task_state(done[5])["status"] == "registering"  # refused items changed nothing
    # an unknown key: its authentication failure wins over the invalid input, as complete() orders them
    [(ok, err)] = st.complete_many(ApiKey("thk_unknown"), [(done[5], "not a url")])
    assert not ok and isinstance(err, InvalidKey)
    results = st.fail_many(caller.id, [(failed[0], "boom", "note"), (failed[1], ""), (done[5], "boom")])
    assert [ok for ok, _ in results] == [True, False, True] and isinstance(results[1][1], InvalidInput)
    assert st.task_state(failed[0])["status"] == "profile_failed"
    assert st.task_state(failed[0])["error_message"] == "boom"
    assert st.task_state(failed[1])["status"] == "registering"
    # disable mode: the first folder's four completes fired its barrier; the second's waits on failed[1]
    assert {k: v for k, v in st.stats().items() if v} == {"completed": 4, "profiled": 1, "profile_failed": 2,
                                                         "registering": 1}
