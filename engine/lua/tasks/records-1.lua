--[[ records-1: tasks by id, read only (a list merged over task-center shards: the page's
records of this shard, once the merge has chosen them; engine/taskcenter.py).

KEYS[1] pub (only to name this shard)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] '1' = append the user's name
ARGV[5..] task ids
Returns {record | 0, ...} in the order asked; a record is {id, FIELDS...[, username]}
(includes/center.lua).
Events: none.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local out = {}
for i = 5, #ARGV do
  if redis.call('EXISTS', K .. 't:' .. ARGV[i]) == 1 then
    local r = record(ARGV[i])
    if ARGV[4] == '1' then r[#r + 1] = redis.call('HGET', K .. 'u:' .. r[6], 'name') or '' end
    out[#out + 1] = r
  else
    out[#out + 1] = 0
  end
end
return out
