--[[ import_begin-3: reserve a request id and its order numbers; the first of
the three steps of an import (then import_tasks per chunk, then import_publish).

The request is created in status `importing` with an import token: only calls
that carry the token may add tasks to it or publish it, so a second importer
of the same id is refused instead of mixing into the first one's request.
KEYS[1] r:<request>   the request hash (must not exist)
KEYS[2] seq           order counter for requests, folders and tasks
KEYS[3] imports       zset request id -> last import progress (ms), for recovery
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen (unused)
ARGV[4] token  ARGV[5] website  ARGV[6] stacking_mode  ARGV[7] max_retries
ARGV[8] number of folders  ARGV[9] number of tasks
Returns {"ok", first seq} | {"exists", request id}. The request takes seq
`first`; each folder and task takes the next numbers in document order.
Events: none (tasks are announced by import_tasks).
]]
local K, NOW = ARGV[1], tonumber(ARGV[2])
local rid = string.sub(KEYS[1], #K + 3)
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists', rid} end
local nfolders, ntasks = tonumber(ARGV[8]), tonumber(ARGV[9])
local first = redis.call('INCRBY', KEYS[2], ntasks + nfolders + 1) - ntasks - nfolders
redis.call('HSET', KEYS[1], 'st', 'importing', 'tok', ARGV[4], 'website', ARGV[5], 'mode', ARGV[6],
           'mr', ARGV[7], 'total', ntasks, 'open', ntasks, 'p1f', nfolders, 'nf', nfolders, 'seq', first,
           'ca', NOW, 'staged', 0, 'pub', 0, 'hb', NOW)
redis.call('ZADD', KEYS[3], NOW, rid)
return {'ok', first}
