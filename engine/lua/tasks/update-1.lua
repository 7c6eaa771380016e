--[[ update-1: apply what the platform reported for a batch of tasks (the poll job).

Per task: FAILURE fails it with its refund, SUCCESS settles it (the charge is
kept), anything else sets its status and progress (start_time the first time
it is IN_PROGRESS). A terminal or unknown task is skipped: a late or duplicate
report changes nothing. `data` ('' = unchanged) is the platform's result, JSON.
KEYS[1] poll
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] actor
ARGV[5..] per task 5 values: id, STATUS, progress ('' = unchanged), fail reason, data
Returns {changed, succeeded, failed, skipped}
Events: one per status change.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local actor = ARGV[4]
local changed, succeeded, failed, skipped = 0, 0, 0, 0
for i = 5, #ARGV, 5 do
  local id, st, pg, reason, data = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  if st == 'FAILURE' then
    if fail_task(id, reason, actor) then failed = failed + 1 else skipped = skipped + 1 end
  elseif st == 'SUCCESS' then
    if settle(id, data, actor) then succeeded = succeeded + 1 else skipped = skipped + 1 end
  else
    local f = redis.call('HMGET', K .. 't:' .. id, 'st', 'u', 'pf', 'ac', 'ch', 'stt')
    if not f[1] or TERMINAL[f[1]] or f[1] == 'NOT_START' then
      skipped = skipped + 1
    else
      local extra = {}
      if pg ~= '' then extra[#extra + 1] = 'pg'; extra[#extra + 1] = pg end
      if data ~= '' then extra[#extra + 1] = 'd'; extra[#extra + 1] = data end
      if st == 'IN_PROGRESS' and f[6] == '0' then extra[#extra + 1] = 'stt'; extra[#extra + 1] = NOW_S end
      move(id, f, st, f[5], actor, extra)
      changed = changed + 1
    end
  end
end
return {changed, succeeded, failed, skipped}
