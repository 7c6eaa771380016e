--[[ create_request-4: a request with all its folders and tasks, atomically.

Runs at the end of a MULTI whose earlier commands wrote the tasks' immutable
JSON fragments into `bodies` (`<task>:h`, `<task>:1`, `<task>:2`). The big texts
never pass through Lua: Lua 5.1 interns every string and hashes long ones by
sampling ~32 characters, so thousands of near-identical bodies collide and
make a script (and Redis) crawl.
All or nothing: refused if the request id exists or any folder id is already
used (a Drive folder belongs to one request; the folder barrier and
connect-status are keyed by folder id); a refusal also deletes the fragments
the MULTI wrote, so nothing is left behind. Tasks start in `register`, ready
in their folder; folders are unbound and indexed oldest request first.
KEYS[1] requests   zset request id -> seq
KEYS[2] seq        counter for task/folder/request order
KEYS[3] fu:1       unbound folders with ready phase-1 tasks
KEYS[4] bodies     hash of JSON fragments (written by the MULTI, removed on refusal)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen
ARGV[4] request id  ARGV[5] website  ARGV[6] stacking_mode  ARGV[7] max_retries
ARGV[8] number of folders  ARGV[9] number of tasks
ARGV[10..] per folder: folder_id, n, then n task ids
Derived keys: r:, rc:, rf:, f:, fc:, fr:1:, ft:, t:, stats, events.
Returns {"ok", n_tasks} | {"exists", request id} | {"folder_in_use", folder id}
Events: one per task ('' -> register).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rid, website, mode, mr = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local nfolders, ntasks = tonumber(ARGV[8]), tonumber(ARGV[9])
-- @include common

local function refuse(code, detail)
  local i, fields = 10, {}
  for _ = 1, nfolders do
    for j = 1, tonumber(ARGV[i + 1]) do
      local tid = ARGV[i + 1 + j]
      fields[#fields + 1] = tid .. ':h'
      fields[#fields + 1] = tid .. ':1'
      fields[#fields + 1] = tid .. ':2'
    end
    i = i + 2 + tonumber(ARGV[i + 1])
  end
  for j = 1, #fields, 1000 do
    redis.call('HDEL', KEYS[4], unpack(fields, j, math.min(j + 999, #fields)))
  end
  return {code, detail}
end

if redis.call('EXISTS', K .. 'r:' .. rid) == 1 then return refuse('exists', rid) end
local i = 10
for _ = 1, nfolders do
  if redis.call('EXISTS', K .. 'f:' .. ARGV[i]) == 1 then return refuse('folder_in_use', ARGV[i]) end
  i = i + 2 + tonumber(ARGV[i + 1])
end

local last = redis.call('INCRBY', KEYS[2], ntasks + nfolders + 1)
local seq = last - ntasks - nfolders
redis.call('ZADD', KEYS[1], seq, rid)
redis.call('HSET', K .. 'r:' .. rid, 'st', 'register', 'website', website, 'mode', mode, 'mr', mr,
           'total', ntasks, 'open', ntasks, 'p1f', nfolders, 'nf', nfolders, 'seq', seq, 'ca', NOW)
redis.call('HINCRBY', K .. 'rc:' .. rid, 'register', ntasks)
redis.call('HINCRBY', K .. 'stats', 'register', ntasks)
i = 10
for _ = 1, nfolders do
  local fid, n = ARGV[i], tonumber(ARGV[i + 1])
  seq = seq + 1
  local fseq = seq
  redis.call('RPUSH', K .. 'rf:' .. rid, fid)
  redis.call('HSET', K .. 'f:' .. fid, 'req', rid, 'mode', mode, 'seq', fseq, 'srv', '',
             'phase', '1', 'n', n, 'p1', n, 'open', n)
  redis.call('HINCRBY', K .. 'fc:' .. fid, 'register', n)
  local ready = {}
  i = i + 2
  for _ = 1, n do
    local tid = ARGV[i]
    seq = seq + 1
    redis.call('HSET', K .. 't:' .. tid, 'st', 'register', 'seq', seq, 'fo', fid, 'req', rid,
               'lp', '""', 'cl', '[]', 'own', '', 'asg', '', 'rc', 0, 'mr', mr, 'ca', NOW)
    ready[#ready + 1] = seq
    ready[#ready + 1] = tid
    redis.call('RPUSH', K .. 'ft:' .. fid, tid)
    emit(tid, '', 'register', 'import')
    i = i + 1
  end
  for j = 1, #ready, 1000 do
    redis.call('ZADD', K .. 'fr:1:' .. fid, unpack(ready, j, math.min(j + 999, #ready)))
  end
  redis.call('ZADD', KEYS[3], fseq, fid)
end
return {'ok', ntasks}
