--[[ sweep-2: bounded housekeeping: timed-out tasks fail with their refund; lapsed submissions requeue.

KEYS[1] active (task -> submit ms)  KEYS[2] lease:claim
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] timeout ms  ARGV[5] batch
ARGV[6] timeout in minutes (for the reason)
Returns {timed_out, submissions_requeued, timed_out_left}
Events: one per task failed.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local batch, cutoff = tonumber(ARGV[5]), NOW - tonumber(ARGV[4])
local requeued = requeue_lapsed(batch)
local timed_out = 0
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, batch)) do
  if fail_task(id, 'task timed out after ' .. ARGV[6] .. ' minutes', 'sweep') then
    timed_out = timed_out + 1
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return {timed_out, requeued, redis.call('ZCOUNT', KEYS[1], '-inf', cutoff)}
