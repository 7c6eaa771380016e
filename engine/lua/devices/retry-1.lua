--[[ retry-1: an operator retries a failed task: failed -> pending, retry_count + 1, due now.

Checks before any write: exists, status failed.
KEYS[1] t:<id>  the task
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] task id  ARGV[5] actor
Derived keys: q:<serial>, retry, ix:st:*, active, stats, events.
Returns {"ok"} | {"not_found"} | {"bad_state", status}
Events: one ('3' -> '0').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

local t = load_task(ARGV[4])
if not t then return {'not_found'} end
if t.st ~= '3' then return {'bad_state', t.st} end
requeue(t, ARGV[5])
return {'ok'}
