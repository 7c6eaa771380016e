--[[ fetch-2: the caller's own tasks by public id (GET/POST /suno/fetch), read only.

The API token authenticates (exists, enabled, its user enabled); an id that is
unknown or another user's is answered as missing, never revealed.
KEYS[1] k:<token hash>  KEYS[2] pub (public id -> id)
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4..] public task ids
Returns {"ok", record | 0, ...} in the order asked | {"invalid_token"} | {"token_disabled"}
        | {"user_disabled"}; a record is {id, FIELDS...} (includes/center.lua).
Events: none.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include center

local tok = redis.call('HMGET', KEYS[1], 'u', 'st')
if not tok[1] then return {'invalid_token'} end
if tok[2] ~= '1' then return {'token_disabled'} end
local ust = redis.call('HGET', K .. 'u:' .. tok[1], 'st')
if not ust then return {'invalid_token'} end
if ust ~= '1' then return {'user_disabled'} end
local out = {'ok'}
for i = 4, #ARGV do
  local id = redis.call('HGET', KEYS[2], ARGV[i])
  if id and redis.call('HGET', K .. 't:' .. id, 'u') == tok[1] then
    out[#out + 1] = record(id)
  else
    out[#out + 1] = 0
  end
end
return out
