--[[ auto_retry-1: the auto-retry job's decision for the failures that are due.

Each due entry is removed before it is acted on and the task re-checked
(still failed, not stopped, retry_count < max), so running this twice, or two
copies at once, retries a task once.
KEYS[1] retry   zset id -> due ms (includes/retries.lua)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch  ARGV[5] max retries
Derived keys: t:, q:<serial>, ix:st:*, active, stats, events.
Returns {retried, due entries left}
Events: one per retried task ('3' -> '0').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max = tonumber(ARGV[5])
-- @include tasks

local retried = 0
for _, id in ipairs(take_due_retries(tonumber(ARGV[4]))) do
  local t = load_task(id)
  if t and t.st == '3' and not t.stop and t.rc < max then
    requeue(t, 'auto_retry')
    retried = retried + 1
  end
end
return {retried, due_retries_left()}
