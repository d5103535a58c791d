-- Reset a semaphore holder's expiry, only if it is still a live holder.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)   KEYS[3]: limit
-- ARGV[1]: token   ARGV[2]: ttl in ms
--
-- Returns 1 when extended, 0 when the holder is gone or has already expired: an
-- extension never revives a holder past its expiry, even if nobody purged it yet.
local holders, permits_key, limit_key = KEYS[1], KEYS[2], KEYS[3]
local token, ttl = ARGV[1], tonumber(ARGV[2])

local now = clock_ms()

local expiry = redis.call('ZSCORE', holders, token)
if not expiry or tonumber(expiry) <= now then
  return 0
end
redis.call('ZADD', holders, now + ttl, token)
for _, key in ipairs({holders, permits_key, limit_key}) do
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return 1
