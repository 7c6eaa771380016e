"""The simulated agent (workers/agent.py) and its client (workers/client.py) against the real app, in process."""
from __future__ import annotations

import random

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from workers.agent import Simulator
from workers.client import DeviceAgentClient


def simulator(engine, **kw) -> Simulator:
    """The simulator with its real client (workers/client.py), whose HTTP goes to the app in process."""
    client = DeviceAgentClient("http://testserver", http=TestClient(create_app(engine, access_log=False)))
    return Simulator(client, 3, interval=0, min_s=0, max_s=0, rng=random.Random(1), **kw)


def test_simulated_agent_runs_every_task_to_an_end(engine):
    engine.devices.create({"serials": ["sim-001", "sim-002", "sim-003"], "script_name": "post",
                           "script_config": {}})
    engine.devices.create({"serials": ["sim-001"], "script_name": "follow", "script_config": {"target_user": "a"}})
    sim = simulator(engine, fail_rate=0.0)
    for _ in range(6):
        sim.finish_due()
        sim.beat()
        sim.claim()
    assert engine.devices.stats()["completed"] == 4
    assert sim.done["completed"] == 4
    # its heartbeat bound the simulated accounts: usernames mode now resolves them
    got = engine.devices.create({"usernames": ["@sim-002-a1"], "script_name": "post", "script_config": {}})
    assert engine.devices.get(got["task_ids"][0])["serial"] == "sim-002"


def test_a_restarted_agent_adopts_its_running_tasks_and_honours_stops(engine):
    ids = engine.devices.create({"serials": ["sim-001", "sim-002"], "script_name": "post",
                                 "script_config": {}})["task_ids"]
    first = simulator(engine)
    first.beat()
    first.claim()  # both running; then this agent "dies"
    engine.devices.stop(ids[1])
    second = simulator(engine, fail_rate=0.0)
    second.beat()  # adopts ids[0]; ids[1] is stopped, so not adopted
    assert second.fleet["sim-001"].task == ids[0] and second.fleet["sim-002"].task is None
    second.finish_due()
    assert [engine.devices.get(i)["status"] for i in ids] == [2, 3]
    events = [e for c in engine.device_shards for e in c.r.xrange(c.keys.events)]  # every shard's stream
    starts = [e[b"task"] for _, e in events if e[b"to"] == b"1"]
    assert sorted(starts) == sorted(str(i).encode() for i in ids)  # each claimed once, never re-run


@pytest.mark.parametrize("fail_rate,status", [(1.0, 3)])
def test_failures_are_reported(engine, fail_rate, status):
    [tid] = engine.devices.create({"serials": ["sim-001"], "script_name": "post", "script_config": {}})["task_ids"]
    sim = simulator(engine, fail_rate=fail_rate)
    sim.beat()
    sim.claim()
    sim.finish_due()
    assert engine.devices.get(tid)["status"] == status and engine.devices.get(tid)["remark"] == "simulated failure"


def test_a_stopped_agent_claims_nothing_more_and_finishes_what_it_runs(engine):
    ids = engine.devices.create({"serials": ["sim-001", "sim-002"], "script_name": "post",
                                 "script_config": {}})["task_ids"]
    sim = simulator(engine, fail_rate=0.0)
    sim.min_s = sim.max_s = 0.5
    sim.run(seconds=0.1)  # claims both, is told to stop before they are due, finishes them anyway
    assert [engine.devices.get(i)["status"] for i in ids] == [2, 2] and sim.done["completed"] == 2
    later = engine.devices.create({"serials": ["sim-001"], "script_name": "post", "script_config": {}})["task_ids"]
    sim.stopping = True
    sim.run()  # stopping from the start: claims nothing
    assert engine.devices.get(later[0])["status"] == 0


def test_with_no_grace_a_stopped_agent_leaves_its_tasks_running_for_the_next_one(engine):
    [tid] = engine.devices.create({"serials": ["sim-001"], "script_name": "post", "script_config": {}})["task_ids"]
    sim = simulator(engine, fail_rate=0.0, grace=0.0)
    sim.min_s = sim.max_s = 30
    sim.run(seconds=0.1)
    assert engine.devices.get(tid)["status"] == 1
    successor = simulator(engine, fail_rate=0.0)
    successor.beat()  # adopts it
    successor.finish_due()
    assert engine.devices.get(tid)["status"] == 2
