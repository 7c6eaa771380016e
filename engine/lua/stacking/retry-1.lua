--[[ retry-1: the retry manager's decision for every failure that is due.

profile_failed -> register (retry_count + 1) while retry_count < max_retries,
else final_failed (which leaves phase 1 and may fire the folder barrier);
connect_failed -> connect / final_failed by the same rule. Each due entry is
removed before it is acted on and the status is re-checked, so running this
twice, or two copies at once, acts once.
KEYS[1] retry     zset task -> due ms (includes/retries.lua)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch
Derived keys: t:, f:, r:, ft:, fr:, fu:/fb:, counters, events.
Returns {requeued, final_failed, remaining_due}
Events: one per task moved (plus barrier moves).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local batch = tonumber(ARGV[4])
-- @include common
-- @include lifecycle
-- @include retries

local requeued, final = 0, 0
for _, tid in ipairs(take_due_retries(batch)) do
  local t = load_task(tid)
  if t and (t.st == 'profile_failed' or t.st == 'connect_failed') then
    local phase = 2
    if t.st == 'profile_failed' then phase = 1 end
    if t.rc < t.mr then
      redis.call('HSET', K .. 't:' .. tid, 'rc', t.rc + 1)
      set_status(t, phase == 1 and 'register' or 'connect', 'retry')
      make_ready(t, phase)
      requeued = requeued + 1
    else
      set_status(t, 'final_failed', 'retry')
      if phase == 1 then leave_phase1(t.fo, 'retry') end
      task_terminal(t)
      final = final + 1
    end
  end
end
count_retries(requeued)
return {requeued, final, due_retries_left()}
