--[[ import_abort-1: roll back an import, one bounded batch of tasks per call;
call again while it reports tasks left. Either the importer gives up (with its
token), or the recovery job finds the import idle for longer than `stale` (token
'') — then a request whose tasks are all stored is published instead, because
publishing may already have begun and pullers may hold some of its tasks.
KEYS[1] r:<request>
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] token ('' = recovery)
ARGV[5] batch  ARGV[6] stale ms (recovery only)
Derived keys: those of publish_batch and abort_batch (includes/imports.lua).
An abort, once begun (status `aborting`), is carried on by any call; so is a
publication (publish_batch is safe to run beside the importer's own).
Returns {"ok", "aborted"|"published", left} | {"exists", request id} (not an
import, another token, or not idle long enough)
Events: one per deleted task (register -> '').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include common
-- @include imports

local rid = string.sub(KEYS[1], #K + 3)
local batch = tonumber(ARGV[5])
local r = redis.call('HMGET', KEYS[1], 'st', 'tok', 'staged', 'total', 'pub', 'hb')
if r[1] == 'aborting' then return {'ok', 'aborted', abort_batch(rid, batch)} end
if r[1] ~= 'importing' then
  redis.call('ZREM', K .. 'imports', rid)
  return {'exists', rid}
end
if ARGV[4] == '' then
  if tonumber(r[5]) > 0 then return {'ok', 'published', publish_batch(rid, batch)} end
  if (tonumber(r[6]) or 0) + tonumber(ARGV[6]) > NOW then return {'exists', rid} end
  if r[3] == r[4] then return {'ok', 'published', publish_batch(rid, batch)} end
elseif r[2] ~= ARGV[4] or tonumber(r[5]) > 0 then
  return {'exists', rid}
end
return {'ok', 'aborted', abort_batch(rid, batch)}
