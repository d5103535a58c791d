-- Give back a semaphore holder's permits.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)
-- ARGV[1]: token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
--
-- Returns 1 when the token was a live holder (now, or at an earlier call with the
-- same token: the semaphore's tombstone `<holders>:released` remembers it), 0 when it
-- was gone or had expired. It is removed either way.
--
-- Built here rather than passed in KEYS: that tombstone, read and then written (see
-- remember_release in common.lua). On Redis Cluster it is in the holders key's slot:
-- it is the holders key plus a suffix, and the holders key's hash tag `{...}` (in
-- each of the three forms of asynclock/_names.py base_key) comes before it.
local holders, permits_key = KEYS[1], KEYS[2]
local token = ARGV[1]

local now = clock_ms()

local expiry = redis.call('ZSCORE', holders, token)
redis.call('ZREM', holders, token)
redis.call('HDEL', permits_key, token)
local recent = recent_releases(holders)
local released = 0
if (expiry and tonumber(expiry) > now) or among(recent, token) then
  released = 1
end
if expiry then
  redis.call('PUBLISH', holders, '')  -- a permit came back: wake the waiters
end
-- Left even when there was nothing to release (see remember_release in common.lua).
remember_release(holders, token, ARGV[2], recent)
return released
