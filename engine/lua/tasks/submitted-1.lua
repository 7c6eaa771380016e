--[[ submitted-1: the platform accepted the task: NOT_START -> SUBMITTED on a channel.

Only a NOT_START task moves (a timed-out or already submitted one is left
alone: "stale"); it leaves the submit lease and starts being polled, its poll
score being now (least recently polled first).
KEYS[1] lease:claim
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] id  ARGV[5] channel id
ARGV[6] upstream task id
Returns {"ok"} | {"stale", status}
Events: NOT_START -> SUBMITTED.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local id, ch = ARGV[4], ARGV[5]
local f = redis.call('HMGET', K .. 't:' .. id, unpack(LIVE))
if f[1] ~= 'NOT_START' then return {'stale', f[1] or ''} end
redis.call('ZREM', KEYS[1], id)
move(id, f, 'SUBMITTED', ch, 'submit', {'ch', ch, 'up', ARGV[6], 'pg', '10%'})
redis.call('HDEL', K .. 't:' .. id, 'body', 'le')  -- the platform has the request now
redis.call('ZADD', K .. 'poll', NOW, id)
return {'ok'}
