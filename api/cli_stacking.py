"""``taskhub`` commands of the stacking contract's operator side (api/admin.py, stacking.md).

Each command calls the engine method its admin endpoint calls and prints the
same data (``--json``) or a human rendering of it: ``server
create|list|show|status|delete``, ``stats``, ``import FILE``, ``request
show|cancel``, ``task cancel``, ``folder release``.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from engine.errors import EngineError, Unavailable

from .cli_support import JSON_FLAG, NEGATIVE, PROGRESS_FLAGS, emit, item_error, progress, read_json_file, \
    write_above

Engine = Callable[[], Any]


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if ms else "never"


def _server_lines(servers: list[dict]) -> list[str]:
    return [f"{s['id']:<14} {s['name']:<20} {s['status']:<11} {'online' if s['online'] else 'offline':<7} "
            f"active {s['active_tasks']}/{s['max_threads']}  heartbeat {_when(s['last_heartbeat_ms'])}  "
            f"{','.join(s['services'])}" for s in servers]


def cmd_server(args: argparse.Namespace, engine: Engine) -> int:
    servers = engine().servers
    if args.action == "create":
        created = servers.create(args.name, args.services, args.max_threads)
        emit(args, created, [f"server {created['id']} created", f"api_key {created['api_key']}"])
        if not args.json:
            print("store the api_key now: it is not kept and cannot be shown again", file=sys.stderr)
    elif args.action == "list":
        rows = servers.list()
        emit(args, rows, _server_lines(rows) + [f"{len(rows)} servers, {sum(s['online'] for s in rows)} online"])
    elif args.action == "show":
        emit(args, servers.get(args.id))
    elif args.action == "status":
        previous = servers.set_status(args.id, args.status)
        emit(args, {"id": args.id, "status": args.status, "previous": previous},
             [f"server {args.id}: {previous} -> {args.status}"])
    elif args.action == "delete":
        servers.delete(args.id)
        emit(args, {"id": args.id, "deleted": True}, [f"deleted {args.id}"])
    return 0


def cmd_stats(args: argparse.Namespace, engine: Engine) -> int:
    eng = engine()
    servers = eng.servers.list()
    data = {"tasks": eng.stacking.stats(),
            "servers": {"total": len(servers), "online": sum(1 for s in servers if s["online"])}}
    emit(args, data, [f"{k:<12} {v}" for k, v in sorted(data["tasks"].items())]
         + [f"servers      {data['servers']['total']} ({data['servers']['online']} online)"])
    return 0


def _task_count(doc: Any) -> int:
    folders = doc.get("folders") if isinstance(doc, dict) else None
    return sum(len(f.get("tasks") or []) for f in folders if isinstance(f, dict)) if isinstance(folders, list) else 0


def cmd_import(args: argparse.Namespace, engine: Engine) -> int:
    """One request, or a list of them, from a JSON file; each request is atomic (all or nothing).

    A single request that is refused exits with its error's code; in a list,
    a refused request is reported, the others are stored, and the exit code is 1.
    """
    eng = engine()
    doc = read_json_file(args.file)
    single = not isinstance(doc, list)
    docs = [doc] if single else doc
    results: list[dict] = []
    with progress(args, sum(_task_count(d) for d in docs), "task") as bar:
        for i, doc in enumerate(docs):
            before = bar.n
            try:
                result = eng.stacking.create_request(doc, progress=bar.update)
            except EngineError as exc:
                if single or isinstance(exc, Unavailable):
                    raise
                results.append(item_error(i, exc))
                if not args.json:
                    write_above(bar, f"request #{i} refused: {exc.message}")
            else:
                results.append(result)
                if not args.json:
                    write_above(bar, f"request {result['request_id']}: {result['folders']} folders, "
                                     f"{result['tasks']} tasks")
            bar.update(before + _task_count(doc) - bar.n)  # a refused request's tasks count as handled
    refused = sum(1 for r in results if "error" in r)
    if args.json:
        emit(args, results[0] if single else {"requests": results, "created": len(results) - refused,
                                              "refused": refused})
    elif not single:
        print(f"{len(results) - refused} requests stored, {refused} refused")
    return NEGATIVE if refused else 0


def cmd_request(args: argparse.Namespace, engine: Engine) -> int:
    stacking = engine().stacking
    if args.action == "show":
        view = stacking.request(args.id)
        emit(args, view, [f"request {view['id']} {view['status']}: {view['website']}, mode {view['stacking_mode']}",
                          f"{view['total_tasks'] - view['open_tasks']} of {view['total_tasks']} tasks done "
                          f"({view['progress']}%), by status {view['by_status']}"]
             + [f"  folder {f['folder_id']:<16} phase {f['phase']} server {f['server_id'] or '-':<14} "
                f"{f['total_tasks'] - f['open']}/{f['total_tasks']} done  {f['by_status']}" for f in view["folders"]])
    elif args.action == "cancel":
        n = stacking.cancel_request(args.id)
        emit(args, {"request_id": args.id, "cancelled": n}, [f"cancelled {n} tasks"])
    return 0


def cmd_task(args: argparse.Namespace, engine: Engine) -> int:
    engine().stacking.cancel_task(args.id)
    emit(args, {"task_id": args.id, "cancelled": True}, [f"cancelled {args.id}"])
    return 0


def cmd_folder(args: argparse.Namespace, engine: Engine) -> int:
    released = engine().stacking.release_folder(args.id)
    emit(args, {"folder_id": args.id, "released": released},
         [f"released {args.id}" if released else f"{args.id} was not bound to a server"])
    return 0


def register(sub: argparse._SubParsersAction, bind: Callable[[Callable], Callable]) -> None:
    """Add this module's commands to ``taskhub``'s subparsers; ``bind`` gives a command its engine."""
    j = [JSON_FLAG]
    sub.add_parser("stats", parents=j, help="stacking task counts by status, and servers").set_defaults(
        func=bind(cmd_stats))

    server = sub.add_parser("server", help="manage stacking worker servers")
    ssub = server.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = ssub.add_parser("create", parents=j, help="create a server and print its API key once")
    create.add_argument("name")
    create.add_argument("--services", default="stacking", help="comma list (default: stacking)")
    create.add_argument("--max-threads", type=int, default=10)
    ssub.add_parser("list", parents=j, help="every server with status, heartbeat, active tasks")
    ssub.add_parser("show", parents=j, aliases=["get"], help="one server").add_argument("id")
    status = ssub.add_parser("status", parents=j, help="set online, offline or maintenance")
    status.add_argument("id")
    status.add_argument("status", choices=["online", "offline", "maintenance"])
    ssub.add_parser("delete", parents=j, help="delete a server (its key stops working at once)").add_argument("id")
    server.set_defaults(func=bind(_normalise(cmd_server, get="show")))

    imp = sub.add_parser("import", parents=[*j, PROGRESS_FLAGS],
                         help="import stacking requests from a JSON file (one request or a list; - is stdin)")
    imp.add_argument("file")
    imp.set_defaults(func=bind(cmd_import))

    req = sub.add_parser("request", help="stacking requests")
    rsub = req.add_subparsers(dest="action", required=True, metavar="ACTION")
    rsub.add_parser("show", parents=j, help="status, counts and per-folder progress").add_argument("id")
    rsub.add_parser("cancel", parents=j, help="cancel every open task of the request").add_argument("id")
    req.set_defaults(func=bind(cmd_request))
    task = sub.add_parser("task", help="stacking tasks")
    task.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "cancel", parents=j, help="cancel one open task").add_argument("id")
    task.set_defaults(func=bind(cmd_task))
    folder = sub.add_parser("folder", help="stacking folders")
    folder.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "release", parents=j, help="unbind a folder from its server").add_argument("id")
    folder.set_defaults(func=bind(cmd_folder))


def _normalise(cmd: Callable, **aliases: str) -> Callable:
    """argparse records the alias typed (``get``) as the action; map it to the command's name."""
    def run(args: argparse.Namespace, engine: Engine) -> int:
        args.action = aliases.get(args.action, args.action)
        return cmd(args, engine)

    return run

