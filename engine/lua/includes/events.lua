-- events: the capped stream, one entry per status change of any contract
-- (engine.md, principle 7). Needs locals K (tagged key prefix), NOW (ms) and
-- MAXLEN (stream cap) defined before the include. Derived key: events.

-- STAMP: NOW as the caller sent it (ARGV[2], a string). Written fields take
-- STAMP, not NOW: redis.call formats a Lua number argument anew on every call
-- (%.17g), which costs a status change about a third of a microsecond each.
local STAMP, EVENTS = ARGV[2], K .. 'events'

local function emit(id, old, new, actor)
  redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*',
             'task', id, 'from', old, 'to', new, 'by', actor, 'at', STAMP)
end
