--[[ probe-3: what a create spanning shards needs to know of one shard first (reads only).

A sharded create asks every shard it needs in one call, checks what it can in
Python (bindings, accounts, batch size, device limit over all shards) and
numbers the call's tasks; each shard's create-3 then checks again atomically.
Usernames mode: each username's binding on this shard ('' = none here) and
whether that serial is active. Serials mode: each serial (of this shard),
whether it is active and, with multi-account, how many accounts it has.
KEYS[1] seq     local id sequence
KEYS[2] users   hash username -> serial
KEYS[3] active  hash serial -> pending+running tasks
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] mode: 'serials' | 'usernames'
ARGV[5] multi-account '1'|'0'  ARGV[6..] identities
Derived keys: acc:<serial>.
Returns {seq, active devices, {serial or '' per identity}, {1|0 active per identity}, {accounts per identity}}
Events: none.
]]
local K = ARGV[1]
local mode, multi = ARGV[4], ARGV[5]
local bound, active, accounts = {}, {}, {}
for i = 6, #ARGV do
  local se = ARGV[i]
  if mode == 'usernames' then se = redis.call('HGET', KEYS[2], ARGV[i]) or '' end
  bound[#bound + 1] = se
  active[#active + 1] = se ~= '' and redis.call('HEXISTS', KEYS[3], se) or 0
  accounts[#accounts + 1] = (mode ~= 'usernames' and multi == '1') and redis.call('SCARD', K .. 'acc:' .. se) or 0
end
return {tonumber(redis.call('GET', KEYS[1]) or '0'), redis.call('HLEN', KEYS[3]), bound, active, accounts}
