--[[ set_server_status-1: an operator sets online/offline/maintenance, or deletes
(status `deleted`: the key stops working at once; the record stays so the
reassignment sweep can release its folders).
KEYS[1] s:<server>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)  ARGV[4] new status
Derived keys: skey:<key hash> and sname:<name> (deleted on delete), servers, servers:gone (a deleted
server moves from the first to the second until its folders are released).
Returns {"ok", old status} | {"not_found"}
]]
local old = redis.call('HGET', KEYS[1], 'st')
if not old or old == 'deleted' then return {'not_found'} end
redis.call('HSET', KEYS[1], 'st', ARGV[4], 'status_at', ARGV[2])
if ARGV[4] == 'deleted' then
  redis.call('DEL', ARGV[1] .. 'skey:' .. redis.call('HGET', KEYS[1], 'kh'))
  redis.call('DEL', ARGV[1] .. 'sname:' .. redis.call('HGET', KEYS[1], 'name'))
  local sid = string.sub(KEYS[1], #ARGV[1] + 3)
  redis.call('ZREM', ARGV[1] .. 'servers', sid)
  redis.call('SADD', ARGV[1] .. 'servers:gone', sid)
end
return {'ok', old}
