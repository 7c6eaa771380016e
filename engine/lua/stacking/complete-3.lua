--[[ complete-3: the running server reports success.

registering -> profiled (link_post required; may fire the folder barrier, which
moves every profiled task of the folder to connect, or to completed in mode
"disable"); connecting -> completed (link_post optional, replaces the stored one).
Checks before any write: the caller (includes/auth.lua), exists, status registering/connecting, caller owns it,
link_post present in phase 1.
KEYS[1] caller: skey:<sha256 of API key> (authenticated and authorized here) or s:<server id>
KEYS[2] t:<task>     task hash
KEYS[3] lease:run    run leases
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms
ARGV[5] link_post, JSON-encoded ('' = not given)   ARGV[6] note
Derived keys: fp:<folder>, f:<folder>, r:<request>, counters, fr:2:, fu:2/fb:2: (barrier).
Returns {"ok", server id} | an auth refusal | {"not_found"} | {"bad_state", status} | {"not_task_owner", status}
        | {"link_post_required", status}
Events: one for this task, plus one per task the barrier moves.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local lp, note = ARGV[5], ARGV[6]
-- @include common
-- @include auth
-- @include lifecycle

local sid, t, refusal = held_task(tonumber(ARGV[4]), {registering = true, connecting = true})
if not sid then return refusal end
local tid = t.id
if t.st == 'registering' and lp == '' then return {'link_post_required', t.st} end

redis.call('ZREM', KEYS[3], tid)
redis.call('HSET', KEYS[2], 'own', '', 'note', note, 'done_at', NOW)
if lp ~= '' then redis.call('HSET', KEYS[2], 'lp', lp) end
if t.st == 'registering' then
  set_status(t, 'profiled', sid)
  redis.call('ZADD', K .. 'fp:' .. t.fo, t.seq, tid)
  leave_phase1(t.fo, sid)
else
  set_status(t, 'completed', sid)
  task_terminal(t)
end
return {'ok', sid}
