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
--         milliseconds until that holder's lease runs out (-1: no expiry, a foreign key).
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
      return {0, redis.call('PTTL', KEYS[i])}
    end
    ours[i] = true
  end
end

local granted = {1}
for i = 1, #KEYS, 2 do
  local fence_key = KEYS[i + 1]
  if ours[i] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    granted[#granted + 1] = tonumber(redis.call('GET', fence_key))
  else
    redis.call('SET', KEYS[i], token, 'PX', ttl)
    local fence = redis.call('INCR', fence_key)
    if fence == 1 then
      -- A new counter starts from the server clock in microseconds, so that fencing
      -- tokens keep increasing even after the server restarts without its data.
      local now = redis.call('TIME')
      local seed = now[1] .. string.format('%06d', tonumber(now[2]))
      redis.call('SET', fence_key, seed)
      fence = tonumber(seed)
    end
    granted[#granted + 1] = fence
  end
end
return granted
