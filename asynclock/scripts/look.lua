-- What a single-flight caller finds on arrival, and at every wake-up: an outcome it
-- may take, or whether a leader is at work.
--
-- KEYS[1]: the flight's owner key (its leader's lease, as a Mutex's)
-- KEYS[2]: the flight's fence counter (as a Mutex's: the last lease's fencing token)
-- KEYS[3]: the outcome key (land.lua): a hash of fence, until and outcome
-- ARGV[1]: the caller's floor, or '' on arrival
--
-- The floor is the lowest fence whose outcome the caller may take: on arrival, the
-- fence of the lease under way (the flight it joins) unless that flight has landed
-- already, else the next one. So a caller takes the outcome of the flight it found at
-- work or of one begun after it came, never one finished before it came, unless that
-- outcome is kept for late arrivals (`until`, from keep_for) and has not lapsed yet.
--
-- Returns {2, floor, outcome} when there is an outcome to take, else
--         {1, floor, pttl} while a leader holds the lease (pttl: its lease's time to
--         live in milliseconds, at least 1; 0 when it has landed its outcome and is
--         releasing),
--         or {0, floor, -2} when nobody does.
local pttl = redis.call('PTTL', KEYS[1])
local held = pttl ~= -2
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local landed = redis.call('HMGET', KEYS[3], 'fence', 'until', 'outcome')
local landed_fence = tonumber(landed[1] or '-1')
local floor = tonumber(ARGV[1])
if not floor then
  floor = counter + 1
  if held and landed_fence ~= counter then
    floor = counter
  end
end
if landed[1] and (landed_fence >= floor or clock_ms() < tonumber(landed[2])) then
  return {2, floor, landed[3]}
end
if held then
  if landed_fence == counter then
    return {1, floor, 0}
  end
  if pttl < 0 then
    pttl = 1000  -- a lease without an expiry (never made so): look again in a second
  end
  return {1, floor, math.max(pttl, 1)}
end
return {0, floor, -2}
