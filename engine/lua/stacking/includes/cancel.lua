-- cancel: an operator cancels one task, from any non-terminal status.
-- Needs common and lifecycle. Derived keys: fr:, lease:claim, lease:run, retry.
-- Returns true when the task was cancelled, false when already terminal.
local function cancel_task(t, actor)
  if TERMINAL[t.st] then return false end
  local was_phase1 = PHASE1[t.st]
  if t.st == 'register' then unready(t, 1) elseif t.st == 'connect' then unready(t, 2) end
  redis.call('ZREM', K .. 'lease:claim', t.id)
  redis.call('ZREM', K .. 'lease:run', t.id)
  redis.call('ZREM', K .. 'retry', t.id)
  redis.call('HSET', K .. 't:' .. t.id, 'own', '')
  set_status(t, 'cancel', actor)
  if was_phase1 then leave_phase1(t.fo, actor) end
  task_terminal(t)
  return true
end
