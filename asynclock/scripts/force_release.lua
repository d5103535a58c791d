-- Free the names that a holder's token holds, as an operator does (the command line's
-- `release --force`); leave any other holder alone. A MultiLock across cluster slots
-- also runs it, to give back the slots it took before a later one refused it: it
-- tries again with the same token, which a tombstone would refuse.
--
-- KEYS: five keys per name, as in acquire.lua: owner, fence, line, alive, tombstone
-- ARGV[1]: the holder's token
--
-- Returns how many names held ARGV[1] and were freed.
--
-- Unlike release.lua it leaves no tombstone: the holder did not give the lock back,
-- so its own release must find the lease gone and report it lost, as it would after
-- an expiry. The first process in each name's line is woken as by a release.
local freed = 0
for i = 1, #KEYS, PER_NAME do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    local first = first_of(i)
    if first then
      redis.call('PUBLISH', KEYS[i], first)
    end
    freed = freed + 1
  end
end
return freed
