-- Reset the expiry of every name of a lease, only if the caller still holds them all.
--
-- KEYS: the owner keys of the lease's names
-- ARGV[1]: the caller's token
-- ARGV[2]: the new time to live, in milliseconds (it replaces the remaining one)
--
-- Returns 1 when every key held ARGV[1] and was extended, 0 when any did not (then
-- nothing is changed). PEXPIRE on an existing key only: an extension never re-creates
-- a key that has expired, so a late extension cannot revive a lost lease.
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then
    return 0
  end
end
for i = 1, #KEYS do
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
