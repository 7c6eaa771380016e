-- sweep: bounded lease recovery, used by claim (for free, on every pull) and by
-- the periodic sweep script. Needs common and failure.
-- Derived keys: lease:claim, lease:run, s:<server>, and those of fail_task/make_ready.

-- Claims not started in time go back to the ready sets (not a retry).
local function lapse_claims(batch)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'lease:claim', '-inf', NOW, 'LIMIT', 0, batch)
  for _, tid in ipairs(ids) do
    redis.call('ZREM', K .. 'lease:claim', tid)
    local t = load_task(tid)
    if t and (t.st == 'register' or t.st == 'connect') and t.own ~= '' then
      redis.call('HSET', K .. 't:' .. tid, 'own', '')
      local phase = 2
      if t.st == 'register' then phase = 1 end
      make_ready(t, phase)
    end
  end
  return #ids
end

-- Run leases past their deadline: extended if the owner heartbeated within
-- run_ttl (that is how heartbeats extend leases, in O(1) per heartbeat),
-- otherwise failed with "lease expired".
local function lapse_runs(batch, run_ttl, base, cap)
  local ids = redis.call('ZRANGEBYSCORE', K .. 'lease:run', '-inf', NOW, 'LIMIT', 0, batch)
  local failed = 0
  for _, tid in ipairs(ids) do
    local t = load_task(tid)
    if t and (t.st == 'registering' or t.st == 'connecting') then
      local hb = tonumber(redis.call('HGET', K .. 's:' .. t.own, 'hb')) or 0
      if hb + run_ttl > NOW then
        redis.call('ZADD', K .. 'lease:run', hb + run_ttl, tid)
      else
        fail_task(t, 'lease expired', 'lease', base, cap)
        failed = failed + 1
      end
    else
      redis.call('ZREM', K .. 'lease:run', tid)
    end
  end
  return failed
end
