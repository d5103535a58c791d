-- Give back a semaphore holder's permits.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)
-- ARGV[1]: token
--
-- Returns 1 when the token was a live holder, 0 when it was gone or had expired (it
-- is removed either way). Keyed by the token, so running it twice is harmless.
local holders, permits_key = KEYS[1], KEYS[2]
local token = ARGV[1]

local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)

local expiry = redis.call('ZSCORE', holders, token)
redis.call('ZREM', holders, token)
redis.call('HDEL', permits_key, token)
if expiry and tonumber(expiry) > now then
  return 1
end
return 0
