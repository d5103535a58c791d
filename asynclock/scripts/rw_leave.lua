-- A waiting process gives up its place in a read-write lock's line (its last waiter
-- left), and wakes the others: it may have been in their way.
--
-- KEYS[1]: line   KEYS[2]: line-alive (see rw_acquire.lua)
-- KEYS[3]: the readers' channel   KEYS[4]: the writers' channel
-- ARGV[1]: the member ('r:<id>' or 'w:<id>')
--
-- Returns 1 if it stood in line, else 0.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', KEYS[3], '')
redis.call('PUBLISH', KEYS[4], '')
return 1
