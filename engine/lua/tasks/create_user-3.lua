--[[ create_user-3: a user with an access token, a first API token, and its opening grant.

Tokens are stored by their SHA-256 (never the token itself). The grant, if
any, is the user's first ledger entry, so the audit balances from creation.
KEYS[1] useq  KEYS[2] uname (name -> id)  KEYS[3] uaccess (access token hash -> id)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] name  ARGV[5] role
ARGV[6] quota  ARGV[7] access token hash  ARGV[8] API token hash  ARGV[9] N shards
ARGV[10] this shard's index: the id is the shard's next `useq` times N plus the index
(engine/shards.py encode_id; with one shard, `useq` itself)
Returns {"ok", id} | {"exists", name}
Events: none (ledger: one grant entry when quota > 0).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local name, quota = ARGV[4], tonumber(ARGV[6])
if redis.call('HEXISTS', KEYS[2], name) == 1 then return {'exists', name} end
local uid = redis.call('INCR', KEYS[1])
if ARGV[9] ~= '1' then uid = string.format('%d', uid * tonumber(ARGV[9]) + tonumber(ARGV[10])) end
redis.call('HSET', K .. 'u:' .. uid, 'name', name, 'role', ARGV[5], 'st', '1', 'quota', quota, 'used', 0,
           'gr', quota, 'chg', 0, 'rfd', 0, 'ca', NOW_S, 'ah', ARGV[7])
redis.call('HSET', KEYS[2], name, uid)
redis.call('HSET', KEYS[3], ARGV[7], uid)
redis.call('HSET', K .. 'k:' .. ARGV[8], 'u', uid, 'st', '1', 'ul', '1', 'rq', 0, 'used', 0, 'name', 'default',
           'ca', NOW_S)
redis.call('SADD', K .. 'ut:' .. uid, ARGV[8])
if quota ~= 0 then ledger(uid, '', quota, 'grant') end
return {'ok', uid}
