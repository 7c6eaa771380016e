--[[ retry_all-1: one bounded batch of "retry every failed task under the retry limit".

Walks the failed index in id order from a cursor; each failed task whose
retry_count < max goes back to pending (as retry-1). The caller repeats with
the returned cursor until it is ''.
KEYS[1] ix:st:3   failed tasks, score = id
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] cursor: last id seen (0 = start)
ARGV[5] batch  ARGV[6] max retries  ARGV[7] actor
Derived keys: t:, q:<serial>, retry, ix:st:*, active, stats, events.
Returns {retried, next cursor or ''}
Events: one per retried task ('3' -> '0').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local batch, max = tonumber(ARGV[5]), tonumber(ARGV[6])
-- @include tasks

local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[4], '+inf', 'LIMIT', 0, batch)
local retried = 0
for _, id in ipairs(ids) do
  local t = load_task(id)
  if t.rc < max then
    requeue(t, ARGV[7])
    retried = retried + 1
  end
end
if #ids < batch then return {retried, ''} end
return {retried, ids[#ids]}
