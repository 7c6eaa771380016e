"""``taskhub devices ...``: the device task contract's operator actions (api/devices.py, device-tasks.md).

Each command calls the engine operation its endpoint calls: ``create FILE``
(one POST /api/v1/task body or a list; source ``ui``), ``list``, ``show``,
``stats``, ``delete ID...`` (one id: DELETE /api/v1/task/{id}, exit 3 when it
does not exist; several or ``--file``: DELETE /api/v1/task/batch in chunks of
its 1,000-id limit, unknown ids listed in ``not_found``), ``stop``,
``retry``, ``retry-all``, ``license``. Changes are recorded with actor
``operator`` in the event stream.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from engine.devices import MAX_IDS
from engine.errors import EngineError, InvalidInput, Unavailable

from .cli_support import (JSON_FLAG, NEGATIVE, PROGRESS_FLAGS, emit, follow, item_error, progress,
                          read_json_file, write_above)

Engine = Callable[[], Any]
ACTOR = "operator"
STATUS_NAMES = ("pending", "running", "completed", "failed")


def _task_line(t: dict) -> str:
    return (f"{t['id']:>8} {STATUS_NAMES[t['status']]:<9} {t['serial']:<16} {t['username'] or '-':<16} "
            f"{t['script_name']:<14} {t['remark']}")


def _create(args: argparse.Namespace, devices: Any) -> int:
    """Each body is atomic. One body refused: its error's exit code; in a list, the refused
    bodies are reported, the others are created, and the exit code is 1."""
    doc = read_json_file(args.file)
    single = not isinstance(doc, list)
    bodies = [doc] if single else doc
    results: list[dict] = []
    with progress(args, len(bodies), "body") as bar:
        for i, body in enumerate(bodies):
            try:
                results.append(devices.create(body, source="ui"))
            except EngineError as exc:
                if single or isinstance(exc, Unavailable):
                    raise
                results.append(item_error(i, exc))
                if not args.json:
                    write_above(bar, f"body #{i} refused: {exc.message}")
            bar.update(1)
    created = [tid for r in results for tid in r.get("task_ids", [])]
    refused = [r for r in results if "error" in r]
    data: dict = {"task_ids": created, "created_count": len(created)}
    if not single:
        data["refused"] = refused
    emit(args, data, [f"created {len(created)} tasks: {', '.join(map(str, created))}"]
         + ([f"{len(refused)} of {len(bodies)} bodies refused"] if refused else []))
    return NEGATIVE if refused else 0


def _ids(args: argparse.Namespace) -> list[Any]:
    ids: list[Any] = list(args.ids)
    if args.file:
        doc = read_json_file(args.file)
        listed = doc.get("task_ids") if isinstance(doc, dict) else doc
        if not isinstance(listed, list):
            raise InvalidInput(f"{args.file} must hold a JSON array of task ids or {{\"task_ids\": [...]}}")
        ids += listed
    if not ids:
        raise InvalidInput("give task ids, or --file with a JSON array of them")
    return ids


def _delete(args: argparse.Namespace, devices: Any) -> int:
    ids = _ids(args)
    if len(ids) == 1 and not args.file:
        result = devices.core.call(devices.delete_one_call(ids[0], ACTOR))
        emit(args, result, [f"deleted task {ids[0]}"])
        return 0
    deleted, missing = 0, []
    with progress(args, len(ids), "task") as bar:
        for start in range(0, len(ids), MAX_IDS):
            chunk = ids[start:start + MAX_IDS]
            result = devices.core.call(devices.delete_call(chunk, ACTOR))
            deleted += result["deleted"]
            missing += result["not_found"]
            bar.update(len(chunk))
    emit(args, {"deleted": deleted, "not_found": missing},
         [f"deleted {deleted} tasks"] + ([f"not found: {', '.join(map(str, missing))}"] if missing else []))
    return 0


def cmd_devices(args: argparse.Namespace, engine: Engine) -> int:
    devices = engine().devices
    if args.action == "create":
        return _create(args, devices)
    if args.action == "list":
        page = devices.list(status=args.status, serial=args.serial, script_name=args.script, source=args.source,
                            page=args.page, page_size=args.page_size)
        emit(args, page, [_task_line(t) for t in page["items"]]
             + [f"page {page['page']}: {len(page['items'])} of {page['total']}"])
    elif args.action == "show":
        emit(args, devices.get(args.id))
    elif args.action == "stats":
        stats = devices.stats()
        emit(args, stats, [f"{k:<10} {v}" for k, v in stats.items()])
    elif args.action == "delete":
        return _delete(args, devices)
    elif args.action in ("stop", "retry"):
        call = devices.stop_call if args.action == "stop" else devices.retry_call
        result = devices.core.call(call(args.id, ACTOR))
        emit(args, result, [f"task {result['task_id']}: {STATUS_NAMES[result['status']]}"])
    elif args.action == "retry-all":
        with progress(args, None, "task") as bar:
            result = devices.retry_all(ACTOR, follow(bar))
        emit(args, result, [f"retried {result['retried']} failed tasks"])
    elif args.action == "license":
        emit(args, devices.license())
    return 0


def register(sub: argparse._SubParsersAction, bind: Callable[[Callable], Callable]) -> None:
    j = [JSON_FLAG]
    dev = sub.add_parser("devices", help="device tasks: create, list, show, stats, delete, stop, retry, license")
    dsub = dev.add_subparsers(dest="action", required=True, metavar="ACTION")
    dcreate = dsub.add_parser("create", parents=[*j, PROGRESS_FLAGS],
                              help="create tasks from a JSON file: one POST /api/v1/task body, or a list")
    dcreate.add_argument("file", help="a JSON file, or - for stdin")
    dlist = dsub.add_parser("list", parents=j, help="one page of tasks, newest first")
    dlist.add_argument("--status", choices=["0", "1", "2", "3"], help="0 pending, 1 running, 2 completed, 3 failed")
    dlist.add_argument("--serial")
    dlist.add_argument("--script")
    dlist.add_argument("--source", choices=["api", "ui"])
    dlist.add_argument("--page", default="1")
    dlist.add_argument("--page-size", default="20")
    dsub.add_parser("show", parents=j, aliases=["get"], help="one task").add_argument("id")
    dsub.add_parser("stats", parents=j, help="task counts by status")
    ddel = dsub.add_parser("delete", parents=[*j, PROGRESS_FLAGS],
                           help="delete tasks (running ones are stopped first)")
    ddel.add_argument("ids", nargs="*", metavar="ID")
    ddel.add_argument("--file", help="a JSON array of task ids (or {\"task_ids\": [...]}); - for stdin")
    dsub.add_parser("stop", parents=j, help="stop a pending or running task (it fails, remark 'stopped')"
                    ).add_argument("id")
    dsub.add_parser("retry", parents=j, help="put a failed task back to pending").add_argument("id")
    dsub.add_parser("retry-all", parents=[*j, PROGRESS_FLAGS], help="retry every failed task below the retry limit")
    dsub.add_parser("license", parents=j, help="the plan and what it allows (exit 5 on starter)")

    def run(args: argparse.Namespace, engine: Engine) -> int:
        args.action = "show" if args.action == "get" else args.action
        return cmd_devices(args, engine)

    dev.set_defaults(func=bind(run))
