--[[ whoami-1: the user an access token belongs to (management API auth), read only.

KEYS[1] uaccess (access token hash -> user id)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] access token hash
Returns {"ok", id, name, role, status, quota, used} | {"invalid_token"}
Events: none.
]]
local K = ARGV[1]
local uid = redis.call('HGET', KEYS[1], ARGV[4])
if not uid then return {'invalid_token'} end
local u = redis.call('HMGET', K .. 'u:' .. uid, 'name', 'role', 'st', 'quota', 'used')
if not u[1] then return {'invalid_token'} end
return {'ok', uid, u[1], u[2], u[3], u[4], u[5]}
