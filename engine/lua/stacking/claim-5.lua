--[[ claim-5: pull-and-claim up to `limit` ready tasks for one server.

Order: phase 2 before phase 1 (finishing started folders beats starting new
ones); within a phase, the caller's bound folders first, then unbound folders
(oldest request first), which the claim binds to the caller. Each returned task
is reserved for the caller (own = server) with a claim lease; its status stays
register/connect until start. A task claimed by a new server moves its
per-folder-per-server counters (connect-status) to that server.
Before claiming, a bounded sweep returns lapsed claims and fails lapsed runs.
Work: limit tasks + the folders touched + sweep batch.

KEYS[1] caller        skey:<sha256 of API key> (authenticated and authorized here) or s:<server id>
KEYS[2] fu:1          unbound folders with ready phase-1 tasks (zset, score folder seq)
KEYS[3] fu:2          unbound folders with ready phase-2 tasks
KEYS[4] lease:claim   claim leases (zset task -> deadline ms)
KEYS[5] lease:run     run leases (zset task -> deadline ms), for the sweep
ARGV[1] K             tagged key prefix; derived keys: fb:1:<server> and fb:2:<server> (the
                      caller's bound folders with ready tasks, known once the caller is), t:,
                      f:, fr:, fs:, sf:, s:, retry, counters
ARGV[2] now           ms
ARGV[3] maxlen        event stream cap
ARGV[4] offline after ms (auth)
ARGV[5] limit         1..1000
ARGV[6] phases        "21" (both, phase 2 first), "1" or "2"
ARGV[7] claim ttl     ms
ARGV[8] sweep batch   max lapsed leases handled per call
ARGV[9] run ttl       ms; ARGV[10] retry base ms; ARGV[11] retry cap ms
Returns: "ok", the caller's server id, then 6 entries per claimed task in claim order: task id, phase
("1"|"2"), link_post (JSON), connect_links (JSON; '' in phase 1), folder id,
request id. The caller joins them with the task's immutable body in `bodies`
(one HMGET): building the JSON here would intern ~1 KB strings in Lua, which
is slow (see import_tasks).
Events: one per task failed by the sweep; claims do not change status and write none.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local limit, phases = tonumber(ARGV[5]), ARGV[6]
local claim_ttl, batch = tonumber(ARGV[7]), tonumber(ARGV[8])
local run_ttl, base, cap = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
-- @include common
-- @include lifecycle
-- @include failure
-- @include sweep
-- @include auth

local sid, refusal = authenticate(KEYS[1], true, tonumber(ARGV[4]))
if not sid then return refusal end

if batch > 0 then
  lapse_claims(batch)
  lapse_runs(batch, run_ttl, base, cap)
end

local out = {'ok', sid}
local need = limit
local deadline = string.format('%d', NOW + claim_ttl)  -- a string: a number is reformatted for every member
local leases = {}

-- Claim up to `need` tasks from the folders in `index`; bind them when `bind`.
local function drain(index, phase, bind)
  local want = (phase == 1) and 'register' or 'connect'
  local tag = tostring(phase)
  while need > 0 do
    local first = redis.call('ZRANGE', index, '0', '0', 'WITHSCORES')
    if #first == 0 then return end
    local fid, fseq = first[1], first[2]
    local rk = K .. 'fr:' .. phase .. ':' .. fid
    -- The head of the folder's ready list (includes/common.lua): LRANGE + LTRIM.
    local popped = ready_call('LRANGE', rk, '0', int(need - 1))
    redis.call('LTRIM', rk, int(#popped), '-1')
    redis.call('ZREM', index, fid)
    local rid = redis.call('HGET', K .. 'f:' .. fid, 'req')
    if bind then
      redis.call('HSET', K .. 'f:' .. fid, 'srv', sid)
      redis.call('SADD', K .. 'sf:' .. sid, fid)
    end
    if redis.call('EXISTS', rk) == 1 then
      -- folder still has ready tasks: keep it indexed, now under the caller
      redis.call('ZADD', bind and (K .. 'fb:' .. phase .. ':' .. sid) or index, fseq, fid)
    end
    local moved = {}
    for _, tid in ipairs(popped) do
      -- own: a ready task is unowned (claim is what sets it), so this never skips
      -- one; it makes a task pushed twice by mistake impossible to hand out twice.
      local v = redis.call('HMGET', K .. 't:' .. tid, 'st', 'lp', 'cl', 'asg', 'own')
      if v[1] == want and (v[5] or '') == '' then
        out[#out + 1] = tid
        out[#out + 1] = tag
        out[#out + 1] = v[2] or '""'
        out[#out + 1] = (phase == 2) and v[3] or ''
        out[#out + 1] = fid
        out[#out + 1] = rid
        local asg = v[4] or ''
        if asg ~= sid then
          if asg ~= '' then redis.call('HINCRBY', K .. 'fs:' .. fid .. ':' .. asg, want, '-1') end
          moved[#moved + 1] = tid
          redis.call('HSET', K .. 't:' .. tid, 'own', sid, 'asg', sid)
        else
          redis.call('HSET', K .. 't:' .. tid, 'own', sid)
        end
        leases[#leases + 1] = deadline
        leases[#leases + 1] = tid
        need = need - 1
      end
    end
    if #moved > 0 then
      redis.call('HINCRBY', K .. 'fs:' .. fid .. ':' .. sid, want, int(#moved))
    end
  end
end

for p in string.gmatch(phases, '%d') do
  local phase = tonumber(p)
  drain(K .. 'fb:' .. phase .. ':' .. sid, phase, false)
  drain(KEYS[1 + phase], phase, true)
end

call_sliced(redis.call, 'ZADD', KEYS[4], leases)  -- score, member pairs: up to 2,000 values
count_claims(limit - need)
return out
