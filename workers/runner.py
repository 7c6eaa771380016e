"""``taskhub worker`` and ``taskhub scheduler`` that outlive a Redis outage.

When the embedded Redis is killed, the Procfile's ``redis`` line restarts it
within a second or so (longer while a large data set loads). Left alone, RQ
would end both processes, and honcho stops the whole system when any process
ends:

- ``Worker.work`` retries a connection error only while it waits for a job
  (``dequeue_job_and_maintain_ttl``, backoff 1 s doubling to 60 s). The same
  error anywhere else in its loop (suspension check, heartbeat, maintenance,
  after a job) is "an unhandled exception, quitting", logged with a traceback,
  and its teardown then raises the error out of ``work``. So does
  ``register_birth`` when Redis is down at start.
- ``CronScheduler.start`` has no retry at all: the error ends it, and its
  ``finally`` (``register_death``) raises a second one.

So each runs in a loop: on a connection error (or a return that was not asked
for by a signal while Redis does not answer) log one line, ping Redis with a
short backoff (0.5 s doubling to 2 s) until it answers, log one line, and
start again. RQ's own retry while waiting for a job is capped at 2 s too, so
the worker resumes within ~2 s of Redis' return. RQ's tracebacks for
connection errors are cut to one line. A SIGINT/SIGTERM still stops either
process at once, outage or not; any other reason for ``work`` to end (Redis
answering) still ends the process, as before.
"""
from __future__ import annotations

import logging
import signal
import time
from typing import Any, Callable

import redis
from rq import Queue, Worker
from rq.exceptions import StopRequested

log = logging.getLogger("taskhub.runner")

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)  # BusyLoadingError is a ConnectionError
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 2.0


class OneLineRedisErrors(logging.Filter):
    """Turn a record carrying a Redis connection error's traceback into one line (the runner retries).

    RQ attaches it either as ``exc_info`` (its work loop) or as a formatted
    string argument (a job that failed: "exception raised while executing").
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, REDIS_DOWN):
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = record.exc_text = None
        elif isinstance(record.args, tuple) and any(_redis_traceback(a) for a in record.args):
            record.args = tuple(_redis_traceback(a) or a for a in record.args)
            record.msg = str(record.msg).replace("\n%s", " %s")
        return True


def _redis_traceback(value: object) -> str | None:
    """The last line of a formatted traceback that ends in a Redis connection error, else None."""
    if not isinstance(value, str) or "Traceback (most recent call last)" not in value:
        return None
    last = value.strip().splitlines()[-1]
    names = ("ConnectionError", "TimeoutError", "BusyLoadingError")
    return last if last.startswith(tuple(f"redis.exceptions.{n}" for n in names)) else None


def quiet_rq_tracebacks() -> None:
    for name in ("rq.worker", "rq.job", "rq.cron", "rq.queue"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineRedisErrors) for f in logger.filters):
            logger.addFilter(OneLineRedisErrors())


def redis_answers(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except REDIS_DOWN:
        return False


class Stop:
    """SIGINT/SIGTERM while no RQ loop runs (waiting for Redis): remember it, stop waiting."""

    def __init__(self) -> None:
        self.requested = False

    def install(self, then: Callable[[], None] | None = None) -> None:
        def on_signal(signum: int, frame: Any) -> None:
            self.requested = True
            if then is not None:
                then()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)


def wait_for_redis(conn: redis.Redis, what: str, reason: BaseException | str, stop: Stop) -> bool:
    """Ping until Redis answers (True) or a stop signal arrives (False); one log line each way."""
    stop.install()
    why = f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) else reason
    log.warning("%s: Redis unavailable (%s); retrying every %g s or less until it is back", what, why, RETRY_MAX_S)
    delay = RETRY_FIRST_S
    started = time.monotonic()
    while not stop.requested:
        time.sleep(delay)
        if redis_answers(conn):
            log.warning("%s: Redis is back after %.1f s; resuming", what, time.monotonic() - started)
            return True
        delay = min(delay * 2, RETRY_MAX_S)
    return False


PUBSUB_WAKE_S = 1.0


class PromptWorker(Worker):
    """RQ's ``Worker`` whose pubsub thread wakes every ``PUBSUB_WAKE_S`` instead of every 60 s.

    Why: on SIGTERM/SIGINT RQ's teardown unsubscribes and then stops that thread, and
    redis-py (8.x) joins it with no timeout. A thread that had already seen the
    unsubscribe waits out its ``get_message`` timeout first, RQ's 60 s: ``taskhub worker``
    took 10 s to stop in one measurement, and honcho, which kills a process 5 s after
    asking, had to SIGKILL it. Commands sent on the channel (``rq.command``) still arrive
    at once; only the idle wake-up is more frequent (one a second). Otherwise RQ's own
    ``subscribe``.
    """

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(sleep_time=PUBSUB_WAKE_S, daemon=True,
                                                       exception_handler=self._pubsub_exception_handler)


def _drop_pubsub(worker: Worker) -> None:
    """A worker torn down while Redis is away never unsubscribes; stop its pubsub thread ourselves."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None and thread.is_alive():
        thread.stop()


def run_worker(conn: redis.Redis, queue: str) -> int:
    """RQ's ``Worker.work`` on ``queue``, started again after every Redis outage."""
    quiet_rq_tracebacks()
    stop = Stop()
    try:
        while not stop.requested:
            worker: Worker | None = None
            error: BaseException | str = "the worker loop ended"
            try:
                worker = PromptWorker([Queue(queue, connection=conn)], connection=conn)
                worker.max_connection_wait_time = RETRY_MAX_S  # RQ's own retry while waiting for a job
                worker.work(with_scheduler=False, logging_level="WARNING")
            except REDIS_DOWN as exc:
                error = exc
            finally:
                if worker is not None:
                    _drop_pubsub(worker)
            if worker is not None and worker._shutdown_requested_date is not None:
                return 0  # stopped by SIGINT/SIGTERM, as RQ intends
            if not isinstance(error, BaseException) and redis_answers(conn):
                log.error("worker: RQ's work loop ended while Redis answers; exiting (see RQ's log above)")
                return 1
            if not wait_for_redis(conn, "worker", error, stop):
                return 0
    except StopRequested:  # RQ's signal handler, outside its own loop (bootstrapping, tearing down)
        return 0
    return 0


def run_scheduler(conn: redis.Redis, build: Callable[[redis.Redis], Any]) -> int:
    """RQ's ``CronScheduler.start``, started again (same schedule, same object) after every Redis outage."""
    quiet_rq_tracebacks()
    stop = Stop()
    scheduler = build(conn)
    running = {"now": False}

    def raise_if_running() -> None:
        if running["now"]:
            raise StopRequested()  # what CronScheduler's own handler does; start() catches it

    # Our handlers instead of CronScheduler's, so that a signal is remembered even when it
    # arrives while Redis is away (start() then ends with a connection error, not StopRequested).
    scheduler._install_signal_handlers = lambda: stop.install(then=raise_if_running)
    while not stop.requested:
        running["now"] = True
        try:
            scheduler.start()
            if stop.requested:
                return 0
            error: BaseException | str = "the scheduler loop ended"
        except REDIS_DOWN as exc:
            error = exc
        except StopRequested:
            return 0
        finally:
            running["now"] = False
        if stop.requested:
            return 0
        if not isinstance(error, BaseException) and redis_answers(conn):
            log.error("scheduler: RQ's CronScheduler ended while Redis answers; exiting")
            return 1
        if not wait_for_redis(conn, "scheduler", error, stop):
            return 0
    return 0
