--[[ take_polls-1: the least recently polled upstream tasks, marked polled now.

Takes up to `batch` tasks last polled at or before now - interval, oldest
first, and sets their poll score to now, so a second poller at the same time
takes others, and a backlog is visited round-robin (new tasks never starve).
KEYS[1] poll (task -> last polled ms)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch  ARGV[5] interval ms
Returns {{id, channel id, upstream id, ACTION}, ...}
Events: none.
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', NOW - tonumber(ARGV[5]), 'LIMIT', 0, tonumber(ARGV[4]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], 'XX', NOW, id)
  local f = redis.call('HMGET', K .. 't:' .. id, 'ch', 'up', 'ac')
  out[#out + 1] = {id, f[1] or '', f[2] or '', f[3] or ''}
end
return out
