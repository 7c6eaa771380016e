-- status: the one way a task of any contract changes status. The task hash's
-- `st` is the truth; every counter hash that mirrors it moves in the same
-- script, and one event is written. Needs events, K and NOW.
-- Derived key: t:<task>; `hashes` are full key names under the same tag.
-- @include events

-- Move one count from status `old` to `new` in each counter hash (a nil status
-- is "no task": creation passes old = nil, deletion new = nil).
local function recount(hashes, old, new)
  for _, h in ipairs(hashes) do
    if old then redis.call('HINCRBY', h, old, -1) end
    if new then redis.call('HINCRBY', h, new, 1) end
  end
end

-- old = nil: the task is new (its hash is created here with `st`). `extra`
-- (optional): more field/value pairs of the task hash, written in the same HSET.
local function change_status(id, old, new, actor, hashes, extra)
  if extra then
    redis.call('HSET', K .. 't:' .. id, 'st', new, 'ua', NOW, unpack(extra))
  else
    redis.call('HSET', K .. 't:' .. id, 'st', new, 'ua', NOW)
  end
  recount(hashes, old, new)
  emit(id, old or '', new or '', actor)
end
