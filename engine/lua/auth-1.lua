--[[ auth-1: resolve an API key hash to its server in one round trip (read only).
KEYS[1] skey:<sha256 of key>
ARGV[1] K  ARGV[2] now ms (unused)  ARGV[3] events maxlen (unused)
Returns {} when unknown, else {id, status, services, last heartbeat ms, name}
]]
local sid = redis.call('GET', KEYS[1])
if not sid then return {} end
local v = redis.call('HMGET', ARGV[1] .. 's:' .. sid, 'st', 'services', 'hb', 'name')
if not v[1] then return {} end
return {sid, v[1], v[2] or '', v[3] or '0', v[4] or ''}
