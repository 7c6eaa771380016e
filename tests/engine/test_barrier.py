"""The per-folder barrier, connect_links by stacking_mode, and request status."""
import random
import threading

import orjson
import pytest

from tests.helpers import events, ids, link, online_server, request_doc


def finish_phase1(engine, caller, tids, fail=()):
    for tid in tids:
        engine.stacking.start(caller.id, tid)
    for tid in tids:
        if tid in fail:
            engine.stacking.fail(caller.id, tid, "boom")
        else:
            engine.stacking.complete(caller.id, tid, link(tid))


def connect_tasks(engine, caller, limit=1000):
    return [orjson.loads(t) for t in engine.stacking.claim(caller.id, limit, "connect")]


def test_folder_of_11_with_two_double_failures_matches_the_seed(engine, clock):
    """The seed's connect-status example: 9 in connect, 2 final_failed, max_retries=1."""
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(folders=1, tasks=11, max_retries=1,
                                               prefix="1AiNsOTpmIlINZa_2QaXmpQxOGLNEAz2a"))
    fid = "1AiNsOTpmIlINZa_2QaXmpQxOGLNEAz2a0"
    tids = ids(engine.stacking.claim(caller.id, 11))
    bad = set(tids[3:5])
    finish_phase1(engine, caller, tids, fail=bad)
    assert engine.stacking.connect_status(caller.id, fid)["ready"] is False
    clock.advance(3600)
    engine.servers.heartbeat(caller, {})
    assert engine.stacking.run_retries()["requeued"] == 2
    again = ids(engine.stacking.claim(caller.id, 11))
    assert set(again) == bad
    finish_phase1(engine, caller, again, fail=bad)
    status = engine.stacking.connect_status(caller.id, fid)
    assert status["ready"] is False and status["phase1_active"] == 2
    clock.advance(3600)
    assert engine.stacking.run_retries()["final_failed"] == 2
    assert engine.stacking.connect_status(caller.id, fid) == {
        "success": True, "folder_id": fid, "ready": True, "total_tasks": 11, "phase1_active": 0,
        "profiled": 0, "connect_count": 9, "by_status": {"connect": 9, "final_failed": 2}}


def test_barrier_waits_for_every_task_of_the_folder(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=3))
    tids = ids(engine.stacking.claim(caller.id, 3))
    finish_phase1(engine, caller, tids[:2])
    assert connect_tasks(engine, caller) == []
    finish_phase1(engine, caller, tids[2:])
    assert [t["id"] for t in connect_tasks(engine, caller)] == tids


def test_folders_progress_independently(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(folders=2, tasks=2))
    tids = ids(engine.stacking.claim(caller.id, 4))
    finish_phase1(engine, caller, tids[:2])
    assert {t["folder_id"] for t in connect_tasks(engine, caller)} == {"F0"}


@pytest.mark.parametrize("mode,expected", [
    ("chain", [[1], [2], [3], []]),
    ("ring", [[1], [2], [3], [0]]),
    ("all", [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]),
    ("wheel", [[], [0], [0], [0]]),
])
def test_connect_links_by_mode(engine, mode, expected):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=4, mode=mode))
    tids = ids(engine.stacking.claim(caller.id, 4))
    finish_phase1(engine, caller, tids)
    got = {t["id"]: t for t in connect_tasks(engine, caller)}
    for i, tid in enumerate(tids):
        assert got[tid]["connect_links"] == [link(tids[j]) for j in expected[i]]
        assert got[tid]["about"] == "Hello world"  # plain text in phase 2


def test_mode_all_caps_links_at_150(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=160, mode="all", about=""))
    tids = ids(engine.stacking.claim(caller.id, 160))
    finish_phase1(engine, caller, tids)
    assert {len(t["connect_links"]) for t in connect_tasks(engine, caller)} == {150}


def test_mode_disable_completes_profiled_tasks_without_phase2(engine):
    caller, _ = online_server(engine)
    req = engine.stacking.create_request(request_doc(tasks=2, mode="disable"))
    tids = ids(engine.stacking.claim(caller.id, 2))
    finish_phase1(engine, caller, tids)
    assert connect_tasks(engine, caller) == []
    assert {engine.stacking.task_state(t)["status"] for t in tids} == {"completed"}
    assert engine.stacking.request(req["request_id"])["status"] == "completed"


def test_links_skip_final_failed_and_cancelled_tasks(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=4, max_retries=0))
    tids = ids(engine.stacking.claim(caller.id, 4))
    engine.stacking.cancel_task(tids[1])
    finish_phase1(engine, caller, [tids[0], tids[2], tids[3]], fail={tids[2]})
    engine.stacking.run_retries()
    got = {t["id"]: t["connect_links"] for t in connect_tasks(engine, caller)}
    assert got == {tids[0]: [link(tids[3])], tids[3]: []}


def test_request_status_register_connecting_completed(engine):
    caller, _ = online_server(engine)
    req = engine.stacking.create_request(request_doc(folders=2, tasks=1))
    rid = req["request_id"]
    tids = ids(engine.stacking.claim(caller.id, 2))
    finish_phase1(engine, caller, tids[:1])
    assert engine.stacking.request(rid)["status"] == "register"
    finish_phase1(engine, caller, tids[1:])
    assert engine.stacking.request(rid)["status"] == "connecting"
    for t in connect_tasks(engine, caller):
        engine.stacking.start(caller.id, t["id"])
        engine.stacking.complete(caller.id, t["id"])
    progress = engine.stacking.request(rid)
    assert progress["status"] == "completed" and progress["by_status"] == {"completed": 2}
    assert progress["progress"] == 100.0


def test_phase2_fail_goes_to_connect_failed_and_back(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1, max_retries=1))
    tids = ids(engine.stacking.claim(caller.id, 1))
    finish_phase1(engine, caller, tids)
    [t] = connect_tasks(engine, caller)
    engine.stacking.start(caller.id, t["id"])
    engine.stacking.fail(caller.id, t["id"], "insert failed")
    assert engine.stacking.task_state(t["id"])["status"] == "connect_failed"
    clock.advance(3600)
    engine.servers.heartbeat(caller, {})
    engine.stacking.run_retries()
    [again] = connect_tasks(engine, caller)
    assert again["id"] == t["id"] and again["status"] == "connect"
    assert again["link_post"] == link(t["id"])


def test_barrier_never_fires_early_when_last_completes_race(engine):
    """8 threads complete tasks of 25 folders at once; in the event stream (one total
    order), no task of a folder reaches `connect` before its folder's last `profiled`."""
    callers = [online_server(engine, f"s{i}")[0] for i in range(8)]
    engine.stacking.create_request(request_doc(folders=25, tasks=8, about=""))
    work = []
    for c in callers:
        while got := ids(engine.stacking.claim(c.id, 40, "register")):
            for tid in got:
                engine.stacking.start(c.id, tid)
                work.append((c, tid))
    assert len(work) == 200
    random.Random(7).shuffle(work)
    gate = threading.Barrier(8)
    errors = []

    def complete(part):
        try:
            gate.wait()
            for c, tid in part:
                engine.stacking.complete(c.id, tid, link(tid))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=complete, args=(work[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    folder_of = {tid: engine.stacking.task_state(tid)["folder_id"] for _, tid in work}
    last_profiled, first_connect = {}, {}
    for pos, (_, e) in enumerate(events(engine)):  # a folder's events are all on its shard, in order
        tid, to = e[b"task"].decode(), e[b"to"]
        if to == b"profiled":
            last_profiled[folder_of[tid]] = pos
        elif to == b"connect":
            first_connect.setdefault(folder_of[tid], pos)
    assert len(first_connect) == 25
    assert all(first_connect[f] > last_profiled[f] for f in first_connect)
    assert sum(engine.stacking.stats().values()) == 200
    assert engine.stacking.stats() == {"connect": 200}
