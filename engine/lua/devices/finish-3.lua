--[[ finish-3: the agent reports a running task done: completed ('2') or failed ('3').

A failure is scheduled for the auto-retry job (after ARGV[8] ms) while
retry_count < max and auto-retry is on. Checks before any write: the task
exists and is running.
KEYS[1] t:<id>     the task
KEYS[2] running    hash serial -> running task id
KEYS[3] lease:run  zset id -> deadline ms
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] task id  ARGV[5] '2' | '3'
ARGV[6] remark  ARGV[7] agent name  ARGV[8] auto-retry delay ms ('' = off)  ARGV[9] max retries
Derived keys: ix:st:*, active, retry, stats, events.
Returns {"ok"} | {"not_found"} | {"bad_state", status, "stopped" | ""}
Events: one ('1' -> '2' or '3').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

local t = load_task(ARGV[4])
if not t then return {'not_found'} end
if t.st ~= '1' then return {'bad_state', t.st, t.stop and 'stopped' or ''} end
finish(t, ARGV[5], ARGV[6], ARGV[7], retry_delay(t, ARGV[8], ARGV[9]))
return {'ok'}
