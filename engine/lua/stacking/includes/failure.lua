-- failure: a running task fails (worker report or lease lapse) and is handed to
-- the retry manager. Needs common and the shared retries include.
-- Derived keys: lease:run, retry, t:<task>.
-- @include retries

-- t.st must be registering or connecting. base/cap: backoff in ms. Out of
-- retries, it is due at once, so the retry script marks it final_failed.
-- `note` (optional): the worker's note, stored with the error. `later`
-- (optional, a script failing many tasks): {runs = {}, retries = {}} that
-- collect the run-lease removals and retry entries for flush_failures, one
-- ZREM and one ZADD for the whole call.
local function fail_task(t, message, actor, base, cap, note, later)
  local new = 'connect_failed'
  if t.st == 'registering' then new = 'profile_failed' end
  local extra = {'err', message, 'own', ''}
  if note then extra[5], extra[6] = 'note', note end
  set_status(t, new, actor, extra)
  local due = STAMP  -- strings: a number would be formatted with %.17g by ZADD
  if t.rc < t.mr then due = int(NOW + backoff(base, cap, t.rc)) end
  if later then
    later.runs[#later.runs + 1] = t.id
    later.retries[#later.retries + 1] = due
    later.retries[#later.retries + 1] = t.id
  else
    redis.call('ZREM', K .. 'lease:run', t.id)
    schedule_retry(t.id, due)
  end
end

-- The writes fail_task collected in `later` (at most 1000 tasks: one call's items).
local function flush_failures(later)
  if #later.runs > 0 then
    redis.call('ZREM', K .. 'lease:run', unpack(later.runs))
    redis.call('ZADD', K .. 'retry', unpack(later.retries))
  end
end
