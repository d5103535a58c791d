-- Free a semaphore holder's permits, as an operator does (the command line's
-- `release --force`).
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)
-- ARGV[1]: the holder's token
--
-- Returns 1 when the token was a live holder and is now freed, 0 otherwise.
--
-- Unlike semaphore_release.lua it leaves no tombstone: the holder's own release must
-- find its permits gone and report the lease lost.
local holders, permits_key = KEYS[1], KEYS[2]
local expiry = redis.call('ZSCORE', holders, ARGV[1])
if not expiry or tonumber(expiry) <= clock_ms() then
  return 0
end
redis.call('ZREM', holders, ARGV[1])
redis.call('HDEL', permits_key, ARGV[1])
redis.call('PUBLISH', holders, '')  -- permits came back: wake the waiters
return 1
