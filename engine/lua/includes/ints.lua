-- ints: integers as the strings redis.call sends. A Lua number argument is
-- formatted by Redis with %.17g, a floating-point conversion of about 2,000
-- instructions; the counters' moves are nearly always 1 or -1, which are
-- looked up, and other integers go through %d.

local INTS = {[1] = '1', [-1] = '-1'}
local function int(n)
  return INTS[n] or string.format('%d', n)
end
