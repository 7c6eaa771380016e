-- common: stacking statuses, the task loader and this contract's counters. Every
-- status change of every stacking script goes through set_status, which is the
-- shared change_status (includes/status.lua), so the task hash, the counters
-- that mirror it and the event stream can never disagree.
-- Needs locals K (tagged key prefix, ARGV[1]), NOW (ms, ARGV[2]) and
-- MAXLEN (event stream cap, ARGV[3]) defined before the include.
-- Derived keys: t:<task>, fc:<folder>, rc:<request>, fs:<folder>:<server>,
-- stats, events (all under K, so all under the script's hash tag).
-- @include events
-- @include status
-- @include slices

local PHASE1 = {pending = true, queued = true, running = true,
                register = true, registering = true, profile_failed = true}
local TERMINAL = {completed = true, final_failed = true, cancel = true}

-- The fields scripts decide on; nil when the task does not exist. `more`
-- (optional): one more field, returned second (read by the same HMGET).
-- Every field read costs a script about 2,000 instructions (the hash lookup,
-- the reply, its Lua string), so the hot transitions read only what they use
-- (load_held, and the barrier's own read).
local function load_task(tid, more)
  local v
  if more then
    v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'fo', 'req', 'asg', 'own', 'seq', 'rc', 'mr', more)
  else
    v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'fo', 'req', 'asg', 'own', 'seq', 'rc', 'mr')
  end
  if not v[1] then return nil end
  return {id = tid, st = v[1], fo = v[2], req = v[3], asg = v[4] or '', own = v[5] or '',
          seq = v[6], rc = tonumber(v[7]) or 0, mr = tonumber(v[8]) or 0}, v[9]
end

-- What start and complete decide on: status, owner, and the names of the
-- task's counters (folder, request, assigned server). No seq. `retries`: also
-- rc and mr, which a failure decides on.
local function load_held(tid, retries)
  if retries then
    local v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'fo', 'req', 'asg', 'own', 'rc', 'mr')
    if not v[1] then return nil end
    return {id = tid, st = v[1], fo = v[2], req = v[3], asg = v[4] or '', own = v[5] or '',
            rc = tonumber(v[6]) or 0, mr = tonumber(v[7]) or 0}
  end
  local v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'fo', 'req', 'asg', 'own')
  if not v[1] then return nil end
  return {id = tid, st = v[1], fo = v[2], req = v[3], asg = v[4] or '', own = v[5] or ''}
end

-- The counter hashes that mirror a task's status: its folder's, its request's,
-- the global stats and, while assigned, its folder's for that server. Built
-- once per folder and server in a call (a call moving a thousand tasks of
-- twenty folders builds twenty lists, not a thousand): the names are pure
-- functions of (folder, server), and a folder belongs to one request.
local STATS, HASHES = K .. 'stats', {}
local function folder_counter_hashes(fo, req, asg)
  local by_folder = HASHES[fo]
  if not by_folder then by_folder = {}; HASHES[fo] = by_folder end
  local hs = by_folder[asg]
  if not hs then
    hs = {K .. 'fc:' .. fo, K .. 'rc:' .. req, STATS}
    if asg ~= '' then hs[4] = K .. 'fs:' .. fo .. ':' .. asg end
    by_folder[asg] = hs
  end
  return hs
end

local function counter_hashes(t)
  return folder_counter_hashes(t.fo, t.req, t.asg)
end

-- Every stacking status change: the shared change_status with this contract's counters.
-- `extra` (optional): more fields of the task hash, written by the same HSET.
local function set_status(t, new, actor, extra)
  change_status(t.id, t.st, new, actor, counter_hashes(t), extra)
  t.st = new
end

-- Ready tasks: per folder and phase, a list of task ids in claim order
-- (fr:<phase>:<folder>). Fresh tasks (import, the barrier) are appended in
-- seq order; a task that comes back (a lapsed claim, a retry) goes to the head
-- and is claimed next. Why a list and not a sorted set scored by seq: ZADD
-- scans a small sorted set's listpack for each member it adds (to find an old
-- score), so filling a folder of 50 cost about 13,000 instructions a task,
-- callgrind; RPUSH appends (about 900). A task is in at most one ready list,
-- once, and only while it is unowned in register/connect: claim pops it,
-- and nothing pushes a task that is not out of every list.

-- `cmd` on ready list `rk`. A ready set written before ready lists (a zset
-- scored by seq) is turned into the list of its members in seq order the first
-- time a script touches it (WRONGTYPE), and `cmd` runs on that: data stored by
-- an earlier version needs no migration step. Costs nothing otherwise.
local function ready_call(cmd, rk, ...)
  local r = redis.pcall(cmd, rk, ...)
  if type(r) == 'table' and r.err then
    if redis.call('TYPE', rk).ok == 'zset' then
      local ids = redis.call('ZRANGE', rk, 0, -1)
      redis.call('DEL', rk)
      call_sliced(redis.call, 'RPUSH', rk, ids)
    end
    r = redis.call(cmd, rk, ...)  -- any other error is raised, as redis.call raises it
  end
  return r
end

-- Index folder `fid` for `phase`: its bound server's set, or the unbound set.
local function index_folder(fid, phase)
  local f = redis.call('HMGET', K .. 'f:' .. fid, 'srv', 'seq')
  local srv = f[1] or ''
  if srv ~= '' then
    redis.call('ZADD', K .. 'fb:' .. phase .. ':' .. srv, f[2], fid)
  else
    redis.call('ZADD', K .. 'fu:' .. phase, f[2], fid)
  end
end

-- Append ids (in claim order) to folder `fid`'s ready list for `phase`.
-- Does not index the folder.
local function push_ready(fid, phase, ids)
  call_sliced(ready_call, 'RPUSH', K .. 'fr:' .. phase .. ':' .. fid, ids)
end

-- Fresh tasks of folder `fid` for `phase` (ids in seq order) become claimable.
local function make_ready_many(fid, phase, ids)
  push_ready(fid, phase, ids)
  index_folder(fid, phase)
end

-- One task comes back: the head of its folder's list.
local function make_ready(t, phase)
  ready_call('LPUSH', K .. 'fr:' .. phase .. ':' .. t.fo, t.id)
  index_folder(t.fo, phase)
end

-- Take a task out of its folder's ready list for `phase`; drop the folder from
-- the claim index when that list empties. LREM walks the list (at most the
-- folder's tasks, 1,000): an operator's cancel, not a hot path.
local function unready(t, phase)
  local rk = K .. 'fr:' .. phase .. ':' .. t.fo
  ready_call('LREM', rk, 1, t.id)
  if redis.call('EXISTS', rk) == 0 then
    local srv = redis.call('HGET', K .. 'f:' .. t.fo, 'srv') or ''
    redis.call('ZREM', K .. 'fu:' .. phase, t.fo)
    if srv ~= '' then redis.call('ZREM', K .. 'fb:' .. phase .. ':' .. srv, t.fo) end
  end
end

-- Release a folder's binding: its ready tasks become claimable by any server.
local function release_folder(fid)
  local fk = K .. 'f:' .. fid
  local srv = redis.call('HGET', fk, 'srv') or ''
  if srv == '' then return 0 end
  for phase = 1, 2 do
    local bk = K .. 'fb:' .. phase .. ':' .. srv
    local score = redis.call('ZSCORE', bk, fid)
    if score then
      redis.call('ZREM', bk, fid)
      redis.call('ZADD', K .. 'fu:' .. phase, score, fid)
    end
  end
  redis.call('SREM', K .. 'sf:' .. srv, fid)
  redis.call('HSET', fk, 'srv', '')
  return 1
end
