--[[ start-4: the claiming server starts a task: register -> registering, connect -> connecting.

Checks, in order, before any write: the caller (includes/auth.lua), the task exists, its status is register or
connect, the caller holds its claim. Moves the claim lease to a run lease.
KEYS[1] caller: skey:<sha256 of API key> (authenticated and authorized here) or s:<server id>
KEYS[2] t:<task>      task hash
KEYS[3] lease:claim   claim leases
KEYS[4] lease:run     run leases
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms  ARGV[5] run ttl ms
Returns {"ok", server id} | an auth refusal | {"not_found"} | {"bad_state", status} | {"not_task_owner", status}
Events: one (register->registering or connect->connecting).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local run_ttl = tonumber(ARGV[5])
-- @include common
-- @include auth

local sid, t, refusal = held_task(tonumber(ARGV[4]), {register = true, connect = true})
if not sid then return refusal end
local tid = t.id

redis.call('ZREM', KEYS[3], tid)
redis.call('ZADD', KEYS[4], NOW + run_ttl, tid)
redis.call('HSET', KEYS[2], 'started_at', NOW)
if t.st == 'register' then set_status(t, 'registering', sid) else set_status(t, 'connecting', sid) end
return {'ok', sid}
