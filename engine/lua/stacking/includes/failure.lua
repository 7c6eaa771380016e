-- failure: a running task fails (worker report or lease lapse) and is handed to
-- the retry manager. Needs common and the shared retries include.
-- Derived keys: lease:run, retry, t:<task>.
-- @include retries

-- t.st must be registering or connecting. base/cap: backoff in ms. Out of
-- retries, it is due at once, so the retry script marks it final_failed.
-- `note` (optional): the worker's note, stored with the error.
local function fail_task(t, message, actor, base, cap, note)
  local new = 'connect_failed'
  if t.st == 'registering' then new = 'profile_failed' end
  redis.call('ZREM', K .. 'lease:run', t.id)
  local extra = {'err', message, 'own', '', 'failed_at', NOW}
  if note then extra[7], extra[8] = 'note', note end
  set_status(t, new, actor, extra)
  local due = NOW
  if t.rc < t.mr then due = NOW + backoff(base, cap, t.rc) end
  schedule_retry(t.id, due)
end
