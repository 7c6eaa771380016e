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
from .shards import add_counts
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
        """Everything the dashboard shows, as JSON-ready data (module docstring: the caps).

        Each read is made on every shard of its contract and merged (README,
        "running on a cluster"): a cap applies per shard first, then to the merge."""
        e, now = self.e, self.e.core.now()
        ss, ds, ts = list(e.stacking_shards), list(e.device_shards), list(e.task_shards)
        # Round trip 1: the lists of ids, counters and streams, per shard.
        p = self.r.pipeline(transaction=False)
        for c in ss:
            p.zrevrange(c.keys.requests, 0, MAX_REQUESTS - 1)
        for c in ds:
            p.hgetall(c.keys.active)
            p.hgetall(c.keys.running)
        for c in ts:
            p.smembers(c.keys.cells())
            p.zcard(c.keys.queue)
            p.zcard(c.keys.claim_leases)
            p.xrevrange(c.keys.ledger, "+", "-", count=LEDGER_READ)
        for c in ss + ds + ts:
            p.xrevrange(c.keys.events, "+", "-", count=EVENTS_READ)
        for c in ss + ds + ts:
            p.hgetall(c.keys.stats)
        replies = iter(p.execute())
        req_ids = [[_s(r) for r in next(replies)] for _ in ss]
        active: dict[bytes, bytes] = {}
        running: dict[str, str] = {}
        home_of: dict[str, Any] = {}  # serial -> the device shard whose `active` lists it
        for c in ds:
            got = next(replies)
            active.update(got)
            home_of.update({_s(x): c for x in got})
            running.update({_s(k): _s(v) for k, v in next(replies).items()})
        cell_names: list[list[str]] = []
        tc_queue = tc_leased = 0
        ledger: list = []
        for _ in ts:
            cell_names.append(sorted(_s(x) for x in next(replies)
                                     if _s(x).split("|")[2:3] and _s(x).split("|")[2] in BACKLOG))
            tc_queue += next(replies)
            tc_leased += next(replies)
            ledger += next(replies)
        ledger.sort(key=lambda entry: entry[0], reverse=True)  # stream ids are times: newest first
        streams = {name: [next(replies) for _ in shards] for name, shards in
                   (("stacking", ss), ("devices", ds), ("tasks", ts))}
        stats = {name: add_counts([next(replies) for _ in shards]) for name, shards in
                 (("stacking", ss), ("devices", ds), ("tasks", ts))}
        serials = sorted(_s(x) for x in active)[:MAX_SERIALS]

        # Round trip 2: requests and their folder ids, device queues, backlog cells.
        p = self.r.pipeline(transaction=False)
        req_list = [(c, rid) for c, rids in zip(ss, req_ids) for rid in rids]
        for c, rid in req_list:
            p.hmget(c.keys.request(rid), "st", "website", "mode", "total", "open", "nf", "ca")
            p.lrange(c.keys.request_folders(rid), 0, MAX_FOLDERS - 1)
        for serial in serials:
            dk = home_of[serial].keys
            p.zcard(dk.queue(serial))
            p.zcard(dk.scheduled(serial))
            p.hget(dk.devices, serial)
            tid = running.get(serial)
            p.hmget(dk.task(tid), "sc", "us", "sa") if tid else p.exists(dk.devices)  # a keyed no-op (no ECHO on a cluster)
        for c, names in zip(ts, cell_names):
            for name in names:
                p.zcard(c.keys.cell(name))
        replies = p.execute()
        rows = replies[:2 * len(req_list)]
        replies = replies[2 * len(req_list):]
        dev_rows, counts_flat = replies[:4 * len(serials)], replies[4 * len(serials):]
        cells = [name for names in cell_names for name in names]
        # newest requests first over every shard (created time; a shard's own order is its seq)
        order = sorted(range(len(req_list)), key=lambda i: -_i(rows[2 * i][6]))[:MAX_REQUESTS]
        req_list = [req_list[i] for i in order]
        req_rows = [x for i in order for x in (rows[2 * i][:6], rows[2 * i + 1])]
        rids = [rid for _, rid in req_list]
        cell_counts = counts_flat

        # Round trip 3: each shown folder's barrier fields and counts by status.
        folder_ids = [[_s(f) for f in req_rows[2 * i + 1]] for i in range(len(rids))]
        p = self.r.pipeline(transaction=False)
        for (c, _rid), fids in zip(req_list, folder_ids):
            for fid in fids:
                p.hmget(c.keys.folder(fid), "srv", "phase", "n", "p1", "open")
                p.hgetall(c.keys.folder_counts(fid))
        folder_replies = iter(p.execute())
        st_s, st_d, st_t = stats["stacking"], stats["devices"], stats["tasks"]
        partial = {name: _partial(lists, now) for name, lists in streams.items()}
        merged = {name: sorted((x for lst in lists for x in lst), key=lambda entry: entry[0], reverse=True)
                  for name, lists in streams.items()}
        ev_s, ev_d, ev_t = merged["stacking"], merged["devices"], merged["tasks"]

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
            "stacking": {"stats": _nonzero(st_s), "requests": requests},
            "devices": {"stats": {DEVICE_STATUS.get(k, k): v for k, v in _nonzero(st_d).items()},
                        "active_serials": len(active),
                        "serials": [self._serial(s, running.get(s), dev_rows[4 * j:4 * j + 4], now)
                                    for j, s in enumerate(serials)]},
            "tasks": {"stats": _nonzero(st_t), "waiting_for_submission": tc_queue, "submitting": tc_leased,
                      "backlog": self._backlog(cells, cell_counts), "refunds": self._refunds(ledger, now)},
            "failures": failures,
            "chart": self._chart({"stacking": ev_s, "devices": ev_d, "tasks": ev_t}, now, partial),
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
    def _chart(streams: dict[str, list], now: int, partial: dict[str, int | None]) -> dict:
        """Transitions per minute over the last hour, oldest minute first, per contract.

        Bucketed by the entry's ``at`` (the engine clock, as every other age here)."""
        series: dict[str, list[int]] = {}
        for contract, entries in streams.items():
            counts = [0] * CHART_MINUTES
            for _id, f in entries:
                ago = (now - _i(f.get(b"at"))) // 60_000
                if 0 <= ago < CHART_MINUTES:
                    counts[CHART_MINUTES - 1 - ago] += 1
            series[contract] = counts
        known = [v for v in partial.values() if v is not None]
        total = [sum(c) for c in zip(*series.values())]
        return {"minutes": CHART_MINUTES, "series": series, "total": total, "max": max(total, default=0),
                "partial_before_min": min(known) if known else None}


def _partial(per_shard: list[list], now: int) -> int | None:
    """Minutes ago before which a contract's chart is partial: a shard stream that held more
    than was read is complete only back to the oldest entry read (None: complete)."""
    out = None
    for entries in per_shard:
        if len(entries) == EVENTS_READ and entries:
            ago = (now - _i(entries[-1][1].get(b"at"))) // 60_000
            if ago < CHART_MINUTES:
                out = ago if out is None else min(out, ago)
    return out


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(counts.items()) if v}


__all__ = ["Overview", "MAX_REQUESTS", "MAX_FOLDERS", "MAX_SERIALS", "MAX_SERVERS", "EVENTS_READ"]
