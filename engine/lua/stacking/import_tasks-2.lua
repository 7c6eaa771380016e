--[[ import_tasks-2: store one chunk of a staged request's tasks.

Runs at the end of a MULTI whose earlier command wrote the chunk's task bodies
into `bodies` (field = task id). Bodies never pass through Lua: Lua 5.1 interns
every string, and thousands of near-identical ~1 KB bodies collide in its
string table and make a script (and Redis) crawl. A refusal deletes the bodies
the MULTI wrote, so nothing is left behind.
Checks before any write: the request is `importing` with this token; every
folder of the chunk is new or already this request's (a Drive folder belongs
to one request: the barrier and connect-status are keyed by folder id).
Tasks are created in `register` and put in their folder's ready set, but the
folder enters no claim index until import_publish: pullers see nothing yet.
KEYS[1] r:<request>   KEYS[2] bodies
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] token
ARGV[5] number of groups, then per group: folder_id, folder seq, folder's total
        task count, seq of the group's first task, n, then n task ids
        (a folder may span chunks: its later groups continue it)
Derived keys: rf:, rc:, f:, fc:, fr:1:, ft:, t:, stats, events, imports.
Returns {"ok", n stored} | {"exists", request id} | {"folder_in_use", folder id}
Events: one per task ('' -> register).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common

local rid = string.sub(KEYS[1], #K + 3)
local ngroups = tonumber(ARGV[5])

local function refuse(code, detail)
  local i, ids = 6, {}
  for _ = 1, ngroups do
    for j = 1, tonumber(ARGV[i + 4]) do ids[#ids + 1] = ARGV[i + 4 + j] end
    i = i + 5 + tonumber(ARGV[i + 4])
  end
  call_sliced(redis.call, 'HDEL', KEYS[2], ids)
  return {code, detail}
end

local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'mode', 'mr')
if r[1] ~= 'importing' or r[2] ~= ARGV[4] then return refuse('exists', rid) end
local i = 6
for _ = 1, ngroups do
  local owner = redis.call('HGET', K .. 'f:' .. ARGV[i], 'req')
  if owner and owner ~= rid then return refuse('folder_in_use', ARGV[i]) end
  i = i + 5 + tonumber(ARGV[i + 4])
end

local mode, mr = r[3], r[4]
local stored = 0
i = 6
for _ = 1, ngroups do
  local fid, fseq, total = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local seq, n = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local fk = K .. 'f:' .. fid
  if redis.call('EXISTS', fk) == 0 then
    redis.call('RPUSH', K .. 'rf:' .. rid, fid)
    redis.call('HSET', fk, 'req', rid, 'mode', mode, 'seq', fseq, 'srv', '', 'phase', '1',
               'n', total, 'p1', total, 'open', total)
  end
  local ids = {}
  for j = 1, n do
    local tid, sq = ARGV[i + 4 + j], int(seq)
    redis.call('HSET', K .. 't:' .. tid, 'st', 'register', 'own', '', 'asg', '', 'fo', fid,
               'req', rid, 'seq', sq, 'rc', '0', 'mr', mr, 'ca', STAMP)
    emit(tid, '', 'register', 'import')
    ids[j] = tid
    seq = seq + 1
  end
  push_ready(fid, 1, ids)
  call_sliced(redis.call, 'RPUSH', K .. 'ft:' .. fid, ids)
  redis.call('HINCRBY', K .. 'fc:' .. fid, 'register', n)
  stored = stored + n
  i = i + 5 + n
end
redis.call('HINCRBY', K .. 'rc:' .. rid, 'register', stored)
redis.call('HINCRBY', K .. 'stats', 'register', stored)
redis.call('HINCRBY', KEYS[1], 'staged', stored)
redis.call('HSET', KEYS[1], 'hb', NOW)
redis.call('ZADD', K .. 'imports', NOW, rid)
return {'ok', stored}
