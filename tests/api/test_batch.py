"""The web process's batcher: concurrent calls share one pipeline, each gets its own answer."""
from __future__ import annotations

import asyncio

import pytest

from api.batch import Batcher
from engine.errors import NotFound, NotTaskOwner
from tests.helpers import events as events_of, ids, online_server, request_doc


@pytest.mark.one_redis("counts the plain client's pipelines; on a cluster a batch is one pipeline per node (engine/calls.py)")
def test_concurrent_calls_share_one_pipeline_and_keep_their_own_results(engine, monkeypatch):
    a, _ = online_server(engine, "a")
    b, _ = online_server(engine, "b")
    engine.stacking.create_request(request_doc(folders=2, tasks=2))
    mine = ids(engine.stacking.claim(a.id, 2))
    st = engine.stacking
    pipelines = []
    batcher = Batcher(engine.core)
    # A real Redis: the batch is one write on the pipelined connection; fakeredis: one redis-py pipeline.
    owner, name = (batcher.conn, "submit") if batcher.conn is not None else (engine.core.r, "pipeline")
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        pipelines.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)

    async def main():
        return await asyncio.gather(
            batcher.run(st.start_call(a.id, mine[0])),
            batcher.run(st.start_call(b.id, mine[1])),  # not b's: refused, alone
            batcher.run(st.start_call(a.id, "no-such-task")),
            batcher.run(engine.servers.heartbeat_call(b.id, {"cpu_usage": 3})),
            return_exceptions=True)

    started, not_owner, missing, beat = asyncio.run(main())
    assert len(pipelines) == 1
    assert started == a.id
    assert isinstance(not_owner, NotTaskOwner) and isinstance(missing, NotFound)
    assert beat["server_id"] == b.id
    assert st.task_state(mine[0])["status"] == "registering"
    assert st.task_state(mine[1])["status"] == "register"


def test_a_flushed_script_cache_is_reloaded_and_the_call_run_once(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = ids(engine.stacking.claim(caller.id, 1))
    engine.core.r.script_flush()
    batcher = Batcher(engine.core)
    assert asyncio.run(batcher.run(engine.stacking.start_call(caller.id, tid))) == caller.id
    assert engine.stacking.task_state(tid)["status"] == "registering"
    events = [e for _, e in events_of(engine, tid) if e[b"task"] == tid.encode()]
    assert [e[b"to"] for e in events] == [b"register", b"registering"]


@pytest.mark.one_redis("breaks the plain client's pipeline(); a cluster batch uses each node's own client")
def test_redis_errors_reach_every_caller_of_the_batch(engine, monkeypatch):
    import redis

    batcher = Batcher(engine.core, pipelined=False)  # the pipelined connection's errors: tests/api/test_pipelined.py

    def broken(*args, **kwargs):
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(engine.core.r.connection_pool, "get_connection", broken)  # every way to Redis

    async def main():
        return await asyncio.gather(*(batcher.run(engine.stacking.start_call("s", f"t{i}")) for i in range(3)),
                                    return_exceptions=True)

    assert all(isinstance(r, redis.ConnectionError) for r in asyncio.run(main()))
    with pytest.raises(redis.ConnectionError):
        engine.core.call(engine.stacking.start_call("s", "t"))


def test_call_many_runs_a_pulled_batch_in_one_round_trip(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=5))
    tids = ids(engine.stacking.claim(caller.id, 5))
    results = engine.core.call_many([engine.stacking.start_call(caller.id, t) for t in tids + ["nope"]])
    assert [ok for ok, _ in results] == [True] * 5 + [False]
    assert isinstance(results[-1][1], NotFound)
    assert {engine.stacking.task_state(t)["status"] for t in tids} == {"registering"}
