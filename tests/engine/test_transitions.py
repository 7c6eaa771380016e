"""start / complete / fail: the happy paths and every refusal (which must change nothing)."""
import orjson
import pytest

from engine.errors import Conflict, InvalidInput, NotFound, NotTaskOwner
from tests.helpers import events as events_of, ids, link, online_server, request_doc, snapshot


@pytest.fixture
def claimed(engine):
    caller, _ = online_server(engine, "a")
    engine.stacking.create_request(request_doc(tasks=2))
    return caller, ids(engine.stacking.claim(caller.id, 2))


def _unchanged(engine, action):
    before = snapshot(engine.core.r, engine.core.settings.namespace)
    action()
    assert snapshot(engine.core.r, engine.core.settings.namespace) == before


def test_start_complete_moves_register_to_profiled(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    assert engine.stacking.task_state(tid)["status"] == "registering"
    engine.stacking.complete(caller.id, tid, link("x"), "done")
    task = orjson.loads(engine.stacking.get_task(tid))
    assert task["status"] == "profiled" and task["link_post"] == link("x")


def test_fail_moves_registering_to_profile_failed_with_message(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    engine.stacking.fail(caller.id, tid, "Drive quota exceeded", "note")
    state = engine.stacking.task_state(tid)
    assert state["status"] == "profile_failed" and state["error_message"] == "Drive quota exceeded"


@pytest.mark.parametrize("verb", ["start", "complete", "fail"])
def test_unknown_task_is_not_found_and_changes_nothing(engine, claimed, verb):
    caller, _ = claimed
    args = {"start": (), "complete": (link(1),), "fail": ("boom",)}[verb]
    with pytest.raises(NotFound):
        _unchanged(engine, lambda: getattr(engine.stacking, verb)(caller.id, "nope", *args))


def test_start_twice_is_refused_with_current_status(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    with pytest.raises(Conflict) as err:
        _unchanged(engine, lambda: engine.stacking.start(caller.id, tid))
    assert "registering" in err.value.message and not isinstance(err.value, NotTaskOwner)


@pytest.mark.parametrize("verb", ["complete", "fail"])
def test_complete_or_fail_before_start_is_refused(engine, claimed, verb):
    caller, (tid, _) = claimed
    arg = link(1) if verb == "complete" else "boom"
    with pytest.raises(Conflict) as err:
        _unchanged(engine, lambda: getattr(engine.stacking, verb)(caller.id, tid, arg))
    assert "register" in err.value.message


@pytest.mark.parametrize("verb", ["start", "complete", "fail"])
def test_task_reserved_by_another_server_is_refused(engine, claimed, verb):
    caller, (tid, _) = claimed
    other, _ = online_server(engine, "b")
    if verb != "start":
        engine.stacking.start(caller.id, tid)
    args = {"start": (), "complete": (link(1),), "fail": ("boom",)}[verb]
    with pytest.raises(NotTaskOwner):
        _unchanged(engine, lambda: getattr(engine.stacking, verb)(other.id, tid, *args))


def test_unclaimed_task_cannot_be_started(engine):
    caller, _ = online_server(engine)
    engine.stacking.create_request(request_doc(tasks=1))
    [tid] = ids(engine.stacking.claim(caller.id, 1))
    other, _ = online_server(engine, "b")
    with pytest.raises(NotTaskOwner):
        engine.stacking.start(other.id, tid)


def test_phase1_complete_requires_link_post(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    for bad in (None, ""):
        with pytest.raises(InvalidInput):
            _unchanged(engine, lambda: engine.stacking.complete(caller.id, tid, bad))
    with pytest.raises(InvalidInput):
        _unchanged(engine, lambda: engine.stacking.complete(caller.id, tid, "http://insecure"))


def test_fail_validates_error_message(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    for bad in (None, "", "x" * 1001, 42):
        with pytest.raises(InvalidInput):
            _unchanged(engine, lambda: engine.stacking.fail(caller.id, tid, bad))
    engine.stacking.fail(caller.id, tid, "x" * 1000)


def test_every_status_change_writes_one_event(engine, claimed):
    caller, (tid, _) = claimed
    engine.stacking.start(caller.id, tid)
    engine.stacking.complete(caller.id, tid, link(1))
    events = [e for _, e in events_of(engine, tid) if e[b"task"] == tid.encode()]
    assert [(e[b"from"], e[b"to"]) for e in events] == [
        (b"", b"register"), (b"register", b"registering"), (b"registering", b"profiled")]
