-- events: the capped stream, one entry per status change of any contract
-- (engine.md, principle 7). Needs locals K (tagged key prefix), NOW (ms) and
-- MAXLEN (stream cap) defined before the include. Derived key: events.

local function emit(id, old, new, actor)
  redis.call('XADD', K .. 'events', 'MAXLEN', '~', MAXLEN, '*',
             'task', id, 'from', old, 'to', new, 'by', actor, 'at', NOW)
end
