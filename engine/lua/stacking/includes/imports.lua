-- imports: publishing and rolling back a staged request, in bounded batches.
-- A request is imported in three steps (import_begin, import_tasks per chunk,
-- import_publish) so that no script call holds Redis for long. Until it is
-- published, its folders are in no claim index: pullers cannot see any of it.
-- Needs common. Derived keys: r:, rc:, rf:, f:, fc:, fr:1:, ft:, t:, bodies,
-- fu:1, requests, imports (all under K).

-- Add up to `batch` folders of the staged request to the unbound claim index,
-- in creation order; the last batch makes the request a normal one. Returns
-- how many folders are left to publish.
local function publish_batch(rid, batch)
  local rk = K .. 'r:' .. rid
  local v = redis.call('HMGET', rk, 'pub', 'nf', 'seq')
  local pub, nf = tonumber(v[1]), tonumber(v[2])
  local fids = redis.call('LRANGE', K .. 'rf:' .. rid, pub, pub + batch - 1)
  for _, fid in ipairs(fids) do
    redis.call('ZADD', K .. 'fu:1', redis.call('HGET', K .. 'f:' .. fid, 'seq'), fid)
  end
  pub = pub + #fids
  redis.call('HSET', rk, 'pub', pub)  -- leaves `hb` alone: the recovery job must keep finding it
  if pub >= nf then
    redis.call('HSET', rk, 'st', 'register')
    redis.call('HDEL', rk, 'tok', 'pub', 'staged', 'hb')
    redis.call('ZADD', K .. 'requests', v[3], rid)
    redis.call('ZREM', K .. 'imports', rid)
  end
  return nf - pub
end

-- Delete up to `batch` staged tasks of an unpublished request, newest folder
-- first, each with an event (register -> ''), its body and its counters; the
-- request record goes with its last task. The request turns `aborting` at
-- once, so no chunk or publish call of its importer can follow, and whoever
-- calls next (importer or recovery job) carries on. Returns tasks left.
local function abort_batch(rid, batch)
  local rk = K .. 'r:' .. rid
  redis.call('HSET', rk, 'st', 'aborting')  -- no more chunks, no publishing
  local left = batch
  local tasks, bodies = {}, {}
  while left > 0 do
    local fid = redis.call('LINDEX', K .. 'rf:' .. rid, -1)
    if not fid then break end
    local fk = K .. 'f:' .. fid
    if redis.call('HGET', fk, 'req') ~= rid then
      redis.call('RPOP', K .. 'rf:' .. rid)  -- never reserved by this request
    else
      local ids = redis.call('LRANGE', K .. 'ft:' .. fid, -left, -1)
      for _, tid in ipairs(ids) do
        local t = load_task(tid)
        if t then  -- normally `register`; an operator may have cancelled it meanwhile
          recount(counter_hashes(t), t.st, nil)
          emit(tid, t.st, '', 'import_abort')
          redis.call('DEL', K .. 't:' .. tid)
        end
        bodies[#bodies + 1] = tid
      end
      if #ids > 0 then
        redis.call('LTRIM', K .. 'ft:' .. fid, 0, -#ids - 1)
        -- Unpublished: nothing was claimed, so these are the ready list's tail
        -- (less any an operator cancelled); LREM from the tail, newest first,
        -- finds each at once.
        local ready = K .. 'fr:1:' .. fid
        for j = #ids, 1, -1 do ready_call('LREM', ready, -1, ids[j]) end
        redis.call('HINCRBY', rk, 'staged', -#ids)
        left = left - #ids
      end
      if redis.call('EXISTS', K .. 'ft:' .. fid) == 0 then
        redis.call('DEL', fk, K .. 'fc:' .. fid, K .. 'fr:1:' .. fid)
        redis.call('RPOP', K .. 'rf:' .. rid)
      end
    end
  end
  if #bodies > 0 then redis.call('HDEL', K .. 'bodies', unpack(bodies)) end
  if redis.call('EXISTS', K .. 'rf:' .. rid) == 0 then
    redis.call('DEL', rk, K .. 'rc:' .. rid)
    redis.call('ZREM', K .. 'imports', rid)
    return 0
  end
  return tonumber(redis.call('HGET', rk, 'staged')) or 0
end
