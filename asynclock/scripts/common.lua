-- Shared by every script but extend.lua: put in front of each when it is loaded (see
-- asynclock/_scripts.py), so they all read the clock, compute fencing tokens, keep
-- tombstones and lines alike. It only defines local functions: nothing runs, not even
-- TIME, until a script calls one.
--
-- function                          used by (scripts; functions of this file)
-- clock_us(), clock_ms()            all of them, directly or through those below
-- next_fence(fence_key)             acquire, hand_over, semaphore_acquire
-- tombstone(key, token)             was_released, remember_release
-- was_released(key, token)          acquire, hand_over, semaphore_acquire,
--                                   semaphore_release; release_names
-- remember_release(key, token, ms)  hand_over, semaphore_release; release_names
-- lapse_at(place_ms)                stand_in_line
-- stand_in_line(...)                acquire; take_place, release_names
-- leave_line(line, alive, waiter)   take_place, first_in_line
-- take_place(...)                   acquire, hand_over
-- first_in_line(line, alive)        first_of
-- first_of(i)                       hand_over; release_names
-- release_names(token, ms, ...)     release, hand_over
--
-- The lock scripts (acquire, release, hand_over) take four keys per name, for name i
-- (from 0) at KEYS[4i+1 .. 4i+4]: owner, fence, line, alive (see acquire.lua);
-- first_of and release_names read that layout from KEYS.

-- The server clock in microseconds, read once per script call.
local now_us = nil
local function clock_us()
  if not now_us then
    local now = redis.call('TIME')
    now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  end
  return now_us
end

-- The same clock in whole milliseconds: the unit of expiries and lapses.
local function clock_ms()
  return math.floor(clock_us() / 1000)
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

-- A release's tombstone, `<key>:released:<token>`: the only key a script builds
-- rather than takes in KEYS. It is `key` with a suffix, and `key` (an owner key or a
-- semaphore's holders key, from asynclock/_names.py base_key, whose prefix holds no
-- braces) has a complete, non-empty hash tag `{...}` before the suffix in each of
-- its three forms. Redis hashes the first such tag only, so on Redis Cluster the
-- tombstone lives in the same slot as `key`, whatever the token.
local function tombstone(key, token)
  return key .. ':released:' .. token
end

-- Whether `token` released `key` within the last tombstone time.
local function was_released(key, token)
  return redis.call('EXISTS', tombstone(key, token)) == 1
end

-- Remember for `ms` milliseconds that `token` released `key`. Left even when there was
-- nothing to release: an acquire with this token that reaches the server later
-- (reordered behind its own clean-up) is then refused, and the same release sent
-- again (a client library resending a command whose reply it lost) still counts.
local function remember_release(key, token, ms)
  redis.call('SET', tombstone(key, token), 1, 'PX', ms)
end

-- When a place in line taken or renewed now lapses, in milliseconds.
local function lapse_at(place_ms)
  return string.format('%.0f', clock_ms() + place_ms)
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
  local now_ms = clock_ms()
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

-- The first in line of the name whose owner key is KEYS[i] (false: nobody in line),
-- read once per script call: a hand-over that looked at it and then releases after
-- all reads it once, and publishes what it saw.
local firsts = {}
local function first_of(i)
  if firsts[i] == nil then
    firsts[i] = first_in_line(KEYS[i + 2], KEYS[i + 3]) or false
  end
  return firsts[i]
end

-- Release every name that still holds `token`: delete its owner key and publish, on a
-- channel named like it, the first in its line (when anyone stands there: every
-- waiter listening for a notification does, see acquire.lua). Only that process
-- tries at once; the others wait their turn or their fallback re-check; '' (every
-- place lapsed) lets all listeners try. Any other holder's name is left alone.
-- With a `waiter`, the process goes to the back of every name's line (it still has a
-- coroutine waiting, and queues behind the others rather than re-checking on its own).
-- Each name gets a tombstone of `token`, kept for `ms` milliseconds.
--
-- Returns how many names held `token` and were released, now or by an earlier call
-- with the same token.
local function release_names(token, ms, waiter, place_ms)
  local released = 0
  for i = 1, #KEYS, 4 do
    local owner = KEYS[i]
    if redis.call('GET', owner) == token then
      redis.call('DEL', owner)
      local first = first_of(i)
      if first then
        redis.call('PUBLISH', owner, first)
      end
      released = released + 1
    elseif was_released(owner, token) then
      released = released + 1
    end
    if waiter then
      stand_in_line(KEYS[i + 2], KEYS[i + 3], waiter, place_ms, false)
    end
    remember_release(owner, token, ms)
  end
  return released
end
