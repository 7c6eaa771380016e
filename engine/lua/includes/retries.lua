-- retries: the delayed-retry schedule, a sorted set task id -> due (ms), read
-- by each contract's retry script (an RQ job). Needs K and NOW.
-- Derived keys: retry, totals (`retried`).
-- @include totals

-- Exponential backoff: base * 2^attempt, at most cap (all ms).
local function backoff(base, cap, attempt)
  return math.min(cap, base * 2 ^ attempt)
end

local function schedule_retry(id, due)
  redis.call('ZADD', K .. 'retry', due, id)
end

local function unschedule_retry(id)
  redis.call('ZREM', K .. 'retry', id)
end

-- Up to `batch` due entries, removed before the caller acts on them: a second
-- run of the same job, or a copy running at once, finds nothing to redo.
local function take_due_retries(batch)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'retry', '-inf', STAMP, 'LIMIT', '0', int(batch))
  if #ids > 0 then redis.call('ZREM', K .. 'retry', unpack(ids)) end
  return ids
end

local function due_retries_left()
  return redis.call('ZCOUNT', K .. 'retry', '-inf', STAMP)
end

-- `n` tasks sent back for another attempt: counted in totals as `retried`.
local function count_retries(n)
  tally('retried', n)
end
