"""``taskhub worker`` and ``taskhub scheduler`` wait for Redis instead of exiting (workers/runner.py).

RQ itself is replaced by stand-ins that fail the way RQ does when Redis goes away
(the real processes are exercised under honcho in tests/test_end_to_end.py)."""
from __future__ import annotations

import os
import signal

import pytest
import redis
from rq.exceptions import StopRequested

from workers import runner


@pytest.fixture(autouse=True)
def fast_and_restored(monkeypatch):
    monkeypatch.setattr(runner, "RETRY_FIRST_S", 0.01)
    monkeypatch.setattr(runner, "RETRY_MAX_S", 0.02)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class FlakyRedis:
    """``ping`` fails ``down`` times, then answers."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.pings = 0

    def ping(self) -> bool:
        self.pings += 1
        if self.pings <= self.down:
            raise redis.ConnectionError("Error 111 connecting to var/redis.sock. Connection refused.")
        return True


def test_worker_waits_for_redis_and_starts_again(monkeypatch, caplog):
    runs = []

    class Worker:
        def __init__(self, queues, connection) -> None:
            self._shutdown_requested_date = None
            self.pubsub_thread = None

        def work(self, **options) -> bool:
            runs.append(options)
            if len(runs) == 1:  # e.g. register_birth or the teardown while Redis is away
                raise redis.ConnectionError("Connection closed by server.")
            self._shutdown_requested_date = "now"  # then stopped by SIGTERM, as RQ records it
            return True

    monkeypatch.setattr(runner, "PromptWorker", Worker)
    monkeypatch.setattr(runner, "Queue", lambda name, connection: name)
    conn = FlakyRedis(down=3)
    assert runner.run_worker(conn, "taskhub") == 0
    assert len(runs) == 2 and conn.pings == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "taskhub.runner"]
    assert len(lines) == 2 and "worker: Redis unavailable (ConnectionError" in lines[0]
    assert "worker: Redis is back" in lines[1]


def test_worker_that_quits_while_redis_answers_still_exits_1(monkeypatch):
    class Worker:
        def __init__(self, queues, connection) -> None:
            self._shutdown_requested_date = None

        def work(self, **options) -> bool:
            return False  # RQ logged "found an unhandled exception, quitting"

    monkeypatch.setattr(runner, "PromptWorker", Worker)
    monkeypatch.setattr(runner, "Queue", lambda name, connection: name)
    assert runner.run_worker(FlakyRedis(down=0), "taskhub") == 1


def test_scheduler_waits_for_redis_keeps_its_schedule_and_stops_on_sigterm():
    starts = []

    class Scheduler:
        def _install_signal_handlers(self) -> None:
            raise AssertionError("replaced by the runner")

        def start(self) -> None:
            self._install_signal_handlers()
            starts.append(self)
            if len(starts) == 1:
                raise redis.ConnectionError("Error 111 connecting to var/redis.sock. Connection refused.")
            os.kill(os.getpid(), signal.SIGTERM)  # CronScheduler.start catches the StopRequested this raises
            raise AssertionError("not reached")

    built = []
    conn = FlakyRedis(down=2)
    assert runner.run_scheduler(conn, lambda c: built.append(c) or Scheduler()) == 0
    assert built == [conn] and len(starts) == 2 and starts[0] is starts[1]  # same object: same schedule


def test_a_signal_while_waiting_for_redis_stops_the_scheduler():
    class Scheduler:
        def start(self) -> None:  # as CronScheduler.start: handlers, loop, finally register_death
            self._install_signal_handlers()
            try:
                os.kill(os.getpid(), signal.SIGTERM)
            except StopRequested:
                pass
            raise redis.ConnectionError("Connection closed by server.")  # register_death, Redis being away

    assert runner.run_scheduler(FlakyRedis(down=10**6), lambda c: Scheduler()) == 0


def test_rq_tracebacks_for_redis_errors_become_one_line():
    import logging

    record = logging.LogRecord("rq.worker", logging.ERROR, __file__, 1, "Worker %s: found an unhandled exception",
                               ("w1",), None)
    try:
        raise redis.ConnectionError("Connection closed by server.")
    except redis.ConnectionError:
        import sys
        record.exc_info = sys.exc_info()
    assert runner.OneLineRedisErrors().filter(record)
    assert record.exc_info is None
    assert record.getMessage() == ("Worker w1: found an unhandled exception"
                                   " (ConnectionError: Connection closed by server.)")


def test_a_job_that_failed_on_a_redis_error_is_logged_in_one_line():
    import logging

    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    r.ping()\n"
             "redis.exceptions.ConnectionError: Error 111 connecting to var/redis.sock. Connection refused.\n")
    record = logging.LogRecord("rq.worker", logging.ERROR, __file__, 1,
                               "Worker %s: job %s: exception raised while executing (%s)\n%s",
                               ("w1", "j1", "workers.jobs.sweep_leases", trace), None)
    assert runner.OneLineRedisErrors().filter(record)
    assert record.getMessage() == ("Worker w1: job j1: exception raised while executing (workers.jobs.sweep_leases) "
                                   "redis.exceptions.ConnectionError: Error 111 connecting to var/redis.sock. "
                                   "Connection refused.")
    other = trace.replace("redis.exceptions.ConnectionError", "ValueError")
    record = logging.LogRecord("rq.worker", logging.ERROR, __file__, 1, "%s", (other,), None)
    assert runner.OneLineRedisErrors().filter(record) and record.getMessage() == other  # other errors untouched


def test_the_worker_stops_its_pubsub_thread_within_a_second_or_so(real_redis_socket):
    """RQ's teardown unsubscribes, then stops the pubsub thread, and redis-py joins it with no
    timeout. A thread that has seen the unsubscribe waits out its wake-up interval first: with
    RQ's 60 s, ``taskhub worker`` was seen stuck there for 10 s after SIGTERM (py-spy), and
    honcho SIGKILLs after 5 s. PromptWorker's thread wakes every PUBSUB_WAKE_S."""
    import threading
    import time

    from rq import Queue

    conn = redis.Redis(unix_socket_path=str(real_redis_socket))
    worker = runner.PromptWorker([Queue("runner-test", connection=conn)], connection=conn)
    worker.subscribe()
    thread = worker.pubsub_thread
    try:
        deadline = time.monotonic() + 5
        while not worker.pubsub.subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.pubsub.subscribed
        worker.pubsub.unsubscribe()
        while worker.pubsub.subscribed and time.monotonic() < deadline:  # the thread reads the reply
            time.sleep(0.01)
        assert not worker.pubsub.subscribed
        time.sleep(0.1)  # now it waits for a subscription, up to its wake-up interval
        stopper = threading.Thread(target=thread.stop)
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=3)  # honcho's patience is 5 s
        assert not stopper.is_alive(), "the pubsub thread did not stop within 3 s"
        assert not thread.is_alive()
        assert time.monotonic() - started <= 3
    finally:
        thread._running.clear()
        worker.pubsub.close()
