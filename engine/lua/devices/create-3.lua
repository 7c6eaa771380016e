--[[ create-3: new pending tasks, all or nothing.

Resolves who runs each task, then checks the batch size and the plan's device
limit, then writes: one task per (device, account) pair per config. Pairs:
usernames mode, each username's bound device; device mode with multi-account,
every account bound to each device (sorted); otherwise each device, no account.
Checks before any write: every username bound, every multi-account device has
accounts, at most max_tasks tasks, distinct active devices within the limit.
KEYS[1] seq      id sequence (INCRBY)
KEYS[2] users    hash username -> serial (written by heartbeat)
KEYS[3] active   hash serial -> pending+running tasks
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] mode: 'serials' | 'usernames'
ARGV[5] multi-account '1'|'0'  ARGV[6] script_name  ARGV[7] source  ARGV[8] due ms ('' = now)
ARGV[9] device limit  ARGV[10] max tasks  ARGV[11] n configs  ARGV[12..] configs (JSON), then identities
Derived keys: acc:<serial>, t:, ix:*, q:/sched:<serial>, stats, events.
Returns {"ok", id...} | {"no_account", username} | {"no_device_accounts", serial}
        | {"too_many", n} | {"device_limit", limit, would-be active devices}
Events: one per task ('' -> '0').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local mode, multi, script, source, due = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local limit, max_tasks, nconf = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
-- @include tasks

local configs = {}
for i = 1, nconf do configs[i] = ARGV[11 + i] end
local pairs_ = {}  -- {serial, username}
for i = 12 + nconf, #ARGV do
  local who = ARGV[i]
  if mode == 'usernames' then
    local se = redis.call('HGET', KEYS[2], who)
    if not se then return {'no_account', who} end
    pairs_[#pairs_ + 1] = {se, who}
  elseif multi == '1' then
    local accs = redis.call('SMEMBERS', K .. 'acc:' .. who)
    if #accs == 0 then return {'no_device_accounts', who} end
    table.sort(accs)
    for _, u in ipairs(accs) do pairs_[#pairs_ + 1] = {who, u} end
  else
    pairs_[#pairs_ + 1] = {who, ''}
  end
end
local n = #pairs_ * nconf
if n > max_tasks then return {'too_many', n} end
local new, seen = 0, {}
for _, p in ipairs(pairs_) do
  if not seen[p[1]] then
    seen[p[1]] = true
    if redis.call('HEXISTS', KEYS[3], p[1]) == 0 then new = new + 1 end
  end
end
local would = redis.call('HLEN', KEYS[3]) + new
if new > 0 and would > limit then return {'device_limit', limit, would} end

local id = redis.call('INCRBY', KEYS[1], n) - n
local out = {'ok'}
local ready = due == '' or tonumber(due) <= NOW
for _, p in ipairs(pairs_) do
  local se, us = p[1], p[2]
  for _, cfg in ipairs(configs) do
    id = id + 1
    redis.call('HSET', K .. 't:' .. id, 'se', se, 'us', us, 'sc', script, 'cfg', cfg, 'src', source, 'ma', multi,
               'due', due, 'ca', NOW, 'rc', 0)
    change_status(id, nil, '0', source, {K .. 'stats'})
    redis.call('ZADD', K .. 'ix:st:0', id, id)
    redis.call('ZADD', K .. 'ix:all', id, id)
    redis.call('ZADD', K .. 'ix:se:' .. se, id, id)
    redis.call('ZADD', K .. 'ix:sc:' .. script, id, id)
    redis.call('ZADD', K .. 'ix:src:' .. source, id, id)
    if ready then
      redis.call('ZADD', K .. 'q:' .. se, id, id)
    else
      redis.call('ZADD', K .. 'sched:' .. se, due, id)
    end
    redis.call('HINCRBY', KEYS[3], se, 1)
    out[#out + 1] = id
  end
end
return out
