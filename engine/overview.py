"""The operator's overview of all three contracts: what the dashboard (``api/dashboard.py``) shows.

Every Redis read the dashboard needs is here, so ``api/`` never names a key.
``Overview.snapshot()`` is polled every 2 s by each open dashboard, so its
cost is bounded whatever the data size: five pipelined round trips and at
most a few thousand commands, each on a capped range:

- servers: the oldest ``MAX_SERVERS`` live servers (``Servers.list``);
- stacking requests: the newest ``MAX_REQUESTS`` published requests, and of
  each its first ``MAX_FOLDERS`` folders (``Stacking.request`` reads every
  folder, which a 100,000-task request cannot afford every 2 s);
- devices: the serials with pending or running tasks (the ``active`` hash,
  bounded by the plan's device limit, at most 1,000), the first
  ``MAX_SERIALS`` of them by name, each with its queue sizes and running task;
- task center: one ZCARD per registered cell (a few dozen: platforms x
  actions x statuses x channels) for the backlog, the channels (operator-made,
  few), the newest ``LEDGER_READ`` ledger entries for refunds;
- events: the newest ``EVENTS_READ`` entries of each contract's stream, for
  the transitions-per-minute chart and recent failures. Under more than
  ``EVENTS_READ`` transitions an hour the chart's oldest minutes are partial;
  the snapshot says so (``chart.partial_before_min``).

Reads only: nothing here writes, so it needs no script.
"""
from __future__ import annotations

from typing import Any

from .devices import STATUS_NAMES
from .service import Engine
from .stacking import PHASE2, _counts

MAX_SERVERS = 100
MAX_REQUESTS = 20
MAX_FOLDERS = 10
MAX_SERIALS = 100
EVENTS_READ = 3000
LEDGER_READ = 200
RECENT = 10
CHART_MINUTES = 60
BACKLOG = ("NOT_START", "SUBMITTED", "QUEUED", "IN_PROGRESS")
# The status a failed transition reaches, per contract.
FAILED = {"stacking": {"profile_failed", "connect_failed", "final_failed"}, "devices": {"3"},
          "tasks": {"FAILURE"}}
DEVICE_STATUS = {**STATUS_NAMES, "": "-"}


def _s(v: bytes | None) -> str:
    return v.decode() if v is not None else ""


def _i(v: bytes | None) -> int:
    return int(v) if v else 0


class Overview:
    """Bounded reads across the three contracts of one ``Engine``."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.r = engine.core.r

    def snapshot(self) -> dict[str, Any]:
        """Everything the dashboard shows, as JSON-ready data (module docstring: the caps)."""
        e, now = self.e, self.e.core.now()
        sk, dk, tk = e.core.keys, e.devices.k, e.tasks.k
        # Round trip 1: the lists of ids, counters and streams.
        p = self.r.pipeline(transaction=False)
        p.zrevrange(sk.requests, 0, MAX_REQUESTS - 1)
        p.hgetall(dk.active)
        p.hgetall(dk.running)
        p.smembers(tk.cells())
        p.zcard(tk.queue)
        p.zcard(tk.claim_leases)
        p.xrevrange(tk.ledger, "+", "-", count=LEDGER_READ)
        for key in (sk.events, dk.events, tk.events):
            p.xrevrange(key, "+", "-", count=EVENTS_READ)
        p.hgetall(sk.stats)
        p.hgetall(dk.stats)
        p.hgetall(tk.stats)
        (rids, active, running, cells, tc_queue, tc_leased, ledger, ev_s, ev_d, ev_t,
         st_s, st_d, st_t) = p.execute()
        rids = [_s(r) for r in rids]
        serials = sorted(_s(s) for s in active)[:MAX_SERIALS]
        running = {_s(k): _s(v) for k, v in running.items()}
        cells = sorted(_s(c) for c in cells if _s(c).split("|")[2:3] and _s(c).split("|")[2] in BACKLOG)

        # Round trip 2: requests and their folder ids, device queues, backlog cells.
        p = self.r.pipeline(transaction=False)
        for rid in rids:
            p.hmget(sk.request(rid), "st", "website", "mode", "total", "open", "nf")
            p.lrange(sk.request_folders(rid), 0, MAX_FOLDERS - 1)
        for serial in serials:
            p.zcard(dk.queue(serial))
            p.zcard(dk.scheduled(serial))
            p.hget(dk.devices, serial)
            tid = running.get(serial)
            p.hmget(dk.task(tid), "sc", "us", "sa") if tid else p.echo("")
        for c in cells:
            p.zcard(tk.cell(c))
        replies = p.execute()
        req_rows, replies = replies[:2 * len(rids)], replies[2 * len(rids):]
        dev_rows, cell_counts = replies[:4 * len(serials)], replies[4 * len(serials):]

        # Round trip 3: each shown folder's barrier fields and counts by status.
        folder_ids = [[_s(f) for f in req_rows[2 * i + 1]] for i in range(len(rids))]
        p = self.r.pipeline(transaction=False)
        for fids in folder_ids:
            for fid in fids:
                p.hmget(sk.folder(fid), "srv", "phase", "n", "p1", "open")
                p.hgetall(sk.folder_counts(fid))
        folder_replies = iter(p.execute())

        requests = []
        for i, rid in enumerate(rids):
            st, website, mode, total, open_, nf = (_s(v) for v in req_rows[2 * i])
            folders = [self._folder(fid, next(folder_replies), next(folder_replies)) for fid in folder_ids[i]]
            total_n, open_n = int(total or 0), int(open_ or 0)
            requests.append({"id": rid, "status": st, "website": website, "stacking_mode": mode,
                             "total_tasks": total_n, "open_tasks": open_n, "done_tasks": total_n - open_n,
                             "folder_count": int(nf or 0), "folders": folders,
                             "folders_shown": len(folders)})
        servers = self._servers(now)
        names = {s["id"]: s["name"] for s in servers}
        for r in requests:
            for f in r["folders"]:
                f["server_name"] = names.get(f["server_id"] or "", f["server_id"])
        failures = self._failures({"stacking": ev_s, "devices": ev_d, "tasks": ev_t}, now)
        for f in failures:
            f["by"] = names.get(f["by"], f["by"])  # a stacking worker is named, not its id
        return {
            "now_ms": now,
            "servers": servers,
            "stacking": {"stats": _counts(st_s), "requests": requests},
            "devices": {"stats": {DEVICE_STATUS.get(k, k): v for k, v in _counts(st_d).items()},
                        "active_serials": len(active),
                        "serials": [self._serial(s, running.get(s), dev_rows[4 * j:4 * j + 4], now)
                                    for j, s in enumerate(serials)]},
            "tasks": {"stats": _counts(st_t), "waiting_for_submission": tc_queue, "submitting": tc_leased,
                      "backlog": self._backlog(cells, cell_counts), "refunds": self._refunds(ledger, now)},
            "failures": failures,
            "chart": self._chart({"stacking": ev_s, "devices": ev_d, "tasks": ev_t}, now),
        }

    # ---- sections ----------------------------------------------------------------
    def _servers(self, now: int) -> list[dict]:
        out = []
        for s in self.e.servers.list(MAX_SERVERS):
            hb = s["last_heartbeat_ms"]
            out.append({"id": s["id"], "name": s["name"], "status": s["status"], "online": s["online"],
                        "services": s["services"], "active_tasks": s["active_tasks"],
                        "max_threads": s["max_threads"],
                        "heartbeat_age_s": None if hb is None else max(0, (now - hb) // 1000)})
        return out

    @staticmethod
    def _folder(fid: str, fields: list, counts_raw: dict) -> dict:
        srv, phase, n, p1, open_ = (_s(v) for v in fields)
        counts = _counts(counts_raw)
        total, p1_active = int(n or 0), int(p1 or 0)
        in_phase2 = sum(counts.get(st, 0) for st in PHASE2) + counts.get("completed", 0)
        return {"folder_id": fid, "server_id": srv or None, "phase": int(phase or 1), "total_tasks": total,
                "open": int(open_ or 0), "phase1_done": total - p1_active, "phase1_active": p1_active,
                "phase2_done": counts.get("completed", 0), "phase2_total": in_phase2,
                "barrier": {"phase1_done": p1_active == 0, "phase2_open": phase == "2"},
                "by_status": counts}

    @staticmethod
    def _serial(serial: str, tid: str | None, row: list, now: int) -> dict:
        queued, scheduled, hb, task = row
        hb_ms = _i(hb)
        running = None
        if tid and isinstance(task, list) and task[0] is not None:
            script, user, started = (_s(v) for v in task)
            running = {"id": int(tid), "script_name": script, "username": user or None,
                       "running_for_s": max(0, (now - int(started)) // 1000) if started else None}
        return {"serial": serial, "pending": queued + scheduled, "due": queued, "scheduled": scheduled,
                "running": running, "heartbeat_age_s": max(0, (now - hb_ms) // 1000) if hb_ms else None}

    @staticmethod
    def _backlog(cells: list[str], counts: list[int]) -> list[dict]:
        """Per channel (``0`` = not yet handed to a channel): unfinished tasks by status."""
        by_channel: dict[int, dict[str, int]] = {}
        for cell, n in zip(cells, counts):
            _pf, _ac, st, ch = cell.split("|")
            row = by_channel.setdefault(int(ch), {s: 0 for s in BACKLOG})
            row[st] += n
        return [{"channel": ch, **row, "total": sum(row.values())} for ch, row in sorted(by_channel.items())
                if sum(row.values())]

    @staticmethod
    def _refunds(ledger: list, now: int) -> list[dict]:
        out = []
        for _id, f in ledger:
            if f.get(b"reason") == b"refund":
                out.append({"user": _s(f.get(b"user")), "task": _s(f.get(b"task")), "amount": _i(f.get(b"delta")),
                            "age_s": max(0, (now - _i(f.get(b"at"))) // 1000)})
                if len(out) == RECENT:
                    break
        return out

    @staticmethod
    def _failures(streams: dict[str, list], now: int) -> list[dict]:
        rows = []
        for contract, entries in streams.items():
            n = 0
            for _id, f in entries:
                to = _s(f.get(b"to"))
                if to in FAILED[contract]:
                    frm = _s(f.get(b"from"))
                    if contract == "devices":
                        frm, to = DEVICE_STATUS.get(frm, frm), DEVICE_STATUS.get(to, to)
                    rows.append({"contract": contract, "task": _s(f.get(b"task")), "from": frm, "to": to,
                                 "by": _s(f.get(b"by")), "at": _i(f.get(b"at"))})
                    n += 1
                    if n == RECENT:
                        break
        rows.sort(key=lambda r: -r["at"])
        for r in rows:
            r["age_s"] = max(0, (now - r.pop("at")) // 1000)
        return rows[:RECENT]

    @staticmethod
    def _chart(streams: dict[str, list], now: int) -> dict:
        """Transitions per minute over the last hour, oldest minute first, per contract.

        Bucketed by the entry's ``at`` (the engine clock, as every other age here)."""
        series: dict[str, list[int]] = {}
        partial = None
        for contract, entries in streams.items():
            counts = [0] * CHART_MINUTES
            for _id, f in entries:
                ago = (now - _i(f.get(b"at"))) // 60_000
                if 0 <= ago < CHART_MINUTES:
                    counts[CHART_MINUTES - 1 - ago] += 1
            if len(entries) == EVENTS_READ and entries:
                # The stream holds more than was read: minutes older than the last entry read are partial.
                ago = (now - _i(entries[-1][1].get(b"at"))) // 60_000
                if ago < CHART_MINUTES:
                    partial = ago if partial is None else min(partial, ago)
            series[contract] = counts
        total = [sum(c) for c in zip(*series.values())]
        return {"minutes": CHART_MINUTES, "series": series, "total": total, "max": max(total, default=0),
                "partial_before_min": partial}


__all__ = ["Overview", "MAX_REQUESTS", "MAX_FOLDERS", "MAX_SERIALS", "MAX_SERVERS", "EVENTS_READ"]
