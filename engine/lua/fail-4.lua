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

local sid, refusal = authenticate(KEYS[1], true, tonumber(ARGV[4]))
if not sid then return refusal end
local tid = string.sub(KEYS[2], #K + 3)
local t = load_task(tid)
if not t then return {'not_found'} end
if t.st ~= 'registering' and t.st ~= 'connecting' then return {'bad_state', t.st} end
if t.own ~= sid then return {'not_task_owner', t.st} end

redis.call('HSET', KEYS[2], 'note', note)
fail_task(t, message, sid, base, cap)
return {'ok', sid}
