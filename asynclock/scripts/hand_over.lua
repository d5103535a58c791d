-- Hand the caller's names straight to its successor in the same process, or, when
-- that may not be, release them as release.lua does.
--
-- KEYS: five keys per name, as in acquire.lua: owner, fence, line, alive, tombstone
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
-- Each name's tombstone (see remember_release in common.lua) is searched for the
-- successor's token and takes the caller's.
--
-- Returns {released, fence_1, ..., fence_n} when the names went to the successor,
-- {released} otherwise, with `released` as in release.lua.
--
-- A hand-over happens only when the caller held every name, the successor's token
-- was never released (it was not given up meanwhile), and, unless ARGV[7] says
-- otherwise, no other process is first in any name's line. It is a release and an
-- acquire in one step: the successor's lease starts now, with new fencing tokens.
--
-- Otherwise the names are released as by release.lua (each published to the first
-- in its line); when another process was first in line, the caller's process, whose
-- successor still waits, also goes to the back of every name's line.
--
-- A hand-over is the path of every section of a lock contended inside a process. Per
-- name it costs these commands, each needed:
--   GET          the owner key: the caller must still hold the name;
--   LPOS         the tombstone: a successor that gave up (its token released by its
--                clean-up) must get nothing;
--   ZRANGE       the first process in line and whether its place has lapsed, once the
--   ZSCORE       process has handed over a run of times (ARGV[7]): a process that
--                waits longer goes first;
--   SET PX       the owner key, to the successor's token, with its TTL;
--   TIME         the server clock and the fence counter, for the successor's fencing
--   SET GET      token (see next_fence in common.lua);
--   ZCARD        when more of the process's coroutines wait ('back'): its place moves
--   ZSCORE       to the back of the line, behind the other processes, and is renewed
--                (a place lapses unless renewed, so a dead process waits for nobody);
--                read first, since a process alone in line with a fresh place needs
--                neither (see take_place in common.lua); the ZSCORE is not sent again
--                when the process was first in line (read above); otherwise also
--   ZADD x2      the move and the renewal;
--   PEXPIRE x2
--   LPUSH        the tombstone, with the caller's token in front (see release.lua).
--   PEXPIRE
local token = ARGV[1]
local successor = ARGV[3] or ''
local waiter = ARGV[5] or ''
local place = ARGV[6] or ''
local place_ms = tonumber(ARGV[8] or '0')

-- May the names go straight to the successor?
local hand_over = successor ~= ''
local not_our_turn = false
if hand_over then
  for i = 1, #KEYS, PER_NAME do
    local owner = KEYS[i]
    if redis.call('GET', owner) ~= token then
      hand_over = false
      break
    end
    if was_released(KEYS[i + 4], successor) then
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
  local granted = {#KEYS / PER_NAME}
  for i = 1, #KEYS, PER_NAME do
    local owner, fence_key, line, alive = KEYS[i], KEYS[i + 1], KEYS[i + 2], KEYS[i + 3]
    redis.call('SET', owner, successor, 'PX', ARGV[4])
    granted[#granted + 1] = next_fence(fence_key)
    if place ~= '' then
      lines().take_place(line, alive, waiter, place, place_ms)
    end
    remember_release(KEYS[i + 4], token, ARGV[2])
  end
  return granted
end

-- The successor still waits when it was not our turn: the process queues behind the
-- others for its turn (a release then names it), rather than re-checking on its own.
local requeue = nil
if not_our_turn then
  requeue = waiter
end
return {release_names(token, ARGV[2], requeue, place_ms)}
