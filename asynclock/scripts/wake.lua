-- Wake every caller waiting on a single flight's channel: its leader let the lease go
-- without landing an outcome (cancelled, failed to land, or lost the lease), and one
-- of them is to lead now. A release publishes only to processes standing in a lock's
-- line, where followers do not stand.
--
-- KEYS[1]: the outcome key, whose channel the followers watch (sharded on a cluster)
--
-- Returns the number of subscribers reached (on a cluster, of that shard).
return redis.call('PUBLISH', KEYS[1], '')
