-- center: what every task-center script shares: where a task is listed (its
-- cells), the quota ledger, and the two terminal moves. Needs K, NOW, MAXLEN.
-- Derived keys: t:<id>, u:<uid>, k:<token>, cg:<cell>, cu:<uid>:<cell>, cells,
-- cells:<uid>, ledger, meta, stats, events, active, poll, q, lease:claim,
-- totals (`refunds`, `refunded`: refunded failures and their quota).
-- @include status
-- @include leases

local NOW_S = math.floor(NOW / 1000)
local TERMINAL = {SUCCESS = true, FAILURE = true}

-- A cell is the combination of the low-cardinality list filters.
local function cell(pf, ac, st, ch)
  return pf .. '|' .. ac .. '|' .. st .. '|' .. ch
end

local function place(id, u, c)
  redis.call('ZADD', K .. 'cg:' .. c, id, id)
  redis.call('SADD', K .. 'cells', c)
  redis.call('ZADD', K .. 'cu:' .. u .. ':' .. c, id, id)
  redis.call('SADD', K .. 'cells:' .. u, c)
end

local function unplace(id, u, c)
  redis.call('ZREM', K .. 'cg:' .. c, id)
  redis.call('ZREM', K .. 'cu:' .. u .. ':' .. c, id)
end

-- One ledger entry (delta: + grant/refund, - charge); meta.ledger_n counts every
-- entry ever written, so the audit knows whether the capped stream is whole.
local function ledger(u, id, delta, reason)
  redis.call('XADD', K .. 'ledger', 'MAXLEN', '~', MAXLEN, '*',
             'user', u, 'task', id, 'delta', delta, 'reason', reason, 'at', NOW)
  redis.call('HINCRBY', K .. 'meta', 'ledger_n', 1)
end

-- Status (and channel) change of a live task `f` = {st, u, pf, ac, ch}: its
-- cells move, its counters move, one event. `extra`: more task fields.
local function move(id, f, new, ch, actor, extra)
  local old = cell(f[3], f[4], f[1], f[5])
  local now = cell(f[3], f[4], new, ch)
  if old ~= now then
    unplace(id, f[2], old)
    place(id, f[2], now)
  end
  -- `ua` (updated, rendered as updated_at) is this contract's own field: the
  -- shared change_status writes status, counters and the event only.
  if f[1] == new then
    redis.call('HSET', K .. 't:' .. id, 'ua', STAMP, unpack(extra))
  else
    change_status(id, f[1], new, actor, {K .. 'stats'}, {'ua', STAMP, unpack(extra)})
  end
end

local LIVE = {'st', 'u', 'pf', 'ac', 'ch', 'q', 'tk'}

local function forget(id)
  redis.call('ZREM', K .. 'active', id)
  redis.call('ZREM', K .. 'poll', id)
  redis.call('ZREM', K .. 'q', id)
  redis.call('ZREM', K .. 'lease:claim', id)
end

-- The one way a task fails: terminal FAILURE and the refund of its whole charge,
-- together, once. Returns false (and changes nothing) when the task is gone or
-- already terminal, so two pollers, the sweep and a duplicate job refund once.
-- The user and token are credited if they still exist; the ledger entry is
-- written either way.
local function fail_task(id, reason, actor)
  local f = redis.call('HMGET', K .. 't:' .. id, unpack(LIVE))
  if not f[1] or TERMINAL[f[1]] then return false end
  move(id, f, 'FAILURE', f[5], actor, {'fr', reason, 'pg', '100%', 'ft', NOW_S, 'rf', '1'})
  forget(id)
  local q = tonumber(f[6])
  if q > 0 then
    local uk = K .. 'u:' .. f[2]
    if redis.call('EXISTS', uk) == 1 then
      redis.call('HINCRBY', uk, 'quota', q)
      redis.call('HINCRBY', uk, 'used', -q)
      redis.call('HINCRBY', uk, 'rfd', q)
    end
    local tk = K .. 'k:' .. f[7]
    if f[7] ~= '' and redis.call('EXISTS', tk) == 1 then
      if redis.call('HGET', tk, 'ul') ~= '1' then redis.call('HINCRBY', tk, 'rq', q) end
      redis.call('HINCRBY', tk, 'used', -q)
    end
    ledger(f[2], id, q, 'refund')
    tally('refunds', 1)
    tally('refunded', q)
  end
  return true
end

-- Submissions whose submitter died (lease lapsed) go back to the queue, due now;
-- at most `batch` of them. Returns how many were visited.
local function requeue_lapsed(batch)
  local visited = sweep_lapsed(K .. 'lease:claim', batch, function(id)
    if redis.call('HGET', K .. 't:' .. id, 'st') == 'NOT_START' then redis.call('ZADD', K .. 'q', NOW, id) end
    return nil
  end)
  return visited
end

-- SUCCESS keeps the charge. Returns false when gone or already terminal.
local function settle(id, data, actor)
  local f = redis.call('HMGET', K .. 't:' .. id, unpack(LIVE))
  if not f[1] or TERMINAL[f[1]] then return false end
  local extra = {'pg', '100%', 'ft', NOW_S}
  if data ~= '' then extra[#extra + 1] = 'd'; extra[#extra + 1] = data end
  move(id, f, 'SUCCESS', f[5], actor, extra)
  forget(id)
  return true
end

-- The documented fields of a task, after its id (engine/taskcenter.py FIELDS).
local FIELDS = {'ca', 'ua', 'tid', 'pf', 'u', 'ch', 'q', 'ac', 'st', 'fr', 'sbt', 'stt', 'ft', 'pg', 'pr', 'd'}

local function record(id)
  if type(id) == 'number' then id = string.format('%d', id) end  -- '..' would print 15+ digits as 1e+14
  local r = redis.call('HMGET', K .. 't:' .. id, unpack(FIELDS))
  table.insert(r, 1, id)
  return r
end
