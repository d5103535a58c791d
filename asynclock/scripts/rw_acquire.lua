-- Take a read-write lock for reading (shared) or for writing (alone), or report when
-- to try again.
--
-- KEYS[1]: writer: the writing holder's token, with a PX expiry (as a Mutex's owner key)
-- KEYS[2]: readers: a sorted set of reading holders' tokens scored by their expiry, in
--          ms on the server clock (each reader expires on its own)
-- KEYS[3]: reader fences: a hash of reading holder's token -> its fencing token
-- KEYS[4]: line: waiting processes ('r:<id>' or 'w:<id>') scored by arrival (server
--          clock, microseconds)
-- KEYS[5]: line-alive: the same members by when their place lapses (ms) unless renewed
-- KEYS[6]: the fence counter: the last writer's fencing token (expires after a day
--          without a write)
-- KEYS[7]: the tombstone, the tokens recently released (read only: see
--          remember_release in common.lua)
-- ARGV[1]: token   ARGV[2]: ttl in ms   ARGV[3]: 'r' (read) or 'w' (write)
-- ARGV[4]: the waiting process's id, or '' (not waiting in line)
-- ARGV[5]: on success, what becomes of the process's place in line ('', 'leave',
--          'back': see take_place in common.lua)
-- ARGV[6]: how long a place in line lasts unless renewed, in milliseconds
--
-- Returns {1, fence} when acquired (or already held by this token: a retried call); a
--         writer's fence is a new fencing token, a reader's the last writer's (what
--         it can read);
--         {0, wait_ms} when refused: the time until the blocking holder's lease runs
--         out (-1: unknown, or a waiter ahead in line).
--
-- Who may enter, in one rule: nobody ahead of the caller may be in its way.
--   A reader enters unless a writer holds, or a writer waits ahead of it in line.
--   A writer enters unless anyone holds, or anyone waits ahead of it in line.
-- A caller not in line counts as arriving now: behind everyone in line. So a waiting
-- writer keeps out readers that come after it (write-preferring), and readers that
-- were waiting before it go first (they are ahead of it); each waiter waits for those
-- ahead of it only. A refused caller with an id takes (or keeps) its place in line.
local writer, readers, fences, line, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local fence_key, tombstone = KEYS[6], KEYS[7]
local token, ttl, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local waiter, place, place_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])

local now = clock_ms()

-- `command` on `key` with `members`, a thousand at a time: Lua unpacks only so many
-- values into one call (a crashed fleet of readers can leave more).
-- `unpack` is Lua 5.1's (Redis, Valkey); 5.2 and later (fakeredis can run 5.4) have
-- only table.unpack.
local function for_each_thousand(command, key, members)
  for first = 1, #members, 1000 do
    local last = math.min(first + 999, #members)
    redis.call(command, key, (table.unpack or unpack)(members, first, last))
  end
end

-- Readers whose lease ran out, and places that lapsed, are gone.
local expired = redis.call('ZRANGEBYSCORE', readers, '-inf', now)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', readers, '-inf', now)
  for_each_thousand('HDEL', fences, expired)
end
local lapsed = redis.call('ZRANGEBYSCORE', alive, '-inf', now)
if #lapsed > 0 then
  redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
  for_each_thousand('ZREM', line, lapsed)
end

-- The readers' set and fences live as long as the longest-lived reader.
local function keep_readers()
  local longest = tonumber(redis.call('ZRANGE', readers, -1, -1, 'WITHSCORES')[2]) - now
  redis.call('PEXPIRE', readers, longest)
  redis.call('PEXPIRE', fences, longest)
end

if was_released(tombstone, token) then
  return {0, -1}  -- this token was already given back: it must not take anything
end

local member = ''
if waiter ~= '' then
  member = mode .. ':' .. waiter
end

local function granted(fence)
  if member ~= '' then
    lines().take_place(line, alive, member, place, place_ms)
  end
  return {1, fence}
end

-- A retried acquire whose first try reached the server gets its lease back.
if mode == 'w' and redis.call('GET', writer) == token then
  redis.call('PEXPIRE', writer, ttl)
  return granted(tonumber(redis.call('GET', fence_key)))
end
if mode == 'r' and redis.call('ZSCORE', readers, token) then
  redis.call('ZADD', readers, now + ttl, token)
  keep_readers()
  return granted(tonumber(redis.call('HGET', fences, token)))
end

-- Who waits ahead of the caller: everyone in line before its place, or everyone.
local ahead
local arrival = member ~= '' and redis.call('ZSCORE', line, member)
if arrival then
  ahead = redis.call('ZRANGEBYSCORE', line, '-inf', '(' .. arrival)
else
  ahead = redis.call('ZRANGE', line, 0, -1)
end

local refusal = nil
local writer_pttl = redis.call('PTTL', writer)
if writer_pttl ~= -2 then
  refusal = {0, writer_pttl}
elseif mode == 'r' then
  for _, other in ipairs(ahead) do
    if string.sub(other, 1, 2) == 'w:' then
      refusal = {0, -1}
      break
    end
  end
else
  local first = redis.call('ZRANGE', readers, 0, 0, 'WITHSCORES')
  if #first > 0 then
    refusal = {0, tonumber(first[2]) - now}
  elseif #ahead > 0 then
    refusal = {0, -1}
  end
end

if refusal then
  if member ~= '' then
    lines().stand(line, alive, member, place_ms, true)
  end
  return refusal
end

local fence
if mode == 'w' then
  -- Fenced like a lock's name (see next_fence in common.lua).
  fence = next_fence(fence_key)
  redis.call('SET', writer, token, 'PX', ttl)
else
  fence = tonumber(redis.call('GET', fence_key) or '0')
  redis.call('ZADD', readers, now + ttl, token)
  -- '%.0f': a plain `..` would write a large number as 1.7955e+15.
  redis.call('HSET', fences, token, string.format('%.0f', fence))
  keep_readers()
end
return granted(fence)
