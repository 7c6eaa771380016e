"""Stacking: requests, folders and tasks for SEO link chains (spec: stacking.md).

Python validates input and shapes output; every state change is one script in
``engine/lua`` (create_request, claim, start, complete, fail, retry, sweep).

Task bodies are pre-encoded at import into the ``bodies`` hash: ``<id>:h``
holds ``"id":..,"request_id":..`` and ``<id>:1``/``<id>:2`` hold the remaining
documented fields for phase 1 and phase 2 (``about`` as HTML or as plain text).
A pull is the claim script (ids and the few live fields) plus one HMGET of the
fragments, joined here as bytes: a 1000-task pull is never decoded and
re-encoded, and the ~1 KB texts never pass through Lua, whose string interning
makes long near-identical strings slow (measured: BENCHMARKS.md).
"""
from __future__ import annotations

import re
import uuid
from html.parser import HTMLParser
from typing import Any

import orjson

from .core import Core
from .errors import Conflict, InvalidInput, NotFound, raise_for

DOMAINS = ("docs.google.com", "slides.google.com", "sheets.google.com")
MODES = ("chain", "ring", "all", "wheel", "disable")
PHASE1 = ("pending", "queued", "running", "register", "registering", "profile_failed")
PHASE2 = ("connect", "connecting", "connect_failed")
TERMINAL = ("completed", "final_failed", "cancel")
TEXT_FIELDS = ("website", "title", "about", "phone", "address", "location", "image_url")
PULL_STATUSES = {None: "21", "": "21", "register": "1", "connect": "2"}
MAX_FIELD = 100_000
MAX_MESSAGE = 1000


class _TextExtractor(HTMLParser):
    BLOCK = {"p", "br", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "ul", "ol", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(markup: str) -> str:
    """Phase-2 ``about``: tags stripped, entities decoded (once), block elements as line breaks."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _fragment(obj: dict) -> bytes:
    return orjson.dumps(obj)[1:-1]


def _https_url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("https://") or len(value) > 2048 or len(value) <= 8:
        raise InvalidInput(f"{field} must be an https:// URL of at most 2048 characters")
    return value


def _text(value: Any, field: str, limit: int = MAX_FIELD, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string")
    if required and not value.strip():
        raise InvalidInput(f"{field} is required")
    if len(value) > limit:
        raise InvalidInput(f"{field} must be at most {limit} characters")
    return value


def render_task(head: bytes, status: bytes, tail: bytes, link_post: bytes, connect_links: bytes | None) -> bytes:
    """A task's documented JSON object from its fragments, in the seed's field order."""
    body = b"{" + head + b',"status":"' + status + b'",' + tail + b',"link_post":' + link_post
    if connect_links is not None:
        body += b',"connect_links":' + connect_links
    return body + b"}"


PULL_STATUS = {b"1": b"register", b"2": b"connect"}


class Stacking:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.k = core.keys
        self.s = core.settings

    # ---- operator side -------------------------------------------------
    def create_request(self, spec: Any) -> dict:
        """Validate a request document and store it atomically; returns ids and counts.

        ``spec``: ``{"website", "stacking_mode"?, "max_retries"?, "id"?, "folders":
        [{"folder_id", "tasks": [{"domain", "title", "about"?, ...}]}]}``.
        """
        if not isinstance(spec, dict):
            raise InvalidInput("request must be a JSON object")
        website = _https_url(spec.get("website"), "website")
        mode = spec.get("stacking_mode") or "chain"
        if mode not in MODES:
            raise InvalidInput(f"stacking_mode must be one of {', '.join(MODES)}")
        mr = spec.get("max_retries", 3)
        if not isinstance(mr, int) or isinstance(mr, bool) or not 0 <= mr <= 100:
            raise InvalidInput("max_retries must be an integer between 0 and 100")
        rid = spec.get("id") or str(uuid.uuid4())
        _text(rid, "id", limit=100, required=True)
        folders = spec.get("folders")
        if not isinstance(folders, list) or not folders:
            raise InvalidInput("folders must be a non-empty list")
        args: list[Any] = []
        fragments: dict[str, bytes] = {}
        seen: set[str] = set()
        ntasks = 0
        for fi, folder in enumerate(folders):
            if not isinstance(folder, dict):
                raise InvalidInput(f"folders[{fi}] must be an object")
            fid = _text(folder.get("folder_id"), f"folders[{fi}].folder_id", limit=200, required=True)
            if fid in seen or "/" in fid or ":" in fid:
                raise InvalidInput(f"folders[{fi}].folder_id '{fid}' is duplicated or contains '/' or ':'")
            seen.add(fid)
            tasks = folder.get("tasks")
            if not isinstance(tasks, list) or not tasks:
                raise InvalidInput(f"folders[{fi}].tasks must be a non-empty list")
            ntasks += len(tasks)
            if ntasks > self.s.max_request_tasks:
                raise InvalidInput(f"a request holds at most {self.s.max_request_tasks} tasks")
            args += [fid, len(tasks)]
            for ti, task in enumerate(tasks):
                tid, head, tail1, tail2 = self._encode_task(task, f"folders[{fi}].tasks[{ti}]", rid, fid, website)
                args.append(tid)
                fragments.update({f"{tid}:h": head, f"{tid}:1": tail1, f"{tid}:2": tail2})
        # One MULTI: blind writes of the fragments (fresh ids), then the script that
        # checks, indexes, and removes the fragments again if it refuses.
        pipe = self.core.r.pipeline(transaction=True)
        items = list(fragments.items())
        for i in range(0, len(items), 3000):
            pipe.hset(self.k.bodies, mapping=dict(items[i:i + 3000]))
        self.core.run("create_request", [self.k.requests, self.k.seq, self.k.unbound(1), self.k.bodies],
                      rid, website, mode, mr, len(folders), ntasks, *args, client=pipe)
        reply = raise_for(pipe.execute()[-1], "request")
        return {"request_id": rid, "folders": len(folders), "tasks": int(reply[1])}

    @staticmethod
    def _encode_task(task: Any, where: str, rid: str, fid: str, website: str) -> list:
        if not isinstance(task, dict):
            raise InvalidInput(f"{where} must be an object")
        domain = task.get("domain")
        if domain not in DOMAINS:
            raise InvalidInput(f"{where}.domain must be one of {', '.join(DOMAINS)}")
        values = {f: _text(task.get(f), f"{where}.{f}") for f in TEXT_FIELDS}
        values["title"] = _text(task.get("title"), f"{where}.title", required=True)
        values["website"] = values["website"] or website
        tid = str(uuid.uuid4())
        head = _fragment({"id": tid, "request_id": rid})

        def tail(about: str) -> bytes:
            return _fragment({"domain": domain, "website": values["website"], "title": values["title"],
                              "about": about, "phone": values["phone"], "address": values["address"],
                              "location": values["location"], "image_url": values["image_url"],
                              "folder_id": fid})

        return [tid, head, tail(values["about"]), tail(html_to_text(values["about"]))]

    def request(self, rid: str) -> dict:
        """A request with its counts and per-folder progress (all O(1) counters)."""
        r = self.core.r
        raw = r.hgetall(self.k.request(rid))
        if not raw:
            raise NotFound("request not found")
        f = {k.decode(): v.decode() for k, v in raw.items()}
        counts = _counts(r.hgetall(self.k.request_counts(rid)))
        fids = [x.decode() for x in r.lrange(self.k.request_folders(rid), 0, -1)]
        pipe = r.pipeline(transaction=False)
        for fid in fids:
            pipe.hmget(self.k.folder(fid), "srv", "phase", "n", "p1", "open")
            pipe.hgetall(self.k.folder_counts(fid))
        replies = pipe.execute()
        folders = []
        for i, fid in enumerate(fids):
            srv, phase, n, p1, open_ = (v.decode() if v else "" for v in replies[2 * i])
            folders.append({
                "folder_id": fid, "server_id": srv or None, "phase": int(phase or 1),
                "total_tasks": int(n or 0), "phase1_active": int(p1 or 0), "open": int(open_ or 0),
                "by_status": _counts(replies[2 * i + 1]),
            })
        total = int(f["total"])
        return {
            "id": rid, "status": f["st"], "website": f["website"], "stacking_mode": f["mode"],
            "max_retries": int(f["mr"]), "total_tasks": total, "open_tasks": int(f["open"]),
            "progress": round(100 * (total - int(f["open"])) / total, 1) if total else 100.0,
            "by_status": counts, "folders": folders,
        }

    def cancel_task(self, task_id: str, actor: str = "operator") -> None:
        """Any non-terminal status -> cancel (409 when already terminal)."""
        raise_for(self.core.run("cancel_task", [self.k.task(task_id)], actor))

    def cancel_request(self, rid: str, actor: str = "operator") -> int:
        """Cancel every non-terminal task of a request; returns how many were cancelled."""
        return int(raise_for(self.core.run("cancel_request", [self.k.request(rid)], actor), "request")[1])

    def release_folder(self, folder_id: str) -> bool:
        """Unbind a folder from its server; False when it was not bound."""
        return bool(int(raise_for(self.core.run("release_folder", [self.k.folder(folder_id)]), "folder")[1]))

    # ---- worker side ---------------------------------------------------
    def claim(self, server_id: str, limit: int = 5, status: str | None = None) -> list[bytes]:
        """Pull-and-claim up to ``limit`` tasks; returns their JSON objects (bytes)."""
        flat = self.claim_raw(server_id, limit, status)
        if not flat:
            return []
        fields = []
        for i in range(0, len(flat), 4):
            fields += (flat[i] + b":h", flat[i] + b":" + flat[i + 1])
        frags = self.core.r.hmget(self.k.bodies, fields)
        return [
            render_task(frags[i // 2], PULL_STATUS[flat[i + 1]], frags[i // 2 + 1], flat[i + 2],
                        flat[i + 3] if flat[i + 1] == b"2" else None)
            for i in range(0, len(flat), 4)
        ]

    def claim_raw(self, server_id: str, limit: int = 5, status: str | None = None) -> list[bytes]:
        """The claim script alone: flat ``[id, phase, link_post, connect_links] * n``."""
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise InvalidInput("limit must be an integer between 1 and 1000")
        if status not in PULL_STATUSES:
            raise InvalidInput("status must be register or connect")
        k, s = self.k, self.s
        return self.core.run(
            "claim",
            [k.unbound(1), k.unbound(2), k.bound(1, server_id), k.bound(2, server_id), k.claim_leases, k.run_leases],
            server_id, limit, PULL_STATUSES[status], s.claim_ttl_ms, s.sweep_batch,
            s.run_ttl_ms, s.retry_base_ms, s.retry_cap_ms,
        )

    def get_task(self, task_id: str) -> bytes:
        """One task's JSON object; no claim, no change."""
        pipe = self.core.r.pipeline(transaction=False)
        pipe.hmget(self.k.task(task_id), "st", "lp", "cl", "ph")
        pipe.hmget(self.k.bodies, f"{task_id}:h", f"{task_id}:1", f"{task_id}:2")
        (st, lp, cl, ph), (head, tail1, tail2) = pipe.execute()
        if st is None or head is None:
            raise NotFound("task not found")
        phase2 = ph == b"2"
        return render_task(head, st, tail2 if phase2 else tail1, lp, cl if phase2 else None)

    def task_state(self, task_id: str) -> dict:
        """Internal fields of a task (operators and tests): status, owner, retries, error."""
        raw = self.core.r.hmget(self.k.task(task_id), "st", "own", "asg", "rc", "mr", "err", "fo", "req")
        if raw[0] is None:
            raise NotFound("task not found")
        st, own, asg, rc, mr, err, fo, req = (v.decode() if v is not None else "" for v in raw)
        return {"status": st, "owner": own, "assigned": asg, "retry_count": int(rc), "max_retries": int(mr),
                "error_message": err, "folder_id": fo, "request_id": req}

    def start(self, server_id: str, task_id: str) -> None:
        k = self.k
        raise_for(self.core.run("start", [k.task(task_id), k.claim_leases, k.run_leases],
                                server_id, self.s.run_ttl_ms))

    def complete(self, server_id: str, task_id: str, link_post: Any = None, note: Any = None) -> None:
        encoded = b""
        if link_post not in (None, ""):
            encoded = orjson.dumps(_https_url(link_post, "link_post"))
        note = _text(note, "note", limit=MAX_MESSAGE * 10)
        raise_for(self.core.run("complete", [self.k.task(task_id), self.k.run_leases], server_id, encoded, note))

    def fail(self, server_id: str, task_id: str, error_message: Any, note: Any = None) -> None:
        message = _text(error_message, "error_message", limit=MAX_MESSAGE, required=True)
        note = _text(note, "note", limit=MAX_MESSAGE * 10)
        k, s = self.k, self.s
        raise_for(self.core.run("fail", [k.task(task_id), k.run_leases, k.retries], server_id, message, note,
                                s.retry_base_ms, s.retry_cap_ms))

    def connect_status(self, server_id: str, folder_id: str) -> dict:
        """The seed's connect-status body for the caller's tasks of one folder (O(1))."""
        if not folder_id or not folder_id.strip():
            raise InvalidInput("folder_id is required")
        by_status = _counts(self.core.r.hgetall(self.k.folder_server_counts(folder_id, server_id)))
        connect_count = sum(by_status.get(st, 0) for st in PHASE2)
        return {
            "success": True, "folder_id": folder_id, "ready": connect_count > 0,
            "total_tasks": sum(by_status.values()),
            "phase1_active": sum(by_status.get(st, 0) for st in PHASE1),
            "profiled": by_status.get("profiled", 0),
            "connect_count": connect_count,
            "by_status": by_status,
        }

    # ---- system side (RQ jobs) -----------------------------------------
    def run_retries(self, batch: int = 500) -> dict:
        """One pass of the retry manager over due failures."""
        requeued, final, left = self.core.run("retry", [self.k.retries], batch)
        return {"requeued": requeued, "final_failed": final, "due_left": left}

    def sweep(self, batch: int | None = None) -> dict:
        """One batch of lease recovery (claim lapses, run lapses)."""
        s = self.s
        claims, runs = self.core.run("sweep", [self.k.claim_leases, self.k.run_leases], batch or s.sweep_batch,
                                     s.run_ttl_ms, s.retry_base_ms, s.retry_cap_ms)
        return {"claims_lapsed": claims, "runs_failed": runs}

    def reassign_gone_servers(self, batch: int = 500) -> dict:
        """Release the folders of servers deleted or silent for ``reassign_after``.

        Reads the server list (bounded: at most 10,000 live servers, plus deleted ones
        that still hold folders) to find candidates; the reassign script re-checks
        each server atomically before releasing.
        """
        r, s = self.core.r, self.s
        ids = [i.decode() for i in r.zrange(self.k.servers, 0, 9_999)]
        ids += [i.decode() for i in r.srandmember(self.k.servers_gone, 1000)]
        pipe = r.pipeline(transaction=False)
        for sid in ids:
            pipe.hmget(self.k.server(sid), "st", "hb")
        now = self.core.now()
        released = 0
        for sid, (st, hb) in zip(ids, pipe.execute()):
            if st == b"deleted" or int(hb or 0) + s.reassign_after_ms < now:
                got, _left = self.core.run("reassign", [self.k.server(sid)], s.reassign_after_ms, batch)
                released += got
        return {"folders_released": released}

    def stats(self) -> dict[str, int]:
        return _counts(self.core.r.hgetall(self.k.stats))


def _counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    """A counters hash as ``{status: n}`` without zero entries."""
    return {k.decode(): int(v) for k, v in sorted(raw.items()) if int(v) != 0}


__all__ = ["Stacking", "html_to_text", "render_task", "Conflict"]
