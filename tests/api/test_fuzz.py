"""Schema fuzzing in the test suite: schemathesis against the served /openapi.json, every operation.

Bounded (``EXAMPLES`` generated requests per operation, derandomized so CI runs the same
cases every time); bench/fuzz.py runs the same harness with many more. Run on fakeredis:
the harness compares every key's DUMP before and after each refused request, and Redis
is never away here, so a 503 would be a failure too.
"""
from __future__ import annotations

import os

import pytest

from bench.fuzz import Report, build_world, fuzz, fuzz_operation, operations

EXAMPLES = int(os.environ.get("TASKHUB_FUZZ_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def report() -> Report:
    return fuzz(build_world(), EXAMPLES, seed=0)


def test_every_operation_is_fuzzed(report):
    world = build_world()
    assert report.operations == len(operations(world)) >= 50
    assert report.requests >= report.operations * min(EXAMPLES, 5)


def test_no_500_no_schema_violation_no_refusal_that_changed_state(report):
    assert report.problems == [], "\n\n".join(report.problems)
    assert (report.server_errors, report.schema_violations, report.refused_changed_state) == (0, 0, 0)


def test_requests_get_past_authentication_and_reach_the_engine(report):
    """Most requests carry real credentials: every operation has answers other than 401, and
    the seeded ids make successes (2xx) on most of them, refusals (4xx) on all."""
    by_op: dict[str, set[int]] = {}
    for (label, status), _ in report.statuses.items():
        by_op.setdefault(label, set()).add(status)
    assert all(statuses - {401} for statuses in by_op.values()), by_op
    succeeded = [label for label, statuses in by_op.items() if any(200 <= s < 300 for s in statuses)]
    assert len(succeeded) >= len(by_op) // 2, sorted(set(by_op) - set(succeeded))
    assert report.refused > 0


def test_the_harness_sees_a_refusal_that_writes(monkeypatch):
    """The state check is real: a handler that writes a key and then refuses is reported."""
    world = build_world()
    op = next(o for o in operations(world) if o.method.upper() == "GET" and o.path == "/api/v1/task/stats")
    original = world.engine.devices.stats_call

    def writes_then_refuses():
        world.engine.core.r.set("fuzz:stray", "1")
        world.engine.core.r.incr("fuzz:stray-count")
        from engine.errors import InvalidInput
        raise InvalidInput("refused after a write")

    monkeypatch.setattr(world.engine.devices, "stats_call", writes_then_refuses)
    report = Report()
    fuzz_operation(world, op, 5, report, seed=0)
    monkeypatch.setattr(world.engine.devices, "stats_call", original)
    assert report.refused_changed_state >= 1
    assert any("'fuzz:stray'" in p and "'fuzz:stray-count'" in p for p in report.problems), report.problems


def test_the_harness_sees_an_undocumented_response(monkeypatch):
    """The schema check is real: a success body missing a documented field is a violation."""
    world = build_world()
    op = next(o for o in operations(world) if o.method.upper() == "GET" and o.path == "/api/v1/license/check")
    monkeypatch.setattr(world.engine.devices, "license", lambda: {"plan_name": "pro"})
    report = Report()
    fuzz_operation(world, op, 5, report, seed=0)
    assert report.schema_violations >= 1 and report.server_errors == 0


def test_the_world_is_seeded_with_every_kind_of_object():
    world = build_world()
    eng = world.engine
    assert eng.stacking.stats() and eng.devices.stats()["total"] >= 2
    assert len(eng.tasks.users()) == 2 and eng.tasks.channel_views()
    assert all(world.ids.values())
