-- slices: one command over a list longer than Lua's unpack can pass at once
-- (its C stack holds a few thousand values), sent as commands of at most 1,000
-- of the list's values each, in order. `fn` is redis.call or a function that
-- calls it the same way; 1,000 is even, so a flat list of pairs (ZADD's score
-- and member) is never cut inside a pair. An empty list sends nothing.
local function call_sliced(fn, cmd, key, list)
  for i = 1, #list, 1000 do
    fn(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
