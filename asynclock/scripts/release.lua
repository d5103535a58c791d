-- Delete the owner keys that still hold the caller's token; leave any other alone.
--
-- KEYS: the owner keys of the lease's names
-- ARGV[1]: the caller's token
--
-- Returns how many keys held ARGV[1] and were deleted. Fewer than #KEYS means the
-- lease was (at least partly) lost before the release: expired, or deleted by someone.
-- The same script cleans up after an acquire whose outcome is unknown (a cancelled or
-- failed call): the token is unique, so deleting by token is safe whatever happened.
local released = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    released = released + 1
  end
end
return released
