--[[ list-4: one page of tasks, newest (highest id) first, with the exact total; read only.

Filters: user (the /self caller, or the admin's user_id), platform, action,
status, channel, public task id, and submit time [start, end] (inclusive,
seconds). The time filter becomes an id range [lo, hi] through `secs` (submit
times never decrease with ids: submit-4). With no platform/action/status/
channel filter the source is ix:all or ix:u:<uid>; otherwise the union of the
matching cells (global, or the user's): each task is in exactly one cell, so
the total is the sum of their ZCOUNTs. Bounded at any depth:
- one source: by rank (count above hi, plus the offset): O(log N + size);
- several: the first pages merge each source's first offset+size ids; a deep
  page finds the (offset+1)-th id by binary search on the id with ZCOUNT
  (about 2 log2(N) probes of one ZCOUNT per cell), then merges `size` ids
  from each source below it.
KEYS[1] registry (cells | cells:<uid>)  KEYS[2] ix:all | ix:u:<uid>  KEYS[3] secs  KEYS[4] pub
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] uid ('' = every user)
ARGV[5] platform  ARGV[6] ACTION  ARGV[7] status  ARGV[8] channel id  ARGV[9] public task id
ARGV[10] start s  ARGV[11] end s  ('' = no filter, for ARGV[5..11])
ARGV[12] offset  ARGV[13] size  ARGV[14] '1' = append the user's name to each record
ARGV[15] mode ('' or absent = the page above); a list merged over task-center shards
(engine/taskcenter.py, several round trips) asks each shard with the same filters:
  'probe' ARGV[16..] ids x: {total, highest id, lowest id, count of ids >= x for each x}
  'ids'   ARGV[16] top id ('' = none)  ARGV[17] limit: {total, the `limit` highest ids <= top}
  (offset and size unused; either mode answers {0} when the time filter leaves nothing).
Returns {total, record...}; a record is {id, FIELDS...[, username]} (includes/center.lua).
Events: none.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local uid, pf, ac, st, ch, tid = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local off, size, names = tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14] == '1'
local DEEP = 2000
local mode = ARGV[15] or ''
local function str(n) return type(n) == 'number' and string.format('%d', n) or n end  -- ids beyond 14 digits

local lo, hi = '-inf', '+inf'
if ARGV[10] ~= '' then
  local first = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[10], '+inf', 'LIMIT', 0, 1)
  if #first == 0 then return {0} end
  lo = first[1]
end
if ARGV[11] ~= '' then
  local after = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[11], '+inf', 'LIMIT', 0, 1)
  if #after > 0 then hi = tonumber(after[1]) - 1 end
end
if lo ~= '-inf' and hi ~= '+inf' and tonumber(lo) > hi then return {0} end

local function out_record(id)
  local r = record(id)
  if names then r[#r + 1] = redis.call('HGET', K .. 'u:' .. r[6], 'name') or '' end
  return r
end

if tid ~= '' then
  local id = redis.call('HGET', KEYS[4], tid)
  if not id then return {0} end
  local f = redis.call('HMGET', K .. 't:' .. id, 'u', 'pf', 'ac', 'st', 'ch')
  local n = tonumber(id)
  if (uid ~= '' and f[1] ~= uid) or (pf ~= '' and f[2] ~= pf) or (ac ~= '' and f[3] ~= ac)
     or (st ~= '' and f[4] ~= st) or (ch ~= '' and f[5] ~= ch)
     or (lo ~= '-inf' and n < tonumber(lo)) or (hi ~= '+inf' and n > hi) then
    return {0}
  end
  if off > 0 then return {1} end
  return {1, out_record(id)}
end

local srcs = {}
if pf == '' and ac == '' and st == '' and ch == '' then
  srcs[1] = KEYS[2]
else
  local prefix = uid == '' and (K .. 'cg:') or (K .. 'cu:' .. uid .. ':')
  for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local a, b, s, h = string.match(c, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)$')
    if (pf == '' or a == pf) and (ac == '' or b == ac) and (st == '' or s == st) and (ch == '' or h == ch) then
      srcs[#srcs + 1] = prefix .. c
    end
  end
end

local total = 0
for _, src in ipairs(srcs) do total = total + redis.call('ZCOUNT', src, lo, hi) end
local out = {total}

local function merge(top, limit)
  -- the `limit` highest ids <= top over every source, highest first
  local all = {}
  for _, src in ipairs(srcs) do
    for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', src, top, lo, 'LIMIT', 0, limit)) do
      all[#all + 1] = tonumber(id)
    end
  end
  table.sort(all, function(x, y) return x > y end)
  return all
end

if mode == 'probe' then
  local top, bottom = nil, nil
  for _, src in ipairs(srcs) do
    local t = redis.call('ZREVRANGEBYSCORE', src, hi, lo, 'LIMIT', 0, 1)
    if #t > 0 and (not top or tonumber(t[1]) > top) then top = tonumber(t[1]) end
    local b = redis.call('ZRANGEBYSCORE', src, lo, hi, 'LIMIT', 0, 1)
    if #b > 0 and (not bottom or tonumber(b[1]) < bottom) then bottom = tonumber(b[1]) end
  end
  out[2], out[3] = str(top or 0), str(bottom or 0)
  for i = 16, #ARGV do
    local from = ARGV[i]
    if lo ~= '-inf' and tonumber(lo) > tonumber(from) then from = lo end
    local n = 0
    if total > 0 then
      for _, src in ipairs(srcs) do n = n + redis.call('ZCOUNT', src, from, hi) end
    end
    out[#out + 1] = n
  end
  return out
end
if mode == 'ids' then
  local top = hi
  if ARGV[16] ~= '' and (top == '+inf' or tonumber(ARGV[16]) < top) then top = ARGV[16] end
  if total > 0 then
    for _, id in ipairs(merge(top, tonumber(ARGV[17]))) do out[#out + 1] = str(id) end
  end
  return out
end
if total == 0 or off >= total then return out end

local ids = {}
if #srcs == 1 then
  local above = hi == '+inf' and 0 or redis.call('ZCOUNT', srcs[1], '(' .. str(hi), '+inf')
  local first = above + off
  local last = above + math.min(off + size, total) - 1
  ids = redis.call('ZREVRANGE', srcs[1], first, last)
elseif off + size <= DEEP then
  local all = merge(hi, off + size)
  for i = off + 1, math.min(off + size, #all) do ids[#ids + 1] = all[i] end
else
  -- the (off+1)-th highest id: the largest x with count(ids in [x, hi]) >= off + 1
  local function count_from(x)
    local n = 0
    for _, src in ipairs(srcs) do n = n + redis.call('ZCOUNT', src, x, hi) end
    return n
  end
  local floor = lo == '-inf' and 0 or tonumber(lo)
  local ceil = floor
  for _, src in ipairs(srcs) do
    local top = redis.call('ZREVRANGEBYSCORE', src, hi, lo, 'WITHSCORES', 'LIMIT', 0, 1)
    if #top > 0 and tonumber(top[2]) > ceil then ceil = tonumber(top[2]) end
  end
  local a, b = floor, ceil  -- count_from(a) >= off + 1 (a <= every id in range)
  while a < b do
    local mid = math.floor((a + b + 1) / 2)
    if count_from(mid) >= off + 1 then a = mid else b = mid - 1 end
  end
  local all = merge(a, size)
  for i = 1, math.min(size, #all) do ids[#ids + 1] = all[i] end
end
for _, id in ipairs(ids) do out[#out + 1] = out_record(id) end
return out
