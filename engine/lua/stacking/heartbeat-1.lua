--[[ heartbeat-1: a server reports in. Records the time and metrics; an
`offline` server comes back `online` (one in `maintenance` stays there).
Needs only a valid key (any service, any status but deleted): it is how an
offline server comes back.
Running leases are not touched here: the sweep extends a lease whose owner's
heartbeat is recent, which keeps a heartbeat O(1) however many tasks it runs.
KEYS[1] caller: skey:<sha256 of API key> or s:<server id>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)
ARGV[4] metrics JSON (the reported server_name stays there: names are set by operators)
ARGV[5] ip ('' = keep)
Returns {"ok", status, name, server id} | {"not_found"} | {"invalid_key"}
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
-- @include auth

local sid, refusal = authenticate(KEYS[1], false, 0)
if not sid then return refusal end
local sk = K .. 's:' .. sid
local st = redis.call('HGET', sk, 'st')
if not st or st == 'deleted' then return {'not_found'} end
if st == 'offline' then
  st = 'online'
  redis.call('HSET', sk, 'st', st)
end
redis.call('HSET', sk, 'hb', ARGV[2], 'metrics', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', sk, 'ip', ARGV[5]) end
return {'ok', st, redis.call('HGET', sk, 'name'), sid}
