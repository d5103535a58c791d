-- Take `permits` of a semaphore's `limit` for a holder, or report when to try again.
--
-- KEYS[1]: holders, a sorted set: member = holder token, score = its expiry in ms on
--          the server's clock (each holder expires on its own)
-- KEYS[2]: permits, a hash: holder token -> "<permits>:<fencing token>"
-- KEYS[3]: the limit in force while anyone holds the semaphore
-- KEYS[4]: the fence counter of the name (expires after a day without an acquire)
-- KEYS[5]: the tombstone, the tokens recently released (read only: see
--          remember_release in common.lua)
-- ARGV[1]: token   ARGV[2]: ttl in ms   ARGV[3]: limit   ARGV[4]: permits
--
-- Returns {1, fence} when acquired (or already held by this token: a retried call);
--         {0, wait_ms} when too few permits are free; wait_ms is the time until the
--         earliest holder expires;
--         {-1, limit_in_force} when live holders use another limit.
--
-- Expiry is read from the server clock (TIME), never from the callers', so clients
-- with skewed clocks can neither steal permits nor keep them past their TTL.

local holders, permits_key, limit_key, fence_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tombstone = KEYS[5]
local token, ttl = ARGV[1], tonumber(ARGV[2])
local limit, wanted = tonumber(ARGV[3]), tonumber(ARGV[4])

local now = clock_ms()

-- Purge the holders whose lease has run out.
local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  -- `unpack` is Lua 5.1's (Redis, Valkey); 5.2 and later (fakeredis can run 5.4) have
  -- only table.unpack.
  redis.call('HDEL', permits_key, (table.unpack or unpack)(expired))
end

if was_released(tombstone, token) then
  return {0, -1}  -- this token was already given back: it must not take anything
end

local held = redis.call('HGET', permits_key, token)
if held and redis.call('ZSCORE', holders, token) then
  redis.call('ZADD', holders, now + ttl, token)
  return {1, tonumber(string.match(held, ':(%d+)$'))}
end

local live = redis.call('ZCARD', holders)
if live > 0 then
  local in_force = tonumber(redis.call('GET', limit_key))
  if in_force and in_force ~= limit then
    return {-1, in_force}
  end
end

local in_use = 0
if live > 0 then
  for _, count in ipairs(redis.call('HVALS', permits_key)) do
    in_use = in_use + tonumber(string.match(count, '^(%d+):'))
  end
end
if in_use + wanted > limit then
  local first = redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')
  if #first == 0 then
    return {0, -1}
  end
  return {0, tonumber(first[2]) - now}
end

-- Fenced like a lock's name (see next_fence in common.lua): strictly increasing, and
-- never below the server clock in microseconds.
local fence = next_fence(fence_key)
redis.call('ZADD', holders, now + ttl, token)
-- '%.0f': a plain `..` would write a large number as 1.7955e+15.
redis.call('HSET', permits_key, token, wanted .. ':' .. string.format('%.0f', fence))
-- The limit, the set and the hash live as long as the longest-lived holder.
local longest = tonumber(redis.call('ZRANGE', holders, -1, -1, 'WITHSCORES')[2]) - now
redis.call('SET', limit_key, limit, 'PX', longest)
redis.call('PEXPIRE', holders, longest)
redis.call('PEXPIRE', permits_key, longest)
return {1, fence}
