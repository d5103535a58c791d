-- Shared by every script but extend.lua: put in front of each when it is loaded (see
-- asynclock/_scripts.py), so they all read the clock, compute fencing tokens, keep
-- tombstones and lines alike. Nothing runs here, not even TIME, until a script calls
-- a function.
--
-- Every local function below is created anew at every script call, which costs the
-- server time on the path every acquire and release takes. So there are few of them:
-- the helpers of the lines of waiting processes, which only contended locks need,
-- are built on first use, by lines().
--
-- function                          used by (scripts; functions of this file)
-- clock_us(), clock_ms()            all of them, directly or through those below
-- next_fence(fence_key)             acquire, hand_over, semaphore_acquire
-- was_released(key, token)          acquire, hand_over, semaphore_acquire,
--                                   semaphore_release, rw_*; release_names
-- remember_release(key, token, ms)  hand_over, semaphore_release, rw_release;
--                                   release_names
-- lines()                           acquire, hand_over; first_of, release_names
-- first_of(i)                       hand_over; release_names
-- release_names(token, ms, ...)     release, hand_over
--
-- The lock scripts (acquire, release, hand_over) take PER_NAME keys per name, for
-- name i (from 0) at KEYS[5i+1 .. 5i+5]: owner, fence, line, alive, tombstone (see
-- acquire.lua); first_of and release_names read that layout from KEYS.
--
-- Numbers are passed to redis.call as they are: the server writes a Lua number as
-- '%.17g', which spells every whole number below 2^53 (a clock in microseconds is
-- about 2^51) with all its digits; string.format would cost as much as a command.

local PER_NAME = 5

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
--
-- The counter expires after a day without an acquire, so that names made from ids
-- (`report:{user_id}`) do not leave a key each for ever. That cannot set tokens back:
-- the next token is at least the clock, which has moved on by a day since the last
-- one (tokens run ahead of the clock only by one per acquire within a microsecond),
-- unless the server's clock steps back by more than a day.
local FENCE_IDLE_MS = 86400000
local function next_fence(fence_key)
  -- The clock is almost always ahead of the last token: one SET ... GET does it.
  local now = clock_us()
  local last = tonumber(redis.call('SET', fence_key, now, 'PX', FENCE_IDLE_MS, 'GET'))
  if last and last >= now then
    redis.call('SET', fence_key, last + 1, 'PX', FENCE_IDLE_MS)
    return last + 1
  end
  return now
end

-- A release's tombstone, one key per name (a lock's `<prefix>releases:{<name>}`, a
-- semaphore's `<prefix>semaphore:{<name>}:releases`, from asynclock/_names.py and
-- asynclock/_semaphore.py), is a list of the tokens most recently released there,
-- newest first.
--
-- What it is for: the same release sent again (a client library resending a command
-- whose reply it lost) still counts as released, and an acquire or a hand-over to a
-- token that reaches the server after that token's clean-up (a release by token, sent
-- when its outcome was unknown) takes nothing. Both concern commands still on their
-- way, so a token needs remembering for a while only: `ms` after the name's latest
-- release (30 s from the client: longer than a command delayed by six TCP
-- retransmissions, 0.2 s doubling each time, takes to arrive).
--
-- Why one key per name, bounded: a key per release would leave, at 2,000 releases a
-- second, 60,000 live keys. Here a name has one tombstone, gone `ms` after its last
-- release, of at most RECENT_RELEASES_MAX tokens (about 3 KiB): at least the
-- RECENT_RELEASES latest. It is cut back to those only once it holds more than the
-- most, so that a busy name's release costs two writes (LPUSH, PEXPIRE), not three.
--
-- Why a list, read with LPOS: a release and an acquire then never copy the tombstone
-- into the script. One kept as a string of tokens cost a busy name's every release a
-- read and a write of 2 KiB, and its garbage the script engine's collector: about a
-- sixth of the scripts' time on an uncontended acquire and release.
--
-- The price: a token is remembered for `ms`, or until RECENT_RELEASES later releases
-- of the same name (up to RECENT_RELEASES_MAX), whichever comes first. Every release
-- counts, so on a name released 2,000 times a second that is 32 ms, not 30 s. Past
-- it the cost is bounded: a release resent by the client library after a lost reply
-- reports the lease lost (it was released), or an acquire arriving behind its own
-- clean-up holds the name, nobody extending it, until its TTL runs out. Neither lets
-- two holders in.
-- A time-bounded record per token (a sorted set pruned by time) would keep the 30 s
-- on busy names for more memory and more commands a release.
local RECENT_RELEASES = 64
local RECENT_RELEASES_MAX = 96

-- Whether `token` was released recently on the name whose tombstone is `tombstone`.
local function was_released(tombstone, token)
  return redis.call('LPOS', tombstone, token) ~= false
end

-- Remember in the name's `tombstone` that `token` released it, for `ms` milliseconds
-- after this release. Left even when there was nothing to release: an acquire with
-- this token that reaches the server later (reordered behind its own clean-up) is
-- then refused, and the same release sent again still counts.
local function remember_release(tombstone, token, ms)
  if redis.call('LPUSH', tombstone, token) > RECENT_RELEASES_MAX then
    redis.call('LTRIM', tombstone, 0, RECENT_RELEASES - 1)
  end
  redis.call('PEXPIRE', tombstone, ms)
end

-- The lines of waiting processes: built at the first call, once per script call.
local line_functions = nil
local function lines()
  if line_functions then
    return line_functions
  end
  local f = {}

  -- The lapse of a place, read once per script call: a hand-over that looked at the
  -- first in line (itself, in a busy process) and then keeps its own place needs it
  -- twice. Forgotten at every write to the places of that line.
  local seen = {}
  local function lapse_of(alive, waiter)
    local known = seen[alive]
    if known and known[1] == waiter then
      return known[2]
    end
    local lapse = tonumber(redis.call('ZSCORE', alive, waiter) or '0')
    seen[alive] = {waiter, lapse}
    return lapse
  end

  -- Give `waiter` a place in a line, renewed for place_ms: at the back (the processes
  -- already waiting go first), or, with `keep`, where it already stands if it does.
  -- The line itself lasts as long as the place: it goes once nobody renews a place.
  function f.stand(line, alive, waiter, place_ms, keep)
    seen[alive] = nil
    if keep then
      redis.call('ZADD', line, 'NX', clock_us(), waiter)
    else
      redis.call('ZADD', line, clock_us(), waiter)
    end
    redis.call('ZADD', alive, clock_ms() + place_ms, waiter)
    redis.call('PEXPIRE', line, place_ms)
    redis.call('PEXPIRE', alive, place_ms)
  end

  -- Take `waiter` out of a line.
  function f.leave(line, alive, waiter)
    seen[alive] = nil
    redis.call('ZREM', line, waiter)
    redis.call('ZREM', alive, waiter)
  end

  -- What an acquisition does with its process's place in a line: '' nothing, 'back'
  -- move it to the back (more of its coroutines wait), 'leave' give it up.
  --
  -- 'back' is the path of every section of a lock contended inside one process, so
  -- it costs two reads (one, when the first in line was read) when they show the
  -- move would change nothing: the process stands alone in the line (the back is
  -- where it is), with more than half its place's time left (a place is renewed by
  -- the hand-overs of its busy process, and lapses only after place_ms without
  -- one). Otherwise four writes.
  function f.take_place(line, alive, waiter, place, place_ms)
    if place == 'back' then
      if redis.call('ZCARD', line) == 1 then
        -- alive holds no process the line lacks (both change together), so a
        -- place of ours there means the line holds only us.
        if lapse_of(alive, waiter) - clock_ms() > place_ms / 2 then
          return
        end
      end
      f.stand(line, alive, waiter, place_ms, false)
    elseif place == 'leave' then
      f.leave(line, alive, waiter)
    end
  end

  -- The first process in the line whose first place is held by `first`, whose place
  -- has not lapsed ('' when every place has). Lapsed places are dropped on the way.
  function f.first_alive(line, alive, first)
    local now_ms = clock_ms()
    if lapse_of(alive, first) > now_ms then
      return first
    end
    for _, gone in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now_ms)) do
      f.leave(line, alive, gone)
    end
    redis.call('ZREM', line, first)  -- in case its place was already gone
    return redis.call('ZRANGE', line, 0, 0)[1] or ''
  end

  line_functions = f
  return f
end

-- The first in line of the name whose owner key is KEYS[i] (false: nobody in line),
-- read once per script call: a hand-over that looked at it and then releases after
-- all reads it once, and publishes what it saw. Nobody in line, the common case,
-- costs one read and no line functions.
local firsts = nil
local function first_of(i)
  firsts = firsts or {}
  if firsts[i] == nil then
    local first = redis.call('ZRANGE', KEYS[i + 2], 0, 0)[1]
    firsts[i] = first and lines().first_alive(KEYS[i + 2], KEYS[i + 3], first) or false
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
  for i = 1, #KEYS, PER_NAME do
    local owner = KEYS[i]
    if redis.call('GET', owner) == token then
      redis.call('DEL', owner)
      local first = first_of(i)
      if first then
        redis.call('PUBLISH', owner, first)
      end
      released = released + 1
    elseif was_released(KEYS[i + 4], token) then
      released = released + 1  -- the same release, sent again
    end
    if waiter then
      lines().stand(KEYS[i + 2], KEYS[i + 3], waiter, place_ms, false)
    end
    remember_release(KEYS[i + 4], token, ms)
  end
  return released
end
