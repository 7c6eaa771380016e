--[[ fail-2: running servers report failure: registering -> profile_failed,
connecting -> connect_failed, and each task is queued for the retry manager
(due after backoff base * 2^retry_count capped at cap, or at once when out of
retries, so the retry script can mark it final_failed).
One call carries one or more items (the fails of one web batch or of one
Core.call_many, engine/calls.py), each checked and applied on its own exactly
as a call of its own would be; a refused item changes nothing. Checks per
item before any of its writes: the caller (includes/auth.lua), exists, status
registering/connecting, caller owns it. Status counters, the run lease set and the
retry schedule are written once per call.
KEYS[1] lease:run   run leases
KEYS[2] retry       retry schedule (zset task -> due ms)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms
ARGV[5] retry base ms  ARGV[6] retry cap ms
ARGV[7..] items of 4: caller key (full name: skey:<sha256 of API key> or s:<server id>), task id,
          error_message, note
Derived keys: the callers', t:<task>, counters, events.
Returns one reply per item: the caller's server id (a string: it went through) | an auth refusal | {"not_found"} | {"bad_state", status}
        | {"not_task_owner", status}
Events: one per failed task.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local offline_after = tonumber(ARGV[4])
local base, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
-- @include common
-- @include failure
-- @include auth

local RUNNING = {registering = true, connecting = true}
local out, later = {}, {runs = {}, retries = {}}
defer_counts()
for i = 7, #ARGV, 4 do
  local sid, t, refusal = held_task(ARGV[i], ARGV[i + 1], offline_after, RUNNING, true)
  if sid then
    fail_task(t, ARGV[i + 2], sid, base, cap, ARGV[i + 3], later)
    out[#out + 1] = sid
  else
    out[#out + 1] = refusal
  end
end
flush_failures(later)
flush_counts()
return out
