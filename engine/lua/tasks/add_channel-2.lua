--[[ add_channel-2: a new upstream channel; with only_if_none, only when the platform has none.

only_if_none is how the sandbox registers itself as the default channel of a
fresh install without ever adding a second one beside an operator's channels.
KEYS[1] cseq  KEYS[2] chans (set of channel ids)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] platform  ARGV[5] base URL
ARGV[6] key  ARGV[7] weight  ARGV[8] status ('1' enabled, '2' disabled)  ARGV[9] name
ARGV[10] '1' = only if the platform has no channel
Returns {"ok", id} | {"exists", id of a channel of the platform}
Events: none.
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
if ARGV[10] == '1' then
  for _, cid in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('HGET', K .. 'c:' .. cid, 'pf') == ARGV[4] then return {'exists', cid} end
  end
end
local cid = redis.call('INCR', KEYS[1])
redis.call('HSET', K .. 'c:' .. cid, 'pf', ARGV[4], 'url', ARGV[5], 'key', ARGV[6], 'w', ARGV[7], 'st', ARGV[8],
           'name', ARGV[9], 'ca', math.floor(NOW / 1000))
redis.call('SADD', KEYS[2], cid)
return {'ok', cid}
