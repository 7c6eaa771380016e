--[[ set_fields-1: change fields of an existing user, token or channel hash; never creates one.

KEYS[1] the hash (u:<uid>, k:<token hash> or c:<cid>)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4..] field, value pairs
Returns {"ok"} | {"not_found"}
Events: none.
]]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return {'ok'}
