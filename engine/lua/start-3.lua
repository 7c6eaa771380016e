--[[ start-3: the claiming server starts a task: register -> registering, connect -> connecting.

Checks, in order, before any write: the task exists, its status is register or
connect, the caller holds its claim. Moves the claim lease to a run lease.
KEYS[1] t:<task>      task hash
KEYS[2] lease:claim   claim leases
KEYS[3] lease:run     run leases
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] server id  ARGV[5] run ttl ms
Returns {"ok"} | {"not_found"} | {"bad_state", status} | {"not_task_owner", status}
Events: one (register->registering or connect->connecting).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local sid, run_ttl = ARGV[4], tonumber(ARGV[5])
-- @include common

local tid = string.sub(KEYS[1], #K + 3)
local t = load_task(tid)
if not t then return {'not_found'} end
if t.st ~= 'register' and t.st ~= 'connect' then return {'bad_state', t.st} end
if t.own ~= sid then return {'not_task_owner', t.st} end

redis.call('ZREM', KEYS[2], tid)
redis.call('ZADD', KEYS[3], NOW + run_ttl, tid)
redis.call('HSET', KEYS[1], 'started_at', NOW)
if t.st == 'register' then set_status(t, 'registering', sid) else set_status(t, 'connecting', sid) end
return {'ok'}
