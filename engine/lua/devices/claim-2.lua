--[[ claim-2: an agent takes work for its idle devices, atomically.

For each listed serial, in order, until `limit` tasks are taken: skipped if a
task runs on it; else its scheduled tasks that are due (at most 100 per call)
join its due queue and the oldest due task (lowest id) becomes running, with a
run lease of run_ttl that heartbeats for the serial extend. Before that, at
most `sweep` lapsed run leases are failed ("agent lost"). Never two running
tasks on one serial (the `running` hash), never one task to two agents (the
pop and the status change are one script).
KEYS[1] running    hash serial -> running task id
KEYS[2] lease:run  zset id -> deadline ms
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] run ttl ms  ARGV[5] limit
ARGV[6] agent name  ARGV[7] sweep batch  ARGV[8] auto-retry delay ms ('' = off)  ARGV[9] max retries
ARGV[10..] serials
Derived keys: sched:/q:<serial>, t:, ix:st:*, active, retry, stats, events.
Returns {lost, record...}; a record is {id, st, se, us, sc, cfg, src, ma, due, sa, fa, rm, rc, ca}
Events: one per claimed task ('0' -> '1'), one per lost run ('1' -> '3').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local run_ttl, limit, agent = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
-- @include tasks

local out = {lose_runs(tonumber(ARGV[7]), ARGV[8], ARGV[9])}
for i = 10, #ARGV do
  if #out > limit then break end
  local se = ARGV[i]
  if redis.call('HEXISTS', KEYS[1], se) == 0 then
    local sk = K .. 'sched:' .. se
    local due = redis.call('ZRANGEBYSCORE', sk, '-inf', STAMP, 'LIMIT', '0', '100')
    if #due > 0 then
      for _, id in ipairs(due) do redis.call('ZADD', K .. 'q:' .. se, id, id) end
      redis.call('ZREM', sk, unpack(due))
    end
    local top = redis.call('ZPOPMIN', K .. 'q:' .. se)
    if top[1] then
      -- One read serves both the decision and the reply: a queued task is pending
      -- and not stopped (requeue clears the flag), so its record holds all we need.
      local r = record(top[1])
      local t = {id = r[1], st = r[2], se = se}
      redis.call('HSET', KEYS[1], se, t.id)
      set_status(t, '1', agent, {'sa', STAMP, 'ag', agent})
      redis.call('ZADD', KEYS[2], int(NOW + run_ttl), t.id)
      r[2], r[10] = '1', NOW
      out[#out + 1] = r
    end
  end
end
count_claims(#out - 1)
return out
