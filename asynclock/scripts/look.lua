-- What a single-flight caller finds on arrival, and at every wake-up: an outcome it
-- may take, or whether a leader is at work.
--
-- KEYS[1]: the flight's owner key (its leader's lease, as a Mutex's)
-- KEYS[2]: the flight's fence counter (as a Mutex's: the last lease's fencing token)
-- KEYS[3]: the outcome key (land.lua): a hash of fence, until and outcome
-- ARGV[1]: the caller's floor, or '' on arrival
--
-- The floor is the lowest fence whose outcome the caller may take: on arrival, the
-- fence of the lease under way (the flight it joins), or one more than the last when
-- nobody leads (the next flight). So a caller takes the outcome of the flight it
-- found at work or of one begun after it came, never one finished before it came,
-- unless that outcome is kept for late arrivals (`until`, from keep_for) and has not
-- lapsed yet.
--
-- Returns {2, floor, outcome} when there is an outcome to take, else
--         {1, floor, pttl} while a leader holds the lease (pttl: its lease's time to
--         live in milliseconds, -1 if it has none), or {0, floor, -2} when nobody does.
local pttl = redis.call('PTTL', KEYS[1])
local held = pttl ~= -2
local floor = tonumber(ARGV[1])
if not floor then
  floor = tonumber(redis.call('GET', KEYS[2]) or '0')
  if not held then
    floor = floor + 1
  end
end
local landed = redis.call('HMGET', KEYS[3], 'fence', 'until', 'outcome')
if landed[1] and (tonumber(landed[1]) >= floor or clock_ms() < tonumber(landed[2])) then
  return {2, floor, landed[3]}
end
if held then
  return {1, floor, pttl}
end
return {0, floor, -2}
