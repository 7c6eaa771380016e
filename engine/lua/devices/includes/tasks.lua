-- tasks: the device contract's task record, indexes and device bookkeeping.
-- Needs K, NOW, MAXLEN and the shared status, leases and retries includes.
-- Statuses: '0' pending, '1' running, '2' completed, '3' failed.
-- Derived keys (all under K): t:<id>; ix:all, ix:st:<status>, ix:se:<serial>,
-- ix:sc:<script>, ix:src:<source> (list indexes, score = id); q:<serial>
-- (due pending tasks, score = id: the oldest first); sched:<serial>
-- (scheduled pending tasks, score = due ms); running (serial -> id);
-- active (serial -> pending+running count, for the plan's device limit);
-- stops:<serial> (stop signals for the agent, id -> ms); lease:run; retry;
-- stats; events.
-- @include status
-- @include retries
-- @include leases

-- The fields of the documented record, in the order list/claim/get return them.
local FIELDS = {'st', 'se', 'us', 'sc', 'cfg', 'src', 'ma', 'due', 'sa', 'fa', 'rm', 'rc', 'ca'}

local function record(id)
  local v = redis.call('HMGET', K .. 't:' .. id, unpack(FIELDS))
  table.insert(v, 1, id)
  return v
end

-- The fields scripts decide on; nil when the task does not exist.
local function load_task(id)
  local v = redis.call('HMGET', K .. 't:' .. id, 'st', 'se', 'rc', 'stop', 'sc', 'src')
  if not v[1] then return nil end
  return {id = id, st = v[1], se = v[2], rc = tonumber(v[3]) or 0, stop = v[4] == '1', sc = v[5], src = v[6]}
end

-- Every status change: the shared change_status (with `extra` task fields in
-- the same write), then the status index.
local function set_status(t, new, actor, extra)
  change_status(t.id, t.st, new, actor, {K .. 'stats'}, extra)
  redis.call('ZREM', K .. 'ix:st:' .. t.st, t.id)
  redis.call('ZADD', K .. 'ix:st:' .. new, t.id, t.id)
  t.st = new
end

local function active_add(serial, delta)
  if redis.call('HINCRBY', K .. 'active', serial, delta) <= 0 then
    redis.call('HDEL', K .. 'active', serial)
  end
end

-- A pending task leaves the device's queues (stop, delete).
local function unqueue(t)
  redis.call('ZREM', K .. 'q:' .. t.se, t.id)
  redis.call('ZREM', K .. 'sched:' .. t.se, t.id)
end

-- A running task leaves its device: the device is free, the run lease goes.
local function release(t)
  if redis.call('HGET', K .. 'running', t.se) == t.id then
    redis.call('HDEL', K .. 'running', t.se)
  end
  redis.call('ZREM', K .. 'lease:run', t.id)
end

-- Tell the agent driving the device that this task must stop (read by heartbeat).
local function signal_stop(t)
  redis.call('ZADD', K .. 'stops:' .. t.se, NOW, t.id)
end

-- pending/running -> completed/failed. `retry_in` (ms, or nil): a failure the
-- auto-retry job should retry after that delay (never a stopped task).
local function finish(t, new, remark, actor, retry_in)
  if t.st == '1' then release(t) else unqueue(t) end
  redis.call('HSET', K .. 't:' .. t.id, 'fa', NOW, 'rm', remark)
  set_status(t, new, actor)
  active_add(t.se, -1)
  if new == '3' and retry_in and not t.stop then schedule_retry(t.id, NOW + retry_in) end
end

-- failed -> pending, due now (manual retry, retry-all, the auto-retry job).
-- A stop signal still pending for the task goes: it was about the old run, and
-- would otherwise stop the new one.
local function requeue(t, actor)
  redis.call('HSET', K .. 't:' .. t.id, 'rc', t.rc + 1, 'stop', '0', 'rm', '', 'sa', '', 'fa', '')
  redis.call('ZREM', K .. 'stops:' .. t.se, t.id)
  unschedule_retry(t.id)
  set_status(t, '0', actor)
  redis.call('ZADD', K .. 'q:' .. t.se, t.id, t.id)
  active_add(t.se, 1)
  count_retries(1)
end

-- The auto-retry delay of a failure: `delay` (ms; '' = auto-retry off) while
-- retry_count < max; never for a stopped task.
local function retry_delay(t, delay, max)
  if delay == '' or t.stop or t.rc >= tonumber(max) then return nil end
  return tonumber(delay)
end

-- Running tasks whose agent stopped heartbeating for the run TTL: failed,
-- "agent lost" (at most `batch`). Returns how many.
local function lose_runs(batch, delay, max)
  local _, lost = sweep_lapsed(K .. 'lease:run', batch, function(id)
    local t = load_task(id)
    if t and t.st == '1' then finish(t, '3', 'agent lost', 'sweep', retry_delay(t, delay, max)) end
    return nil
  end)
  return lost
end
