-- events: the capped stream, one entry per status change of any contract
-- (engine.md, principle 7). Needs locals K (tagged key prefix), NOW (ms) and
-- MAXLEN (stream cap) defined before the include. Derived key: events.

-- Each event's time is STAMP (includes/ints.lua): NOW as the caller sent it.
-- @include ints
local EVENTS = K .. 'events'

-- The cap is applied by the first event of a script call only: trimming costs
-- each XADD about 2,300 instructions (its four arguments, and the trim that
-- checks the stream's oldest node), and a call can emit hundreds. The stream
-- is still trimmed on every call that writes to it, so it holds at most MAXLEN
-- plus one call's events (and the node of slack that `~` allows).
local TRIMMED = false

local function emit(id, old, new, actor)
  if TRIMMED then
    redis.call('XADD', EVENTS, '*', 'task', id, 'from', old, 'to', new, 'by', actor, 'at', STAMP)
  else
    TRIMMED = true
    redis.call('XADD', EVENTS, 'MAXLEN', '~', MAXLEN, '*',
               'task', id, 'from', old, 'to', new, 'by', actor, 'at', STAMP)
  end
end
