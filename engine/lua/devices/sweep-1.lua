--[[ sweep-1: periodic lease recovery, one bounded batch per call.

Running tasks whose run lease lapsed (no heartbeat for their serial within
run_ttl) are failed with remark "agent lost", and scheduled for auto-retry
when it is on. Call again while it reports a full batch.
KEYS[1] lease:run  zset id -> deadline ms
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch
ARGV[5] auto-retry delay ms ('' = off)  ARGV[6] max retries
Derived keys: t:, running, q:, ix:st:*, active, retry, stats, events.
Returns runs failed
Events: one per failed run ('1' -> '3').
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
-- @include tasks

return lose_runs(tonumber(ARGV[4]), ARGV[5], ARGV[6])
