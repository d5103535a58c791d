-- Give back what a read-write lock holder holds, and wake the waiters it was keeping
-- out.
--
-- KEYS[1..5]: writer, readers, reader fences, line, line-alive (see rw_acquire.lua)
-- KEYS[6]: the tombstone (see remember_release in common.lua)
-- KEYS[7]: the readers' channel   KEYS[8]: the writers' channel
-- ARGV[1]: token   ARGV[2]: how long, in ms, to remember that the token released
-- ARGV[3]: 'r' or 'w'; or '' to give back whatever the token holds (a clean-up by
--          token after an acquire of unknown outcome)
--
-- Returns 1 when the token held (now, or at an earlier call with the same token: the
-- tombstone remembers it), 0 when it was gone or had expired.
--
-- Wakes only when someone stands in line (every waiter listening for a notification
-- does, see rw_acquire.lua): a writer's release wakes everyone; a reader's, the
-- writers, once no reader is left.
local writer, readers, fences, line = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local tombstone, read_channel, write_channel = KEYS[6], KEYS[7], KEYS[8]
local token, mode = ARGV[1], ARGV[3]

local now = clock_ms()
local released = 0
local waiting = redis.call('ZCARD', line) > 0
if mode ~= 'r' and redis.call('GET', writer) == token then
  redis.call('DEL', writer)
  released = 1
  if waiting then
    redis.call('PUBLISH', read_channel, '')
    redis.call('PUBLISH', write_channel, '')
  end
end
if mode ~= 'w' then
  local expiry = redis.call('ZSCORE', readers, token)
  if expiry then
    redis.call('ZREM', readers, token)
    redis.call('HDEL', fences, token)
    if tonumber(expiry) > now then
      released = 1
    end
    if waiting and redis.call('ZCOUNT', readers, '(' .. now, '+inf') == 0 then
      redis.call('PUBLISH', write_channel, '')
    end
  end
end
if released == 0 and was_released(tombstone, token) then
  released = 1
end
remember_release(tombstone, token, ARGV[2])
return released
