--[[ stop-3: an operator stops a task: pending or running -> failed, remark "stopped".

A running task's agent is told on its next heartbeat (stops:<serial>). A
stopped task is never auto-retried. Checks before any write: exists, status
pending or running.
KEYS[1] t:<id>     the task
KEYS[2] running    hash serial -> running task id
KEYS[3] lease:run  zset id -> deadline ms
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] task id  ARGV[5] actor
Derived keys: q:/sched:/stops:<serial>, ix:st:*, active, stats, events.
Returns {"ok"} | {"not_found"} | {"bad_state", status}
Events: one ('0' or '1' -> '3').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

local t = load_task(ARGV[4])
if not t then return {'not_found'} end
if t.st ~= '0' and t.st ~= '1' then return {'bad_state', t.st} end
t.stop = true
redis.call('HSET', KEYS[1], 'stop', '1')
if t.st == '1' then signal_stop(t) end
finish(t, '3', 'stopped', ARGV[5], nil)
return {'ok'}
