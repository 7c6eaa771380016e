--[[ import_publish-1: make a fully stored request claimable, one bounded batch
of folders per call (oldest first); call again while it reports folders left.
Refused unless the request is `importing` with this token and every task has
been stored, so a request is never visible to pullers before it is complete.
KEYS[1] r:<request>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)  ARGV[4] token  ARGV[5] batch
Derived keys: rf:, f:, fu:1, requests, imports.
Returns {"ok", folders left} | {"exists", request id} | {"incomplete", tasks stored}
Events: none (claimability is not a status).
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common
-- @include imports

local rid = string.sub(KEYS[1], #K + 3)
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'staged', 'total')
if r[1] ~= 'importing' or r[2] ~= ARGV[4] then return {'exists', rid} end
if r[3] ~= r[4] then return {'incomplete', r[3]} end
return {'ok', publish_batch(rid, tonumber(ARGV[5]))}
