--[[ create_server-3: register a worker server under a unique name.

Names are unique among live servers, so a retried create answers "exists"
instead of making a second server with a second key.
KEYS[1] s:<server>        the new server's hash (a fresh id)
KEYS[2] skey:<key hash>   API key hash -> server id
KEYS[3] servers           live servers by creation time
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)
ARGV[4] name  ARGV[5] services (comma list)  ARGV[6] key hash  ARGV[7] max_threads
Derived keys: sname:<name> (name -> server id; deleted with the server).
Returns {"ok"} | {"exists", name}
]]
local K = ARGV[1]
local name_key = K .. 'sname:' .. ARGV[4]
if redis.call('EXISTS', name_key) == 1 then return {'exists', ARGV[4]} end
local sid = string.sub(KEYS[1], #K + 3)
redis.call('HSET', KEYS[1], 'name', ARGV[4], 'services', ARGV[5], 'st', 'online', 'hb', 0,
           'kh', ARGV[6], 'max_threads', ARGV[7], 'metrics', '{}', 'ca', ARGV[2])
redis.call('SET', KEYS[2], sid)
redis.call('SET', name_key, sid)
redis.call('ZADD', KEYS[3], ARGV[2], sid)
return {'ok'}
