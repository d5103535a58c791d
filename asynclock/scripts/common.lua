-- Shared by acquire.lua and release.lua: put in front of each when it is loaded (see
-- asynclock/_scripts.py), so both compute fencing tokens and keep lines alike.

-- The server clock in microseconds, read once per script call.
local now_us = nil
local function clock_us()
  if not now_us then
    local now = redis.call('TIME')
    now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  end
  return now_us
end

-- The next fencing token of a name: one more than the last, and never below the
-- server clock in microseconds. So tokens keep increasing even where the counter
-- went back: a restart without persistence, a restart from an older snapshot, a
-- failover to a replica that had not received the latest increments.
local function next_fence(fence_key)
  -- The clock is almost always ahead of the last token: one SET ... GET does it.
  local last = tonumber(redis.call('SET', fence_key, string.format('%.0f', clock_us()), 'GET'))
  if last and last >= clock_us() then
    redis.call('SET', fence_key, string.format('%.0f', last + 1))
    return last + 1
  end
  return clock_us()
end

-- When a place in line taken or renewed now lapses, in milliseconds.
local function lapse_at(place_ms)
  return string.format('%.0f', math.floor(clock_us() / 1000) + place_ms)
end

-- Give `waiter` a place in a line, renewed for place_ms: at the back (the processes
-- already waiting go first), or, with `keep`, where it already stands if it does. The
-- line itself lasts as long as the place: it goes once nobody renews a place.
local function stand_in_line(line, alive, waiter, place_ms, keep)
  if keep then
    redis.call('ZADD', line, 'NX', string.format('%.0f', clock_us()), waiter)
  else
    redis.call('ZADD', line, string.format('%.0f', clock_us()), waiter)
  end
  redis.call('ZADD', alive, lapse_at(place_ms), waiter)
  redis.call('PEXPIRE', line, place_ms)
  redis.call('PEXPIRE', alive, place_ms)
end

-- Take `waiter` out of a line.
local function leave_line(line, alive, waiter)
  redis.call('ZREM', line, waiter)
  redis.call('ZREM', alive, waiter)
end

-- What an acquisition does with its process's place in a line: '' nothing, 'back'
-- move it to the back (more of its coroutines wait), 'leave' give it up.
local function take_place(line, alive, waiter, place, place_ms)
  if place == 'back' then
    stand_in_line(line, alive, waiter, place_ms, false)
  elseif place == 'leave' then
    leave_line(line, alive, waiter)
  end
end

-- The first process in line whose place has not lapsed ('' when every place has),
-- or nil when nobody stands in line. Lapsed places are dropped on the way.
local function first_in_line(line, alive)
  local first = redis.call('ZRANGE', line, 0, 0)[1]
  if not first then
    return nil
  end
  local now_ms = math.floor(clock_us() / 1000)
  local lapse = tonumber(redis.call('ZSCORE', alive, first) or '0')
  if lapse > now_ms then
    return first
  end
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now_ms)) do
    leave_line(line, alive, gone)
  end
  redis.call('ZREM', line, first)  -- in case its place was already gone
  return redis.call('ZRANGE', line, 0, 0)[1] or ''
end
