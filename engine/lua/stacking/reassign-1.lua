--[[ reassign-1: release up to `batch` folders of a server that has been gone too
long (deleted, or no heartbeat for reassign_after). The condition is checked
here, so a server that came back in the meantime keeps its folders.
KEYS[1] s:<server>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] reassign after ms  ARGV[5] batch
Derived keys: sf:<server>, f:<folder>, fb:, fu:, servers:gone (a deleted server
leaves it once it has no folders left).
Returns {released, remaining}
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local after, batch = tonumber(ARGV[4]), tonumber(ARGV[5])
-- @include common

local sid = string.sub(KEYS[1], #K + 3)
local v = redis.call('HMGET', KEYS[1], 'st', 'hb')
local gone = (not v[1]) or v[1] == 'deleted' or (tonumber(v[2]) or 0) + after < NOW
if not gone then return {0, redis.call('SCARD', K .. 'sf:' .. sid)} end
local released = 0
for _, fid in ipairs(redis.call('SRANDMEMBER', K .. 'sf:' .. sid, batch)) do
  if redis.call('HGET', K .. 'f:' .. fid, 'srv') == sid then
    released = released + release_folder(fid)
  else
    redis.call('SREM', K .. 'sf:' .. sid, fid)
  end
end
local left = redis.call('SCARD', K .. 'sf:' .. sid)
if left == 0 and v[1] == 'deleted' then redis.call('SREM', K .. 'servers:gone', sid) end
return {released, left}
