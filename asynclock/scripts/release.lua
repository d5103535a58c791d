-- Delete the owner keys that still hold the caller's token; leave any other alone.
--
-- KEYS: the owner keys of the lease's names
-- ARGV[1]: the caller's token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
--
-- Returns how many keys held ARGV[1] and were released (now, or by an earlier call
-- with the same token). Fewer than #KEYS means the lease was (at least partly) lost
-- before the release: expired, or deleted by someone.
--
-- Each key gets a short-lived tombstone, `<owner key>:released:<token>`, so that the
-- same release sent again (a client library that resends a command whose reply it
-- lost) still counts as released, not as lost, and so that an acquire with this token
-- arriving after it is refused. The same script cleans up after an acquire whose
-- outcome is unknown: the token is unique, so releasing by token is safe whatever
-- happened, in whatever order the two reach the server.
local token = ARGV[1]
local released = 0
for i = 1, #KEYS do
  local tombstone = KEYS[i] .. ':released:' .. token
  if redis.call('GET', KEYS[i]) == token then
    redis.call('DEL', KEYS[i])
    -- Wake the waiters of this name (the channel is named like the key).
    redis.call('PUBLISH', KEYS[i], '')
    released = released + 1
  elseif redis.call('EXISTS', tombstone) == 1 then
    released = released + 1
  end
  -- Left even when there was nothing to release: an acquire with this token that
  -- reaches the server later (reordered behind its own clean-up) is then refused.
  redis.call('SET', tombstone, 1, 'PX', ARGV[2])
end
return released
