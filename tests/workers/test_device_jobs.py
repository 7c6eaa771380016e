"""The device RQ jobs: idempotent, whatever copies run."""
from __future__ import annotations

from workers import jobs


def test_device_jobs_fail_lost_runs_and_retry_each_failure_once(engine, clock, settings):
    settings.auto_retry, settings.run_ttl_ms = True, 10_000
    [a, b] = engine.devices.create({"serials": ["s1", "s2"], "script_name": "post",
                                    "script_config": {}})["task_ids"]
    engine.devices.claim({"serials": ["s1", "s2"]})
    clock.advance(11)
    assert jobs.sweep_device_leases(engine) == {"runs_failed": 2}
    assert jobs.sweep_device_leases(engine) == {"runs_failed": 0}
    assert engine.devices.get(a)["remark"] == "agent lost"
    clock.advance(61)
    assert jobs.run_device_retries(engine)["retried"] == 2
    assert jobs.run_device_retries(engine)["retried"] == 0
    assert [engine.devices.get(i)["status"] for i in (a, b)] == [0, 0]
    assert engine.devices.get(a)["retry_count"] == 1
