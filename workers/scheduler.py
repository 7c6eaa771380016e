"""The periodic schedule, run by RQ's own ``CronScheduler`` (``taskhub scheduler``).

The scheduler only enqueues; ``taskhub worker`` runs the jobs. Intervals are
``TASKHUB_SWEEP_INTERVAL`` and ``TASKHUB_RETRY_INTERVAL`` (seconds, default 5):
short, because each run is a few bounded script calls and does nothing when
nothing is due (stacking's sweep and retries, and the device contract's).
Folder reassignment runs every ``TASKHUB_REASSIGN_INTERVAL`` (default 60 s;
its threshold, ``TASKHUB_REASSIGN_AFTER``, is an hour by default), and so does
the recovery of abandoned imports (threshold ``TASKHUB_IMPORT_STALE``, 600 s).
Task center: submissions every ``TASKHUB_SUBMIT_INTERVAL`` (1 s; the web process
also enqueues one at once when a submit finds the queue empty), upstream polls
every ``TASKHUB_POLL_INTERVAL`` (15 s), timeouts with the sweeps.
"""
from __future__ import annotations

import os

import redis
from rq.cron import CronScheduler

from . import jobs


def build(connection: redis.Redis) -> CronScheduler:
    scheduler = CronScheduler(connection=connection, name=f"taskhub-scheduler-{os.getpid()}",
                              logging_level="WARNING")
    sweep_every = int(os.environ.get("TASKHUB_SWEEP_INTERVAL", "5"))
    retry_every = int(os.environ.get("TASKHUB_RETRY_INTERVAL", "5"))
    scheduler.register(jobs.sweep_leases, jobs.QUEUE, interval=sweep_every, job_timeout=120, result_ttl=60)
    scheduler.register(jobs.run_retries, jobs.QUEUE, interval=retry_every, job_timeout=120, result_ttl=60)
    scheduler.register(jobs.sweep_device_leases, jobs.QUEUE, interval=sweep_every, job_timeout=120, result_ttl=60)
    scheduler.register(jobs.run_device_retries, jobs.QUEUE, interval=retry_every, job_timeout=120, result_ttl=60)
    reassign_every = int(os.environ.get("TASKHUB_REASSIGN_INTERVAL", "60"))
    scheduler.register(jobs.reassign_folders, jobs.QUEUE, interval=reassign_every, job_timeout=120, result_ttl=60)
    scheduler.register(jobs.recover_imports, jobs.QUEUE, interval=reassign_every, job_timeout=120, result_ttl=60)
    submit_every = int(os.environ.get("TASKHUB_SUBMIT_INTERVAL", "1"))
    poll_every = int(os.environ.get("TASKHUB_POLL_INTERVAL", "15"))
    scheduler.register(jobs.submit_tasks, jobs.QUEUE, interval=submit_every, job_timeout=600, result_ttl=60)
    scheduler.register(jobs.poll_tasks, jobs.QUEUE, interval=poll_every, job_timeout=600, result_ttl=60)
    scheduler.register(jobs.sweep_task_timeouts, jobs.QUEUE, interval=sweep_every, job_timeout=120, result_ttl=60)
    return scheduler
