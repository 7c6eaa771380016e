"""RQ jobs: the work that happens later or elsewhere. Every job is idempotent.

Each job calls one engine operation in bounded batches; the decision itself is
a Lua script, so a job that runs twice, or two copies at once, acts once.
Jobs log one line in a fixed format: job name, RQ job id, attempt, result,
elapsed time.
"""
from __future__ import annotations

import logging
import os
import time
from functools import lru_cache
from typing import Callable

from engine import Engine

log = logging.getLogger("taskhub.jobs")
QUEUE = "taskhub"
MAX_BATCHES = 50  # per run; a backlog bigger than this is finished by the next run


@lru_cache(maxsize=1)
def engine() -> Engine:
    """One engine per work horse, on the worker's own connection when run by RQ.

    Not ``Engine.from_env()`` there: that would look for the embedded server
    in every horse, and a horse that ran as Redis was killed would start a
    new one itself; restarting is the Procfile's ``redis`` line's job.
    """
    from rq import get_current_job

    from engine import Settings

    job = get_current_job()
    if job is not None and not os.environ.get("TASKHUB_RQ_URL"):
        return Engine(job.connection, Settings.from_env())
    # task state elsewhere than RQ's queue (a cluster, engine/connection.py connect_rq): REDIS_URL
    return Engine.from_env()  # called outside RQ (e.g. by hand)


def _logged(name: str, body: Callable[[], dict]) -> dict:
    from rq import get_current_job

    job = get_current_job()
    started = time.perf_counter()
    result = body()
    job_id, attempt = (job.id if job else "-"), (job.meta.get("attempt", 1) if job else 1)
    elapsed = (time.perf_counter() - started) * 1000
    # The extra fields are keys of the line in JSON mode (TASKHUB_LOG_FORMAT=json, api/logs.py).
    log.info("job=%s id=%s attempt=%s result=%s elapsed=%.1fms", name, job_id, attempt, result, elapsed,
             extra={"job": name, "job_id": job_id, "attempt": attempt, "result": result,
                    "elapsed_ms": round(elapsed, 1)})
    return result


def _until_done(step: Callable[[], dict], more: Callable[[dict], bool]) -> dict:
    total: dict[str, int] = {}
    for _ in range(MAX_BATCHES):
        result = step()
        for key, value in result.items():
            total[key] = total.get(key, 0) + value
        if not more(result):
            break
    return total


def sweep_leases(eng: Engine | None = None) -> dict:
    """Return lapsed claims to the queue; fail (or extend) lapsed runs."""
    e = eng or engine()
    batch = e.core.settings.sweep_batch
    return _logged("sweep_leases", lambda: _until_done(
        e.stacking.sweep, lambda r: r["claims_lapsed"] >= batch or r["runs_failed"] >= batch))


def run_retries(eng: Engine | None = None) -> dict:
    """The retry manager: due failures go back to their phase or to final_failed."""
    e = eng or engine()
    return _logged("run_retries", lambda: _until_done(e.stacking.run_retries, lambda r: r["due_left"] > 0))


def reassign_folders(eng: Engine | None = None) -> dict:
    """Free the folders of servers that are deleted or have been silent too long."""
    e = eng or engine()
    return _logged("reassign_folders", lambda: _until_done(
        e.stacking.reassign_gone_servers, lambda r: r["folders_released"] > 0))


def recover_imports(eng: Engine | None = None) -> dict:
    """Roll back imports whose importer died before storing every task; finish publishing the rest."""
    e = eng or engine()
    stale = e.core.settings.import_stale_ms
    return _logged("recover_imports", lambda: _until_done(
        lambda: e.stacking.recover_imports(stale), lambda r: r["aborted"] + r["published"] > 0))


def sweep_device_leases(eng: Engine | None = None) -> dict:
    """Fail device tasks whose agent stopped heartbeating ("agent lost")."""
    e = eng or engine()
    batch = e.core.settings.sweep_batch
    return _logged("sweep_device_leases", lambda: _until_done(e.devices.sweep, lambda r: r["runs_failed"] >= batch))


def run_device_retries(eng: Engine | None = None) -> dict:
    """Device auto-retry (TASKHUB_AUTO_RETRY=1): due failures back to pending, each once."""
    e = eng or engine()
    return _logged("run_device_retries", lambda: _until_done(e.devices.run_retries, lambda r: r["due_left"] > 0))


# ---- task center ---------------------------------------------------------------------
SUBMIT_BATCH = 100
POLL_BATCH = 500
FETCH_CHUNK = 100  # upstream ids per fetch call


@lru_cache(maxsize=1)
def platform_client():
    from .upstream import PlatformClient

    return PlatformClient(engine().tasks.s.upstream_timeout_s)


def _concurrency() -> int:
    import os

    return max(1, int(os.environ.get("TASKHUB_UPSTREAM_CONCURRENCY", "8")))


def _parallel(fn: Callable, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def enqueue_submit(connection) -> None:
    """Enqueue one submit job now (the web process, when a submit found the queue empty)."""
    from rq import Queue

    Queue(QUEUE, connection=connection).enqueue(submit_tasks, job_timeout=600, result_ttl=60,
                                                failure_ttl=3600)


def submit_tasks(eng: Engine | None = None, client=None, workers: int | None = None) -> dict:
    """Hand due NOT_START tasks to a channel of their platform (weighted, another channel on
    each retry). Each task is leased first (claim-2, on its own shard: one claim per shard per
    step, up to ``SUBMIT_BATCH`` each), so copies of this job never submit one task twice; the
    outcome is one script on the task's shard (submitted-1 or submit_error-1)."""
    from engine.taskcenter import choose_channel

    from .upstream import Permanent, Transient

    e = eng or engine()
    tc = e.tasks
    http = client or platform_client()

    def one(sub) -> str:
        channels = [c for c in tc.channels(sub.platform)]
        channel = choose_channel(channels, sub.tried)
        if channel is None:
            return tc.submit_failed(sub.id, None, f"no enabled channel for platform {sub.platform}", False)
        try:
            upstream_id = http.submit(channel, sub.action, sub.body)
        except Transient as exc:
            return tc.submit_failed(sub.id, channel.id, str(exc), False)
        except Permanent as exc:
            return tc.submit_failed(sub.id, channel.id, str(exc), True)
        return "submitted" if tc.submitted(sub.id, channel.id, upstream_id) else "stale"

    def step() -> dict:
        subs = tc.claim_submissions(SUBMIT_BATCH)
        counts = {"claimed": len(subs), "submitted": 0, "retry": 0, "failed": 0, "stale": 0}
        for outcome in _parallel(one, subs, workers or _concurrency()):
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    return _logged("submit_tasks", lambda: _until_done(step, lambda r: r["claimed"] >= SUBMIT_BATCH))


def poll_tasks(eng: Engine | None = None, client=None, workers: int | None = None) -> dict:
    """Ask each channel about its unfinished tasks, least recently polled first, in batches of
    ``FETCH_CHUNK`` per call, and apply the answers in one script per batch. A task whose
    channel was deleted fails with its refund; an upstream error leaves tasks for the next pass."""
    from engine.taskcenter import Report, map_report

    from .upstream import UpstreamError

    e = eng or engine()
    tc = e.tasks
    http = client or platform_client()

    def batch(job: tuple) -> dict:
        channel, chunk = job
        try:
            items = http.fetch(channel, [up for _, up in chunk])
        except UpstreamError as exc:
            log.warning("poll of channel %s failed, next pass retries: %s", channel.id, exc)
            return {"upstream_errors": 1}
        reports = [map_report(tid, items[up]) for tid, up in chunk if up in items]
        return tc.apply(reports)

    def step() -> dict:
        due = tc.take_polls(POLL_BATCH)
        channels = {c.id: c for c in tc.channels()}
        groups: dict[int, list] = {}
        gone: list[Report] = []
        for tid, cid, up, _ in due:
            if cid in channels:
                groups.setdefault(cid, []).append((tid, up))
            else:
                gone.append(Report(tid, "FAILURE", "100%", f"channel {cid} was deleted", b""))
        counts: dict[str, int] = {"polled": len(due)}
        if gone:
            for key, value in tc.apply(gone, actor="poll").items():
                counts[key] = counts.get(key, 0) + value
        jobs_ = [(channels[cid], group[i:i + FETCH_CHUNK]) for cid, group in groups.items()
                 for i in range(0, len(group), FETCH_CHUNK)]
        for result in _parallel(batch, jobs_, workers or _concurrency()):
            for key, value in result.items():
                counts[key] = counts.get(key, 0) + value
        return counts

    return _logged("poll_tasks", lambda: _until_done(step, lambda r: r["polled"] >= POLL_BATCH))


def sweep_task_timeouts(eng: Engine | None = None) -> dict:
    """Fail (and refund) tasks unfinished TASKHUB_TASK_TIMEOUT_MINUTES after submission; requeue
    submissions whose submitter died."""
    e = eng or engine()
    return _logged("sweep_task_timeouts", lambda: _until_done(e.tasks.sweep, lambda r: r["timed_out_left"] > 0))
