--[[ delete_channel-2: remove a channel. Its unfinished tasks are failed and refunded by
the next poll (workers/jobs.py poll_tasks), which finds their channel gone.

KEYS[1] c:<cid>  KEYS[2] chans
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] channel id
Returns {"ok"} | {"not_found"}
Events: none.
]]
if redis.call('DEL', KEYS[1]) == 0 then return {'not_found'} end
redis.call('SREM', KEYS[2], ARGV[4])
return {'ok'}
