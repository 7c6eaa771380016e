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

-- ZADD of many score/member pairs, in slices that stay within Lua's unpack
-- limit. `pairs` in descending score order is the cheap order: a small sorted
-- set is a listpack that ZADD walks from its head to the first higher score, so
-- ascending inserts walk the whole set each time (a 50-task folder: ~9,000
-- instructions a task, callgrind) and descending ones stop at the head.
local function zadd_pairs(key, pairs)
  for i = 1, #pairs, 2000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 1999, #pairs)))
  end
end

-- The same pairs (seq, id, seq, id... in ascending seq) in descending seq order.
local function descending(pairs)
  local out, n = {}, #pairs
  for i = n - 1, 1, -2 do
    out[#out + 1] = pairs[i]
    out[#out + 1] = pairs[i + 1]
  end
  return out
end

-- Put tasks of folder `fid` into its ready set for `phase` (`pairs`: seq, id,
-- seq, id... in ascending seq) and the folder into the claim index: its bound server's set, or
-- the unbound set.
local function make_ready_many(fid, phase, pairs)
  zadd_pairs(K .. 'fr:' .. phase .. ':' .. fid, descending(pairs))
  local f = redis.call('HMGET', K .. 'f:' .. fid, 'srv', 'seq')
  local srv = f[1] or ''
  if srv ~= '' then
    redis.call('ZADD', K .. 'fb:' .. phase .. ':' .. srv, f[2], fid)
  else
    redis.call('ZADD', K .. 'fu:' .. phase, f[2], fid)
  end
end

-- One task: make_ready_many of one.
local function make_ready(t, phase)
  make_ready_many(t.fo, phase, {t.seq, t.id})
end

-- Take a task out of its folder's ready set for `phase`; drop the folder from
-- the claim index when that set empties.
local function unready(t, phase)
  local rk = K .. 'fr:' .. phase .. ':' .. t.fo
  redis.call('ZREM', rk, t.id)
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
