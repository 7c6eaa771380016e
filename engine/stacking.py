"""Stacking: requests, folders and tasks for SEO link chains (spec: stacking.md).

Python validates input and shapes output; every state change is one script in
``engine/lua`` (create_request, claim, start, complete, fail, retry, sweep).

A task's documented fields that never change (domain, website, title, about as
HTML, phone, address, location, image_url) are stored once, pre-encoded, in the
``bodies`` hash under the task id: their eight JSON values without their keys
(``encode_body``; the keys were a tenth of a stored task), put back by the
bytes format that renders the task (``render_task``). The fields that do change
(status, link_post, connect_links) and the ids (id, request_id, folder_id) come
from the task hash. A pull is the claim script (ids and the few live fields)
plus one HMGET of the bodies, joined here as bytes: a 1000-task pull is never
decoded and re-encoded, and the ~1 KB texts never pass through Lua, whose
string interning makes long near-identical strings slow (BENCHMARKS.md).
Phase 2 shows ``about`` as plain text: it is derived from the stored HTML when
the task is rendered (``html_to_text``, cached), not stored a second time.

Imports are chunked (``import_begin``, ``import_tasks`` per ``IMPORT_CHUNK``
tasks, ``import_publish``) so that no script call holds Redis for more than a
few milliseconds, yet no puller sees a request before all of it is stored:
its folders enter the claim index only when it is published. An importer that
dies midway leaves a request in status ``importing``; ``recover_imports`` (an
RQ job) rolls it back, or finishes publishing it, once it has been idle for
``TASKHUB_IMPORT_STALE`` seconds.
"""
from __future__ import annotations

import html
import os
import re
import uuid
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

import orjson

from .calls import Call, Command
from .core import Core
from .errors import Conflict, InvalidInput, NotFound, raise_for
from .servers import Who, auth_first, caller_key
from .shards import Shards, add_counts

DOMAINS = ("docs.google.com", "slides.google.com", "sheets.google.com")
MODES = ("chain", "ring", "all", "wheel", "disable")
PHASE1 = ("pending", "queued", "running", "register", "registering", "profile_failed")
PHASE2 = ("connect", "connecting", "connect_failed")
TERMINAL = ("completed", "final_failed", "cancel")
TEXT_FIELDS = ("website", "title", "about", "phone", "address", "location", "image_url")
PULL_STATUSES = {None: "21", "": "21", "register": "1", "connect": "2"}
MAX_FIELD = 100_000
MAX_FOLDER_TASKS = 1000  # bounds the barrier script, which moves a whole folder at once
MAX_MESSAGE = 1000


_BLOCK = frozenset({"p", "br", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "ul", "ol", "blockquote"})
# A start or end tag (attribute values may hold '>'), a comment, or a declaration.
_MARKUP = re.compile(r"""<(/?)([A-Za-z][A-Za-z0-9:-]*)(?:[^>"']|"[^"]*"|'[^']*')*>|<!--.*?-->|<![^>]*>|<\?[^>]*>""",
                     re.S)
_SPACE = re.compile(r"[ \t\r\f\v]+")


def _markup(m: re.Match[str]) -> str:
    name = m.group(2)
    return "\n" if name and name.lower() in _BLOCK else ""


@lru_cache(maxsize=4096)
def html_to_text(markup: str) -> str:
    """Phase-2 ``about``: tags stripped, entities decoded (once), block elements as line breaks.

    A regular expression rather than ``html.parser``: 5-10x faster, which
    matters because it runs when a phase-2 task is rendered, and cached because
    templated requests repeat one ``about`` across thousands of tasks.
    """
    text = html.unescape(_MARKUP.sub(_markup, markup)) if "<" in markup or "&" in markup else markup
    lines = (_SPACE.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def _validate_task(task: Any, fi: int, ti: int) -> None:
    """Task ``ti`` of folder ``fi``. Each field is checked with ``_text_ok``; only a
    refusal builds the field's path and goes through ``_text`` for its message (an
    import validates up to 100,000 tasks of 8 fields)."""
    if not isinstance(task, dict):
        raise InvalidInput(f"folders[{fi}].tasks[{ti}] must be an object")
    get = task.get
    if get("domain") not in DOMAINS:
        raise InvalidInput(f"folders[{fi}].tasks[{ti}].domain must be one of {', '.join(DOMAINS)}")
    for f in TEXT_FIELDS:
        v = get(f)
        required = f == "title"
        if not _text_ok(v, required=required):
            _text(v, f"folders[{fi}].tasks[{ti}].{f}", required=required)


# A stored body (``encode_body``): a version byte, then the JSON values of BODY_FIELDS
# joined by NUL. orjson escapes every control character inside a string, so a NUL
# byte can only be a separator. A body stored before this encoding (a JSON fragment
# with its keys, which starts with '"') is read as it was written.
BODY_FIELDS = ("domain", "website", "title", "about", "phone", "address", "location", "image_url")
_BODY_V1, _SEP = b"\x01", b"\x00"
_FRAGMENT = b",".join(b'"%s":%%b' % f.encode() for f in BODY_FIELDS)
_ABOUT_AT = BODY_FIELDS.index("about")


def _body(task: dict, website: str) -> bytes:
    """The stored body of a validated task: its immutable documented fields, in the
    seed's order, ``about`` as HTML (``encode_body``)."""
    g = task.get
    return encode_body((g("domain"), g("website") or website, g("title"), g("about") or "", g("phone") or "",
                        g("address") or "", g("location") or "", g("image_url") or ""))


def encode_body(values: Sequence[Any]) -> bytes:
    """BODY_FIELDS' values as stored: JSON values only, the keys are the format's."""
    return _BODY_V1 + _SEP.join(map(orjson.dumps, values))


def _https_url(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("https://") or len(value) > 2048 or len(value) <= 8:
        raise InvalidInput(f"{field} must be an https:// URL of at most 2048 characters")
    return value


def _text_ok(value: Any, limit: int = MAX_FIELD, required: bool = False) -> bool:
    """Whether ``_text`` accepts ``value``, without building the field's name for its message."""
    if value is None:
        return not required
    return isinstance(value, str) and len(value) <= limit and (not required or bool(value.strip()))


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


_ABOUT, _PHONE = b',"about":', b',"phone":'


def phase2_body(body: bytes) -> bytes:
    """``body``, a JSON fragment with its keys (bodies stored before ``encode_body``),
    with ``about`` as plain text. JSON escapes every '"' inside a string, so the
    key sequences found here can only be the keys themselves."""
    head, rest = body.split(_ABOUT, 1)
    about, tail = rest.split(_PHONE, 1)
    return head + _ABOUT + orjson.dumps(html_to_text(orjson.loads(about))) + _PHONE + tail


_HEAD = b'{"id":"%b","request_id":%b,"status":"%b",'
_TASK = _HEAD + _FRAGMENT + b',"folder_id":%b,"link_post":%b}'
_TASK2 = _HEAD + _FRAGMENT + b',"folder_id":%b,"link_post":%b,"connect_links":%b}'


def render_task(tid: bytes, rid: bytes, status: bytes, stored: bytes, fid: bytes, link_post: bytes,
                connect_links: bytes | None) -> bytes:
    """A task's documented JSON object, in the seed's field order, from its stored body
    (``encode_body``). ``rid``/``fid`` are JSON strings; ``connect_links`` is given in
    phase 2 only, where ``about`` is plain text (``html_to_text``). One bytes format
    builds the whole object: a 1000-task pull renders each task with one copy."""
    if stored[:1] != _BODY_V1:
        return _render_keyed(tid, rid, status, stored, fid, link_post, connect_links)
    values = stored[1:].split(_SEP)
    if connect_links is None:
        return _TASK % (tid, rid, status, *values, fid, link_post)
    values[_ABOUT_AT] = orjson.dumps(html_to_text(orjson.loads(values[_ABOUT_AT])))
    return _TASK2 % (tid, rid, status, *values, fid, link_post, connect_links)


def _render_keyed(tid: bytes, rid: bytes, status: bytes, body: bytes, fid: bytes, link_post: bytes,
                  connect_links: bytes | None) -> bytes:
    """``render_task`` of a body stored before ``encode_body``: a JSON fragment with its keys."""
    if connect_links is not None:
        body = phase2_body(body)
    out = (b'{"id":"' + tid + b'","request_id":' + rid + b',"status":"' + status + b'",' + body
           + b',"folder_id":' + fid + b',"link_post":' + link_post)
    if connect_links is not None:
        out += b',"connect_links":' + connect_links
    return out + b"}"


PULL_STATUS = {b"1": b"register", b"2": b"connect"}
IMPORT_CHUNK = 1000  # tasks per import_tasks call: a few ms of Redis time each (BENCHMARKS.md)
PUBLISH_BATCH = 2000  # folders per import_publish call
CANCEL_BATCH = 1000  # tasks looked at per cancel_request call (whole folders)


class Stacking:
    def __init__(self, shards: Shards) -> None:
        self.shards = shards
        self.core = shards.home
        self.k = self.core.keys
        self.s = self.core.settings

    # ---- operator side -------------------------------------------------
    def create_request(self, spec: Any, progress: Callable[[int], Any] | None = None) -> dict:
        """Validate a request document and store it, all or nothing; returns ids and counts.

        ``spec``: ``{"website", "stacking_mode"?, "max_retries"?, "id"?, "folders":
        [{"folder_id", "tasks": [{"domain", "title", "about"?, ...}]}]}``, at most
        ``max_request_tasks`` tasks. Everything is validated before the first
        write; then the request is stored in chunks and published (module
        docstring); ``progress(n)`` is called after each stored chunk of n tasks.
        Raises InvalidInput, or Conflict when the request id or a folder id is
        already used (then nothing is left behind).
        """
        rid, website, mode, mr, folders = self._validate_request(spec)
        ntasks = sum(len(tasks) for _, tasks in folders)
        core = self.shards.for_name(rid)
        k, run = core.keys, core.run
        self._refuse_used_folders([fid for fid, _ in folders])
        token = uuid.uuid4().hex
        first = int(raise_for(run("import_begin", [k.request(rid), k.seq, k.imports], token, website, mode, mr,
                                  len(folders), ntasks), "request")[1])
        shard = core.keys.shard if self.shards.n > 1 else None
        try:
            for args, bodies in self._chunks(folders, first, website, shard):
                replies = core.transaction([Command(("HSET", k.bodies, *(a for kv in bodies.items() for a in kv))),
                                            core.script("import_tasks", [k.request(rid), k.bodies], token, *args)])
                stored = int(raise_for(replies[-1], "request")[1])
                if progress:
                    progress(stored)
        except BaseException:
            self._abort_import(core, rid, token)
            raise
        while int(raise_for(run("import_publish", [k.request(rid)], token, PUBLISH_BATCH), "request")[1]) > 0:
            pass
        return {"request_id": rid, "folders": len(folders), "tasks": ntasks}

    def _refuse_used_folders(self, fids: list[str]) -> None:
        """Refuse a folder id another request already uses before anything is written.

        Only a fast path for the common refusal (import_tasks re-checks each
        folder atomically on the request's shard): checked here, a refused
        import does not even move the order counter. One EXISTS per 1000
        folders per shard. With several shards this is also the only check
        against a folder of a request on *another* shard, so two imports of
        one new folder racing on two shards can both pass (README, "running on
        a cluster").
        """
        for core in self.shards:
            r, k = core.r, core.keys
            for i in range(0, len(fids), 1000):
                batch = fids[i:i + 1000]
                if r.exists(*(k.folder(fid) for fid in batch)):
                    pipe = r.pipeline(transaction=False)
                    for fid in batch:
                        pipe.exists(k.folder(fid))
                    used = next(fid for fid, n in zip(batch, pipe.execute()) if n)
                    raise_for([b"folder_in_use", used.encode()], "request")

    def _abort_import(self, core: Core, rid: str, token: str) -> None:
        """Best effort: if this fails too, ``recover_imports`` rolls the import back later."""
        try:
            while True:
                reply = core.run("import_abort", [core.keys.request(rid)], token, IMPORT_CHUNK, 0)
                if reply[0] != b"ok" or int(reply[2]) == 0:
                    return
        except Exception:  # noqa: BLE001 - the original error is the one to raise
            pass

    def recover_imports(self, stale_ms: int, batch: int = IMPORT_CHUNK) -> dict:
        """Roll back (or finish publishing) imports idle for ``stale_ms``: one bounded step each."""
        out = {"aborted": 0, "published": 0, "left": 0}
        for core in self.shards:
            ids = core.r.zrangebyscore(core.keys.imports, "-inf", core.now() - stale_ms, start=0, num=100)
            for rid in ids:
                reply = core.run("import_abort", [core.keys.request(rid.decode())], "", batch, stale_ms)
                if reply[0] == b"ok":
                    out[reply[1].decode()] += 1
                    out["left"] += int(reply[2])
        return out

    def _validate_request(self, spec: Any) -> tuple[str, str, str, int, list[tuple[str, list]]]:
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
        out: list[tuple[str, list]] = []
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
            if len(tasks) > MAX_FOLDER_TASKS:
                raise InvalidInput(f"folders[{fi}] holds more than {MAX_FOLDER_TASKS} tasks")
            ntasks += len(tasks)
            if ntasks > self.s.max_request_tasks:
                raise InvalidInput(f"a request holds at most {self.s.max_request_tasks} tasks")
            for ti, task in enumerate(tasks):
                _validate_task(task, fi, ti)
            out.append((fid, tasks))
        return rid, website, mode, mr, out

    @staticmethod
    def _chunks(folders: list[tuple[str, list]], first: int, website: str,
                shard: int | None = None) -> Iterator[tuple[list, dict]]:
        """``import_tasks`` arguments and bodies, ``IMPORT_CHUNK`` tasks at a time.

        Order numbers follow the document: the request has ``first``, then each
        folder, then its tasks (a folder may be split across chunks). Task ids
        are UUIDs; with several shards their last two hex digits are the shard
        (``shard_of_task``).
        """
        groups: list[list] = []
        bodies: dict[str, bytes] = {}
        seq = first
        for fid, tasks in folders:
            seq += 1
            fseq, done = seq, 0
            while done < len(tasks):
                take = min(len(tasks) - done, IMPORT_CHUNK - len(bodies))
                ids = new_task_ids(take, shard)
                for tid, task in zip(ids, tasks[done:done + take]):
                    bodies[tid] = _body(task, website)
                groups.append([fid, fseq, len(tasks), seq + 1, take, *ids])
                seq += take
                done += take
                if len(bodies) >= IMPORT_CHUNK:
                    yield [len(groups), *(a for g in groups for a in g)], bodies
                    groups, bodies = [], {}
        if bodies:
            yield [len(groups), *(a for g in groups for a in g)], bodies

    def request(self, rid: str) -> dict:
        """A request with its counts and per-folder progress (all O(1) counters)."""
        core = self.shards.for_name(rid)
        r, sk = core.r, core.keys
        raw = r.hgetall(sk.request(rid))
        if not raw:
            raise NotFound("request not found")
        f = {k.decode(): v.decode() for k, v in raw.items()}
        counts = _counts(r.hgetall(sk.request_counts(rid)))
        fids = [x.decode() for x in r.lrange(sk.request_folders(rid), 0, -1)]
        pipe = r.pipeline(transaction=False)
        for fid in fids:
            pipe.hmget(sk.folder(fid), "srv", "phase", "n", "p1", "open")
            pipe.hgetall(sk.folder_counts(fid))
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
        core = self.shard_of_task(task_id)
        raise_for(core.run("cancel_task", [core.keys.task(task_id)], actor))

    def cancel_request(self, rid: str, actor: str = "operator") -> int:
        """Cancel every non-terminal task of a request; returns how many were cancelled."""
        cancelled, left = 0, 1
        core = self.shards.for_name(rid)
        while left:
            reply = raise_for(core.run("cancel_request", [core.keys.request(rid)], actor, CANCEL_BATCH), "request")
            cancelled, left = cancelled + int(reply[1]), int(reply[2])
        return cancelled

    def release_folder(self, folder_id: str) -> bool:
        """Unbind a folder from its server; False when it was not bound.

        A folder's shard is its request's, which the folder id does not tell:
        every shard is asked in one call (on all but one the folder is not found)."""
        replies = self.core.call(Call([c.script("release_folder", [c.keys.folder(folder_id)]) for c in self.shards],
                                      lambda replies: replies))
        found = [r for r in replies if r[0] != b"not_found"] or replies[:1]
        return any(bool(int(raise_for(r, "folder")[1])) for r in found)

    # ---- worker side ---------------------------------------------------
    def claim(self, who: Who, limit: int = 5, status: str | None = None) -> list[bytes]:
        """Pull-and-claim up to ``limit`` tasks; returns their JSON objects (bytes)."""
        return self.pull(who, limit, status)[1]

    def pull(self, who: Who, limit: int = 5, status: str | None = None) -> tuple[str, list[bytes]]:
        """``claim``, also returning the caller's server id (``who`` may be an ApiKey)."""
        sid, flat, bodies = self.claim_raw(who, limit, status)
        quoted: dict[bytes, bytes] = {}

        def q(v: bytes) -> bytes:
            out = quoted.get(v)
            if out is None:
                out = quoted[v] = orjson.dumps(v.decode())
            return out

        out = []
        for j, i in enumerate(range(0, len(flat), 6)):
            phase2 = flat[i + 1] == b"2"
            out.append(render_task(flat[i], q(flat[i + 5]), PULL_STATUS[flat[i + 1]], bodies[j], q(flat[i + 4]),
                                   flat[i + 2], flat[i + 3] if phase2 else None))
        return sid, out

    def claim_raw(self, who: Who, limit: int = 5, status: str | None = None) -> tuple[str, list[bytes], list]:
        """The bare Redis work of a pull: the claim script, then one HMGET of the bodies.

        Returns the caller's server id, the script's flat ``[id, phase, link_post,
        connect_links, folder, request] * n``, and the bodies in the same order.
        """
        def check() -> None:
            if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
                raise InvalidInput("limit must be an integer between 1 and 1000")
            if status not in PULL_STATUSES:
                raise InvalidInput("status must be register or connect")

        auth_first(self.core, who, check)
        if self.shards.n == 1:
            return self._claim_on(self.core, who, limit, status)
        # several shards: visit them in this caller's rotation until the pull is full
        sid, flat, bodies = "", [], []
        for core in self.shards.visit_order(caller_key(self.core, who)):
            sid, got, got_bodies = self._claim_on(core, who, limit - len(bodies), status)
            flat += got
            bodies += got_bodies
            if len(bodies) >= limit:
                break
        return sid, flat, bodies

    def _claim_on(self, core: Core, who: Who, limit: int, status: str | None) -> tuple[str, list[bytes], list]:
        k, s = core.keys, self.s
        reply = raise_for(core.run(
            "claim", [caller_key(core, who), k.unbound(1), k.unbound(2), k.claim_leases, k.run_leases],
            s.server_offline_after_ms, limit, PULL_STATUSES[status], s.claim_ttl_ms, s.sweep_batch,
            s.run_ttl_ms, s.retry_base_ms, s.retry_cap_ms,
        ), "server")
        sid, flat = reply[1].decode(), reply[2:]
        if not flat:
            return sid, flat, []
        return sid, flat, core.r.hmget(k.bodies, flat[0::6])

    def get_task(self, task_id: str, who: Who | None = None) -> bytes:
        """One task's JSON object; no claim, no change. With ``who``, the caller is
        authenticated in the same round trip (reads need no script of their own)."""
        return self.core.call(self.get_task_call(task_id, who))

    def get_task_call(self, task_id: str, who: Who | None = None) -> Call:
        core = self.shard_of_task(task_id)
        reads: list = [Command(("HMGET", core.keys.task(task_id), "st", "lp", "cl", "fo", "req")),
                       Command(("HGET", core.keys.bodies, task_id))]
        if who is not None:
            reads.insert(0, core.script("auth", [caller_key(core, who)], "1", self.s.server_offline_after_ms))

        def finish(replies: list) -> bytes:
            if who is not None:
                raise_for(replies[0], "server")
            (st, lp, cl, fo, req), body = replies[-2:]
            if st is None or body is None:
                raise NotFound("task not found")
            # cl: the barrier writes connect_links exactly on the tasks it moves to phase 2
            return render_task(task_id.encode(), orjson.dumps(req.decode()), st, body, orjson.dumps(fo.decode()),
                               lp or b'""', cl)

        return Call(reads, finish)

    def task_state(self, task_id: str) -> dict:
        """Internal fields of a task (operators and tests): status, owner, retries, error."""
        core = self.shard_of_task(task_id)
        raw = core.r.hmget(core.keys.task(task_id), "st", "own", "asg", "rc", "mr", "err", "fo", "req")
        if raw[0] is None:
            raise NotFound("task not found")
        st, own, asg, rc, mr, err, fo, req = (v.decode() if v is not None else "" for v in raw)
        return {"status": st, "owner": own, "assigned": asg, "retry_count": int(rc), "max_retries": int(mr),
                "error_message": err, "folder_id": fo, "request_id": req}

    def start(self, who: Who, task_id: str) -> str:
        """register -> registering, connect -> connecting; returns the caller's server id."""
        return self.core.call(self.start_call(who, task_id))

    def start_call(self, who: Who, task_id: str) -> Call:
        return self._item_call("start", who, task_id, ())

    def complete(self, who: Who, task_id: str, link_post: Any = None, note: Any = None) -> str:
        """registering -> profiled (link_post required), connecting -> completed; returns the server id."""
        return self.core.call(self.complete_call(who, task_id, link_post, note))

    def complete_call(self, who: Who, task_id: str, link_post: Any = None, note: Any = None) -> Call:
        return self._item_call("complete", who, task_id, self._complete_args(who, link_post, note))

    def _complete_args(self, who: Who, link_post: Any, note: Any) -> tuple[bytes, str]:
        def check() -> tuple[bytes, str]:
            lp = orjson.dumps(_https_url(link_post, "link_post")) if link_post not in (None, "") else b""
            return lp, _text(note, "note", limit=MAX_MESSAGE * 10)

        return auth_first(self.core, who, check)

    def fail(self, who: Who, task_id: str, error_message: Any, note: Any = None) -> str:
        """registering -> profile_failed, connecting -> connect_failed; returns the server id."""
        return self.core.call(self.fail_call(who, task_id, error_message, note))

    def fail_call(self, who: Who, task_id: str, error_message: Any, note: Any = None) -> Call:
        return self._item_call("fail", who, task_id, self._fail_args(who, error_message, note))

    def _fail_args(self, who: Who, error_message: Any, note: Any) -> tuple[str, str]:
        def check() -> tuple[str, str]:
            return (_text(error_message, "error_message", limit=MAX_MESSAGE, required=True),
                    _text(note, "note", limit=MAX_MESSAGE * 10))

        return auth_first(self.core, who, check)

    def _item_script(self, verb: str, core: Core) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The KEYS and the shared ARGV of item script ``verb`` (start-2, complete-1, fail-2) on
        ``core``'s shard: one definition for the single calls and the batches."""
        k, s = core.keys, self.s
        if verb == "start":
            return (k.claim_leases, k.run_leases), (s.server_offline_after_ms, s.run_ttl_ms)
        if verb == "complete":
            return (k.run_leases,), (s.server_offline_after_ms,)
        return (k.run_leases, k.retries), (s.server_offline_after_ms, s.retry_base_ms, s.retry_cap_ms)

    def _item_call(self, verb: str, who: Who, task_id: str, rest: tuple) -> Call:
        """One task's start/complete/fail as a ``Call``: its item is (caller, task id, *rest)."""
        core = self.shard_of_task(task_id)
        keys, shared = self._item_script(verb, core)
        return Call([core.items(verb, keys, shared, (caller_key(core, who), task_id, *rest))], _server_id)

    # ---- batches: what a worker holding a pulled batch sends ----------------------
    def start_many(self, who: Who, task_ids: Sequence[str]) -> list[tuple[bool, Any]]:
        """``start`` of each task, in one round trip (per shard): ``(True, server id)`` or
        ``(False, the error start would raise)`` per task, in order. Outcomes are exactly
        those of one ``start`` per task in that order (one script call carries up to
        1,000 of them, each checked on its own)."""
        return self._many("start", who, [(tid, ()) for tid in task_ids])

    def complete_many(self, who: Who, items: Sequence[tuple]) -> list[tuple[bool, Any]]:
        """``complete`` of each ``(task_id, link_post)`` or ``(task_id, link_post, note)``, as
        ``start_many`` does it. An item whose input is invalid fails alone, as ``complete``
        would (an HTTP caller's authentication failure first), and is not sent."""
        return self._many("complete", who, _checked(who, items, self._complete_args))

    def fail_many(self, who: Who, items: Sequence[tuple]) -> list[tuple[bool, Any]]:
        """``fail`` of each ``(task_id, error_message)`` or ``(task_id, error_message, note)``,
        as ``complete_many`` does it."""
        return self._many("fail", who, _checked(who, items, self._fail_args))

    def _many(self, verb: str, who: Who, rows: list) -> list[tuple[bool, Any]]:
        """``rows``: per task ``(task_id, its other item args)``, or the error its input raised.
        Items go to their task's shard, each shard's in one ``Core.call_items``."""
        out: list[Any] = [None] * len(rows)
        groups: dict[int, tuple[Core, list[int], list[tuple]]] = {}
        for i, row in enumerate(rows):
            if isinstance(row, Exception):
                out[i] = (False, row)
                continue
            core = self.shard_of_task(row[0])
            groups.setdefault(id(core), (core, [], []))
            groups[id(core)][1].append(i)
            groups[id(core)][2].append(row)
        for core, idx, group in groups.values():
            try:
                ck = caller_key(core, who)
            except Exception as exc:  # noqa: BLE001 - an empty API key: every item's outcome
                results: list[tuple[bool, Any]] = [(False, exc)] * len(idx)
            else:
                keys, shared = self._item_script(verb, core)
                results = core.call_items(verb, keys, shared, [(ck, tid, *rest) for tid, rest in group], _server_id)
            for i, result in zip(idx, results):
                out[i] = result
        return out

    def connect_status(self, who: Who, folder_id: str) -> dict:
        """The seed's connect-status body for the caller's tasks of one folder (O(1))."""
        return self.core.call(self.connect_status_call(who, folder_id))[1]

    def connect_status_call(self, who: Who, folder_id: str) -> Call:
        """Its result: ``(caller's server id, the connect-status body)``."""
        def check() -> None:
            if not folder_id or not folder_id.strip():
                raise InvalidInput("folder_id is required")

        auth_first(self.core, who, check)

        def finish(replies: list) -> tuple[str, dict]:
            raw: dict[bytes, int] = {}
            for reply in replies:  # one per shard: the folder's counters are on one of them
                reply = raise_for(reply, "server")
                for st, n in zip(reply[2::2], reply[3::2]):
                    raw[st] = raw.get(st, 0) + int(n)
            reply = replies[0]
            by_status = _counts(raw)
            connect_count = sum(by_status.get(st, 0) for st in PHASE2)
            return reply[1].decode(), {
                "success": True, "folder_id": folder_id, "ready": connect_count > 0,
                "total_tasks": sum(by_status.values()),
                "phase1_active": sum(by_status.get(st, 0) for st in PHASE1),
                "profiled": by_status.get("profiled", 0),
                "connect_count": connect_count,
                "by_status": by_status,
            }

        return Call([c.script("connect_status", [caller_key(c, who)], self.s.server_offline_after_ms, folder_id)
                     for c in self.shards], finish)

    # ---- system side (RQ jobs) -----------------------------------------
    def run_retries(self, batch: int = 500) -> dict:
        """One pass of the retry manager over due failures (one bounded batch per shard)."""
        out = {"requeued": 0, "final_failed": 0, "due_left": 0}
        for core in self.shards:
            requeued, final, left = core.run("retry", [core.keys.retries], batch)
            out["requeued"] += requeued
            out["final_failed"] += final
            out["due_left"] += left
        return out

    def sweep(self, batch: int | None = None) -> dict:
        """One batch of lease recovery (claim lapses, run lapses)."""
        s = self.s
        out = {"claims_lapsed": 0, "runs_failed": 0}
        for core in self.shards:
            claims, runs = core.run("sweep", [core.keys.claim_leases, core.keys.run_leases], batch or s.sweep_batch,
                                    s.run_ttl_ms, s.retry_base_ms, s.retry_cap_ms)
            out["claims_lapsed"] += claims
            out["runs_failed"] += runs
        return out

    def reassign_gone_servers(self, batch: int = 500) -> dict:
        """Release the folders of servers deleted or silent for ``reassign_after``.

        Reads the server list (bounded: at most 10,000 live servers, plus deleted ones
        that still hold folders) to find candidates; the reassign script re-checks
        each server atomically before releasing.
        """
        s = self.s
        released = 0
        for core in self.shards:  # each shard holds its own copy of the registry and its own folders
            r, k = core.r, core.keys
            ids = [i.decode() for i in r.zrange(k.servers, 0, 9_999)]
            ids += [i.decode() for i in r.srandmember(k.servers_gone, 1000)]
            pipe = r.pipeline(transaction=False)
            for sid in ids:
                pipe.hmget(k.server(sid), "st", "hb")
            now = core.now()
            for sid, (st, hb) in zip(ids, pipe.execute()):
                if st == b"deleted" or int(hb or 0) + s.reassign_after_ms < now:
                    got, _left = core.run("reassign", [k.server(sid)], s.reassign_after_ms, batch)
                    released += got
        return {"folders_released": released}

    def stats(self) -> dict[str, int]:
        """Tasks by status, over every shard (one HGETALL each, one round trip per node)."""
        def merge(replies: list) -> dict[str, int]:
            return {st: n for st, n in sorted(add_counts(replies).items()) if n}

        return self.core.call(Call([Command(("HGETALL", c.keys.stats)) for c in self.shards], merge))

    def shard_of_task(self, task_id: str) -> Core:
        """The shard holding a task: the last two hex digits of its id (``new_task_id``). An id
        that names no shard (not ours, or malformed) goes to shard 0, where it is not found."""
        if self.shards.n == 1:
            return self.core
        try:
            i = int(task_id[-2:], 16)
        except (ValueError, TypeError):
            return self.core
        return self.shards[i] if i < self.shards.n else self.core


def new_task_id(shard: int | None = None) -> str:
    """A task id: a random UUID; on shard ``shard`` of several, with that shard in its last two
    hex digits (122 random bits become 114: still unguessable and unique)."""
    return new_task_ids(1, shard)[0]


_V4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_V4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_task_ids(n: int, shard: int | None = None) -> list[str]:
    """``n`` ids as ``new_task_id`` makes them: what ``str(uuid.uuid4())`` gives (version 4,
    RFC 4122 variant, from os.urandom), formatted here because an import makes up to
    100,000 at once and ``uuid.UUID`` spends ~2 us on checks per id."""
    raw = os.urandom(16 * n)
    out = []
    for i in range(0, 16 * n, 16):
        h = "%032x" % ((int.from_bytes(raw[i:i + 16], "big") & _V4_CLEAR) | _V4_SET)
        if shard is not None:
            h = f"{h[:30]}{shard:02x}"
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _checked(who: Who, items: Sequence[tuple], check: Callable[[Who, Any, Any], tuple]) -> list:
    """Rows for ``Stacking._many`` from ``(task_id, value)`` or ``(task_id, value, note)`` items:
    ``(task_id, check(who, value, note))``, or the error ``check`` raised for that item."""
    rows: list = []
    for task_id, value, *rest in items:
        try:
            rows.append((task_id, check(who, value, rest[0] if rest else None)))
        except Exception as exc:  # noqa: BLE001 - this item's outcome
            rows.append(exc)
    return rows


def _server_id(replies: list) -> str:
    """``finish`` of a transition (start-2, complete-1, fail-2): an item that went through
    is the caller's server id, a bare string (a table per item cost each about 4,000
    Redis instructions to convert, callgrind); a refusal is a table, raised here."""
    reply = replies[0]
    if isinstance(reply, bytes):
        return reply.decode()
    raise_for(reply)
    raise AssertionError(f"unexpected transition reply {reply!r}")  # raise_for returns only for "ok"


def _counts(raw: dict[bytes, bytes]) -> dict[str, int]:
    """A counters hash as ``{status: n}`` without zero entries."""
    return {k.decode(): int(v) for k, v in sorted(raw.items()) if int(v) != 0}


__all__ = ["Stacking", "html_to_text", "render_task", "Conflict"]
