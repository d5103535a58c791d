-- Delete the owner keys that still hold the caller's token; leave any other alone.
--
-- KEYS: three keys per name, for name i (from 0) at KEYS[3i+1 .. 3i+3]: its owner
--       key, line key and alive key (see acquire.lua)
-- ARGV[1]: the caller's token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
--
-- Returns how many names held ARGV[1] and were released (now, or by an earlier call
-- with the same token). Fewer than #KEYS / 3 means the lease was (at least partly)
-- lost before the release: expired, or deleted by someone.
--
-- Each released name is published on a channel named like its owner key, when
-- anyone stands in its line: every waiter that waits for a notification does (see
-- acquire.lua). The message is the id of the first process in line whose place has
-- not lapsed (only that process tries at once; the others wait their turn, or their
-- fallback re-check), or '' when every place has lapsed (all listeners try).
--
-- Each key gets a short-lived tombstone, `<owner key>:released:<token>`, so that the
-- same release sent again (a client library that resends a command whose reply it
-- lost) still counts as released, not as lost, and so that an acquire with this token
-- arriving after it is refused. The same script cleans up after an acquire whose
-- outcome is unknown: the token is unique, so releasing by token is safe whatever
-- happened, in whatever order the two reach the server.
local token = ARGV[1]
local released = 0

-- The first process in line whose place has not lapsed ('' when every place has),
-- or nil when nobody stands in line. Lapsed places are dropped on the way.
local function first_in_line(line, alive)
  local first = redis.call('ZRANGE', line, 0, 0)[1]
  if not first then
    return nil
  end
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local lapse = tonumber(redis.call('ZSCORE', alive, first) or '0')
  if lapse > now_ms then
    return first
  end
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now_ms)) do
    redis.call('ZREM', line, gone)
    redis.call('ZREM', alive, gone)
  end
  redis.call('ZREM', line, first)  -- in case its place was already gone
  return redis.call('ZRANGE', line, 0, 0)[1] or ''
end

for i = 1, #KEYS, 3 do
  local owner = KEYS[i]
  local tombstone = owner .. ':released:' .. token
  if redis.call('GET', owner) == token then
    redis.call('DEL', owner)
    local first = first_in_line(KEYS[i + 1], KEYS[i + 2])
    if first then
      redis.call('PUBLISH', owner, first)
    end
    released = released + 1
  elseif redis.call('EXISTS', tombstone) == 1 then
    released = released + 1
  end
  -- Left even when there was nothing to release: an acquire with this token that
  -- reaches the server later (reordered behind its own clean-up) is then refused.
  redis.call('SET', tombstone, 1, 'PX', ARGV[2])
end
return released
