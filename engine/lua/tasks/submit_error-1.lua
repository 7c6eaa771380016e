--[[ submit_error-1: a submission failed: retry later on another channel, or fail and refund.

A transient error (connection, timeout, 429, 5xx but 504/524) with attempts
left puts the task back in the queue after backoff(base, cap, attempt - 1)
and remembers the channel tried; a permanent error, or the last attempt,
fails the task with its refund (includes/center.lua fail_task). A task that is
no longer NOT_START is left alone ("stale").
KEYS[1] lease:claim
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] id  ARGV[5] channel id tried ('' none)
ARGV[6] reason  ARGV[7] '1' permanent  ARGV[8] max retries  ARGV[9] backoff base ms  ARGV[10] cap ms
Returns {"retry", due ms} | {"failed"} | {"stale", status}
Events: NOT_START -> FAILURE when it fails.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center
-- @include retries

local id, ch, reason = ARGV[4], ARGV[5], ARGV[6]
local t = K .. 't:' .. id
local st = redis.call('HGET', t, 'st')
if st ~= 'NOT_START' then return {'stale', st or ''} end
redis.call('ZREM', KEYS[1], id)
local at = tonumber(redis.call('HGET', t, 'at'))
if ARGV[7] == '1' or at > tonumber(ARGV[8]) then
  fail_task(id, reason, 'submit')
  return {'failed'}
end
local due = NOW + backoff(tonumber(ARGV[9]), tonumber(ARGV[10]), at - 1)
local tried = redis.call('HGET', t, 'tried')
if ch ~= '' then tried = tried == '' and ch or (tried .. ',' .. ch) end
redis.call('HSET', t, 'tried', tried, 'le', reason, 'ua', NOW)
redis.call('ZADD', K .. 'q', due, id)
count_retries(1)
return {'retry', due}
