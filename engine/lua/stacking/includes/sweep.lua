-- sweep: bounded lease recovery, used by claim (for free, on every pull) and by
-- the periodic sweep script. Needs common, failure and the shared leases include.
-- Derived keys: lease:claim, lease:run, s:<server>, and those of fail_task/make_ready.
-- @include leases

-- Claims not started in time go back to the ready sets (not a retry).
local function lapse_claims(batch)
  return (sweep_lapsed(K .. 'lease:claim', batch, function(tid)
    local t = load_task(tid)
    if t and (t.st == 'register' or t.st == 'connect') and t.own ~= '' then
      redis.call('HSET', K .. 't:' .. tid, 'own', '')
      make_ready(t, t.st == 'register' and 1 or 2)
    end
    return nil
  end))
end

-- Run leases past their deadline: extended if the owner heartbeated within
-- run_ttl (that is how heartbeats extend leases, in O(1) per heartbeat),
-- otherwise failed with "lease expired".
local function lapse_runs(batch, run_ttl, base, cap)
  local failed = 0
  sweep_lapsed(K .. 'lease:run', batch, function(tid)
    local t = load_task(tid)
    if t and (t.st == 'registering' or t.st == 'connecting') then
      local hb = tonumber(redis.call('HGET', K .. 's:' .. t.own, 'hb')) or 0
      if hb + run_ttl > NOW then return hb + run_ttl end
      fail_task(t, 'lease expired', 'lease', base, cap)
      failed = failed + 1
    end
    return nil
  end)
  return failed
end
