-- Who leads an election now, read in one step.
--
-- KEYS[1]: the election's owner key (its lease, as a Mutex's)
-- KEYS[2]: the leader key (announce.lua)
--
-- Returns false if nobody holds the lease, else {token, announcement or false}. The
-- caller trusts the announcement only if it names the token that holds the lease: an
-- older one (a leader gone) or none yet (a leader elected an instant ago, announcing)
-- does not.
local token = redis.call('GET', KEYS[1])
if not token then
  return false
end
return {token, redis.call('GET', KEYS[2]) or false}
