"""Chunked imports: stored in bounded script calls, invisible to pullers until published,
rolled back (or finished) when the importer dies."""
from __future__ import annotations

import orjson
import pytest

import engine.stacking as stacking_module
from engine.errors import Conflict, InvalidInput
from tests.helpers import ids, online_server, request_doc, state


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 7 tasks and publish batches of 2 folders, so folders span chunks."""
    monkeypatch.setattr(stacking_module, "IMPORT_CHUNK", 7)
    monkeypatch.setattr(stacking_module, "PUBLISH_BATCH", 2)


def _core(engine, rid):
    """The shard holding request ``rid`` (the only one with one shard)."""
    return engine.stacking.shards.for_name(rid)


def _bodies(engine) -> int:
    return sum(c.r.hlen(c.keys.bodies) for c in engine.stacking.shards)


def _staged(engine, doc, chunks: int = 1000) -> tuple[str, str]:
    """Run an import up to (not including) publishing, or only its first ``chunks``
    chunks, as an importer that dies there would."""
    st = engine.stacking
    rid, website, mode, mr, folders = st._validate_request(doc)
    token = "tok"
    core = _core(engine, rid)
    k = core.keys
    first = int(core.run("import_begin", [k.request(rid), k.seq, k.imports], token, website, mode, mr,
                         len(folders), sum(len(t) for _, t in folders))[1])
    shard = k.shard if st.shards.n > 1 else None
    for n, (args, bodies) in enumerate(st._chunks(folders, first, website, shard)):
        if n == chunks:
            break
        pipe = core.node().pipeline(transaction=True)
        pipe.hset(k.bodies, mapping=bodies)
        core.run("import_tasks", [k.request(rid), k.bodies], token, *args, client=pipe)
        assert pipe.execute()[-1][0] == b"ok"
    return rid, token


def test_request_spanning_many_chunks_is_stored_in_document_order(engine, small_chunks):
    caller, _ = online_server(engine)
    doc = request_doc(folders=4, tasks=5)
    created = engine.stacking.create_request(doc)
    assert created["tasks"] == 20
    got = [orjson.loads(t) for t in engine.stacking.claim(caller.id, 20)]
    assert [t["title"] for t in got] == [t["title"] for f in doc["folders"] for t in f["tasks"]]
    assert {t["request_id"] for t in got} == {created["request_id"]}
    assert engine.stacking.stats() == {"register": 20}
    assert engine.stacking.request(created["request_id"])["status"] == "register"
    assert sum(c.r.zcard(c.keys.imports) for c in engine.stacking.shards) == 0


def test_staged_request_is_invisible_to_pullers(engine, small_chunks):
    caller, _ = online_server(engine)
    rid, _ = _staged(engine, request_doc(folders=3, tasks=5))
    assert engine.stacking.claim(caller.id, 100) == []
    assert engine.stacking.request(rid)["status"] == "importing"
    with pytest.raises(Conflict):
        engine.stacking.cancel_request(rid)


def test_publish_is_refused_until_every_task_is_stored(engine, small_chunks):
    st = engine.stacking
    rid, website, mode, mr, folders = st._validate_request(request_doc(folders=2, tasks=5))
    core = _core(engine, rid)
    k = core.keys
    first = int(core.run("import_begin", [k.request(rid), k.seq, k.imports], "tok", website, mode, mr,
                                2, 10)[1])
    args, bodies = next(st._chunks(folders, first, website))
    pipe = core.node().pipeline(transaction=True)
    pipe.hset(k.bodies, mapping=bodies)
    core.run("import_tasks", [k.request(rid), k.bodies], "tok", *args, client=pipe)
    pipe.execute()
    reply = core.run("import_publish", [k.request(rid)], "tok", 10)
    assert reply == [b"incomplete", b"7"]
    assert core.run("import_publish", [k.request(rid)], "other-token", 10)[0] == b"exists"


def test_second_importer_of_the_same_id_is_refused_and_changes_nothing(engine, small_chunks):
    doc = request_doc(folders=2, tasks=3)
    doc["id"] = "R-1"
    _staged(engine, doc)
    before = state(engine)
    with pytest.raises(Conflict):
        engine.stacking.create_request(doc)
    assert state(engine) == before


def test_folder_taken_between_check_and_chunk_rolls_the_whole_request_back(engine, small_chunks, monkeypatch):
    """The pre-check passes, then another request takes a folder of a later chunk."""
    caller, _ = online_server(engine)
    stats_before = engine.stacking.stats()
    bodies_before = _bodies(engine)
    doc = request_doc(folders=3, tasks=5, prefix="X") | {"id": "R-X"}
    # the rival on the same shard: across shards only the pre-check guards a folder (README)
    rival_id = next(f"R-Y{i}" for i in range(1000) if _core(engine, f"R-Y{i}") is _core(engine, "R-X"))
    chunks = stacking_module.Stacking._chunks

    def racing_chunks(folders, first, website, shard=None):
        for n, chunk in enumerate(chunks(folders, first, website, shard)):
            if n == 1:  # after the first chunk is stored, a rival request takes folder X2
                monkeypatch.setattr(engine.stacking, "_refuse_used_folders", lambda fids: None)
                engine.stacking.create_request(request_doc(folders=1, tasks=2, prefix="Y") | {
                    "id": rival_id, "folders": [{"folder_id": "X2", "tasks": request_doc(tasks=2)["folders"][0]["tasks"]}]})
            yield chunk

    monkeypatch.setattr(stacking_module.Stacking, "_chunks", staticmethod(racing_chunks))
    with pytest.raises(Conflict, match="X2"):
        engine.stacking.create_request(doc)
    # only the rival's two tasks remain, and only they can be pulled
    assert engine.stacking.stats() == {**stats_before, "register": 2}
    assert _bodies(engine) == bodies_before + 2
    assert {orjson.loads(t)["folder_id"] for t in engine.stacking.claim(caller.id, 100)} == {"X2"}
    assert not any(c.r.exists(c.keys.folder("X0"), c.keys.folder("X1")) for c in engine.stacking.shards)


def test_recovery_rolls_back_an_idle_unfinished_import(engine, small_chunks, clock):
    caller, _ = online_server(engine)
    rid, _ = _staged(engine, request_doc(folders=3, tasks=5), chunks=2)  # 14 of 15 stored
    before = engine.stacking.stats()
    assert engine.stacking.recover_imports(stale_ms=60_000) == {"aborted": 0, "published": 0, "left": 0}
    clock.advance(61)
    total = {"aborted": 0, "published": 0}
    for _ in range(10):
        got = engine.stacking.recover_imports(stale_ms=60_000, batch=4)
        total["aborted"] += got["aborted"]
        if not _core(engine, rid).r.exists(_core(engine, rid).keys.request(rid)):
            break
    assert total["aborted"] >= 1
    assert not _core(engine, rid).r.exists(_core(engine, rid).keys.request(rid))
    assert before.get("register", 0) - engine.stacking.stats().get("register", 0) == 14
    assert _bodies(engine) == 0
    assert engine.stacking.claim(caller.id, 100) == []


def test_recovery_finishes_publishing_a_fully_stored_import(engine, small_chunks, clock):
    caller, _ = online_server(engine)
    rid, token = _staged(engine, request_doc(folders=3, tasks=5))
    core = _core(engine, rid)
    k = core.keys
    assert core.run("import_publish", [k.request(rid)], token, 1)[1] == 2  # died after one folder
    assert len(ids(engine.stacking.claim(caller.id, 100))) == 5
    clock.advance(61)
    while core.r.zcard(k.imports):
        engine.stacking.recover_imports(stale_ms=60_000, batch=1)
    assert engine.stacking.request(rid)["status"] == "register"
    assert len(ids(engine.stacking.claim(caller.id, 100))) == 10


def test_importer_cannot_abort_once_publishing_began(engine, small_chunks):
    rid, token = _staged(engine, request_doc(folders=3, tasks=5))
    core = _core(engine, rid)
    k = core.keys
    core.run("import_publish", [k.request(rid)], token, 1)
    assert core.run("import_abort", [k.request(rid)], token, 100, 0)[0] == b"exists"
    assert core.r.hget(k.request(rid), "st") == b"importing"


def test_cancel_request_works_in_bounded_batches(engine, small_chunks):
    created = engine.stacking.create_request(request_doc(folders=4, tasks=5))
    assert engine.stacking.cancel_request(created["request_id"]) == 20
    assert engine.stacking.stats() == {"cancel": 20}
    assert engine.stacking.cancel_request(created["request_id"]) == 0
    assert engine.stacking.request(created["request_id"])["status"] == "completed"


def test_folder_over_the_size_limit_is_refused(engine):
    from engine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="more than 1000"):
        engine.stacking.create_request(request_doc(tasks=1001, about=""))


def test_recovery_job_twice_acts_once(engine, small_chunks, clock):
    from workers import jobs

    rid, _ = _staged(engine, request_doc(folders=2, tasks=5), chunks=1)
    clock.advance(engine.core.settings.import_stale_ms / 1000 + 1)
    assert jobs.recover_imports(engine)["aborted"] >= 1
    after = state(engine)
    assert jobs.recover_imports(engine) == {"aborted": 0, "published": 0, "left": 0}
    assert state(engine) == after and not _core(engine, rid).r.exists(_core(engine, rid).keys.request(rid))


def test_cancel_is_refused_while_an_import_is_being_rolled_back(engine, small_chunks):
    rid, token = _staged(engine, request_doc(folders=3, tasks=5), chunks=1)
    core = _core(engine, rid)
    k = core.keys
    assert core.run("import_abort", [k.request(rid)], token, 2, 0)[1] == b"aborted"  # 2 of 7 deleted
    before = state(engine)
    with pytest.raises(Conflict, match="aborting"):
        engine.stacking.cancel_request(rid)
    assert state(engine) == before
    while core.r.exists(k.request(rid)):  # anyone may carry the abort on
        core.run("import_abort", [k.request(rid)], "", 2, 0)
    assert core.r.hlen(k.bodies) == 0 and engine.stacking.stats().get("register", 0) == 0


def test_a_script_cache_lost_between_chunks_costs_a_resend_not_the_import(engine, small_chunks, monkeypatch):
    """Each chunk is one MULTI (bodies, then import_tasks by SHA) without a SCRIPT EXISTS
    first: when Redis lost its scripts, EXEC answers NOSCRIPT after the bodies were
    written; the scripts are loaded and the chunk sent once more (rewriting the same
    bodies), so every task is stored exactly once."""
    caller, _ = online_server(engine)
    real_chunks = engine.stacking._chunks

    def chunks_with_flushes(*args, **kwargs):
        for chunk in real_chunks(*args, **kwargs):
            engine.core.r.script_flush()
            yield chunk

    monkeypatch.setattr(engine.stacking, "_chunks", chunks_with_flushes)
    created = engine.stacking.create_request(request_doc(folders=3, tasks=5))
    assert created["tasks"] == 15 and engine.stacking.stats() == {"register": 15}
    assert _bodies(engine) == 15
    got = ids(engine.stacking.claim(caller.id, 15))
    assert len(set(got)) == 15
    core = _core(engine, created["request_id"])
    imported = [e for _, e in core.r.xrange(core.keys.events) if e[b"to"] == b"register"]
    assert sorted(e[b"task"].decode() for e in imported) == sorted(got)  # one event per task: nothing ran twice


def test_task_ids_are_random_version_4_uuids_with_the_shard_in_the_last_two_hex_digits():
    import uuid

    made = stacking_module.new_task_ids(5000)
    assert len(set(made)) == 5000
    for tid in made:
        u = uuid.UUID(tid)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, tid)
    sharded = stacking_module.new_task_ids(50, 0x2A)
    assert all(t.endswith("2a") and uuid.UUID(t).version == 4 for t in sharded)
    assert len({t[:-2] for t in sharded}) == 50
    assert stacking_module.new_task_id(7).endswith("07")


@pytest.mark.parametrize("field, value, message", [
    ("title", "  ", "folders[0].tasks[1].title is required"),
    ("title", None, "folders[0].tasks[1].title is required"),
    ("title", 7, "folders[0].tasks[1].title must be a string"),
    ("about", ["x"], "folders[0].tasks[1].about must be a string"),
    ("location", "x" * 100_001, "folders[0].tasks[1].location must be at most 100000 characters"),
])
def test_a_task_field_refused_names_its_path_and_stores_nothing(engine, field, value, message):
    doc = request_doc(tasks=2)
    doc["folders"][0]["tasks"][1][field] = value
    with pytest.raises(InvalidInput) as refused:
        engine.stacking.create_request(doc)
    assert refused.value.message == message
    assert engine.stacking.stats() == {}
    doc["folders"][0]["tasks"][1][field] = "fine" if field != "about" else None  # about is optional
    assert engine.stacking.create_request(doc)["tasks"] == 2
