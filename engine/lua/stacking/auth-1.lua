--[[ auth-1: who is calling, and may they (read only). The worker-facing scripts
authenticate inside themselves (includes/auth.lua); this one answers for the
calls that have no script of their own, and for the error path, where a bad
request must still report an authentication failure first.
KEYS[1] caller: skey:<sha256 of API key> or s:<server id>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)
ARGV[4] stacking ("1": must hold a stacking service and be online)  ARGV[5] offline after ms
Returns {"ok", id, status, services, last heartbeat ms, name} | an auth refusal
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
-- @include auth

local sid, refusal = authenticate(KEYS[1], ARGV[4] == '1', tonumber(ARGV[5]))
if not sid then return refusal end
local v = redis.call('HMGET', K .. 's:' .. sid, 'st', 'services', 'hb', 'name')
if not v[1] then return {'not_found'} end
return {'ok', sid, v[1], v[2] or '', v[3] or '0', v[4] or ''}
