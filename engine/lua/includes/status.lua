-- status: the one way a task of any contract changes status. The task hash's
-- `st` is the truth; every counter hash that mirrors it moves in the same
-- script, and one event is written. Needs events, K and NOW. No time of the
-- change is stored in the hash (the event has it); a contract that renders
-- one (the task center's `ua`) passes it in `extra`.
-- Derived key: t:<task>; `hashes` are full key names under the same tag.
-- @include events
-- @include ints

-- Deferred counting, for a script that moves many tasks in one call: after
-- defer_counts(), recount only sums the moves per hash and field, and
-- flush_counts() applies each nonzero sum with one HINCRBY. A script reads no
-- status counter it moved (connect-status and stats are read by other calls),
-- so the totals are what per-move HINCRBYs would give, for far fewer commands.
local DELTAS = nil

local function defer_counts()
  DELTAS = {}
end

local function flush_counts()
  for h, fields in pairs(DELTAS or {}) do
    for field, n in pairs(fields) do
      if n ~= 0 then redis.call('HINCRBY', h, field, int(n)) end
    end
  end
  DELTAS = nil
end

-- Move `n` counts from status `old` to `new` in each counter hash (a nil status
-- is "no task": creation passes old = nil, deletion new = nil): what n single
-- moves give, with one move per hash and field (a script that moves many
-- tasks counted in the same hashes at once counts them with one call).
local function recount_n(hashes, old, new, n)
  if DELTAS then
    for _, h in ipairs(hashes) do
      local d = DELTAS[h]
      if not d then d = {}; DELTAS[h] = d end
      if old then d[old] = (d[old] or 0) - n end
      if new then d[new] = (d[new] or 0) + n end
    end
    return
  end
  for _, h in ipairs(hashes) do
    if old then redis.call('HINCRBY', h, old, int(-n)) end
    if new then redis.call('HINCRBY', h, new, int(n)) end
  end
end

-- One task moved from `old` to `new`.
local function recount(hashes, old, new)
  recount_n(hashes, old, new, 1)
end

-- The task hash and the event of a status change, without its counters: for a
-- script that moves many tasks counted in the same hashes at once and counts
-- them with one recount_n per set of hashes. `...`: more field/value pairs of
-- the task hash, written in the same HSET.
local function restatus(id, old, new, actor, ...)
  redis.call('HSET', K .. 't:' .. id, 'st', new, ...)
  emit(id, old or '', new, actor)
end

-- old = nil: the task is new (its hash is created here with `st`). `extra`
-- (optional): more field/value pairs of the task hash, written in the same HSET.
local function change_status(id, old, new, actor, hashes, extra)
  if extra then
    restatus(id, old, new, actor, unpack(extra))
  else
    restatus(id, old, new, actor)
  end
  recount(hashes, old, new)
end
