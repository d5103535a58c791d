-- Reset a read-write lock holder's expiry, only if it still holds.
--
-- KEYS[1]: writer   KEYS[2]: readers   KEYS[3]: reader fences (see rw_acquire.lua)
-- ARGV[1]: token   ARGV[2]: ttl in ms   ARGV[3]: 'r' or 'w'
--
-- Returns 1 when extended, 0 when the holder is gone or has already expired: an
-- extension never revives a holder past its expiry, even if nobody purged it yet.
local writer, readers, fences = KEYS[1], KEYS[2], KEYS[3]
local token, ttl = ARGV[1], tonumber(ARGV[2])
if ARGV[3] == 'w' then
  if redis.call('GET', writer) ~= token then
    return 0
  end
  redis.call('PEXPIRE', writer, ttl)
  return 1
end
local now = clock_ms()
local expiry = redis.call('ZSCORE', readers, token)
if not expiry or tonumber(expiry) <= now then
  return 0
end
redis.call('ZADD', readers, now + ttl, token)
for _, key in ipairs({readers, fences}) do
  if redis.call('PTTL', key) < ttl then
    redis.call('PEXPIRE', key, ttl)
  end
end
return 1
