--[[ release_folder-1: an operator frees a folder from its server; its ready
tasks become claimable by any server (the next claimer binds it). Tasks the old
server already holds stay with it until they finish or their lease lapses.
Releasing an unbound folder changes nothing.
KEYS[1] f:<folder>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen
Derived keys: fb:1:<server>, fb:2:<server>, fu:1, fu:2, sf:<server>.
Returns {"ok", released (0|1)} | {"not_found"}
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common

if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
return {'ok', release_folder(string.sub(KEYS[1], #K + 3))}
