"""Seeded random operations against the stacking engine, with every cross-key invariant
checked by scanning the namespace after each step.

The counters, ready sets, claim indexes, leases, barrier counters and the event stream
are all derived from the task hashes' ``st``/``own``/``asg`` fields; these tests rebuild
each derived structure from the task hashes and compare. Refused operations are checked
to change no key at all, and the outcome of every operation is predicted from the state
the engine held just before it.
"""
from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from engine.errors import Conflict, InvalidInput, NotFound, NotTaskOwner
from engine.stacking import MODES
from tests.helpers import ids, link, online_server, request_doc

SEEDS = [7, 12, 24]  # together: all five stacking modes, cancel_request of open requests, merged batches
STEPS = 400

PHASE1 = {"register", "registering", "profile_failed"}
TERMINAL = {"completed", "final_failed", "cancel"}
PHASE2 = {"connect", "connecting", "connect_failed"}
RUNNING = {"registering", "connecting"}
FAILED = {"profile_failed", "connect_failed"}
READY_STATUS = {1: "register", 2: "connect"}


def documented_key_patterns() -> list[re.Pattern]:
    """The key suffixes of engine/KEYS.md's table, ``<placeholder>`` = one segment (no ':')."""
    text = (Path(__file__).parents[2] / "engine" / "KEYS.md").read_text()
    out = []
    for suffix in re.findall(r"^\| `([^`]+)`", text, re.MULTILINE):
        parts = re.split(r"<[^>]+>", suffix)
        out.append(re.compile("[^:]+".join(re.escape(p) for p in parts) + r"\Z"))
    return out


KEY_PATTERNS = documented_key_patterns()


# ---------------------------------------------------------------------------------------
# Reading the namespace
# ---------------------------------------------------------------------------------------

def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Snapshot:
    """Every key of the namespace, decoded, plus views parsed by key family."""

    def __init__(self, raw: dict, prefix: str) -> None:
        self.raw = raw
        self.tasks: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        self.requests: dict[str, dict] = {}
        self.servers: dict[str, dict] = {}
        self.fc: dict[str, dict] = {}
        self.rc: dict[str, dict] = {}
        self.fs: dict[tuple[str, str], dict] = {}
        self.fr: dict[tuple[int, str], list] = {}
        self.fp: dict[str, dict] = {}
        self.fu: dict[int, dict] = {}
        self.fb: dict[tuple[int, str], dict] = {}
        self.sf: dict[str, set] = {}
        self.ft: dict[str, list] = {}
        self.rf: dict[str, list] = {}
        self.stats: dict = {}
        self.lease_claim: dict = {}
        self.lease_run: dict = {}
        self.retry: dict = {}
        self.unknown: list[str] = []
        for key, value in raw.items():
            suffix = key[len(prefix):]
            if not key.startswith(prefix) or not any(p.match(suffix) for p in KEY_PATTERNS):
                self.unknown.append(key)
            if suffix == "stats":
                self.stats = value
            elif suffix == "lease:claim":
                self.lease_claim = value
            elif suffix == "lease:run":
                self.lease_run = value
            elif suffix == "retry":
                self.retry = value
            elif suffix in ("events", "seq", "requests", "bodies", "servers", "servers:gone"):
                pass
            else:
                family, _, rest = suffix.partition(":")
                if family == "t":
                    self.tasks[rest] = value
                elif family == "f":
                    self.folders[rest] = value
                elif family == "r":
                    self.requests[rest] = value
                elif family == "s":
                    self.servers[rest] = value
                elif family == "fc":
                    self.fc[rest] = value
                elif family == "rc":
                    self.rc[rest] = value
                elif family == "fs":
                    fid, _, sid = rest.partition(":")
                    self.fs[(fid, sid)] = value
                elif family == "fr":
                    p, _, fid = rest.partition(":")
                    self.fr[(int(p), fid)] = value
                elif family == "fp":
                    self.fp[rest] = value
                elif family == "fu":
                    self.fu[int(rest)] = value
                elif family == "fb":
                    p, _, sid = rest.partition(":")
                    self.fb[(int(p), sid)] = value
                elif family == "sf":
                    self.sf[rest] = value
                elif family == "ft":
                    self.ft[rest] = value
                elif family == "rf":
                    self.rf[rest] = value


# Read-only: every listed key's content as ONE string (fields joined by NUL), so a
# snapshot costs two round trips and a few hundred reply elements on either backend.
DUMP_LUA = """
local out = {}
for i, k in ipairs(KEYS) do
  local kind = ARGV[i]
  local v
  if kind == 'hash' then v = redis.call('HGETALL', k)
  elseif kind == 'zset' then v = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
  elseif kind == 'list' then v = redis.call('LRANGE', k, 0, -1)
  elseif kind == 'set' then v = redis.call('SMEMBERS', k)
  elseif kind == 'string' then v = {redis.call('GET', k) or ''}
  elseif kind == 'bodies' then v = {tostring(redis.call('HLEN', k))}
  elseif kind == 'stream' then v = {tostring(redis.call('XLEN', k))}
  else v = {} end
  out[i] = table.concat(v, '\\0')
end
return out
"""


class Reader:
    """Scans a namespace (key types cached: a key name never changes type here)."""

    def __init__(self, engine) -> None:
        self.r = engine.core.r
        self.ns = engine.core.settings.namespace
        self.prefix = engine.core.keys.prefix
        self.events_key = engine.core.keys.events
        self.types: dict[str, str] = {}
        self.last_event_id: bytes | None = None
        self.last_to: dict[str, str] = {}
        self.transitions: Counter = Counter()  # (from, to) -> count, for coverage
        self.actors: Counter = Counter()
        self.dump = self.r.register_script(DUMP_LUA)

    def snapshot(self) -> Snapshot:
        """Every key of the namespace in two round trips: SCAN, then one read-only script."""
        keys = [_s(k) for k in self.r.scan_iter(match=f"{self.ns}:*", count=1000)]
        new = [k for k in keys if k not in self.types]
        if new:
            pipe = self.r.pipeline(transaction=False)
            for k in new:
                pipe.type(k)
            for k, kind in zip(new, pipe.execute()):
                self.types[k] = "bodies" if k.endswith(":bodies") else _s(kind)
        kinds = [self.types[k] for k in keys]
        replies = self.dump(keys=keys, args=kinds) if keys else []
        raw = {}
        for k, kind, blob in zip(keys, kinds, replies):
            v = blob.decode().split("\0") if blob else []
            if kind == "hash":
                raw[k] = dict(zip(v[0::2], v[1::2]))
            elif kind == "zset":
                raw[k] = {m: float(sc) for m, sc in zip(v[0::2], v[1::2])}
            elif kind == "list":
                raw[k] = v
            elif kind == "set":
                raw[k] = set(v)
            else:  # string; bodies (immutable fragments: their count is enough); stream: length
                raw[k] = v[0] if v else ""
        return Snapshot(raw, self.prefix)

    def read_events(self) -> None:
        """Fold the events appended since the last call into ``last_to``, checking the chain."""
        start = self.last_event_id or "-"
        entries = self.r.xrange(self.events_key, min=start, max="+")
        if self.last_event_id is not None:
            assert entries and entries[0][0] == self.last_event_id, "events stream was trimmed"
            entries = entries[1:]
        for eid, e in entries:
            tid, frm, to = _s(e[b"task"]), _s(e[b"from"]), _s(e[b"to"])
            assert frm != to, f"event {eid!r}: no-op transition {frm}->{to} for {tid}"
            assert frm == self.last_to.get(tid, ""), (
                f"event chain broken for {tid}: {frm}->{to} after {self.last_to.get(tid, '')!r}")
            self.last_to[tid] = to
            self.last_event_id = eid
            self.transitions[(frm, to)] += 1
            self.actors[_s(e[b"by"])] += 1


# ---------------------------------------------------------------------------------------
# The invariants
# ---------------------------------------------------------------------------------------

def nonzero(h: dict) -> dict:
    return {k: int(v) for k, v in h.items() if int(v) != 0}


def check_invariants(snap: Snapshot, reader: Reader, where: str) -> None:
    tasks, folders, requests = snap.tasks, snap.folders, snap.requests
    assert not snap.unknown, f"{where}: keys outside KEYS.md: {snap.unknown}"
    assert tasks, where

    by_folder: dict[str, list[str]] = defaultdict(list)
    by_request: dict[str, list[str]] = defaultdict(list)
    for tid, t in tasks.items():
        by_folder[t["fo"]].append(tid)
        by_request[t["req"]].append(tid)
        st, own, asg = t["st"], t.get("own", ""), t.get("asg", "")
        # ownership: only a claimed/running task has an owner, and it is counted for it
        if st in RUNNING:
            assert own != "", f"{where}: {tid} {st} without owner"
        if st not in RUNNING and st not in ("register", "connect"):
            assert own == "", f"{where}: {tid} {st} still owned by {own}"
        if own:
            assert asg == own, f"{where}: {tid} own={own} asg={asg}"
        assert 0 <= int(t["rc"]) <= int(t["mr"]), f"{where}: {tid} rc={t['rc']} mr={t['mr']}"
        # phase-2 marker (connect_links): set by the barrier, exactly on the tasks it moved on
        if st in PHASE2:
            assert "cl" in t, f"{where}: {tid} {st} without connect_links"
        if "cl" in t:
            assert st in PHASE2 or st in TERMINAL, f"{where}: {tid} connect_links in {st}"
        if st == "profiled" or "cl" in t:
            assert t["lp"].startswith('"https://'), f"{where}: {tid} {st} without link_post"
        assert t["fo"] in folders and t["req"] in requests, where

    # 1. status counters
    assert nonzero(snap.stats) == Counter(t["st"] for t in tasks.values()), f"{where}: stats"
    for rid in requests:
        expected = Counter(tasks[tid]["st"] for tid in by_request[rid])
        assert nonzero(snap.rc.get(rid, {})) == expected, f"{where}: rc:{rid}"
    assert set(snap.rc) <= set(requests), where
    for fid in folders:
        expected = Counter(tasks[tid]["st"] for tid in by_folder[fid])
        assert nonzero(snap.fc.get(fid, {})) == expected, f"{where}: fc:{fid}"
    assert set(snap.fc) <= set(folders), where

    # 2. per-folder-per-server counters (connect-status)
    pairs = set(snap.fs) | {(t["fo"], t["asg"]) for t in tasks.values() if t.get("asg")}
    for fid, sid in pairs:
        expected = Counter(tasks[tid]["st"] for tid in by_folder[fid] if tasks[tid].get("asg") == sid)
        assert nonzero(snap.fs.get((fid, sid), {})) == expected, f"{where}: fs:{fid}:{sid}"

    # 3. ready lists: exactly the unowned register/connect tasks, each once
    for fid in folders:
        for phase, want in READY_STATUS.items():
            expected = {tid for tid in by_folder[fid] if tasks[tid]["st"] == want and tasks[tid].get("own", "") == ""}
            ready = snap.fr.get((phase, fid), [])
            assert len(ready) == len(set(ready)), f"{where}: fr:{phase}:{fid} holds a task twice: {ready}"
            assert set(ready) == expected, f"{where}: fr:{phase}:{fid}"
    assert {fid for _, fid in snap.fr} <= set(folders), where

    # 4. claim indexes: a folder with ready tasks is indexed under its binding, only there
    for phase in (1, 2):
        for fid, f in folders.items():
            ready = bool(snap.fr.get((phase, fid)))
            srv = f.get("srv", "")
            in_fu = fid in snap.fu.get(phase, {})
            in_fb = {sid for (p, sid), members in snap.fb.items() if p == phase and fid in members}
            assert in_fu == (ready and srv == ""), f"{where}: {fid} fu:{phase}={in_fu} ready={ready} srv={srv!r}"
            assert in_fb == ({srv} if ready and srv else set()), (
                f"{where}: {fid} in fb:{phase} of {in_fb}, ready={ready} srv={srv!r}")
            assert not (in_fu and in_fb), where
            if in_fu:
                assert snap.fu[phase][fid] == float(f["seq"]), where
            for sid in in_fb:
                assert snap.fb[(phase, sid)][fid] == float(f["seq"]), where
    # sf:<server> is exactly the set of folders bound to it
    bound = defaultdict(set)
    for fid, f in folders.items():
        if f.get("srv"):
            bound[f["srv"]].add(fid)
    assert {sid: m for sid, m in snap.sf.items() if m} == dict(bound), f"{where}: sf"

    # 5. leases and the retry schedule
    assert set(snap.lease_claim) == {tid for tid, t in tasks.items()
                                     if t["st"] in ("register", "connect") and t.get("own")}, \
        f"{where}: lease:claim"
    assert set(snap.lease_run) == {tid for tid, t in tasks.items() if t["st"] in RUNNING}, f"{where}: lease:run"
    assert set(snap.retry) == {tid for tid, t in tasks.items() if t["st"] in FAILED}, f"{where}: retry"

    # 6. folder barrier counters
    for fid, f in folders.items():
        mine = [tasks[tid] for tid in by_folder[fid]]
        assert snap.ft.get(fid, []) and sorted(snap.ft[fid]) == sorted(by_folder[fid]), f"{where}: ft:{fid}"
        assert int(f["n"]) == len(mine), where
        p1 = sum(t["st"] in PHASE1 for t in mine)
        assert int(f["p1"]) == p1, f"{where}: f:{fid} p1={f['p1']} actual {p1}"
        if p1 == 0:
            assert not any(t["st"] == "profiled" for t in mine), f"{where}: {fid} barrier did not fire"
            assert f["phase"] == "2", f"{where}: {fid} phase={f['phase']} with p1=0"
        else:
            assert f["phase"] == "1", f"{where}: {fid} phase={f['phase']} with p1={p1}"
            assert not any(t["st"] in ("connect", "connecting", "connect_failed") for t in mine), where
        assert int(f["open"]) == sum(t["st"] not in TERMINAL for t in mine), f"{where}: f:{fid} open"
        # the barrier reads the profiled tasks in folder order from ft: it must be seq order
        assert snap.ft[fid] == sorted(snap.ft[fid], key=lambda tid: int(tasks[tid]["seq"])), f"{where}: ft:{fid} order"
    assert not snap.fp, f"{where}: fp: keys are no longer kept, found {sorted(snap.fp)}"

    # 7. request status
    for rid, r in requests.items():
        fids = snap.rf[rid]
        assert sorted(fids) == sorted(fid for fid, f in folders.items() if f["req"] == rid), where
        open_ = sum(int(folders[fid]["open"]) for fid in fids)
        assert int(r["open"]) == open_, f"{where}: r:{rid} open={r['open']} sum={open_}"
        assert int(r["total"]) == len(by_request[rid]) == sum(int(folders[fid]["n"]) for fid in fids), where
        in_phase1 = sum(int(folders[fid]["p1"]) > 0 for fid in fids)
        assert int(r["p1f"]) == in_phase1, f"{where}: r:{rid} p1f={r['p1f']} actual {in_phase1}"
        assert (r["st"] == "completed") == (open_ == 0), f"{where}: r:{rid} st={r['st']} open={open_}"
        if open_:
            assert r["st"] == ("register" if in_phase1 else "connecting"), (
                f"{where}: r:{rid} st={r['st']} with {in_phase1} folders in phase 1")

    # 8. events: each task's transitions chain from '' to its current status
    reader.read_events()
    for tid, t in tasks.items():
        last = reader.last_to.get(tid)
        assert last == t["st"], f"{where}: last event of {tid} is {last}, st={t['st']}"
    assert set(reader.last_to) == set(tasks), where


def expected_links(mode: str, lps: list, i: int) -> list:
    """connect_links of the i-th (0-based) of the profiled tasks, as the README describes."""
    n = len(lps)
    if mode == "ring":
        return [lps[(i + 1) % n]] if n >= 2 else []
    if mode == "all":
        return [lp for j, lp in enumerate(lps) if j != i][:150]
    if mode == "wheel":
        return [lps[0]] if i else []
    assert mode == "chain", mode
    return [lps[i + 1]] if i + 1 < n else []


# ---------------------------------------------------------------------------------------
# The random walk
# ---------------------------------------------------------------------------------------

class Walk:
    def __init__(self, engine, clock, seed: int) -> None:
        self.engine, self.clock = engine, clock
        self.st = engine.stacking
        self.rng = random.Random(seed)
        self.reader = Reader(engine)
        # Shorter run lease and reassignment delay than the defaults, so that within a few
        # hours of simulated time runs also lapse and silent servers lose their folders.
        engine.core.settings.run_ttl_ms = 600_000
        engine.core.settings.reassign_after_ms = 1_200_000
        self.callers = [online_server(engine, f"w{i}")[0] for i in range(3)]
        self.sids = [c.id for c in self.callers]
        self.held: dict[str, dict[str, None]] = {sid: {} for sid in self.sids}  # insertion-ordered sets
        self.requests: list[str] = []
        self.folders: list[str] = []
        self.tasks: list[str] = []
        self.cancelled_requests = 0
        self.fresh: Snapshot | None = None
        self.outcomes: Counter = Counter()
        self.batches = 0
        self.links: dict[str, list] = {}
        self.log: list[str] = []
        rng = self.rng
        modes = rng.sample(MODES, rng.randint(2, 3))  # distinct modes per walk
        for ri, mode in enumerate(modes):
            nf = rng.randint(1, 3)
            doc = request_doc(folders=nf, tasks=8, mode=mode, max_retries=rng.randint(0, 2),
                              prefix=f"R{ri}F", about="<p>x</p>")
            for folder in doc["folders"]:
                folder["tasks"] = folder["tasks"][:rng.randint(3, 8)]
            doc["id"] = f"R{ri}"
            self.st.create_request(doc)
            self.requests.append(doc["id"])
            for folder in doc["folders"]:
                self.folders.append(folder["folder_id"])
        self.snap = self.check("setup")
        self.tasks = [tid for fid in self.folders for tid in self.snap.ft[fid]]  # creation order
        self.step_no = 0

    # -- helpers ----------------------------------------------------------------------
    def check(self, where: str) -> Snapshot:
        """Check the invariants on the namespace as it is now (reusing the snapshot a step
        took after its last write, if any)."""
        snap, self.fresh = self.fresh or self.reader.snapshot(), None
        check_invariants(snap, self.reader, where)
        self.check_links(snap, where)
        self.checked = snap
        return snap

    def check_links(self, snap: Snapshot, where: str) -> None:
        """connect_links: when a folder's barrier fires, the tasks it moves to phase 2 (``ph``)
        link to each other by the folder's mode, over their link_posts in creation order; the
        links never change afterwards (a phase-2 complete may replace ``lp``, not ``cl``)."""
        prev = getattr(self, "checked", None)
        for fid, f in snap.folders.items():
            if prev is None or fid not in prev.folders or prev.folders[fid]["phase"] != "1" or f["phase"] != "2":
                continue
            moved = sorted((tid for tid, t in snap.tasks.items() if t["fo"] == fid and "cl" in t),
                           key=lambda tid: int(snap.tasks[tid]["seq"]))
            if f["mode"] == "disable":
                assert not moved, f"{where}: {fid} (disable) moved tasks to phase 2"
                continue
            lps = [orjson.loads(snap.tasks[tid]["lp"]) for tid in moved]
            for i, tid in enumerate(moved):
                self.links[tid] = expected_links(f["mode"], lps, i)
        for tid, links in self.links.items():
            assert orjson.loads(snap.tasks[tid]["cl"]) == links, f"{where}: connect_links of {tid}"

    def now(self) -> int:
        return self.engine.core.now()

    def expect(self, fn, error: type | None, where: str):
        """Run ``fn``; it must raise exactly ``error`` (and change nothing) or succeed."""
        if error is None:
            return fn()
        with pytest.raises(error) as info:
            fn()
        assert type(info.value) is error, f"{where}: {type(info.value).__name__}, expected {error.__name__}"
        self.fresh = self.reader.snapshot()
        assert self.fresh.raw == self.snap.raw, f"{where}: a refused call changed keys"
        return None

    def predict_worker(self, op: str, sid: str, tid: str, lp) -> type | None:
        t = self.snap.tasks.get(tid)
        if op == "complete" and lp not in (None, "") and not str(lp).startswith("https://"):
            return InvalidInput
        if t is None:
            return NotFound
        allowed = ("register", "connect") if op == "start" else ("registering", "connecting")
        if t["st"] not in allowed:
            return Conflict
        if t.get("own", "") != sid:
            return NotTaskOwner
        if op == "complete" and t["st"] == "registering" and lp in (None, ""):
            return InvalidInput
        return None

    def worker_op(self, op: str, sid: str, tid: str, where: str, lp=None) -> bool:
        error = self.predict_worker(op, sid, tid, lp)
        if op == "start":
            fn = lambda: self.st.start(sid, tid)  # noqa: E731
        elif op == "complete":
            fn = lambda: self.st.complete(sid, tid, lp, note="n")  # noqa: E731
        else:
            fn = lambda: self.st.fail(sid, tid, "boom")  # noqa: E731
        before = self.snap.tasks.get(tid, {}).get("st")
        self.outcomes[(op, error.__name__ if error else "ok")] += 1
        self.expect(fn, error, f"{where} {op} {tid} by {sid} (st={before})")
        if error is None:
            self.snap = self.fresh = self.reader.snapshot()
            after = self.snap.tasks[tid]
            if op == "start":
                assert after["st"] == {"register": "registering", "connect": "connecting"}[before], where
                assert self.snap.lease_run[tid] == self.now() + self.engine.core.settings.run_ttl_ms, where
            elif op == "complete":
                assert after["st"] in ({"profiled", "connect", "completed"} if before == "registering"
                                       else {"completed"}), where
            else:
                assert after["st"] == {"registering": "profile_failed", "connecting": "connect_failed"}[before]
                s, rc, mr = self.engine.core.settings, int(after["rc"]), int(after["mr"])
                due = self.now() + (min(s.retry_cap_ms, s.retry_base_ms * 2 ** rc) if rc < mr else 0)
                assert self.snap.retry[tid] == due, f"{where}: retry due {self.snap.retry[tid]}, expected {due}"
        return error is None

    # -- the steps ----------------------------------------------------------------------
    def step_claim(self, where: str) -> None:
        sid = self.rng.choice(self.sids)
        limit = self.rng.randint(1, 10)
        status = self.rng.choice([None, "register", "connect"])
        got = self.st.claim(sid, limit, status)
        docs = [orjson.loads(b) for b in got]
        tids = [d["id"] for d in docs]
        self.log.append(f"{where}: claim {sid[:6]} limit={limit} status={status} -> {len(tids)}")
        assert len(tids) <= limit and len(set(tids)) == len(tids), where
        before, self.snap = self.snap, self.reader.snapshot()
        self.fresh = self.snap
        after = self.snap
        # Order: phase 2 before phase 1; within a phase the caller's own folders before
        # newly bound ones, each group oldest folder first, each folder from the head of
        # its ready list: tasks that came back first (here: returned by the claim's own
        # sweep), then the list as it was. Fewer than `limit` means nothing claimable was
        # left for the caller.
        phase_of = [1 if d["status"] == "register" else 2 for d in docs]
        assert phase_of == sorted(phase_of, reverse=True), f"{where}: phase order {phase_of}"
        mine = {fid for fid, f in before.folders.items() if f["srv"] == sid}

        def order(tid):  # folders only: the sort is stable, so tasks keep their order within one
            t = after.tasks[tid]
            return t["fo"] not in mine, int(after.folders[t["fo"]]["seq"])

        for p in (1, 2):
            got_p = [tid for tid, ph in zip(tids, phase_of) if ph == p]
            assert got_p == sorted(got_p, key=order), f"{where}: folder order in phase {p}"
            for fid in {after.tasks[tid]["fo"] for tid in got_p}:
                taken = [tid for tid in got_p if after.tasks[tid]["fo"] == fid]
                listed = before.fr.get((p, fid), [])
                back = [tid for tid in taken if tid not in listed]
                assert set(taken[:len(back)]) == set(back), f"{where}: fr:{p}:{fid} returned tasks first"
                rest = taken[len(back):]
                assert rest == listed[:len(rest)], f"{where}: fr:{p}:{fid} taken from its head"
            if any(after.tasks[tid]["fo"] not in mine for tid in got_p):
                assert not any(after.fr.get((p, fid)) for fid in mine), f"{where}: bound folders not drained first"

        def claimable(p):
            return [fid for fid, f in after.folders.items() if f["srv"] in ("", sid) and after.fr.get((p, fid))]

        wanted = {None: (2, 1), "register": (1,), "connect": (2,)}[status]
        if len(tids) < limit:
            for p in wanted:
                assert not claimable(p), f"{where}: claimed {len(tids)} < {limit} with phase {p} ready"
        if status is None and 1 in phase_of:
            assert not claimable(2), f"{where}: phase 1 claimed while phase 2 was ready"
        deadline = self.now() + self.engine.core.settings.claim_ttl_ms
        for d in docs:
            t = self.snap.tasks[d["id"]]
            if status is not None:
                assert d["status"] == status, where
            assert t["st"] == d["status"] and t["own"] == sid and t["asg"] == sid, f"{where}: {d['id']} {t}"
            assert self.snap.lease_claim[d["id"]] == deadline, where
            assert self.snap.folders[t["fo"]]["srv"] == sid, f"{where}: claimed from a folder not bound to caller"
            self.held[sid][d["id"]] = None

    def step_worker(self, where: str) -> None:
        """A server moves on one task it was given: start a claim, complete or fail a run
        (now and then the wrong one of the three). Its view may be stale (lapsed, cancelled,
        reassigned): the outcome is predicted from the engine's state either way."""
        holders = [sid for sid in self.sids if self.held[sid]]
        if not holders:
            return self.step_claim(where)
        sid = self.rng.choice(holders)
        tid = self.rng.choice(list(self.held[sid]))
        st = self.snap.tasks[tid]["st"]
        if self.rng.random() < 0.1:
            op = self.rng.choice(["start", "complete", "fail"])
        elif st in ("register", "connect"):
            op = "start"
        else:
            op = "complete" if self.rng.random() < 0.8 else "fail"
        lp = link(tid) if op == "complete" and self.rng.random() < 0.95 else None
        self.log.append(f"{where}: {op} {tid[:6]} by {sid[:6]} (st={st})")
        done = self.worker_op(op, sid, tid, where, lp)
        if (done and op != "start") or self.snap.tasks[tid].get("own") != sid:
            self.held[sid].pop(tid, None)

    def step_batch(self, where: str) -> None:
        """Several servers' starts, completes and fails sent in one ``call_many``: the engine
        merges the calls of one kind into one script call (engine/calls.py ``Plan``); each
        item must end exactly as it would alone, its outcome predicted from the state
        before the batch and the items before it (now and then the same request twice)."""
        picks: list[tuple[str, str, str, str | None]] = []
        for sid in self.sids:
            for tid in self.held[sid]:
                st = self.snap.tasks[tid]["st"]
                op = "start" if st in ("register", "connect") else ("complete" if self.rng.random() < 0.8 else "fail")
                picks.append((op, sid, tid, link(tid) if op == "complete" and self.rng.random() < 0.9 else None))
        if len({tid for _, _, tid, _ in picks}) < 2:
            return self.step_claim(where)
        self.rng.shuffle(picks)
        chosen, seen = [], set()
        for pick in picks:
            if pick[2] not in seen and len(chosen) < self.rng.randint(2, 8):
                chosen.append(pick)
                seen.add(pick[2])
        if self.rng.random() < 0.4:
            chosen.append(chosen[0])  # the same request twice in one batch
        calls, expected, moved = [], [], {}
        for op, sid, tid, lp in chosen:
            error = Conflict if tid in moved else self.predict_worker(op, sid, tid, lp)
            if tid in moved and moved[tid] is not None:
                error = moved[tid]
            make = {"start": lambda: self.st.start_call(sid, tid),
                    "complete": lambda: self.st.complete_call(sid, tid, lp, note="n"),
                    "fail": lambda: self.st.fail_call(sid, tid, "boom")}[op]
            calls.append(make())
            expected.append(error)
            moved.setdefault(tid, error)
            self.outcomes[(op, error.__name__ if error else "ok")] += 1
        self.log.append(f"{where}: batch {[(op, tid[:6], sid[:6]) for op, sid, tid, _ in chosen]}")
        results = self.engine.core.call_many(calls)
        self.batches += 1
        got = [None if ok else type(result) for ok, result in results]
        assert got == expected, f"{where}: batch outcomes {got}, expected {expected}"
        self.snap = self.fresh = self.reader.snapshot()
        for (op, sid, tid, _), error in zip(chosen, expected):
            if (error is None and op != "start") or self.snap.tasks[tid].get("own") != sid:
                self.held[sid].pop(tid, None)

    def step_wrong(self, where: str) -> None:
        """A random server acts on a random task (mostly refused; predicted either way)."""
        op = self.rng.choice(["start", "complete", "fail"])
        sid = self.rng.choice(self.sids + ["nobody"])
        roll = self.rng.random()
        tid = "no-such-task" if roll < 0.1 else self.rng.choice(self.tasks)
        lp = self.rng.choice([None, link(tid), "http://not-https"]) if op == "complete" else None
        self.log.append(f"{where}: wrong {op} {tid[:6]} by {sid[:6]} lp={lp}")
        if self.worker_op(op, sid, tid, where, lp) and op != "start":
            for held in self.held.values():
                held.pop(tid, None)

    def step_advance(self, where: str) -> None:
        seconds = self.rng.randint(0, 400)
        self.log.append(f"{where}: advance {seconds}")
        self.clock.advance(seconds)

    def step_heartbeat(self, where: str) -> None:
        caller = self.rng.choices(self.callers, [6, 3, 1])[0]  # w2 is often silent
        self.log.append(f"{where}: heartbeat {caller.id[:6]}")
        self.engine.servers.heartbeat(caller, {})

    def step_retries(self, where: str) -> None:
        now = self.now()
        due = [tid for tid, at in self.snap.retry.items() if at <= now]
        requeue = sum(int(self.snap.tasks[tid]["rc"]) < int(self.snap.tasks[tid]["mr"]) for tid in due)
        got = self.st.run_retries()
        self.log.append(f"{where}: run_retries -> {got}")
        assert (got["requeued"], got["final_failed"], got["due_left"]) == (requeue, len(due) - requeue, 0), where

    def step_sweep(self, where: str) -> None:
        now, s = self.now(), self.engine.core.settings
        lapsed = sum(at <= now for at in self.snap.lease_claim.values())
        failing = 0
        for tid, at in self.snap.lease_run.items():
            hb = int(self.snap.servers[self.snap.tasks[tid]["own"]].get("hb", 0))
            failing += at <= now and hb + s.run_ttl_ms <= now
        got = self.st.sweep()
        self.log.append(f"{where}: sweep -> {got}")
        assert got == {"claims_lapsed": lapsed, "runs_failed": failing}, where

    def step_release(self, where: str) -> None:
        if self.rng.random() < 0.1:
            self.log.append(f"{where}: release unknown folder")
            return self.expect(lambda: self.st.release_folder("no-such-folder"), NotFound, where)
        fid = self.rng.choice(self.folders)
        bound = self.snap.folders[fid]["srv"] != ""
        self.log.append(f"{where}: release {fid} (bound={bound})")
        assert self.st.release_folder(fid) is bound, where
        self.fresh = self.reader.snapshot()
        assert self.fresh.folders[fid]["srv"] == "", where
        if not bound:
            assert self.fresh.raw == self.snap.raw, f"{where}: releasing an unbound folder changed keys"

    def step_cancel_task(self, where: str) -> None:
        # Aim at the interesting cases: the last ready task of a folder (its claim index
        # entry must go), a claimed one, a running one, one waiting for its retry, any.
        by_status = defaultdict(list)
        for tid in self.tasks:
            by_status[self.snap.tasks[tid]["st"]].append(tid)
        singles = [(fid, tid) for (_, fid), members in sorted(self.snap.fr.items()) if len(members) == 1
                   for tid in members]
        pools = [  # (candidates, weight)
            (["no-such-task"], 1),
            ([tid for fid, tid in singles if self.snap.folders[fid]["srv"] == ""], 12),
            ([tid for _, tid in singles], 3),
            ([tid for _, members in sorted(self.snap.fr.items()) for tid in members], 2),
            ([tid for tid in self.tasks if tid in self.snap.lease_claim], 2),  # claimed, not started
            (by_status["registering"] + by_status["connecting"] + by_status["profiled"], 2),
            (by_status["profile_failed"] + by_status["connect_failed"], 2),
            (self.tasks, 2),
        ]
        pool = self.rng.choices([p for p, _ in pools if p], [w for p, w in pools if p])[0]
        tid = self.rng.choice(pool)
        t = self.snap.tasks.get(tid)
        error = NotFound if t is None else Conflict if t["st"] in TERMINAL else None
        self.log.append(f"{where}: cancel_task {tid[:6]} (st={t and t['st']})")
        self.expect(lambda: self.st.cancel_task(tid), error, where)
        if error is None:
            self.fresh = self.reader.snapshot()
            assert self.fresh.tasks[tid]["st"] == "cancel", where

    def step_cancel_request(self, where: str) -> None:
        if self.cancelled_requests >= 1 or self.step_no < 200:  # at most one, late in the walk
            return self.step_cancel_task(where)
        self.cancelled_requests += 1
        rid = self.rng.choice([rid for rid in self.requests if self.snap.requests[rid]["st"] != "completed"]
                              or self.requests)
        open_before = [tid for tid, t in self.snap.tasks.items() if t["req"] == rid and t["st"] not in TERMINAL]
        n = self.st.cancel_request(rid)
        self.log.append(f"{where}: cancel_request {rid} -> {n} of {len(open_before)} open")
        after = self.fresh = self.reader.snapshot()
        # Every open task is cancelled (none completed by a barrier on the way), each once.
        assert n == len(open_before), where
        assert all(after.tasks[tid]["st"] == "cancel" for tid in open_before), where
        assert after.requests[rid]["st"] == "completed", where
        assert self.st.cancel_request(rid) == 0, where
        self.fresh = None

    def step_reassign(self, where: str) -> None:
        now, s = self.now(), self.engine.core.settings
        gone = {sid for sid in self.sids if int(self.snap.servers[sid].get("hb", 0)) + s.reassign_after_ms < now}
        expected = sum(f["srv"] in gone for f in self.snap.folders.values())
        got = self.st.reassign_gone_servers()
        self.log.append(f"{where}: reassign -> {got} (gone {len(gone)})")
        assert got == {"folders_released": expected}, where
        self.fresh = self.reader.snapshot()
        for fid, f in self.snap.folders.items():
            srv = self.fresh.folders[fid]["srv"]
            assert srv == ("" if f["srv"] in gone else f["srv"]), f"{where}: {fid} bound to {srv!r} after reassign"

    def run(self, steps: int) -> None:
        table = [
            (self.step_claim, 12),
            (self.step_worker, 40),
            (self.step_batch, 8),
            (self.step_wrong, 7),
            (self.step_advance, 9),
            (self.step_heartbeat, 7),
            (self.step_retries, 5),
            (self.step_sweep, 4),
            (self.step_release, 2),
            (self.step_cancel_task, 3),
            (self.step_cancel_request, 0.3),
            (self.step_reassign, 3),
        ]
        actions, weights = zip(*table)
        for i in range(steps):
            where, self.step_no = f"step {i}", i
            self.rng.choices(actions, weights)[0](where)
            self.snap = self.check(where)

    def lapse_a_run(self) -> None:
        """Make one run lease lapse if the walk has not: which runs lapse hangs on the
        order tasks were handed out in, and the lapse path must be walked (and checked) on
        every run of this test. A server with a running task (one claims and starts one
        if none has) stays silent past the run lease while the others heartbeat, and a
        sweep fails that task."""
        if self.reader.actors["lease"]:
            return
        running = sorted(tid for tid, t in self.snap.tasks.items() if t["st"] in RUNNING)
        if not running and not any(t["st"] in ("register", "connect") for t in self.snap.tasks.values()):
            doc = request_doc(folders=1, tasks=1, prefix="RLF", about="<p>x</p>")  # nothing left to run
            doc["id"] = "RL"
            self.st.create_request(doc)
            self.requests.append(doc["id"])
            self.folders.append(doc["folders"][0]["folder_id"])
            self.snap = self.check("lapse: a request of one task")
            self.tasks.append(self.snap.ft[self.folders[-1]][0])
        if not running:
            for caller in self.callers:
                self.engine.servers.heartbeat(caller, {})
                got = self.st.claim(caller.id, 1)
                self.snap = self.check(f"lapse: claim by {caller.id[:6]}")
                if got:
                    running = [orjson.loads(got[0])["id"]]
                    self.st.start(caller.id, running[0])
                    self.snap = self.check(f"lapse: start {running[0][:6]}")
                    break
        assert running, "lapse: no task to run"
        tid = running[0]
        owner = self.snap.tasks[tid]["own"]
        self.clock.advance(self.engine.core.settings.run_ttl_ms // 1000 + 1)
        for caller in self.callers:
            if caller.id != owner:
                self.engine.servers.heartbeat(caller, {})
        self.st.sweep()
        self.snap = self.check(f"lapse: sweep after {tid[:6]}")
        assert self.snap.tasks[tid]["st"] in ("profile_failed", "connect_failed", "final_failed"), tid
        for held in self.held.values():
            held.pop(tid, None)

    def drain(self) -> None:
        """Finish everything: every task ends terminal, every request completed."""
        for round_ in range(60):
            where = f"drain {round_}"
            for caller in self.callers:
                self.engine.servers.heartbeat(caller, {})
            for sid in self.sids:
                self.st.claim(sid, 100)
            self.snap = self.check(where)
            for tid, t in self.snap.tasks.items():
                if t["st"] in ("register", "connect") and t.get("own"):
                    self.st.start(t["own"], tid)
            self.snap = self.check(where)
            for tid, t in self.snap.tasks.items():
                if t["st"] in RUNNING:
                    self.st.complete(t["own"], tid, link(tid))
            self.snap = self.check(where)
            if all(t["st"] in TERMINAL for t in self.snap.tasks.values()):
                break
            self.clock.advance(200)
            self.st.run_retries()
            self.st.sweep()
            self.st.reassign_gone_servers()
            self.snap = self.check(where)
        assert all(t["st"] in TERMINAL for t in self.snap.tasks.values()), "drain did not finish"
        assert {rid: r["st"] for rid, r in self.snap.requests.items()} == {rid: "completed" for rid in self.requests}
        assert set(nonzero(self.snap.stats)) <= TERMINAL
        assert sum(nonzero(self.snap.stats).values()) == len(self.tasks)
        assert not self.snap.lease_claim and not self.snap.lease_run and not self.snap.retry
        assert not any(self.snap.fr.values()) and not any(self.snap.fu.values()) and not any(self.snap.fb.values())


@pytest.mark.one_redis("a whole-contract snapshot in one Lua call after every step: all keys on one server")
@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_keep_every_invariant(engine, clock, seed):
    walk = Walk(engine, clock, seed)
    try:
        walk.run(STEPS)
        walk.lapse_a_run()
        walk.drain()
    except AssertionError:
        print("\n".join(walk.log[-40:]))  # the last steps, shown by pytest on failure
        raise
    # The walk went everywhere worth going (guards against a walk that only ever claims).
    seen = walk.reader.transitions
    for move in [("register", "registering"), ("registering", "profiled"), ("registering", "profile_failed"),
                 ("profile_failed", "register"), ("connect", "connecting"), ("connecting", "completed")]:
        assert seen[move], f"never saw {move}"
    assert seen[("profiled", "connect")] + seen[("profiled", "completed")], "no barrier fired"
    assert seen[("profile_failed", "final_failed")] + seen[("connect_failed", "final_failed")], "no final failure"
    assert sum(n for (_, to), n in seen.items() if to == "cancel"), "nothing cancelled"
    assert walk.reader.actors["lease"], "no run lease lapsed"
    outcomes = {outcome for (_, outcome) in walk.outcomes}
    assert outcomes >= {"ok", "Conflict", "NotTaskOwner", "NotFound", "InvalidInput"}, outcomes
    assert walk.outcomes[("start", "ok")] and walk.batches, "no merged batch ran"


def test_cancel_request_cancels_profiled_tasks_in_disable_mode(engine):
    """cancel_request must cancel every open task, whatever the order of the folder's tasks.
    Here the folder's second task is profiled and the first still in phase 1: cancelling the
    first fires the barrier, which in mode "disable" would complete the second had it not
    been cancelled first (a bug the random walk found)."""
    caller, _ = online_server(engine)
    req = engine.stacking.create_request(request_doc(tasks=2, mode="disable"))
    first, second = ids(engine.stacking.claim(caller.id, 2))
    engine.stacking.start(caller.id, second)
    engine.stacking.complete(caller.id, second, link(2))
    assert engine.stacking.request(req["request_id"])["open_tasks"] == 2
    assert engine.stacking.cancel_request(req["request_id"]) == 2
    assert engine.stacking.request(req["request_id"])["by_status"] == {"cancel": 2}
    assert engine.stacking.task_state(second)["status"] == "cancel"
