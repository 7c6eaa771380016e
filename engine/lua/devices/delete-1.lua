--[[ delete-1: an operator deletes tasks (at most 1000 per call); running ones are stopped first.

A running task's agent is told to stop on its next heartbeat. Every index,
queue, counter and schedule entry of a task goes with it.
KEYS[1] running   hash serial -> running task id
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] actor  ARGV[5..] task ids
Derived keys: t:, ix:*, q:/sched:/stops:<serial>, lease:run, retry, active, stats, events.
Returns {deleted, {id not found...}}
Events: one per deleted task (status -> '').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

local deleted, missing = 0, {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local t = load_task(id)
  if not t then
    missing[#missing + 1] = id
  else
    if t.st == '1' then
      signal_stop(t)
      release(t)
    elseif t.st == '0' then
      unqueue(t)
    end
    if t.st == '0' or t.st == '1' then active_add(t.se, -1) end
    unschedule_retry(id)
    for _, ix in ipairs({'ix:all', 'ix:st:' .. t.st, 'ix:se:' .. t.se, 'ix:sc:' .. t.sc, 'ix:src:' .. t.src}) do
      redis.call('ZREM', K .. ix, id)
    end
    recount({K .. 'stats'}, t.st, nil)
    emit(id, t.st, '', ARGV[4])
    redis.call('DEL', K .. 't:' .. id)
    deleted = deleted + 1
  end
end
return {deleted, missing}
