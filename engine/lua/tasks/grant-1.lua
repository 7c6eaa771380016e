--[[ grant-1: add (or, negative, take back) quota; never below zero. One ledger entry.

KEYS[1] u:<uid>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] uid  ARGV[5] amount (integer, may be < 0)
Returns {"ok", quota} | {"not_found"} | {"insufficient", quota}
Events: none (ledger: one grant entry).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local q = redis.call('HGET', KEYS[1], 'quota')
if not q then return {'not_found'} end
local amount = tonumber(ARGV[5])
if tonumber(q) + amount < 0 then return {'insufficient', q} end
local now = redis.call('HINCRBY', KEYS[1], 'quota', amount)
redis.call('HINCRBY', KEYS[1], 'gr', amount)
ledger(ARGV[4], '', amount, 'grant')
return {'ok', now}
