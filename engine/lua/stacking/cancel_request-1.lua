--[[ cancel_request-1: an operator cancels every non-terminal task of a request,
a bounded batch of whole folders per call; call again while folders are left.
A cursor in the request hash (`cc`, folders done) makes each call start where
the last one stopped: cancel is terminal, so a folder once done stays done.
Work per call: whole folders until at least `batch` tasks were looked at
(a folder holds at most 1000 tasks). Per folder, tasks past phase 1 are
cancelled before phase-1 ones: cancelling the last phase-1 task fires the
barrier, which must find no profiled task left to move on.
Safe to repeat: a call on a fully cancelled request finds nothing to do.
KEYS[1] r:<request>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] actor  ARGV[5] batch (tasks)
Derived keys: rf:<request>, ft:<folder>, and those of cancel_task.
Returns {"ok", cancelled, folders left} | {"not_found"} | {"bad_state", "importing"|"aborting"}
Events: one per cancelled task (plus barrier moves).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common
-- @include lifecycle
-- @include cancel

local rid = string.sub(KEYS[1], #K + 3)
local r = redis.call('HMGET', KEYS[1], 'st', 'cc', 'nf')
if not r[1] then return {'not_found'} end
if r[1] == 'importing' or r[1] == 'aborting' then return {'bad_state', r[1]} end
local cc, nf, batch = tonumber(r[2]) or 0, tonumber(r[3]), tonumber(ARGV[5])
local n, seen = 0, 0
while cc < nf and seen < batch do
  local fid = redis.call('LINDEX', K .. 'rf:' .. rid, cc)
  local tids = redis.call('LRANGE', K .. 'ft:' .. fid, 0, -1)
  for pass = 1, 2 do
    for _, tid in ipairs(tids) do
      local t = load_task(tid)
      if t and (pass == 2 or not PHASE1[t.st]) and cancel_task(t, ARGV[4]) then n = n + 1 end
    end
  end
  seen = seen + #tids
  cc = cc + 1
end
redis.call('HSET', KEYS[1], 'cc', cc)
return {'ok', n, nf - cc}
