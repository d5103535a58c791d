-- Announce a new leader: store who it is beside its lease, and tell the watchers.
--
-- KEYS[1]: the election's owner key (its lease, as a Mutex's)
-- KEYS[2]: the leader key: the announcement, kept a day (FENCE_IDLE_MS) after the last
--          one, so that whoever reads it can compare its token with the lease's
-- ARGV[1]: the new leader's token
-- ARGV[2]: the announcement: JSON with the identity, the term and the token
--
-- Returns 1 if the token still held the lease and the announcement was made, else 0
-- (the lease was lost before it could be announced: nothing is written).
--
-- Both keys share a hash tag, so on a cluster they are in one slot; the announcement
-- is published on the leader key's own channel (sharded on a cluster).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', FENCE_IDLE_MS)
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
