--[[ complete-1: running servers report success.

registering -> profiled (link_post required; may fire the folder barrier, which
moves every profiled task of the folder to connect, or to completed in mode
"disable"); connecting -> completed (link_post optional, replaces the stored one).
One call carries one or more items (the completes of one web batch or of one
Core.call_many, engine/calls.py), each checked and applied on its own exactly
as a call of its own would be, in order (a barrier an item fires is seen by
the items after it); a refused item changes nothing. Checks per item before
any of its writes: the caller (includes/auth.lua), exists, status
registering/connecting, caller owns it, link_post present in phase 1. Status
counters, each folder's phase-1 count and the run lease set are written once per call.
KEYS[1] lease:run    run leases
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] offline after ms
ARGV[5..] items of 4: caller key (full name: skey:<sha256 of API key> or s:<server id>), task id,
          link_post JSON-encoded ('' = not given), note
Derived keys: the callers', t:<task>, f:<folder>, r:<request>, counters, ft:, fr:2:, fu:2/fb:2: (barrier).
Returns one reply per item: the caller's server id (a string: it went through) | an auth refusal | {"not_found"} | {"bad_state", status}
        | {"not_task_owner", status} | {"link_post_required", status}
Events: one per completed task, plus one per task a barrier moves.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local offline_after = tonumber(ARGV[4])
-- @include common
-- @include auth
-- @include lifecycle

local RUNNING = {registering = true, connecting = true}
local out, done = {}, {}
defer_counts()
defer_p1()
for i = 5, #ARGV, 4 do
  local lp, note = ARGV[i + 2], ARGV[i + 3]
  local sid, t, refusal = held_task(ARGV[i], ARGV[i + 1], offline_after, RUNNING)
  if sid and t.st == 'registering' and lp == '' then sid, refusal = nil, {'link_post_required', t.st} end
  if sid then
    -- built whole: a table grown past its constructor's size is rehashed
    local extra
    if lp ~= '' then extra = {'own', '', 'note', note, 'lp', lp} else extra = {'own', '', 'note', note} end
    done[#done + 1] = t.id
    if t.st == 'registering' then
      set_status(t, 'profiled', sid, extra)
      leave_phase1(t.fo, sid)
    else
      set_status(t, 'completed', sid, extra)
      task_terminal(t)
    end
    out[#out + 1] = sid
  else
    out[#out + 1] = refusal
  end
end
if #done > 0 then redis.call('ZREM', KEYS[1], unpack(done)) end
flush_p1()
flush_counts()
return out
