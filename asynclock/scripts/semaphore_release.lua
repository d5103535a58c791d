-- Give back a semaphore holder's permits.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)
-- ARGV[1]: token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
--
-- Returns 1 when the token was a live holder (now, or at an earlier call with the
-- same token: a tombstone `<holders>:released:<token>` remembers it), 0 when it was
-- gone or had expired. It is removed either way.
local holders, permits_key = KEYS[1], KEYS[2]
local token = ARGV[1]
local tombstone = holders .. ':released:' .. token

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local expiry = redis.call('ZSCORE', holders, token)
redis.call('ZREM', holders, token)
redis.call('HDEL', permits_key, token)
local released = 0
if (expiry and tonumber(expiry) > now) or redis.call('EXISTS', tombstone) == 1 then
  released = 1
end
if expiry then
  redis.call('PUBLISH', holders, '')  -- a permit came back: wake the waiters
end
-- Left even when there was nothing to release: an acquire with this token that
-- reaches the server later (reordered behind its own clean-up) is then refused.
redis.call('SET', tombstone, 1, 'PX', ARGV[2])
return released
