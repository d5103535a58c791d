-- Delete the owner keys that still hold the caller's token; leave any other alone.
-- Or hand them straight to the caller's successor in the same process.
--
-- KEYS: four keys per name, as in acquire.lua: owner, fence, line, alive
-- ARGV[1]: the caller's token
-- ARGV[2]: how long, in milliseconds, to remember that the token released them
-- ARGV[3]: the token of the next waiter of the caller's process, or '' (none)
-- ARGV[4]: its lease time to live, in milliseconds
-- ARGV[5]: the process's id in the lines of waiters
-- ARGV[6]: what becomes of the process's place in line when it hands over ('',
--          'leave', 'back': as in acquire.lua)
-- ARGV[7]: '1' if the process may hand over even when another process is first in
--          line (a short run of hand-overs inside one process, bounded by the client)
-- ARGV[8]: how long a place in line lasts unless renewed, in milliseconds
--
-- Returns {released, fence_1, ..., fence_n} when the names went to the successor,
-- {released} otherwise. `released` is how many names held ARGV[1] and were released
-- (now, or by an earlier call with the same token); fewer than the number of names
-- means the lease was (at least partly) lost before the release: expired, or deleted.
--
-- A hand-over happens only when the caller held every name, the successor's token
-- was never released (it was not given up meanwhile), and, unless ARGV[7] says
-- otherwise, no other process is first in any name's line. It is a release and an
-- acquire in one step: the successor's lease starts now, with new fencing tokens.
--
-- Otherwise (and then the caller's process, whose successor still waits, goes to the
-- back of the line when another process was first) each released name is published on a channel named like its owner key,
-- when anyone stands in its line: every waiter that waits for a notification does
-- (see acquire.lua). The message is the id of the first process in line whose place
-- has not lapsed (only that process tries at once; the others wait their turn, or
-- their fallback re-check), or '' when every place has lapsed (all listeners try).
--
-- Each key gets a short-lived tombstone, `<owner key>:released:<token>`, so that the
-- same release sent again (a client library that resends a command whose reply it
-- lost) still counts as released, not as lost, and so that an acquire with this token
-- arriving after it is refused. The same script cleans up after an acquire whose
-- outcome is unknown: the token is unique, so releasing by token is safe whatever
-- happened, in whatever order the two reach the server.
local token = ARGV[1]
local successor = ARGV[3] or ''
local waiter = ARGV[5] or ''
local place = ARGV[6] or ''
local place_ms = tonumber(ARGV[8] or '0')

local function remember_release(owner)
  -- Left even when there was nothing to release: an acquire with this token that
  -- reaches the server later (reordered behind its own clean-up) is then refused.
  redis.call('SET', owner .. ':released:' .. token, 1, 'PX', ARGV[2])
end

-- May the names go straight to the successor?
local hand_over = successor ~= ''
local not_our_turn = false
-- The first in each name's line, once read (false: nobody in line).
local firsts = {}
local function first_of(i)
  if firsts[i] == nil then
    firsts[i] = first_in_line(KEYS[i + 2], KEYS[i + 3]) or false
  end
  return firsts[i]
end
if hand_over then
  for i = 1, #KEYS, 4 do
    local owner = KEYS[i]
    if redis.call('GET', owner) ~= token
      or redis.call('EXISTS', owner .. ':released:' .. successor) == 1 then
      hand_over = false
      break
    end
    if ARGV[7] ~= '1' then
      local first = first_of(i)
      if first and first ~= '' and first ~= waiter then
        hand_over = false  -- another process waits longer: its turn
        not_our_turn = true
        break
      end
    end
  end
end

if hand_over then
  local granted = {#KEYS / 4}
  for i = 1, #KEYS, 4 do
    local owner, fence_key, line, alive = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
    redis.call('SET', owner, successor, 'PX', ARGV[4])
    granted[#granted + 1] = next_fence(fence_key)
    take_place(line, alive, waiter, place, place_ms)
    remember_release(owner)
  end
  return granted
end

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
  elseif redis.call('EXISTS', owner .. ':released:' .. token) == 1 then
    released = released + 1
  end
  if not_our_turn then
    -- The successor still waits: the process queues behind the others for its turn
    -- (a release then names it), rather than re-checking on its own.
    stand_in_line(KEYS[i + 2], KEYS[i + 3], waiter, place_ms, false)
  end
  remember_release(owner)
end
return {released}
