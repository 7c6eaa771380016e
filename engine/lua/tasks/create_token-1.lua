--[[ create_token-1: another API token for an existing user, unlimited or with its own quota.

KEYS[1] u:<uid>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] uid  ARGV[5] token hash
ARGV[6] name  ARGV[7] own quota ('' = unlimited)
Returns {"ok"} | {"not_found"}
Events: none.
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local limited = ARGV[7] ~= ''
redis.call('HSET', K .. 'k:' .. ARGV[5], 'u', ARGV[4], 'st', '1', 'ul', limited and '0' or '1',
           'rq', limited and ARGV[7] or 0, 'used', 0, 'name', ARGV[6], 'ca', math.floor(NOW / 1000))
redis.call('SADD', K .. 'ut:' .. ARGV[4], ARGV[5])
return {'ok'}
