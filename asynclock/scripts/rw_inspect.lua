-- What holds a read-write lock now, read in one step.
--
-- KEYS[1..5]: writer, readers, reader fences, line, line-alive (see rw_acquire.lua)
--
-- Returns {writer held (1/0), live readers, writers waiting in line whose place has
-- not lapsed}.
local now = clock_ms()
local writer = redis.call('EXISTS', KEYS[1])
local readers = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local writers = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if string.sub(member, 1, 2) == 'w:' then
    local lapse = tonumber(redis.call('ZSCORE', KEYS[5], member) or '0')
    if lapse > now then
      writers = writers + 1
    end
  end
end
return {writer, readers, writers}
