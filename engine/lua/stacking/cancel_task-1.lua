--[[ cancel_task-1: an operator cancels one task (any non-terminal status -> cancel).

Leaving phase 1 this way counts for the folder barrier (stacking.md). A worker
that still holds the task gets 409 on its next start/complete/fail.
KEYS[1] t:<task>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] actor
Derived keys: f:, r:, fr:, ft:, fu:/fb:, lease:claim, lease:run, retry, counters.
Returns {"ok"} | {"not_found"} | {"bad_state", status} (already terminal)
Events: one, plus barrier moves.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common
-- @include lifecycle
-- @include cancel

local t = load_task(string.sub(KEYS[1], #K + 3))
if not t then return {'not_found'} end
if TERMINAL[t.st] then return {'bad_state', t.st} end
cancel_task(t, ARGV[4])
return {'ok'}
