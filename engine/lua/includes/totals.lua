-- totals: monotonic counters of what happened (not of what is, which `stats`
-- holds), one hash per contract, read by /metrics. Each is moved by the same
-- script as the thing it counts, so it is exact. Fields written here and by
-- the other shared includes: `claimed` (leases granted by a claim),
-- `lapsed:<kind>` (leases of that kind a sweep removed), `retried` (tasks
-- sent back for another attempt); a contract may add its own (engine/KEYS.md).
-- Needs K. Derived key: totals.
-- @include ints

local function tally(field, n)
  if n > 0 then redis.call('HINCRBY', K .. 'totals', field, int(n)) end
end
