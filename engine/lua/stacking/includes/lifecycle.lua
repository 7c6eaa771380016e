-- lifecycle: the folder barrier, terminal bookkeeping and request status.
-- Needs the common include. Derived keys: f:<folder>, ft:<folder>, r:<request>,
-- plus those of make_ready/set_status.

-- `n` tasks of folder `fid` (request `rid`) reached completed/final_failed/cancel:
-- close them in folder and request.
local function tasks_terminal(fid, rid, n)
  redis.call('HINCRBY', K .. 'f:' .. fid, 'open', int(-n))
  local open = redis.call('HINCRBY', K .. 'r:' .. rid, 'open', int(-n))
  if open == 0 then
    redis.call('HSET', K .. 'r:' .. rid, 'st', 'completed', 'done_at', STAMP)
  end
end

-- A task reached completed/final_failed/cancel: close it in folder and request.
local function task_terminal(t)
  tasks_terminal(t.fo, t.req, 1)
end

-- connect_links of the i-th of n profiled files (lps: pre-encoded JSON strings).
local function links_for(mode, lps, i)
  local n = #lps
  if mode == 'ring' then
    if n < 2 then return '[]' end
    return '[' .. lps[(i % n) + 1] .. ']'
  elseif mode == 'all' then
    local out = {}
    for j = 1, n do
      if j ~= i then
        out[#out + 1] = lps[j]
        if #out == 150 then break end
      end
    end
    return '[' .. table.concat(out, ',') .. ']'
  elseif mode == 'wheel' then
    if i == 1 then return '[]' end
    return '[' .. lps[1] .. ']'
  end
  -- chain (default)
  if i == n then return '[]' end
  return '[' .. lps[i + 1] .. ']'
end

-- Every task of the folder has left phase 1: move all profiled tasks on, at once.
-- Work is bounded by the folder's size (at most one request's tasks). The
-- folder's ready set, its claim index entry and the status counters are
-- written once for the whole folder (one recount_n per assigned server), not
-- once per task; each task gets its own HSET and event, in folder order.
-- Callgrind: a per-task table and a recount per task cost the chain-mode
-- barrier about a sixth of its instructions (88,779 -> 75,334 per task).
local function barrier(fid, actor)
  local fk = K .. 'f:' .. fid
  local f = redis.call('HMGET', fk, 'req', 'mode')
  local rid, mode = f[1], f[2]
  redis.call('HSET', fk, 'phase', '2')
  local rk = K .. 'r:' .. rid
  if redis.call('HINCRBY', rk, 'p1f', '-1') == 0 and redis.call('HGET', rk, 'st') == 'register' then
    redis.call('HSET', rk, 'st', 'connecting')
  end
  -- The profiled tasks, in folder order: the folder's task list (ft:, import
  -- order, which is seq order) filtered by status. No set of profiled tasks is
  -- kept for this: it cost every phase-1 completion a ZADD, and the barrier
  -- loads each task anyway; only tasks that failed or were cancelled are read
  -- in vain.
  -- Each read takes only what moving it needs (counters: its assigned server;
  -- phase 2: its link_post), not load_task's full set.
  local disable = mode == 'disable'
  local ids, lps, per_server = {}, {}, {}
  for _, tid in ipairs(redis.call('LRANGE', K .. 'ft:' .. fid, '0', '-1')) do
    local v
    if disable then
      v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'asg')
    else
      v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'asg', 'lp')
    end
    if v[1] == 'profiled' then
      local n = #ids + 1
      ids[n], lps[n] = tid, v[3]
      local asg = v[2] or ''
      per_server[asg] = (per_server[asg] or 0) + 1
    end
  end
  if #ids == 0 then return end
  local new = disable and 'completed' or 'connect'
  for asg, n in pairs(per_server) do
    recount_n(folder_counter_hashes(fid, rid, asg), 'profiled', new, n)
  end
  if disable then
    for _, tid in ipairs(ids) do restatus(tid, 'profiled', 'completed', actor) end
    tasks_terminal(fid, rid, #ids)
    return
  end
  for i, tid in ipairs(ids) do
    restatus(tid, 'profiled', 'connect', actor, 'cl', links_for(mode, lps, i))  -- cl present = in phase 2
  end
  make_ready_many(fid, 2, ids)
end

-- Deferred phase-1 counts, for a script that moves many tasks of few folders
-- (complete-1): after defer_p1(), the first leave_phase1 of a folder reads its
-- p1 once, the later ones count down in Lua, and flush_p1() writes each touched
-- folder's count once. The barrier still fires at the very item that empties
-- phase 1, so the items after it see it as they would alone; only this include
-- reads or writes p1 inside a script.
local P1 = nil

local function defer_p1()
  P1 = {}
end

local function flush_p1()
  for fid, left in pairs(P1 or {}) do redis.call('HSET', K .. 'f:' .. fid, 'p1', int(left)) end
  P1 = nil
end

-- One task of the folder left phase 1 (profiled, final_failed or cancel).
local function leave_phase1(fid, actor)
  local left
  if P1 then
    left = P1[fid]
    if not left then left = tonumber(redis.call('HGET', K .. 'f:' .. fid, 'p1')) end
    left = left - 1
    P1[fid] = left
  else
    left = redis.call('HINCRBY', K .. 'f:' .. fid, 'p1', '-1')
  end
  if left == 0 then barrier(fid, actor) end
end
