-- Acquire every name of a lock at once, or none of them.
--
-- KEYS: five keys per name, for name i (from 0) at KEYS[5i+1 .. 5i+5]:
--       owner key (a string holding the holder's token, with a PX expiry),
--       fence key (a counter; it expires after a day without an acquire),
--       line key (waiting processes by arrival: a sorted set scored by the server
--       clock in microseconds), alive key (the same processes by the time, in
--       milliseconds, at which their place lapses unless renewed), tombstone key
--       (the tokens recently released: see remember_release in common.lua)
-- ARGV[1]: the caller's token (random, unguessable)
-- ARGV[2]: the lease time to live, in milliseconds
-- ARGV[3]: the waiting process's id, or '' (not waiting in line)
-- ARGV[4]: on success, what becomes of the process's place in line:
--          '' nothing, 'leave' give it up, 'back' move it to the back (more
--          coroutines of the process wait for this lock)
-- ARGV[5]: how long a place in line lasts unless renewed, in milliseconds
--
-- Returns {1, fence_1, ..., fence_n} when the caller now holds every name, or
--         {0, pttl} when some name is held by another token; pttl is the time in
--         milliseconds until that holder's lease runs out (-1: unknown, or a token
--         that was already released). A refused caller with an id takes (or renews)
--         a place in the line of every name.
--
-- The line decides only whom a release wakes first (see release_names in common.lua),
-- never who may take the lock: a waiter that crashed costs the others at most their
-- fallback re-check, and its place lapses on its own.
--
-- A free name, the common case, costs four commands, each needed:
--   SET NX PX  takes the name, and tells a free name from a held one (no GET first);
--   LPOS       the tombstone: an acquire overtaken by its own clean-up takes nothing
--              (searched on the server: see was_released in common.lua);
--   TIME       the server clock, the floor of the fencing token (see next_fence);
--   SET GET    the fence counter: writes the new token and reads the last in one.
-- A held name costs GET (is it ours?) and PTTL (how long the holder has), and a
-- place in line when the caller waits.
--
-- A name already holding ARGV[1] counts as ours: a retried acquire whose first try
-- reached the server (its reply lost) gets the same lease back, with a fresh TTL and
-- the fence it was given then, rather than blocking on itself.
local token = ARGV[1]
local ttl = ARGV[2]
local waiter = ARGV[3] or ''
local place = ARGV[4] or ''
local place_ms = tonumber(ARGV[5] or '0')

-- Take each free name with one SET NX, the one command a free name needs. If a name
-- turns out to be unavailable, the names taken so far are deleted again before the
-- script returns, so nobody ever sees them held (a script runs as one step).
local ours = nil  -- names that already held the token (a retried acquire), by index
local refusal = nil
local last = 0  -- the last name taken or found ours
for i = 1, #KEYS, PER_NAME do
  local owner_key = KEYS[i]
  if redis.call('SET', owner_key, token, 'NX', 'PX', ttl) then
    last = i
    if was_released(KEYS[i + 4], token) then
      -- This token was already given back (its release ran before this acquire, as
      -- when a cancelled acquire's clean-up overtakes it): it must not take anything.
      refusal = {0, -1}
      break
    end
  elseif redis.call('GET', owner_key) == token then
    ours = ours or {}
    ours[i] = true
    last = i
  else
    refusal = {0, redis.call('PTTL', owner_key)}
    if waiter ~= '' then
      -- Keep (or take) the process's place in every name's line.
      for j = 1, #KEYS, PER_NAME do
        lines().stand(KEYS[j + 2], KEYS[j + 3], waiter, place_ms, true)
      end
    end
    break
  end
end

if refusal then
  for i = 1, last, PER_NAME do
    if not (ours and ours[i]) then
      redis.call('DEL', KEYS[i])
    end
  end
  return refusal
end

local granted = {1}
for i = 1, #KEYS, PER_NAME do
  local fence_key = KEYS[i + 1]
  if ours and ours[i] then
    redis.call('PEXPIRE', KEYS[i], ttl)
    granted[#granted + 1] = tonumber(redis.call('GET', fence_key))
  else
    granted[#granted + 1] = next_fence(fence_key)
  end
  if place ~= '' then
    lines().take_place(KEYS[i + 2], KEYS[i + 3], waiter, place, place_ms)
  end
end
return granted
