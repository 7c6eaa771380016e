--[[ heartbeat-4: an agent reports its devices (and their accounts); gets stop signals back.

For each serial: its last-seen time; when its account list is given, that list
replaces the device's accounts (an account bound to another device moves
here); the run lease of its running task is extended to now + run_ttl; stop
signals older than run_ttl are dropped and the rest returned (a signal stays
until it ages out, so a lost response loses nothing). With shards, an account
lives on the shard of its device: the usernames listed in ARGV[6..] were
reported for devices of other shards, and any binding of theirs here goes (after
this shard's own bindings, so the last device reporting an account wins, as
with one shard).
KEYS[1] devices    hash serial -> last heartbeat ms
KEYS[2] users      hash username -> serial
KEYS[3] running    hash serial -> running task id
KEYS[4] lease:run  zset id -> deadline ms
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] run ttl ms
ARGV[5] m  ARGV[6..5+m] usernames now bound on other shards
then per serial: serial, n (-1 = accounts not given), then n usernames
Derived keys: acc:<serial>, stops:<serial>.
Returns {{stop id...}, {serial, running id, ...}}
Events: none.
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
local run_ttl = tonumber(ARGV[4])
-- @include ints
-- Per serial, the times as strings, formatted once (a Lua number is reformatted with %.17g on every call)
local DEADLINE, AGED = int(NOW + run_ttl), int(NOW - run_ttl)

local stops, running = {}, {}
local m = tonumber(ARGV[5])
local i = 6 + m
while i <= #ARGV do
  local se, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  redis.call('HSET', KEYS[1], se, STAMP)
  if n >= 0 then
    local ak = K .. 'acc:' .. se
    local keep = {}
    for j = i, i + n - 1 do keep[ARGV[j]] = true end
    for _, u in ipairs(redis.call('SMEMBERS', ak)) do
      if not keep[u] and redis.call('HGET', KEYS[2], u) == se then redis.call('HDEL', KEYS[2], u) end
    end
    redis.call('DEL', ak)
    for j = i, i + n - 1 do
      local u = ARGV[j]
      local prev = redis.call('HGET', KEYS[2], u)
      if prev and prev ~= se then redis.call('SREM', K .. 'acc:' .. prev, u) end
      redis.call('HSET', KEYS[2], u, se)
      redis.call('SADD', ak, u)
    end
    i = i + n
  end
  local id = redis.call('HGET', KEYS[3], se)
  if id then
    redis.call('ZADD', KEYS[4], 'XX', DEADLINE, id)
    running[#running + 1] = se
    running[#running + 1] = id
  end
  local sk = K .. 'stops:' .. se
  redis.call('ZREMRANGEBYSCORE', sk, '-inf', AGED)
  for _, s in ipairs(redis.call('ZRANGE', sk, '0', '-1')) do stops[#stops + 1] = s end
end
for j = 6, 5 + m do
  local u = ARGV[j]
  local se = redis.call('HGET', KEYS[2], u)
  if se then
    redis.call('HDEL', KEYS[2], u)
    redis.call('SREM', K .. 'acc:' .. se, u)
  end
end
return {stops, running}
