"""A/B of two web processes: one endpoint's req/s in alternating runs against one Redis.

Run from the repo root: ``python bench/ab_http.py --endpoint complete --b-env '{"TASKHUB_ACCESS_LOG": "0"}'``
or ``python bench/ab_http.py --b-root ../other-checkout`` (``--help`` for knobs). Needs ``wrk``.

Why: on this shared 2-core machine two 5-second runs of the same endpoint of the same
app differ by up to a fifth (this script with A and B the same app: B/A from 0.849
to 1.185 over 6 rounds, 2026-12-06), so a change worth a few percent is invisible
in one ``bench/http.py`` run. Here the unchanged app (A) and the changed one (B) run side by
side: one redis-server, two ``taskhub web`` processes as ``bench/http.py`` starts them,
A from this checkout as configured, B with ``--b-env`` added to its environment and/or
from another checkout (``--b-root``, e.g. a ``git worktree``; its Redis data format must
be this checkout's, which prepares the tasks). Each round measures A and B, in
alternating order, each on a fresh Redis and its own task list as ``bench/http.py``
does (new web processes every round, each warmed up by an untimed second), then the
bare route; the median over rounds of B/A is the answer (the runs of a
round are seconds apart, so drift cancels).

Besides req/s and cores, each run shows the web process's batches to Redis (from its
``/metrics``: ``taskhub_redis_roundtrip_seconds{source="batch"}``): how many requests
a batch carried and how long its round trip took. Complete is limited by that round
trip, not by CPU (BENCHMARKS.md, "Why complete is short"). Nothing is written to
BENCHMARKS.md: an A/B is an experiment, quoted with its command where it is used.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python bench/ab_http.py``, Python puts bench/ first on sys.path, where
# bench/http.py would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import urllib.request  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

from bench.common import RedisServer, Uvicorn, auto_http_loop, init_worker, taskhub_web  # noqa: E402
from bench.http import BY_NAME, ENDPOINTS, NAMESPACE, Fixture, WrkResult, check_moved, cpu_seconds, run_wrk  # noqa: E402

BATCH_SUM = 'taskhub_redis_roundtrip_seconds_sum{source="batch"}'
BATCH_COUNT = 'taskhub_redis_roundtrip_seconds_count{source="batch"}'


def batches(web: Uvicorn) -> tuple[float, float]:
    """(seconds, count) of the web process's Redis batches so far, from its /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{web.port}/metrics", timeout=10).read().decode()
    seconds = count = 0.0
    for line in text.splitlines():
        if line.startswith(BATCH_SUM):
            seconds = float(line.split()[-1])
        elif line.startswith(BATCH_COUNT):
            count = float(line.split()[-1])
    return seconds, count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="complete", choices=[e.name for e in ENDPOINTS[1:]])
    p.add_argument("--rounds", type=int, default=6, help="rounds of A, B and bare (default 6)")
    p.add_argument("--duration", type=int, default=5, help="seconds measured per run (default 5)")
    p.add_argument("--a-env", default="{}", help="JSON object added to A's environment (default {})")
    p.add_argument("--b-env", default="{}", help="JSON object added to B's environment (default {})")
    p.add_argument("--b-root", default=None, help="another checkout to run as B (default this one)")
    p.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    p.add_argument("--headroom", type=float, default=1.6, help="task lists hold headroom x duration x rate")
    a = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench/ab_http.py needs wrk: apt-get update && apt-get install -y wrk", file=sys.stderr)
        return 2
    a_env, b_env = json.loads(a.a_env), json.loads(a.b_env)
    b_root = Path(a.b_root).resolve() if a.b_root else ROOT
    http_impl, loop = auto_http_loop()
    ep = BY_NAME[a.endpoint]

    rs = RedisServer()
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker,
                               initargs=(str(rs.sock),))
    servers: list[Uvicorn] = []
    try:
        def start(name: str) -> Uvicorn:
            env, root = (a_env, ROOT) if name == "A" else (b_env, b_root)
            return taskhub_web(rs.url, NAMESPACE, rs.dir, http=http_impl, loop=loop, env=env, root=root, tag=name)

        webs: dict[str, Uvicorn] = {}
        bare = Uvicorn("bench.bare_app:app", {}, rs.dir, "bare", http=http_impl, loop=loop)
        servers = [bare]
        print(f"A: {ROOT} {a_env or ''}\nB: {b_root} {b_env or ''}\n"
              f"{ep.label}: wrk -t{a.threads} -c{a.connections}, {a.duration} s a run after a 1 s untimed one, "
              f"{a.rounds} rounds; uvicorn --http {http_impl} --loop {loop}", flush=True)
        fx = Fixture(rs, pool, "varied", rs.dir)
        rates: dict[str, list[float]] = {"A": [], "B": [], "bare": []}
        expected = 15_000.0

        def run(name: str, web: Uvicorn, seconds: int) -> tuple[WrkResult, str]:
            """One wrk run of ``name`` on a fresh Redis and its own task list; the result and a detail line."""
            nonlocal expected
            fx.fresh()
            target, key, ids = (BY_NAME["bare"], "", None) if name == "bare" else (ep, fx.key, None)
            if name != "bare" and ep.ids == "transition":
                ids = fx.transition_ids(ep, seconds, expected, a.headroom, name, a.threads)
            elif name != "bare" and ep.ids in ("tasks", "folders"):
                ids = fx.cycle_ids(ep)
            before = batches(web) if name != "bare" else (0.0, 0.0)
            cpu0 = (cpu_seconds(web.proc.pid), cpu_seconds(rs.proc.pid))
            res = run_wrk(a, web.port, target, key, ids, ep.ids in ("tasks", "folders"), seconds)
            cpu = (cpu_seconds(web.proc.pid), cpu_seconds(rs.proc.pid))
            after = batches(web) if name != "bare" else (0.0, 0.0)
            if name != "bare":
                check_moved(fx, ep, res.ok, 1, a.connections)  # the run's 2xx answers were real transitions
                expected = max(expected, res.rate) * (1.5 if res.exhausted else 1.0)
            if res.bad:
                print(f"  {name}: {res.bad} non-2xx answers {res.codes} {res.sample[:120]!r}", flush=True)
            n_batches = after[1] - before[1]
            detail = (f"cores: web {(cpu[0] - cpu0[0]) / res.seconds:.2f} redis {(cpu[1] - cpu0[1]) / res.seconds:.2f}"
                      + (f"  {res.ok / n_batches:5.1f} requests a batch, round trip "
                         f"{(after[0] - before[0]) / n_batches * 1e6:5.0f} us" if n_batches else ""))
            return res, detail

        for r in range(1, a.rounds + 1):
            order = ["A", "B"] if r % 2 else ["B", "A"]
            # New web processes every round, started in the round's order, each warmed up by an
            # untimed run: a process keeps whatever the scheduler and its own start gave it (an
            # A/A run with the same two processes throughout had B 14 % slower, 5 rounds of 6).
            for web in webs.values():
                servers.remove(web)
                web.stop()
            webs = {name: start(name) for name in order}
            servers += webs.values()
            got: dict[str, float] = {}
            for name in [*order, "bare"]:
                web = bare if name == "bare" else webs[name]
                run(name, web, 1)  # untimed
                res, detail = run(name, web, a.duration)
                if res.exhausted:
                    print(f"  round {r} {name}: a wrk thread used up its task list; the round does not count",
                          flush=True)
                    break
                got[name] = res.rate
                print(f"  round {r} {name:4} {res.rate:9,.0f} req/s  {detail}", flush=True)
            if len(got) == 3:
                for name, rate in got.items():
                    rates[name].append(rate)
        pairs = [b / a_ for a_, b in zip(rates["A"], rates["B"])]
        print(f"B/A per round: {', '.join(f'{q:.3f}' for q in pairs)}; median {statistics.median(pairs):.3f}")
        for name in ("A", "B"):
            print(f"{name}: median {statistics.median(rates[name]):,.0f} req/s, "
                  f"{statistics.median(x / y for x, y in zip(rates[name], rates['bare'])):.3f} of the bare run "
                  "of its round (median)")
    finally:
        for s in servers:
            s.stop()
        pool.shutdown()
        rs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
