"""Leases (claim lapse, run lapse, heartbeat extension), the retry manager, folder
affinity and cancellation; every job-facing operation run twice acts once."""
import threading

import pytest

from engine.errors import Conflict, NotFound
from tests.helpers import events, ids, link, online_server, request_doc
from workers import jobs


def transitions(engine, tid):
    return [(e[b"from"].decode(), e[b"to"].decode())
            for _, e in events(engine, tid) if e[b"task"] == tid.encode()]


def test_retry_backoff_then_requeue_with_count(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1, max_retries=2))
    [tid] = ids(engine.stacking.claim(caller.id, 1))
    engine.stacking.start(caller.id, tid)
    engine.stacking.fail(caller.id, tid, "boom")
    assert engine.stacking.run_retries()["requeued"] == 0  # backoff: 30 s x 2^0
    clock.advance(29)
    assert engine.stacking.run_retries()["requeued"] == 0
    clock.advance(2)
    assert engine.stacking.run_retries()["requeued"] == 1
    state = engine.stacking.task_state(tid)
    assert state["status"] == "register" and state["retry_count"] == 1
    engine.servers.heartbeat(caller, {})
    assert ids(engine.stacking.claim(caller.id, 1)) == [tid]
    engine.stacking.start(caller.id, tid)
    engine.stacking.fail(caller.id, tid, "boom")
    clock.advance(59)  # second backoff is 60 s
    assert engine.stacking.run_retries()["requeued"] == 0
    clock.advance(2)
    assert engine.stacking.run_retries()["requeued"] == 1


def test_retry_job_run_twice_acts_once(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=5, max_retries=1))
    tids = ids(engine.stacking.claim(caller.id, 5))
    for tid in tids:
        engine.stacking.start(caller.id, tid)
        engine.stacking.fail(caller.id, tid, "boom")
    clock.advance(60)
    assert jobs.run_retries(engine)["requeued"] == 5
    assert jobs.run_retries(engine)["requeued"] == 0
    for tid in tids:
        assert transitions(engine, tid).count(("profile_failed", "register")) == 1


def test_two_retry_jobs_at_once_act_once(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(folders=10, tasks=30, max_retries=0, about=""))
    tids = []
    while got := ids(engine.stacking.claim(caller.id, 100)):
        tids += got
    for tid in tids:
        engine.stacking.start(caller.id, tid)
        engine.stacking.fail(caller.id, tid, "boom")
    results = []
    for _ in range(60):  # many small passes from two threads at once
        threads = [threading.Thread(target=lambda: results.append(engine.stacking.run_retries(batch=7)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(r["final_failed"] for r in results) == 300
    assert engine.stacking.stats() == {"final_failed": 300}
    for tid in tids[:20]:
        assert transitions(engine, tid).count(("profile_failed", "final_failed")) == 1


def test_claim_lapse_job_run_twice_acts_once(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=3))
    ids(engine.stacking.claim(caller.id, 3))
    clock.advance(301)
    assert jobs.sweep_leases(engine)["claims_lapsed"] == 3
    assert jobs.sweep_leases(engine)["claims_lapsed"] == 0
    engine.servers.heartbeat(caller, {})
    assert len(ids(engine.stacking.claim(caller.id, 10))) == 3


def test_run_lease_expiry_fails_task_then_retry_manager_requeues(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1, max_retries=1))
    [tid] = ids(engine.stacking.claim(caller.id, 1))
    engine.stacking.start(caller.id, tid)
    clock.advance(1801)
    assert jobs.sweep_leases(engine)["runs_failed"] == 1
    assert jobs.sweep_leases(engine)["runs_failed"] == 0
    state = engine.stacking.task_state(tid)
    assert state["status"] == "profile_failed" and state["error_message"] == "lease expired"
    with pytest.raises(Conflict):
        engine.stacking.complete(caller.id, tid, link(1))  # too late: it was failed
    clock.advance(31)
    assert engine.stacking.run_retries()["requeued"] == 1


def test_heartbeats_extend_run_leases(engine, clock):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = ids(engine.stacking.claim(caller.id, 1))
    engine.stacking.start(caller.id, tid)
    for _ in range(5):  # 100 minutes of work, a heartbeat every 20 minutes
        clock.advance(1200)
        engine.servers.heartbeat(caller, {})
        assert engine.stacking.sweep()["runs_failed"] == 0
    assert engine.stacking.task_state(tid)["status"] == "registering"
    clock.advance(1801)  # the server goes silent
    assert engine.stacking.sweep()["runs_failed"] == 1


def test_claim_script_sweeps_lapsed_leases_itself(engine, clock):
    a, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(tasks=2))
    [t1, t2] = ids(engine.stacking.claim(a.id, 2))
    engine.stacking.start(a.id, t1)
    clock.advance(1801)  # no heartbeat meanwhile (the engine call skips the API's online check)
    assert ids(engine.stacking.claim(a.id, 5)) == [t2]  # lapsed claim returned, no job needed
    assert engine.stacking.task_state(t1)["status"] == "profile_failed"


def test_released_folder_goes_to_the_next_claimer(engine):
    a, _ = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(tasks=3))
    ids(engine.stacking.claim(a.id, 1))
    assert engine.stacking.claim(b.id, 5) == []
    assert engine.stacking.release_folder("F0") is True
    assert engine.stacking.release_folder("F0") is False
    assert len(ids(engine.stacking.claim(b.id, 5))) == 2
    with pytest.raises(NotFound):
        engine.stacking.release_folder("nope")


def test_gone_server_loses_its_folders(engine, clock):
    a, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(folders=3, tasks=2))
    ids(engine.stacking.claim(a.id, 3))  # binds F0 and F1
    clock.advance(1800)
    b, _ = online_server(engine, "b")
    assert jobs.reassign_folders(engine)["folders_released"] == 0  # a is only 30 min silent
    clock.advance(1801)
    engine.servers.heartbeat(b, {})
    assert jobs.reassign_folders(engine)["folders_released"] == 2
    assert jobs.reassign_folders(engine)["folders_released"] == 0
    assert len(ids(engine.stacking.claim(b.id, 10))) == 6  # a's lapsed claims too


def test_deleted_server_loses_its_folders(engine):
    a, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(tasks=2))
    ids(engine.stacking.claim(a.id, 1))
    engine.servers.delete(a.id)
    assert jobs.reassign_folders(engine)["folders_released"] == 1


def test_cancel_counts_as_leaving_phase1(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=3))
    tids = ids(engine.stacking.claim(caller.id, 3))
    for tid in tids[:2]:
        engine.stacking.start(caller.id, tid)
        engine.stacking.complete(caller.id, tid, link(tid))
    engine.stacking.cancel_task(tids[2])
    with pytest.raises(Conflict):
        engine.stacking.cancel_task(tids[2])
    assert len(engine.stacking.claim(caller.id, 5, "connect")) == 2


def test_cancel_request_cancels_every_open_task_once(engine):
    caller, _ = online_server(engine)
    req = engine.stacking.create_request(request_doc(folders=2, tasks=3))
    tids = ids(engine.stacking.claim(caller.id, 2))
    engine.stacking.start(caller.id, tids[0])
    assert engine.stacking.cancel_request(req["request_id"]) == 6
    assert engine.stacking.cancel_request(req["request_id"]) == 0
    progress = engine.stacking.request(req["request_id"])
    assert progress["status"] == "completed" and progress["by_status"] == {"cancel": 6}
    assert engine.stacking.claim(caller.id, 10) == []
    with pytest.raises(Conflict):
        engine.stacking.complete(caller.id, tids[0], link(1))
