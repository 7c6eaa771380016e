--[[ submit-4: charge a user and create a task NOT_START, or refuse and change nothing.

Checks, in order: the API token exists and is enabled, its user exists and is
enabled, the user's quota covers the price, and a limited token's own quota
covers it. Then: deducts the price (user quota, used, charged; the token's
remaining and used), writes the ledger entry, creates the task and queues it
for the submit job. submit_time never goes below an earlier task's, so task
ids and submit times grow together (time filters become id ranges: `secs`).
KEYS[1] k:<token>  KEYS[2] seq  KEYS[3] pub (public id -> id)  KEYS[4] prices
ARGV[1] K  ARGV[2] now ms  ARGV[3] events (and ledger) maxlen  ARGV[4] platform
ARGV[5] ACTION  ARGV[6] default price  ARGV[7] public task id  ARGV[8] body (JSON)
ARGV[9] properties (JSON)  ARGV[10] token key  ARGV[11] N shards  ARGV[12] this shard's index
The id: with one shard the next `seq`; with N > 1 the shard's next sequence number, never
below now (ms), times N plus the shard index (engine/shards.py encode_id): unique over the
shards, its shard is id % N, and ids of different shards interleave by creation time.
Derived keys: u:<uid>, t:<id>, ix:all, ix:u:<uid>, cells, meta, secs, active, q, ledger.
Returns {"ok", id, price, queue_was_empty} | {"invalid_token"} | {"token_disabled"}
        | {"user_disabled"} | {"insufficient_user_quota", quota, price}
        | {"insufficient_token_quota", remaining, price} | {"exists", public id}
Events: '' -> NOT_START.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local pf, ac, tid, sk = ARGV[4], ARGV[5], ARGV[7], ARGV[10]
-- @include center

local tok = redis.call('HMGET', KEYS[1], 'u', 'st', 'ul', 'rq')
if not tok[1] then return {'invalid_token'} end
if tok[2] ~= '1' then return {'token_disabled'} end
local u = tok[1]
local uk = K .. 'u:' .. u
local usr = redis.call('HMGET', uk, 'st', 'quota')
if not usr[1] then return {'invalid_token'} end
if usr[1] ~= '1' then return {'user_disabled'} end
local price = tonumber(redis.call('HGET', KEYS[4], pf .. ':' .. ac) or ARGV[6])
if tonumber(usr[2]) < price then return {'insufficient_user_quota', usr[2], price} end
if tok[3] ~= '1' and tonumber(tok[4]) < price then return {'insufficient_token_quota', tok[4], price} end
if redis.call('HEXISTS', KEYS[3], tid) == 1 then return {'exists', tid} end

local id
if ARGV[11] == '1' then
  id = redis.call('INCR', KEYS[2])
else
  local n = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
  if n < NOW then n = NOW end
  redis.call('SET', KEYS[2], string.format('%d', n))
  id = string.format('%d', n * tonumber(ARGV[11]) + tonumber(ARGV[12]))
end
if price > 0 then
  redis.call('HINCRBY', uk, 'quota', -price)
  redis.call('HINCRBY', uk, 'used', price)
  redis.call('HINCRBY', uk, 'chg', price)
  if tok[3] ~= '1' then redis.call('HINCRBY', KEYS[1], 'rq', -price) end
  redis.call('HINCRBY', KEYS[1], 'used', price)
  ledger(u, id, -price, 'charge')
end
local sbt = NOW_S
local last = tonumber(redis.call('HGET', K .. 'meta', 'sbt') or '0')
if sbt > last then
  redis.call('HSET', K .. 'meta', 'sbt', sbt)
  redis.call('ZADD', K .. 'secs', sbt, id)
else
  sbt = last
end
redis.call('HSET', K .. 't:' .. id, 'tid', tid, 'pf', pf, 'u', u, 'ch', '0', 'q', price, 'ac', ac,
           'fr', '', 'sbt', sbt, 'stt', 0, 'ft', 0, 'pg', '0%', 'pr', ARGV[9], 'd', '{}', 'ca', NOW_S,
           'ua', ARGV[2], 'tk', sk, 'at', 0, 'tried', '', 'body', ARGV[8])
change_status(id, nil, 'NOT_START', 'user:' .. u, {K .. 'stats'})
place(id, u, cell(pf, ac, 'NOT_START', '0'))
redis.call('ZADD', K .. 'ix:all', id, id)
redis.call('ZADD', K .. 'ix:u:' .. u, id, id)
redis.call('HSET', KEYS[3], tid, id)
redis.call('ZADD', K .. 'active', NOW, id)
local empty = redis.call('ZCARD', K .. 'q') == 0
redis.call('ZADD', K .. 'q', NOW, id)
return {'ok', id, price, empty and 1 or 0}
