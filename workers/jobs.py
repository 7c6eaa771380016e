"""RQ jobs: the work that happens later or elsewhere. Every job is idempotent.

Each job calls one engine operation in bounded batches; the decision itself is
a Lua script, so a job that runs twice, or two copies at once, acts once.
Jobs log one line in a fixed format: job name, RQ job id, attempt, result,
elapsed time.
"""
from __future__ import annotations

import logging
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
    if job is not None:
        return Engine(job.connection, Settings.from_env())
    return Engine.from_env()  # called outside RQ (e.g. by hand)


def _logged(name: str, body: Callable[[], dict]) -> dict:
    from rq import get_current_job

    job = get_current_job()
    started = time.perf_counter()
    result = body()
    log.info("job=%s id=%s attempt=%s result=%s elapsed=%.1fms", name, job.id if job else "-",
             (job.meta.get("attempt", 1) if job else 1), result, (time.perf_counter() - started) * 1000)
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
