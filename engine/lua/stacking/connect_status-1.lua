--[[ connect_status-1: the caller's counters for one folder (read only, O(1)).
KEYS[1] caller: skey:<sha256 of API key> or s:<server id>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)  ARGV[4] offline after ms
ARGV[5] folder id
Derived keys: fs:<folder>:<server> (status -> count of the caller's tasks).
Returns {"ok", server id, status, count, status, count, ...} | an auth refusal
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
-- @include auth

local sid, refusal = authenticate(KEYS[1], true, tonumber(ARGV[4]))
if not sid then return refusal end
local out = {'ok', sid}
for _, v in ipairs(redis.call('HGETALL', K .. 'fs:' .. ARGV[5] .. ':' .. sid)) do out[#out + 1] = v end
return out
