"""``taskhub user|channel|price|quota|center``: the task center's operator actions (api/taskcenter.py).

Each command calls the engine method its ``/api/v1/admin/...`` endpoint calls;
users are given by id or by name. ``center list|show`` is the operator's view
of every user's tasks (``GET /api/task/`` with its filters, without the
access-token dance).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable

from engine.errors import NotFound

from .cli_support import JSON_FLAG, NEGATIVE, PROGRESS_FLAGS, emit, follow, progress

Engine = Callable[[], Any]
ROLE_NAMES = {1: "common", 10: "admin", 100: "root"}


def _user_line(u: dict) -> str:
    return (f"{u['id']:>6} {u['username']:<20} role {ROLE_NAMES.get(u['role'], u['role']):<6} "
            f"{'enabled' if u['status'] == 1 else 'disabled':<8} quota {u['quota']:>12} used {u['used_quota']}")


def cmd_user(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine().tasks
    if args.action == "create":
        created = tasks.create_user(args.name, args.quota, args.role)
        emit(args, created, [f"user {args.name}: id {created['id']}",
                             f"access_token {created['access_token']}  (management API; shown once)",
                             f"api_key      {created['api_key']}  (POST /suno/submit; shown once)"])
    elif args.action == "list":
        users = tasks.users()
        emit(args, users, [_user_line(u) for u in users] + [f"{len(users)} users"])
    elif args.action == "show":
        user = tasks.user(tasks.user_id(args.user))
        emit(args, user, [_user_line(user)])
    elif args.action in ("enable", "disable", "role"):
        uid = tasks.user_id(args.user)
        if args.action == "role":
            tasks.set_user(uid, role=args.role)
        else:
            tasks.set_user(uid, status=f"{args.action}d")
        user = tasks.user(uid)
        emit(args, user, [_user_line(user)])
    elif args.action == "token":
        created = tasks.create_token(tasks.user_id(args.user), args.name, args.quota)
        emit(args, created, [f"api_key {created['api_key']}  (shown once)"])
    return 0


def cmd_channel(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine().tasks
    if args.action == "add":
        cid = tasks.add_channel(args.platform, args.base_url, args.key, args.weight, not args.disabled,
                                args.name or "")
        emit(args, {"id": cid}, [f"channel {cid} added"])
    elif args.action == "list":
        rows = tasks.channel_views()
        emit(args, rows, [f"{c['id']:>4} {c['platform']:<8} {c['status']:<8} w={c['weight']:<5} {c['base_url']}"
                          f" {c['name']}" for c in rows])
    elif args.action in ("enable", "disable", "update"):
        enabled = {"enable": True, "disable": False}.get(args.action)
        if args.action == "update":
            tasks.set_channel(args.id, None, args.weight, args.base_url, args.key)
        else:
            tasks.set_channel(args.id, enabled=enabled)
        view = next((c for c in tasks.channel_views() if c["id"] == args.id), {"id": args.id})
        emit(args, view, [f"channel {args.id} {args.action}d"])
    elif args.action == "delete":
        tasks.delete_channel(args.id)
        emit(args, {"id": args.id, "deleted": True},
             [f"channel {args.id} deleted (its unfinished tasks fail and are refunded at the next poll)"])
    return 0


def cmd_price(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine().tasks
    if args.action == "set":
        tasks.set_price(args.platform, args.act, args.quota)
    prices = tasks.prices()
    emit(args, prices, [f"{k:<16} {v}" for k, v in sorted(prices.items())])
    return 0


def cmd_quota(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine().tasks
    if args.action == "grant":
        uid = tasks.user_id(args.user)
        quota = tasks.grant(uid, args.amount)
        emit(args, {"user_id": uid, "quota": quota}, [f"user {uid}: quota {quota}"])
        return 0
    with progress(args, None, "user") as bar:
        rows = tasks.audit(follow(bar))
    ok = all(r["ok"] for r in rows)
    emit(args, {"ok": ok, "users": rows},
         [f"{'ok ' if r['ok'] else 'BAD'} user {r['user_id']} {r['username']}: quota {r['quota']} = grants "
          f"{r['granted']} - charges {r['charged']} + refunds {r['refunded']}; used {r['used_quota']}"
          + ("" if r["ok"] else "; " + "; ".join(r["problems"])) for r in rows]
         + [f"{len(rows)} users, {'all balance' if ok else 'NOT ALL BALANCE'}"
            + ("" if not rows or rows[0]["ledger_stream_checked"] else " (ledger stream trimmed: totals only)")])
    return 0 if ok else NEGATIVE


def _center_line(t: dict) -> str:
    return (f"{t['task_id']:<40} {t['platform']}/{t['action']:<7} {t['status']:<11} "
            f"user {t['username'] or t['user_id']} channel {t['channel_id'] or '-'} quota {t['quota']} {t['progress']} {t['fail_reason']}")


def cmd_center(args: argparse.Namespace, engine: Engine) -> int:
    tasks = engine().tasks
    if args.action == "show":
        page = tasks.list({"task_id": args.task_id}, None, admin=True)
        if not page["items"]:
            raise NotFound("task not found")
        emit(args, page["items"][0])
        return 0
    params = {"p": args.page, "page_size": args.page_size, "platform": args.platform, "action": args.act,
              "status": args.status, "channel_id": args.channel, "start_timestamp": args.since,
              "end_timestamp": args.until}
    if args.user is not None:
        params["user_id"] = tasks.user_id(args.user)
    page = tasks.list({k: v for k, v in params.items() if v is not None}, None, admin=True)
    emit(args, page, [_center_line(t) for t in page["items"]]
         + [f"page {page['page']}: {len(page['items'])} of {page['total']}"])
    return 0


def register(sub: argparse._SubParsersAction, bind: Callable[[Callable], Callable]) -> None:
    j = [JSON_FLAG]
    user = sub.add_parser("user", help="task center users")
    usub = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    ucreate = usub.add_parser("create", parents=j, help="create a user; prints its access_token and api_key once")
    ucreate.add_argument("name")
    ucreate.add_argument("--quota", type=int, default=0)
    ucreate.add_argument("--role", choices=["common", "admin", "root"], default="common")
    usub.add_parser("list", parents=j, help="every user")
    named = [usub.add_parser(a, parents=j, help=h) for a, h in (
        ("show", "one user"), ("enable", "let a user's tokens work again"), ("disable", "refuse a user's tokens"),
        ("role", "change a user's role"), ("token", "another API token (sk-...), optionally with its own quota"))]
    for parser in named:
        parser.add_argument("user", help="user id or name")
    usub.choices["role"].add_argument("role", choices=["common", "admin", "root"])
    utoken = usub.choices["token"]
    utoken.add_argument("--name", default="")
    utoken.add_argument("--quota", type=int, default=None, help="the token's own quota (default: unlimited)")
    user.set_defaults(func=bind(cmd_user))

    chan = sub.add_parser("channel", help="task center upstream channels")
    csub = chan.add_subparsers(dest="action", required=True, metavar="ACTION")
    cadd = csub.add_parser("add", parents=j, help="add an upstream channel")
    cadd.add_argument("--platform", default="suno")
    cadd.add_argument("--base-url", required=True)
    cadd.add_argument("--key", default="")
    cadd.add_argument("--weight", type=int, default=1)
    cadd.add_argument("--name", default="")
    cadd.add_argument("--disabled", action="store_true", help="add it disabled")
    csub.add_parser("list", parents=j, help="every channel (keys are never shown)")
    cupdate = csub.add_parser("update", parents=j, help="change a channel's weight, base URL or key")
    cupdate.add_argument("--weight", type=int)
    cupdate.add_argument("--base-url")
    cupdate.add_argument("--key")
    for action, text in (("enable", "use the channel again"), ("disable", "stop choosing the channel"),
                         ("delete", "delete (its unfinished tasks are refunded by the next poll)")):
        csub.add_parser(action, parents=j, help=text)
    for action in ("update", "enable", "disable", "delete"):
        csub.choices[action].add_argument("id", type=int)
    chan.set_defaults(func=bind(cmd_channel))

    price = sub.add_parser("price", help="quota per platform and action")
    psub = price.add_subparsers(dest="action", required=True, metavar="ACTION")
    pset = psub.add_parser("set", parents=j, help="set a price; prints every price")
    pset.add_argument("platform")
    pset.add_argument("act", metavar="action")
    pset.add_argument("quota", type=int)
    psub.add_parser("list", parents=j, help="every price")
    price.set_defaults(func=bind(cmd_price))

    quota = sub.add_parser("quota", help="grant quota; audit every user's balance against the ledger")
    qsub = quota.add_subparsers(dest="action", required=True, metavar="ACTION")
    qgrant = qsub.add_parser("grant", parents=j, help="add (negative: take back) quota")
    qgrant.add_argument("user", help="user id or name")
    qgrant.add_argument("amount", type=int)
    qsub.add_parser("audit", parents=[*j, PROGRESS_FLAGS], help="exit 1 when any user does not balance")
    quota.set_defaults(func=bind(cmd_quota))

    center = sub.add_parser("center", help="task center tasks of every user (GET /api/task/)")
    tsub = center.add_subparsers(dest="action", required=True, metavar="ACTION")
    tlist = tsub.add_parser("list", parents=j, help="one page of tasks, newest first, filtered")
    tlist.add_argument("--user", help="user id or name")
    tlist.add_argument("--platform")
    tlist.add_argument("--action", dest="act", metavar="ACTION", help="MUSIC, LYRICS")
    tlist.add_argument("--status", help="NOT_START, SUBMITTED, QUEUED, IN_PROGRESS, SUCCESS, FAILURE, UNKNOWN")
    tlist.add_argument("--channel", type=int, help="channel id")
    tlist.add_argument("--since", type=int, help="submit time >= this unix second")
    tlist.add_argument("--until", type=int, help="submit time <= this unix second")
    tlist.add_argument("--page", type=int, default=1)
    tlist.add_argument("--page-size", type=int, default=20)
    tsub.add_parser("show", parents=j, help="one task by its public id (task_...)").add_argument("task_id")
    center.set_defaults(func=bind(cmd_center))
