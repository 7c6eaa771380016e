"""``taskhub``: the operator's command line, and the entry points the Procfile runs.

Process commands: ``redis`` (the embedded Redis, foreground), ``web``,
``worker``, ``scheduler``. Operator commands talk to the engine directly on
the same Redis (``REDIS_URL`` or the embedded one): ``server ...``,
``import FILE.json``, ``request show|cancel``, ``task cancel``, ``folder release``
(stacking); ``devices create|list|stats`` (device tasks, ``--json`` for
scripts); ``agent --simulate N`` runs a simulated device agent over HTTP;
``user``, ``channel``, ``price``, ``quota`` manage the task center and
``sandbox`` runs a local suno-compatible platform (``--json`` everywhere).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any, Iterable

import orjson

from engine.connection import ConfigError, EmbeddedRedisError
from engine.errors import EngineError


def _engine():
    from engine import Engine

    return Engine.from_env()


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


# ---- processes ---------------------------------------------------------------
# The Procfile's `redis` line restarts a server that dies, but not forever: a server
# that keeps dying (corrupt AOF, full disk, OOM) is a fault for an operator, and
# exiting 1 makes honcho stop the system instead of looping.
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0


def _sync_fsync(sock: Any, policy: str) -> None:
    """Give a server this process adopted (started by another process) the configured appendfsync."""
    import redis

    client = redis.Redis(unix_socket_path=str(sock))
    try:
        current = client.config_get("appendfsync").get("appendfsync")
        if current != policy:
            client.config_set("appendfsync", policy)
            print(f"embedded redis: appendfsync {current} -> {policy} (TASKHUB_FSYNC)", flush=True)
    finally:
        client.close()


def cmd_redis(args: argparse.Namespace) -> int:
    """Run (or adopt) the embedded Redis, restart it when it dies, save and stop it when signalled.

    A death, or a start that fails because the new server exits at once, is
    restarted within bounds (RESTART_LIMIT within RESTART_WINDOW_S), each with
    a logged reason. A live server that never answers is not restarted (that
    would mean two servers): the error ends this process. While this watches,
    the other processes keep running: the web answers 503 and the workers wait
    until the server is back.
    """
    if os.environ.get("REDIS_URL"):
        print("REDIS_URL is set: no embedded Redis to run; idling so the Procfile stays up", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    from collections import deque

    from engine.connection import (ServerExited, StartInterrupted, embedded_pid, ensure_embedded, exit_description,
                                   fsync_policy, is_embedded_server, stop_embedded, var_dir)

    if args.stop:
        pid = stop_embedded()
        print(f"embedded redis (pid {pid}) stopped (data saved)" if pid else "no embedded redis was running")
        return 0
    policy = fsync_policy()
    stop = {"now": False}

    def on_signal(signum: int, frame: Any) -> None:
        stop["now"] = True  # never raise here: a start in progress must record its pid first

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    restarts: deque[float] = deque()
    pid: int | None = None
    failure: str | None = None  # why no server runs although one was running or being started
    started = False
    try:
        while not stop["now"]:
            if pid is not None and is_embedded_server(pid):
                time.sleep(0.2)
                continue
            if pid is not None:
                failure = f"embedded redis (pid {pid}) died ({exit_description(pid)})"
            if failure is not None:
                now = time.monotonic()
                while restarts and now - restarts[0] > RESTART_WINDOW_S:
                    restarts.popleft()
                if len(restarts) >= RESTART_LIMIT:
                    print(f"{failure} after {RESTART_LIMIT} restarts within {RESTART_WINDOW_S:g} s; giving up, "
                          f"see {var_dir() / 'redis.log'}", file=sys.stderr, flush=True)
                    return 1
                restarts.append(now)
                print(f"{failure}; restarting it (restart {len(restarts)} of at most {RESTART_LIMIT} within "
                      f"{RESTART_WINDOW_S:g} s)", flush=True)
            try:
                sock = ensure_embedded(cancel=lambda: stop["now"])
            except ServerExited as exc:
                pid, failure = None, f"embedded redis did not start ({exc})"
                time.sleep(0.5)
                continue
            pid = embedded_pid()
            failure = None if pid else "embedded redis exited right after it started"
            if pid:
                _sync_fsync(sock, policy)
                print(f"embedded redis {'restarted ' if started else ''}(pid {pid}) on unix://{sock}, "
                      f"data in {var_dir()}, appendfsync {policy}", flush=True)
                started = True
    except StartInterrupted:
        pass
    stopped = stop_embedded()
    print(f"embedded redis (pid {stopped}) stopped (data saved)" if stopped else "embedded redis was not running",
          flush=True)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    import uvicorn

    from api.metrics import prepare_multiprocess
    from engine.connection import var_dir
    prepare_multiprocess(args.workers, var_dir())  # several workers: /metrics sums their samples
    uvicorn.run("api.app:main_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                access_log=False, log_level="info")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """RQ worker; keeps running while Redis is away (workers/runner.py)."""
    from engine.connection import connect
    from workers.jobs import QUEUE
    from workers.runner import run_worker

    from api.app import configure_logging

    configure_logging()
    # RQ logs several lines per job; ours logs one (workers.jobs), so RQ's go to WARNING.
    return run_worker(connect(), QUEUE)


def cmd_scheduler(args: argparse.Namespace) -> int:
    """RQ's CronScheduler; keeps running while Redis is away (workers/runner.py)."""
    from engine.connection import connect
    from workers.runner import run_scheduler
    from workers.scheduler import build

    from api.app import configure_logging

    configure_logging()
    return run_scheduler(connect(), build)


# ---- operator commands ---------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    eng = _engine()
    if args.action == "create":
        created = eng.servers.create(args.name, args.services, args.max_threads)
        _print(created)
        print("store the api_key now: it is not kept and cannot be shown again", file=sys.stderr)
    elif args.action == "list":
        _print(eng.servers.list())
    elif args.action == "status":
        eng.servers.set_status(args.id, args.status)
        _print(eng.servers.get(args.id))
    elif args.action == "delete":
        eng.servers.delete(args.id)
        print(f"deleted {args.id}")
    return 0


def _requests_in(path: str) -> list[dict]:
    with open(path, "rb") as fh:
        data = orjson.loads(fh.read())
    return data if isinstance(data, list) else [data]


def _task_count(doc: Any) -> int:
    folders = doc.get("folders") if isinstance(doc, dict) else None
    return sum(len(f.get("tasks") or []) for f in folders if isinstance(f, dict)) if isinstance(folders, list) else 0


def cmd_import(args: argparse.Namespace) -> int:
    """Import one request, or a list of them, from a JSON file; each request is atomic."""
    from tqdm import tqdm

    eng = _engine()
    docs = _requests_in(args.file)
    failed = 0
    with tqdm(total=sum(_task_count(d) for d in docs), unit="task", disable=args.quiet) as bar:
        for i, doc in enumerate(docs):
            done = bar.n
            try:
                result = eng.stacking.create_request(doc, progress=bar.update)
                tqdm.write(f"request {result['request_id']}: {result['folders']} folders, {result['tasks']} tasks")
            except EngineError as exc:
                failed += 1
                tqdm.write(f"request #{i} refused: {exc.message}")
            bar.update(done + _task_count(doc) - bar.n)  # a refused request's tasks count as handled
    return 1 if failed else 0


def cmd_stats(args: argparse.Namespace) -> int:
    eng = _engine()
    servers = eng.servers.list()
    _print({"tasks": eng.stacking.stats(),
            "servers": {"total": len(servers), "online": sum(1 for s in servers if s["online"])}})
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    eng = _engine()
    if args.action == "show":
        _print(eng.stacking.request(args.id))
    elif args.action == "cancel":
        print(f"cancelled {eng.stacking.cancel_request(args.id)} tasks")
    return 0


def cmd_task(args: argparse.Namespace) -> int:
    _engine().stacking.cancel_task(args.id)
    print(f"cancelled {args.id}")
    return 0


def cmd_folder(args: argparse.Namespace) -> int:
    released = _engine().stacking.release_folder(args.id)
    print(f"released {args.id}" if released else f"{args.id} was not bound to a server")
    return 0


# ---- device tasks ----------------------------------------------------------------
def _show(args: argparse.Namespace, data: Any, lines: Iterable[str]) -> None:
    if args.json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        for line in lines:
            print(line)


def cmd_devices(args: argparse.Namespace) -> int:
    devices = _engine().devices
    if args.action == "create":
        with open(args.file, "rb") as f:
            doc = orjson.loads(f.read())
        bodies = doc if isinstance(doc, list) else [doc]
        created: list[int] = []
        for body in bodies:
            created += devices.create(body, source="ui")["task_ids"]
        _show(args, {"task_ids": created, "created_count": len(created)},
              [f"created {len(created)} tasks: {', '.join(map(str, created))}"])
    elif args.action == "list":
        page = devices.list(status=args.status, serial=args.serial, script_name=args.script, source=args.source,
                            page=args.page, page_size=args.page_size)
        names = ("pending", "running", "completed", "failed")
        _show(args, page, [f"{t['id']:>8} {names[t['status']]:<9} {t['serial']:<16} {t['username'] or '-':<16} "
                           f"{t['script_name']:<14} {t['remark']}" for t in page["items"]]
              + [f"page {page['page']}: {len(page['items'])} of {page['total']}"])
    elif args.action == "stats":
        stats = devices.stats()
        _show(args, stats, [f"{k:<10} {v}" for k, v in stats.items()])
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    """A simulated agent: N phones that run what they claim (workers/agent.py)."""
    from workers import agent

    from api.app import configure_logging

    configure_logging()
    return agent.main(args.url, args.token, args.simulate, interval=args.interval, min_s=args.min_seconds,
                      max_s=args.max_seconds, fail_rate=args.fail_rate, prefix=args.prefix, agent=args.name)


# ---- task center -------------------------------------------------------------------
def cmd_user(args: argparse.Namespace) -> int:
    tasks = _engine().tasks
    if args.action == "create":
        created = tasks.create_user(args.name, args.quota, args.role)
        _show(args, created, [f"user {args.name}: id {created['id']}",
                              f"access_token {created['access_token']}  (management API; shown once)",
                              f"api_key      {created['api_key']}  (POST /suno/submit; shown once)"])
    elif args.action == "list":
        users = tasks.users()
        _show(args, users, [f"{u['id']:>6} {u['username']:<20} role {u['role']:<3} "
                            f"{'enabled' if u['status'] == 1 else 'disabled':<8} quota {u['quota']:>12} "
                            f"used {u['used_quota']}" for u in users])
    elif args.action in ("enable", "disable"):
        uid = tasks.user_id(args.user)
        tasks.set_user(uid, status=f"{args.action}d")
        _show(args, tasks.user(uid), [f"user {uid} {args.action}d"])
    elif args.action == "token":
        created = tasks.create_token(tasks.user_id(args.user), args.name, args.quota)
        _show(args, created, [f"api_key {created['api_key']}  (shown once)"])
    return 0


def cmd_channel(args: argparse.Namespace) -> int:
    tasks = _engine().tasks
    if args.action == "add":
        cid = tasks.add_channel(args.platform, args.base_url, args.key, args.weight, True, args.name or "")
        _show(args, {"id": cid}, [f"channel {cid} added"])
    elif args.action == "list":
        rows = tasks.channel_views()
        _show(args, rows, [f"{c['id']:>4} {c['platform']:<8} {c['status']:<8} w={c['weight']:<5} {c['base_url']}"
                           f" {c['name']}" for c in rows])
    elif args.action in ("enable", "disable"):
        tasks.set_channel(int(args.id), enabled=args.action == "enable")
        _show(args, {"id": int(args.id), "status": f"{args.action}d"}, [f"channel {args.id} {args.action}d"])
    elif args.action == "delete":
        tasks.delete_channel(int(args.id))
        _show(args, {"id": int(args.id), "deleted": True},
              [f"channel {args.id} deleted (its unfinished tasks fail and are refunded at the next poll)"])
    return 0


def cmd_price(args: argparse.Namespace) -> int:
    tasks = _engine().tasks
    if args.action == "set":
        tasks.set_price(args.platform, args.act, args.quota)
    prices = tasks.prices()
    _show(args, prices, [f"{k:<16} {v}" for k, v in sorted(prices.items())])
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    tasks = _engine().tasks
    if args.action == "grant":
        uid = tasks.user_id(args.user)
        quota = tasks.grant(uid, args.amount)
        _show(args, {"user_id": uid, "quota": quota}, [f"user {uid}: quota {quota}"])
        return 0
    rows = tasks.audit()
    ok = all(r["ok"] for r in rows)
    _show(args, {"ok": ok, "users": rows},
          [f"{'ok ' if r['ok'] else 'BAD'} user {r['user_id']} {r['username']}: quota {r['quota']} = grants "
           f"{r['granted']} - charges {r['charged']} + refunds {r['refunded']}; used {r['used_quota']}"
           + ("" if r["ok"] else "; " + "; ".join(r["problems"])) for r in rows]
          + [f"{len(rows)} users, {'all balance' if ok else 'NOT ALL BALANCE'}"
             + ("" if not rows or rows[0]["ledger_stream_checked"] else " (ledger stream trimmed: totals only)")])
    return 0 if ok else 1


def cmd_sandbox(args: argparse.Namespace) -> int:
    """The local suno-compatible platform; registers itself as the suno channel when there is none."""
    import uvicorn

    from api.sandbox import create_sandbox_app

    url = f"http://{args.host}:{args.port}"
    if not args.no_register:
        cid = _engine().tasks.add_channel("suno", url, args.key, 1, True, "sandbox", only_if_none=True)
        what = f"registered as suno channel {cid}" if cid else "suno already has a channel; not registering"
        print(f"sandbox: {what} ({url})", flush=True)
    app = create_sandbox_app(duration_s=args.duration, fail_rate=args.fail_rate, error_rate=args.error_rate,
                             key=args.key)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="taskhub", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    red = sub.add_parser("redis", help="run the embedded Redis in the foreground (saved and stopped on exit)")
    red.add_argument("--stop", action="store_true", help="save and stop a running embedded Redis, then exit")
    red.set_defaults(func=cmd_redis)
    sub.add_parser("stats", help="task counts by status, and servers").set_defaults(func=cmd_stats)
    web = sub.add_parser("web", help="serve the HTTP API")
    web.add_argument("--host", default=os.environ.get("TASKHUB_HOST", "127.0.0.1"))
    web.add_argument("--port", type=int, default=int(os.environ.get("TASKHUB_PORT", "8000")))
    web.add_argument("--workers", type=int, default=int(os.environ.get("TASKHUB_WEB_WORKERS", "1")))
    web.set_defaults(func=cmd_web)
    sub.add_parser("worker", help="run an RQ worker on taskhub's queue").set_defaults(func=cmd_worker)
    sub.add_parser("scheduler", help="enqueue the periodic jobs").set_defaults(func=cmd_scheduler)

    server = sub.add_parser("server", help="manage worker servers")
    ssub = server.add_subparsers(dest="action", required=True)
    create = ssub.add_parser("create", help="create a server and print its API key once")
    create.add_argument("name")
    create.add_argument("--services", default="stacking", help="comma list (default: stacking)")
    create.add_argument("--max-threads", type=int, default=10)
    ssub.add_parser("list")
    status = ssub.add_parser("status")
    status.add_argument("id")
    status.add_argument("status", choices=["online", "offline", "maintenance"])
    delete = ssub.add_parser("delete")
    delete.add_argument("id")
    server.set_defaults(func=cmd_server)

    imp = sub.add_parser("import", help="import stacking requests from a JSON file")
    imp.add_argument("file")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    req = sub.add_parser("request", help="stacking requests")
    rsub = req.add_subparsers(dest="action", required=True)
    for action in ("show", "cancel"):
        rsub.add_parser(action).add_argument("id")
    req.set_defaults(func=cmd_request)
    task = sub.add_parser("task", help="stacking tasks")
    task.add_subparsers(dest="action", required=True).add_parser("cancel").add_argument("id")
    task.set_defaults(func=cmd_task)
    folder = sub.add_parser("folder", help="stacking folders")
    folder.add_subparsers(dest="action", required=True).add_parser("release").add_argument("id")
    folder.set_defaults(func=cmd_folder)

    dev = sub.add_parser("devices", help="device tasks: create, list, stats")
    dsub = dev.add_subparsers(dest="action", required=True)
    dcreate = dsub.add_parser("create", help="create tasks from a JSON file: one POST /api/v1/task body, or a list")
    dcreate.add_argument("file")
    dlist = dsub.add_parser("list", help="one page of tasks, newest first")
    dlist.add_argument("--status", choices=["0", "1", "2", "3"])
    dlist.add_argument("--serial")
    dlist.add_argument("--script")
    dlist.add_argument("--source", choices=["api", "ui"])
    dlist.add_argument("--page", default="1")
    dlist.add_argument("--page-size", default="20")
    dsub.add_parser("stats", help="task counts by status")
    for parser in (dcreate, dlist, dsub.choices["stats"]):
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    dev.set_defaults(func=cmd_devices)

    agent = sub.add_parser("agent", help="run a simulated device agent against the device API")
    agent.add_argument("--simulate", type=int, required=True, metavar="N", help="number of simulated devices")
    agent.add_argument("--url", default=os.environ.get(
        "TASKHUB_AGENT_URL", f"http://127.0.0.1:{os.environ.get('TASKHUB_PORT', '8000')}"))
    agent.add_argument("--token", default=os.environ.get("TASKHUB_DEVICE_TOKEN", ""))
    agent.add_argument("--prefix", default="sim", help="serials are <prefix>-001 ... (default sim)")
    agent.add_argument("--name", default="simulator", help="agent name recorded on claims")
    agent.add_argument("--interval", type=float, default=2.0, help="seconds between heartbeat+claim rounds")
    agent.add_argument("--min-seconds", type=float, default=2.0)
    agent.add_argument("--max-seconds", type=float, default=10.0)
    agent.add_argument("--fail-rate", type=float, default=0.1)
    agent.set_defaults(func=cmd_agent)

    user = sub.add_parser("user", help="task center users")
    usub = user.add_subparsers(dest="action", required=True)
    ucreate = usub.add_parser("create", help="create a user; prints id, access_token and a first api_key once")
    ucreate.add_argument("name")
    ucreate.add_argument("--quota", type=int, default=0)
    ucreate.add_argument("--role", choices=["common", "admin", "root"], default="common")
    ulist = usub.add_parser("list")
    uen, udis = usub.add_parser("enable"), usub.add_parser("disable")
    utoken = usub.add_parser("token", help="another API token (sk-...) for a user, optionally with its own quota")
    for parser in (uen, udis, utoken):
        parser.add_argument("user", help="user id or name")
    utoken.add_argument("--name", default="")
    utoken.add_argument("--quota", type=int, default=None, help="the token's own quota (default: unlimited)")
    user.set_defaults(func=cmd_user)

    chan = sub.add_parser("channel", help="task center upstream channels")
    csub = chan.add_subparsers(dest="action", required=True)
    cadd = csub.add_parser("add")
    cadd.add_argument("--platform", default="suno")
    cadd.add_argument("--base-url", required=True)
    cadd.add_argument("--key", default="")
    cadd.add_argument("--weight", type=int, default=1)
    cadd.add_argument("--name", default="")
    clist = csub.add_parser("list")
    cparsers = [csub.add_parser(a) for a in ("enable", "disable", "delete")]
    for parser in cparsers:
        parser.add_argument("id")
    chan.set_defaults(func=cmd_channel)

    price = sub.add_parser("price", help="quota per platform and action")
    psub = price.add_subparsers(dest="action", required=True)
    pset = psub.add_parser("set")
    pset.add_argument("platform")
    pset.add_argument("act", metavar="action")
    pset.add_argument("quota", type=int)
    plist = psub.add_parser("list")
    price.set_defaults(func=cmd_price)

    quota = sub.add_parser("quota", help="grant quota; audit every user's balance against the ledger")
    qsub = quota.add_subparsers(dest="action", required=True)
    qgrant = qsub.add_parser("grant", help="add (negative: take back) quota")
    qgrant.add_argument("user", help="user id or name")
    qgrant.add_argument("amount", type=int)
    qaudit = qsub.add_parser("audit", help="exit 1 when any user does not balance")
    quota.set_defaults(func=cmd_quota)
    for parser in (ucreate, ulist, uen, udis, utoken, cadd, clist, *cparsers, pset, plist, qgrant, qaudit):
        parser.add_argument("--json", action="store_true", help="print JSON instead of text")

    sandbox = sub.add_parser("sandbox", help="run a local suno-compatible platform (demo channel)")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=int(os.environ.get("TASKHUB_SANDBOX_PORT", "8100")))
    sandbox.add_argument("--duration", type=float, default=float(os.environ.get("TASKHUB_SANDBOX_DURATION", "20")),
                         help="seconds a job takes (default 20)")
    sandbox.add_argument("--fail-rate", type=float,
                         default=float(os.environ.get("TASKHUB_SANDBOX_FAIL_RATE", "0.1")))
    sandbox.add_argument("--error-rate", type=float,
                         default=float(os.environ.get("TASKHUB_SANDBOX_ERROR_RATE", "0")),
                         help="share of submits answered 503 (to see retries)")
    sandbox.add_argument("--key", default=os.environ.get("TASKHUB_SANDBOX_KEY", ""))
    sandbox.add_argument("--no-register", action="store_true", help="do not register as the suno channel")
    sandbox.set_defaults(func=cmd_sandbox)
    return p


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        return args.func(args) or 0
    except EngineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except (ConfigError, EmbeddedRedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
