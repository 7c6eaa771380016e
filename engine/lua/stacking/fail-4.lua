--[[ fail-4: the running server reports failure: registering -> profile_failed,
connecting -> connect_failed, and the task is queued for the retry manager
(due after backoff base * 2^retry_count capped at cap, or at once when out of
retries, so the retry script can mark it final_failed).
Checks before any write: the caller (includes/auth.lua), exists, status registering/connecting, caller owns it.
KEYS[1] caller: skey:<sha256 of API key> (authenticated and authorized here) or s:<server id>
KEYS[2] t:<task>    task hash
KEYS[3] lease:run   run leases
KEYS[4] retry       retry schedule (zset task -> due ms)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms
ARGV[5] error_message  ARGV[6] note  ARGV[7] retry base ms  ARGV[8] retry cap ms
Returns {"ok", server id} | an auth refusal | {"not_found"} | {"bad_state", status} | {"not_task_owner", status}
Events: one.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local message, note = ARGV[5], ARGV[6]
local base, cap = tonumber(ARGV[7]), tonumber(ARGV[8])
-- @include common
-- @include failure
-- @include auth

local sid, t, refusal = held_task(tonumber(ARGV[4]), {registering = true, connecting = true})
if not sid then return refusal end
local tid = t.id

redis.call('HSET', KEYS[2], 'note', note)
fail_task(t, message, sid, base, cap)
return {'ok', sid}
