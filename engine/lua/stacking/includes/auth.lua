-- auth: who is calling, resolved inside the script that acts, so a worker's
-- request is one round trip and a deleted key or a server set to maintenance
-- stops working at the very next request (there is no cache to invalidate).
-- The caller key (always KEYS[1] of a script that uses this) is either
--   skey:<sha256 of an API key>  an HTTP client: resolve and authorize it, or
--   s:<server id>                a trusted caller (engine API, jobs, tests).
-- Refusals, in the order stacking.md checks them: {"invalid_key"} (unknown or
-- deleted), {"service_key_mismatch"}, {"server_not_online", why, seconds}
-- (why: maintenance | offline | stale; seconds: the heartbeat window).
-- Needs K and NOW. Derived keys: s:<server>.

local function server_of(ckey)
  if string.sub(ckey, #K + 1, #K + 2) == 's:' then return string.sub(ckey, #K + 3), nil end
  local sid = redis.call('GET', ckey)
  if not sid then return nil, {'invalid_key'} end
  return sid, nil
end

-- Returns the server id, or nil and the refusal. `stacking`: the caller must
-- also hold a stacking service and be online (heartbeat within offline_after ms).
local function lookup(ckey, stacking, offline_after)
  local sid, refusal = server_of(ckey)
  if not sid then return nil, refusal end
  if string.sub(ckey, #K + 1, #K + 2) == 's:' then return sid, nil end
  local v = redis.call('HMGET', K .. 's:' .. sid, 'st', 'services', 'hb')
  if not v[1] or v[1] == 'deleted' then return nil, {'invalid_key'} end
  if not stacking then return sid, nil end
  local services = ',' .. (v[2] or '') .. ','
  if not (string.find(services, ',stacking,', 1, true) or string.find(services, ',google_stacking,', 1, true)) then
    return nil, {'service_key_mismatch'}
  end
  if v[1] ~= 'online' then return nil, {'server_not_online', v[1], offline_after / 1000} end
  if NOW - (tonumber(v[3]) or 0) > offline_after then
    return nil, {'server_not_online', 'stale', offline_after / 1000}
  end
  return sid, nil
end

-- lookup, remembered for the rest of the script: a call acting for many
-- requests of the same servers reads each caller once (nothing a script does
-- changes a server's key, status or heartbeat under it).
local AUTHED = {}
local function authenticate(ckey, stacking, offline_after)
  local memo = stacking and AUTHED[ckey]
  if memo then return memo[1], memo[2] end
  local sid, refusal = lookup(ckey, stacking, offline_after)
  if stacking then AUTHED[ckey] = {sid, refusal} end
  return sid, refusal
end

-- Task `tid` as held by the caller `ckey` (a full caller key, as KEYS[1] of a
-- single-caller script), when its status is one of `statuses` (a set). Needs
-- common. Returns sid, task, or nil, nil and the refusal, checked in this
-- order: the caller, the task exists, its status, the caller holds it.
-- `retries`: the task with its retry counts (rc, mr), as a failure needs it.
local function held_task(ckey, tid, offline_after, statuses, retries)
  local sid, refusal = authenticate(ckey, true, offline_after)
  if not sid then return nil, nil, refusal end
  local t = load_held(tid, retries)
  if not t then return nil, nil, {'not_found'} end
  if not statuses[t.st] then return nil, nil, {'bad_state', t.st} end
  if t.own ~= sid then return nil, nil, {'not_task_owner', t.st} end
  return sid, t, nil
end
