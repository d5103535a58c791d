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
-- Each released key leaves a short-lived tombstone, `<owner key>:released:<token>`,
-- so that the same release sent again (a client library that resends a command
-- whose reply it lost) still counts as released, not as lost. The same script cleans
-- up after an acquire whose outcome is unknown: the token is unique, so releasing by
-- token is safe whatever happened.
local token = ARGV[1]
local released = 0
for i = 1, #KEYS do
  local tombstone = KEYS[i] .. ':released:' .. token
  if redis.call('GET', KEYS[i]) == token then
    redis.call('DEL', KEYS[i])
    redis.call('SET', tombstone, 1, 'PX', ARGV[2])
    released = released + 1
  elseif redis.call('EXISTS', tombstone) == 1 then
    released = released + 1
  end
end
return released
