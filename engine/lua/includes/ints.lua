-- ints: integers as the strings redis.call sends. A Lua number argument is
-- formatted by Redis with %.17g, a floating-point conversion of about 2,000
-- instructions (more for a 13-digit time); the counters' moves are nearly always
-- 1 or -1, which are looked up, other integers go through %d, and a constant
-- index or count is written as a string literal ('0', '-1').

-- STAMP: NOW as the caller sent it (ARGV[2], a string). Written fields and time
-- bounds take STAMP, not NOW.
local STAMP = ARGV[2]

local INTS = {[1] = '1', [-1] = '-1'}
local function int(n)
  return INTS[n] or string.format('%d', n)
end
