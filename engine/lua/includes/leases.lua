-- leases: a sorted set of task id -> deadline (ms) per kind of lease (claim,
-- run). A lapsed lease is one whose deadline is <= NOW. Needs NOW.

-- Visit at most `batch` lapsed leases of `zset`, oldest deadline first.
-- decide(id) returns a new deadline to extend the lease, or nil when the
-- contract has dealt with the task (the lease is then removed).
-- Returns how many lapsed leases it visited and how many it removed.
local function sweep_lapsed(zset, batch, decide)
  local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', NOW, 'LIMIT', 0, batch)
  local removed = 0
  for _, id in ipairs(ids) do
    local deadline = decide(id)
    if deadline then
      redis.call('ZADD', zset, deadline, id)
    else
      redis.call('ZREM', zset, id)
      removed = removed + 1
    end
  end
  return #ids, removed
end
