-- Free a read-write lock's holder by its token, for an operator (asynclock/_admin.py):
-- as rw_release.lua does, but without a tombstone, so that the holder's own release
-- finds its lease gone and reports it lost.
--
-- KEYS[1..4]: writer, readers, reader fences, line (see rw_acquire.lua)
-- KEYS[5]: the readers' channel   KEYS[6]: the writers' channel
-- ARGV[1]: the holder's token
--
-- Returns 1 if the token held (as the writer, or as a reader) and was freed, else 0.
local freed = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  freed = 1
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[3], ARGV[1])
  freed = 1
end
if freed == 1 and redis.call('ZCARD', KEYS[4]) > 0 then
  redis.call('PUBLISH', KEYS[5], '')
  redis.call('PUBLISH', KEYS[6], '')
end
return freed
