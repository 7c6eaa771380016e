--[[ sweep-2: periodic lease recovery, one bounded batch per call.

Lapsed claims go back to their ready sets; lapsed runs are extended when the
owner heartbeated within run ttl, else failed with "lease expired" and queued
for the retry manager. Call again while it reports a full batch.
KEYS[1] lease:claim  KEYS[2] lease:run
ARGV[1] K  ARGV[2] now ms  ARGV[3] events maxlen  ARGV[4] batch
ARGV[5] run ttl ms  ARGV[6] retry base ms  ARGV[7] retry cap ms
Returns {claims_lapsed, runs_failed}
Events: one per failed run.
]]
local K, NOW, MAXLEN = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local batch, run_ttl, base, cap = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
-- @include common
-- @include failure
-- @include sweep

return {lapse_claims(batch), lapse_runs(batch, run_ttl, base, cap)}
