--[[ claim-2: due tasks for the submit job, each leased so no other submitter takes it.

First returns lapsed submissions (their submitter died mid-call) to the queue,
then leases up to `batch` due tasks (or, given ids, those of them that are due)
and counts the attempt. A task that is not NOT_START is dropped from the queue.
KEYS[1] q (task -> due ms)  KEYS[2] lease:claim (task -> deadline ms)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch  ARGV[5] lease ms
ARGV[6..] task ids ('' none: any due task)
Returns {{id, platform, ACTION, body, attempt, tried}, ...}
Events: none (NOT_START until submitted-1 or submit_error-1).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local batch, lease = tonumber(ARGV[4]), tonumber(ARGV[5])
requeue_lapsed(batch)
local ids = {}
if #ARGV >= 6 then
  for i = 6, #ARGV do
    local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if due and tonumber(due) <= NOW and #ids < batch then ids[#ids + 1] = ARGV[i] end
  end
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', STAMP, 'LIMIT', '0', int(batch))
end
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local t = K .. 't:' .. id
  if redis.call('HGET', t, 'st') == 'NOT_START' then
    redis.call('ZADD', KEYS[2], int(NOW + lease), id)
    local at = redis.call('HINCRBY', t, 'at', 1)
    local f = redis.call('HMGET', t, 'pf', 'ac', 'body', 'tried')
    out[#out + 1] = {id, f[1], f[2], f[3], at, f[4]}
  end
end
count_claims(#out)
return out
