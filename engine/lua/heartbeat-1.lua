--[[ heartbeat-1: a server reports in. Records the time and metrics; an
`offline` server comes back `online` (one in `maintenance` stays there).
Running leases are not touched here: the sweep extends a lease whose owner's
heartbeat is recent, which keeps a heartbeat O(1) however many tasks it runs.
KEYS[1] s:<server>
ARGV[1] K (unused)  ARGV[2] now ms  ARGV[3] events maxlen (unused)
ARGV[4] metrics JSON (the reported server_name stays there: names are set by operators)
ARGV[5] ip ('' = keep)
Returns {"ok", status, name} | {"not_found"}
]]
local st = redis.call('HGET', KEYS[1], 'st')
if not st or st == 'deleted' then return {'not_found'} end
if st == 'offline' then
  st = 'online'
  redis.call('HSET', KEYS[1], 'st', st)
end
redis.call('HSET', KEYS[1], 'hb', ARGV[2], 'metrics', ARGV[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'ip', ARGV[5]) end
return {'ok', st, redis.call('HGET', KEYS[1], 'name')}
