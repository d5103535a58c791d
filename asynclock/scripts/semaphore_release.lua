-- Give back a semaphore holder's permits.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)
-- KEYS[3]: the tombstone, the tokens recently released (see remember_release in
--          common.lua)
-- ARGV[1]: token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
--
-- Returns 1 when the token was a live holder (now, or at an earlier call with the
-- same token: the tombstone remembers it), 0 when it was gone or had expired. It is
-- removed either way.
local holders, permits_key, tombstone = KEYS[1], KEYS[2], KEYS[3]
local token = ARGV[1]

local now = clock_ms()

local expiry = redis.call('ZSCORE', holders, token)
redis.call('ZREM', holders, token)
redis.call('HDEL', permits_key, token)
local released = 0
if (expiry and tonumber(expiry) > now) or was_released(tombstone, token) then
  released = 1
end
if expiry then
  redis.call('PUBLISH', holders, '')  -- a permit came back: wake the waiters
end
-- Left even when there was nothing to release (see remember_release in common.lua).
remember_release(tombstone, token, ARGV[2])
return released
