--[[ cancel_request-1: an operator cancels every non-terminal task of a request.
Work is bounded by the request's size (at most TASKHUB_MAX_REQUEST_TASKS).
Safe to repeat: a second call finds nothing left to cancel. Per folder, tasks
past phase 1 are cancelled before phase-1 ones: cancelling the last phase-1
task fires the barrier, which must find no profiled task left to move on.
KEYS[1] r:<request>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] actor
Derived keys: rf:<request>, ft:<folder>, and those of cancel_task.
Returns {"ok", cancelled} | {"not_found"}
Events: one per cancelled task.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common
-- @include lifecycle
-- @include cancel

local rid = string.sub(KEYS[1], #K + 3)
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local n = 0
for _, fid in ipairs(redis.call('LRANGE', K .. 'rf:' .. rid, 0, -1)) do
  local tids = redis.call('LRANGE', K .. 'ft:' .. fid, 0, -1)
  for pass = 1, 2 do
    for _, tid in ipairs(tids) do
      local t = load_task(tid)
      if t and (pass == 2 or not PHASE1[t.st]) and cancel_task(t, ARGV[4]) then n = n + 1 end
    end
  end
end
return {'ok', n}
