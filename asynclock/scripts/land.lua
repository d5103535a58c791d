-- A single-flight leader lands its job's outcome, while it still holds the lease,
-- and wakes the callers waiting for it.
--
-- KEYS[1]: the flight's owner key (its leader's lease, as a Mutex's)
-- KEYS[2]: the outcome key: a hash of `fence` (the leader's fencing token), `until`
--          (server clock in milliseconds: late arrivals may take it before then) and
--          `outcome` (the encoded value or error)
-- ARGV[1]: the leader's token
-- ARGV[2]: the leader's fencing token
-- ARGV[3]: the outcome
-- ARGV[4]: how long late arrivals may take it, in milliseconds (0: none may)
-- ARGV[5]: how long the outcome stays for the callers that waited for it, in
--          milliseconds: they read it when the message wakes them, or at their next
--          re-check if the message was lost
--
-- Returns 1 if the token still held the lease and the outcome was landed, else 0 (the
-- lease was lost: nothing is written, and another caller runs the job).
--
-- Both keys share a hash tag, so on a cluster they are in one slot; the wake-up is
-- published on the outcome key's own channel (sharded on a cluster). Its message is
-- empty: every process waiting on the channel wakes and reads the outcome.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local keep = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'fence', ARGV[2], 'until', clock_ms() + keep, 'outcome', ARGV[3])
redis.call('PEXPIRE', KEYS[2], math.max(keep, tonumber(ARGV[5])))
redis.call('PUBLISH', KEYS[2], '')
return 1
