--[[ start-2: claiming servers start tasks: register -> registering, connect -> connecting.

One call carries one or more items (the starts of one web batch or of one
Core.call_many, engine/calls.py), each checked and applied on its own exactly
as a call of its own would be; a refused item changes nothing. Checks per
item, in order, before any of its writes: the caller (includes/auth.lua), the
task exists, its status is register or connect, the caller holds its claim.
Moves the claim lease to a run lease. Status counters and the lease sets are
written once per call (deferred counts, one ZREM and one ZADD).
KEYS[1] lease:claim   claim leases
KEYS[2] lease:run     run leases
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms  ARGV[5] run ttl ms
ARGV[6..] items of 2: caller key (full name: skey:<sha256 of API key>, authenticated and authorized
          here, or s:<server id>), task id
Derived keys: the callers', t:<task>, counters, events.
Returns one reply per item: the caller's server id (a string: it went through) | an auth refusal | {"not_found"} | {"bad_state", status}
        | {"not_task_owner", status}
Events: one per started task.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local offline_after, run_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
-- @include common
-- @include auth

local STARTABLE = {register = true, connect = true}
local out, started, leases = {}, {}, {}
local deadline = string.format('%d', NOW + run_ttl)  -- a string: a number is reformatted for every member
defer_counts()
for i = 6, #ARGV, 2 do
  local sid, t, refusal = held_task(ARGV[i], ARGV[i + 1], offline_after, STARTABLE)
  if sid then
    set_status(t, t.st == 'register' and 'registering' or 'connecting', sid)
    started[#started + 1] = t.id
    leases[#leases + 1] = deadline
    leases[#leases + 1] = t.id
    out[#out + 1] = sid
  else
    out[#out + 1] = refusal
  end
end
if #started > 0 then
  redis.call('ZREM', KEYS[1], unpack(started))
  redis.call('ZADD', KEYS[2], unpack(leases))
end
flush_counts()
return out
