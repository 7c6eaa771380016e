--[[ list-6: one page of tasks, newest first, with the exact total.

No filter reads ix:all; one filter reads its index; several are intersected
into a scratch key that is deleted before returning (cost grows with the
smallest index: the price of combined filters). Reads only, besides the
scratch key.
KEYS[1] ix:all  KEYS[2] status index  KEYS[3] serial index  KEYS[4] script index
KEYS[5] source index (a filter that is not used passes ix:all)  KEYS[6] scratch key
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] flags: four '0'/'1', filter used
ARGV[5] offset  ARGV[6] count  ARGV[7] (optional) 'ids': ids instead of records (a sharded
list merges every shard's first ids, then reads the page's records)
Returns {total, record...}; a record is {id, st, se, us, sc, cfg, src, ma, due, sa, fa, rm, rc, ca}
        (with 'ids': {total, id...})
Events: none.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

local used = {}
for i = 1, 4 do
  if string.sub(ARGV[4], i, i) == '1' then used[#used + 1] = KEYS[i + 1] end
end
local src = KEYS[1]
if #used == 1 then
  src = used[1]
elseif #used > 1 then
  redis.call('ZINTERSTORE', KEYS[6], #used, unpack(used))
  src = KEYS[6]
end
local off = tonumber(ARGV[5])
local out = {redis.call('ZCARD', src)}
local ids_only = ARGV[7] == 'ids'
for _, id in ipairs(redis.call('ZREVRANGE', src, off, off + tonumber(ARGV[6]) - 1)) do
  out[#out + 1] = ids_only and id or record(id)
end
if #used > 1 then redis.call('DEL', KEYS[6]) end
return out
