-- Acquire every name of a lock at once, or none of them.
--
-- KEYS: for each name, its owner key then its fence key:
--       KEYS[2i-1] = owner key (a string holding the holder's token, with a PX expiry)
--       KEYS[2i]   = fence key (a counter that never expires)
-- ARGV[1]: the caller's token (random, unguessable)
-- ARGV[2]: the lease time to live, in milliseconds
--
-- Returns {1, fence_1, ..., fence_n} when the caller now holds every name, or
--         {0, pttl} when some name is held by another token; pttl is the time in
--         milliseconds until that holder's lease runs out (-1: unknown, or a token
--         that was already released).
--
-- A name already holding ARGV[1] counts as ours: a retried acquire whose first try
-- reached the server (its reply lost) gets the same lease back, with a fresh TTL and
-- the fence it was given then, rather than blocking on itself.
local token = ARGV[1]
local ttl = ARGV[2]

local ours = {}
for i = 1, #KEYS, 2 do
  local owner = redis.call('GET', KEYS[i])
  if owner then
    if owner ~= token then
      -- Checked first, so that a waiter's failed try costs two reads and no clock.
      return {0, redis.call('PTTL', KEYS[i])}
    end
    ours[i] = true
  elseif redis.call('EXISTS', KEYS[i] .. ':released:' .. token) == 1 then
    -- This token was already given back (its release ran before this acquire, as
    -- when a cancelled acquire's clean-up overtakes it): it must not take anything.
    return {0, -1}
  end
end

-- The next fencing token of a name: one more than the last, and never below the
-- server clock in microseconds. So tokens keep increasing even where the counter
-- went back: a restart without persistence, a restart from an older snapshot, a
-- failover to a replica that had not received the latest increments.
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local function next_fence(fence_key)
  local fence = redis.call('INCR', fence_key)
  if fence < now_us then
    fence = now_us
    redis.call('SET', fence_key, string.format('%.0f', fence))
  end
  return fence
end

local granted = {1}
for i = 1, #KEYS, 2 do
  local fence_key = KEYS[i + 1]
  if ours[i] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    granted[#granted + 1] = tonumber(redis.call('GET', fence_key))
  else
    redis.call('SET', KEYS[i], token, 'PX', ttl)
    granted[#granted + 1] = next_fence(fence_key)
  end
end
return granted
