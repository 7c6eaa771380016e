--[[ create_request-3: a request with all its folders and tasks, atomically.

All or nothing: refused before any write if the request id exists or any
folder id is already used (a Drive folder belongs to one request; the folder
barrier and connect-status are keyed by folder id). Tasks start in `register`,
ready in their folder; folders are unbound and indexed oldest request first.
KEYS[1] requests   zset request id -> seq
KEYS[2] seq        counter for task/folder/request order
KEYS[3] fu:1       unbound folders with ready phase-1 tasks
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen
ARGV[4] request id  ARGV[5] website  ARGV[6] stacking_mode  ARGV[7] max_retries
ARGV[8] number of folders  ARGV[9] number of tasks
ARGV[10..] per folder: folder_id, n, then n times: task id, head JSON, tail JSON (phase 1), tail JSON (phase 2)
Derived keys: r:, rc:, rf:, f:, fc:, fr:1:, ft:, t:, stats, events.
Returns {"ok", n_tasks} | {"exists", request id} | {"folder_in_use", folder id}
Events: one per task ('' -> register).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rid, website, mode, mr = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local nfolders, ntasks = tonumber(ARGV[8]), tonumber(ARGV[9])
-- @include common

if redis.call('EXISTS', K .. 'r:' .. rid) == 1 then return {'exists', rid} end
local i = 10
for _ = 1, nfolders do
  if redis.call('EXISTS', K .. 'f:' .. ARGV[i]) == 1 then return {'folder_in_use', ARGV[i]} end
  i = i + 2 + 4 * tonumber(ARGV[i + 1])
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
               'h', ARGV[i + 1], 't1', ARGV[i + 2], 't2', ARGV[i + 3], 'lp', '""', 'cl', '[]',
               'own', '', 'asg', '', 'rc', 0, 'mr', mr, 'ca', NOW)
    ready[#ready + 1] = seq
    ready[#ready + 1] = tid
    redis.call('RPUSH', K .. 'ft:' .. fid, tid)
    emit(tid, '', 'register', 'import')
    i = i + 4
  end
  for j = 1, #ready, 1000 do
    redis.call('ZADD', K .. 'fr:1:' .. fid, unpack(ready, j, math.min(j + 999, #ready)))
  end
  redis.call('ZADD', KEYS[3], fseq, fid)
end
return {'ok', ntasks}
