--[[ create-3: new pending tasks on one shard, all or nothing.

Resolves who runs each task, then checks the batch size and the plan's device
limit, then writes: one task per (device, account) pair per config. Pairs:
usernames mode, each username's bound device; device mode with multi-account,
every account bound to each device (sorted); otherwise each device, no account.
Checks before any write: every username bound, every multi-account device has
accounts, at most max_tasks tasks, distinct active devices within the limit
(this shard's active devices, the new ones of this call, plus `others`: the
active devices of the other shards and this call's new ones there, read by the
caller just before).
Task ids are global: local sequence number * stride + shard (stride 1, shard 0
with one shard: the sequence number itself). With `starts` on, each identity
is followed by the first local number its tasks should take (the caller's
numbering of the whole call across shards, so ids follow the call's order and
a later call's ids are larger on every shard); a local number is never below
the last one used here (the sequence only moves forward).
KEYS[1] seq      local id sequence
KEYS[2] users    hash username -> serial (written by heartbeat)
KEYS[3] active   hash serial -> pending+running tasks
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] mode: 'serials' | 'usernames'
ARGV[5] multi-account '1'|'0'  ARGV[6] script_name  ARGV[7] source  ARGV[8] due ms ('' = now)
ARGV[9] device limit  ARGV[10] others: active devices counted elsewhere  ARGV[11] max tasks
ARGV[12] id stride (shards)  ARGV[13] this shard's index  ARGV[14] '1': identities carry starts and the
reply carries per-identity counts  ARGV[15] n configs  ARGV[16..] configs (JSON), then identities
Derived keys: acc:<serial>, t:, ix:*, q:/sched:<serial>, stats, events.
Returns {"ok", id...} (with starts: {"ok", {id...}, {tasks per identity...}}) | {"no_account", username}
        | {"no_device_accounts", serial} | {"too_many", n} | {"device_limit", limit, would-be active devices}
Events: one per task ('' -> '0').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local mode, multi, script, source, due = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local limit, others, max_tasks = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local stride, shard, starts, nconf = tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14] == '1', tonumber(ARGV[15])
-- @include tasks

local configs = {}
for i = 1, nconf do configs[i] = ARGV[15 + i] end
local pairs_ = {}  -- {serial, username, first local number or nil}
local per = {}     -- pairs per identity (with starts)
local step = starts and 2 or 1
for i = 16 + nconf, #ARGV, step do
  local who, first = ARGV[i], starts and tonumber(ARGV[i + 1]) or nil
  local before = #pairs_
  if mode == 'usernames' then
    local se = redis.call('HGET', KEYS[2], who)
    if not se then return {'no_account', who} end
    pairs_[#pairs_ + 1] = {se, who, first}
  elseif multi == '1' then
    local accs = redis.call('SMEMBERS', K .. 'acc:' .. who)
    if #accs == 0 then return {'no_device_accounts', who} end
    table.sort(accs)
    for j, u in ipairs(accs) do pairs_[#pairs_ + 1] = {who, u, first and first + (j - 1) * nconf} end
  else
    pairs_[#pairs_ + 1] = {who, '', first}
  end
  per[#per + 1] = (#pairs_ - before) * nconf
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
local would = redis.call('HLEN', KEYS[3]) + new + others
if new > 0 and would > limit then return {'device_limit', limit, would} end

local last
if starts then
  last = tonumber(redis.call('GET', KEYS[1]) or '0')
else
  last = redis.call('INCRBY', KEYS[1], n) - n
end
local out = starts and {} or {'ok'}  -- the ids (after "ok" without starts)
local ready = due == '' or tonumber(due) <= NOW
for _, p in ipairs(pairs_) do
  local se, us = p[1], p[2]
  for j, cfg in ipairs(configs) do
    if p[3] and p[3] + j - 1 > last then last = p[3] + j - 1 else last = last + 1 end
    local id = last * stride + shard
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
if not starts then return out end
redis.call('SET', KEYS[1], last)
return {'ok', out, per}
