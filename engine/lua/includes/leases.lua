-- leases: a sorted set of task id -> deadline (ms) per kind of lease (claim,
-- run). A lapsed lease is one whose deadline is <= NOW. Needs K and NOW.
-- Derived key: totals (`lapsed:<kind>`, `claimed`).
-- @include totals

-- Visit at most `batch` lapsed leases of `zset`, oldest deadline first.
-- decide(id) returns a new deadline to extend the lease, or nil when the
-- contract has dealt with the task (the lease is then removed).
-- Returns how many lapsed leases it visited and how many it removed; the
-- removed ones are counted in totals as `lapsed:<kind>` (`zset` is K .. 'lease:<kind>').
local function sweep_lapsed(zset, batch, decide)
  local ids = redis.call('ZRANGEBYSCORE', zset, '-inf', STAMP, 'LIMIT', '0', int(batch))
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
  tally('lapsed:' .. zset:sub(#K + 7), removed)
  return #ids, removed
end

-- `n` leases granted by one claim: counted in totals as `claimed`.
local function count_claims(n)
  tally('claimed', n)
end
