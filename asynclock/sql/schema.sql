-- asynclock's tables and functions on PostgreSQL, in the schema `asynclock`.
--
-- Installed by PostgresBackend when it connects (CREATE ... IF NOT EXISTS, CREATE OR
-- REPLACE FUNCTION), under a transaction-scoped advisory lock so that replicas
-- starting together install it once. Each function is one atomic step, as a Lua
-- script is on Redis, and one round trip: the client holds no connection between
-- calls, and none while a lock is held, so it works behind PgBouncer in transaction
-- mode (session advisory locks would leak there: they outlive the transaction and
-- stay with a server connection another client gets next).
--
-- Keys are the strings the Redis backend uses (`asynclock:lock:{name}`, ...), so a
-- lock's names and kinds never collide. Times come from the database clock, `now()`
-- (the transaction's start, one reading per call), never from a client's.
--
-- Releases wake waiters with NOTIFY on the one channel `asynclock`, the payload the
-- SHA-224 of the released key's channel (a channel is at most 63 bytes, a payload
-- 8000; a digest fits whatever the name). NOTIFY is sent at commit, so a waiter never
-- wakes before the release it hears of is visible.
--
-- The functions rely on READ COMMITTED, PostgreSQL's default: after waiting for a
-- lock, the next statement sees what the lock's previous holder committed. Under a
-- stricter default they refuse to run rather than count holders from an old snapshot.
--
-- Locks are taken in one order, so that no two calls wait on each other: the
-- transaction locks of tokens (lock_token), then of a semaphore or read-write lock
-- (lock_key), then lease rows by key, then fence rows (next_fence).

CREATE SCHEMA IF NOT EXISTS asynclock;

-- Fencing tokens, per name (as next_fence in scripts/common.lua): one more than the
-- name's last, and never below the database clock in microseconds. So they keep
-- increasing where the counter went back (a restore from an older backup, a failover
-- to a replica that had not received the latest), and a name whose row was dropped
-- after a day unused starts again from the clock, which has moved on by a day. The
-- same floor as on Redis: tokens of one name stay increasing when a service moves
-- between stores whose clocks agree.
CREATE TABLE IF NOT EXISTS asynclock.fences (
  key text PRIMARY KEY,
  last bigint NOT NULL,
  used_at timestamptz NOT NULL
);
-- Arrival order in the lines of read-write locks.
CREATE SEQUENCE IF NOT EXISTS asynclock.arrival;

-- Exclusive leases (Mutex, MultiLock, and the leases of flights and elections): one
-- row per held name. A row past its expiry counts as free, and is taken over.
CREATE TABLE IF NOT EXISTS asynclock.leases (
  key text PRIMARY KEY,
  token text NOT NULL,
  fence bigint NOT NULL,
  expires_at timestamptz NOT NULL
);

-- Tokens recently released (30 s): a release sent again still counts, and an acquire
-- or a hand-over reaching the server after its token's clean-up takes nothing.
CREATE TABLE IF NOT EXISTS asynclock.released (
  token text PRIMARY KEY,
  at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS released_at ON asynclock.released (at);

-- Semaphore holders: one row per holder, each expiring on its own.
CREATE TABLE IF NOT EXISTS asynclock.permits (
  key text NOT NULL,
  token text NOT NULL,
  permits integer NOT NULL,
  lim integer NOT NULL,
  fence bigint NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (key, token)
);

-- Read-write locks: holders ('r' or 'w'), and the line of waiting sides of processes
-- ('r:<id>', 'w:<id>') whose places lapse unless renewed. The last writer's fence is
-- the lock's row in `fences`.
CREATE TABLE IF NOT EXISTS asynclock.rw_holders (
  key text NOT NULL,
  token text NOT NULL,
  mode text NOT NULL,
  fence bigint NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (key, token)
);
CREATE TABLE IF NOT EXISTS asynclock.rw_line (
  key text NOT NULL,
  member text NOT NULL,
  arrival bigint NOT NULL,
  lapse timestamptz NOT NULL,
  PRIMARY KEY (key, member)
);

-- Single flights' outcomes and elections' announcements.
CREATE TABLE IF NOT EXISTS asynclock.outcomes (
  key text PRIMARY KEY,
  fence bigint NOT NULL,
  until timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  outcome bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS asynclock.leaders (
  key text PRIMARY KEY,
  token text NOT NULL,
  announcement text NOT NULL
);

-- The next fencing token of `k`. Callers hold the lock of `k` first (its lease row, or
-- the transaction lock of its semaphore or read-write lock), so that no two
-- transactions wait on each other's fence rows.
CREATE OR REPLACE FUNCTION asynclock.next_fence(k text) RETURNS bigint
LANGUAGE sql AS $$
  INSERT INTO asynclock.fences AS f (key, last, used_at)
  VALUES (k, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, now())
  ON CONFLICT (key) DO UPDATE SET last = greatest(excluded.last, f.last + 1), used_at = now()
  RETURNING last
$$;

-- Wake the waiters of `channel`.
CREATE OR REPLACE FUNCTION asynclock.wake(channel text) RETURNS void
LANGUAGE sql AS $$
  SELECT pg_notify('asynclock', encode(sha224(convert_to(channel, 'UTF8')), 'hex'))
$$;

-- Refuse to run under an isolation level stricter than READ COMMITTED (see above).
CREATE OR REPLACE FUNCTION asynclock.check_isolation() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'asynclock needs READ COMMITTED transactions (the default), not %',
      current_setting('transaction_isolation') USING ERRCODE = '0A000';
  END IF;
END $$;

-- Serialise the calls about one token: an acquire (or a hand-over to it) and its
-- clean-up release. Whichever comes second sees what the first committed: a clean-up
-- that ran first leaves a tombstone the acquire finds, an acquire that ran first
-- leaves a row the release deletes. So a token released can never take a lock after.
CREATE OR REPLACE FUNCTION asynclock.lock_token(tok text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM asynclock.check_isolation();
  PERFORM pg_advisory_xact_lock(hashtextextended('token:' || tok, 0));
END $$;

-- Serialise the calls on one semaphore or read-write lock, whose counting needs it.
CREATE OR REPLACE FUNCTION asynclock.lock_key(k text) RETURNS void
LANGUAGE sql AS $$ SELECT pg_advisory_xact_lock(hashtextextended('key:' || k, 0)) $$;

-- Milliseconds from now to `t` (at least 1), or -1 for none.
CREATE OR REPLACE FUNCTION asynclock.ms_until(t timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN t IS NULL THEN -1
              ELSE greatest(1, ceil(extract(epoch FROM t - now()) * 1000))::bigint END
$$;

-- Remember that `tok` released; returns whether it had already (a release sent again).
-- The caller holds the token's lock.
CREATE OR REPLACE FUNCTION asynclock.remember_release(tok text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  fresh boolean;
BEGIN
  INSERT INTO asynclock.released (token, at) VALUES (tok, now())
    ON CONFLICT (token) DO NOTHING;
  GET DIAGNOSTICS fresh = ROW_COUNT;
  RETURN NOT fresh;
END $$;

-- Drop what nobody needs any more: releases older than 30 s, leases and holders gone
-- for a minute, outcomes past their time, fence rows unused for a day (the clock
-- floor keeps a name's next token above them), announcements of leases gone. Called
-- by the client now and then, in a transaction of its own; rows locked by a call in
-- progress are skipped, never waited for.
CREATE OR REPLACE FUNCTION asynclock.sweep() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM asynclock.released WHERE token IN (
    SELECT token FROM asynclock.released WHERE at < now() - interval '30 seconds'
    FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.leases WHERE key IN (
    SELECT key FROM asynclock.leases WHERE expires_at < now() - interval '1 minute'
    FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.permits WHERE (key, token) IN (
    SELECT key, token FROM asynclock.permits WHERE expires_at < now() - interval '1 minute'
    FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.rw_holders WHERE (key, token) IN (
    SELECT key, token FROM asynclock.rw_holders
    WHERE expires_at < now() - interval '1 minute' FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.rw_line WHERE (key, member) IN (
    SELECT key, member FROM asynclock.rw_line WHERE lapse < now() - interval '1 minute'
    FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.outcomes WHERE key IN (
    SELECT key FROM asynclock.outcomes WHERE expires_at < now() FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.fences WHERE key IN (
    SELECT key FROM asynclock.fences WHERE used_at < now() - interval '1 day'
    FOR UPDATE SKIP LOCKED);
  DELETE FROM asynclock.leaders WHERE key IN (
    SELECT a.key FROM asynclock.leaders AS a
    WHERE NOT EXISTS (SELECT 1 FROM asynclock.leases AS l WHERE l.key = a.key)
    FOR UPDATE SKIP LOCKED);
END $$;

-- Take every key for `tok`, or none. Returns {1, fence_1, ..., fence_n} (a key
-- already holding `tok` keeps its fence: a retried acquire), or {0, ms} with the time
-- until the first other holder's lease runs out (-1: unknown, or a released token).
-- The keys are taken in sorted order, so that two multi-key acquires never deadlock.
CREATE OR REPLACE FUNCTION asynclock.acquire(keys text[], tok text, ttl_ms bigint)
RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  taken integer;
  fences bigint[];
  wait bigint;
BEGIN
  PERFORM asynclock.lock_token(tok);
  IF EXISTS (SELECT 1 FROM asynclock.released WHERE token = tok) THEN
    RETURN ARRAY[0, -1];
  END IF;
  BEGIN
    -- Fence 0 marks a key taken now; a key that already held `tok` keeps its fence.
    WITH rows AS (
      INSERT INTO asynclock.leases AS l (key, token, fence, expires_at)
      SELECT k, tok, 0, now() + ttl_ms * interval '1 ms'
      FROM unnest(keys) AS k ORDER BY k
      ON CONFLICT (key) DO UPDATE
        SET token = excluded.token, expires_at = excluded.expires_at,
            fence = CASE WHEN l.token = excluded.token THEN l.fence ELSE 0 END
        WHERE l.token = excluded.token OR l.expires_at <= now()
      RETURNING 1
    )
    SELECT count(*) INTO taken FROM rows;
    IF taken < cardinality(keys) THEN
      RAISE EXCEPTION USING ERRCODE = 'AL001';  -- undoes the keys taken
    END IF;
  EXCEPTION WHEN SQLSTATE 'AL001' THEN
    SELECT asynclock.ms_until(min(expires_at)) INTO wait FROM asynclock.leases
      WHERE key = ANY (keys) AND token <> tok AND expires_at > now();
    RETURN ARRAY[0, wait];
  END;
  -- Every key's row is ours now (locked until commit): their fences next.
  UPDATE asynclock.leases SET fence = asynclock.next_fence(key)
    WHERE key = ANY (keys) AND fence = 0;
  SELECT array_agg(fence ORDER BY array_position(keys, key)) INTO fences
    FROM asynclock.leases WHERE key = ANY (keys);
  RETURN 1 || fences;
END $$;

-- Reset every key's expiry if `tok` still holds them all; never re-take.
CREATE OR REPLACE FUNCTION asynclock.extend(keys text[], tok text, ttl_ms bigint)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  held integer;
BEGIN
  SELECT count(*) INTO held FROM (
    SELECT 1 FROM asynclock.leases
    WHERE key = ANY (keys) AND token = tok AND expires_at > now() ORDER BY key FOR UPDATE
  ) AS mine;
  IF held < cardinality(keys) THEN
    RETURN false;
  END IF;
  UPDATE asynclock.leases SET expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = ANY (keys) AND token = tok;
  RETURN true;
END $$;

-- Free the keys `tok` holds, waking their waiters; returns whether it held them all
-- (or released them all before: the same release sent again).
CREATE OR REPLACE FUNCTION asynclock.release(keys text[], tok text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  live integer := 0;
  gone record;
  repeated boolean;
BEGIN
  PERFORM asynclock.lock_token(tok);
  PERFORM 1 FROM asynclock.leases WHERE key = ANY (keys) AND token = tok
    ORDER BY key FOR UPDATE;  -- in key order, as every call locks lease rows
  FOR gone IN
    DELETE FROM asynclock.leases WHERE key = ANY (keys) AND token = tok
    RETURNING key, expires_at > now() AS alive
  LOOP
    IF gone.alive THEN
      live := live + 1;
      PERFORM asynclock.wake(gone.key);
    END IF;
  END LOOP;
  repeated := asynclock.remember_release(tok);
  RETURN live = cardinality(keys) OR (repeated AND live = 0);
END $$;

-- Give every key `tok` holds straight to `successor` (a waiter of the caller's
-- process), with new fences; or, if `tok` does not hold them all or `successor` has
-- given up (released), release. Returns {1, fence_1, ...} after a hand-over, else
-- {released} (1 or 0, as release()).
CREATE OR REPLACE FUNCTION asynclock.hand_over(
  keys text[], tok text, successor text, ttl_ms bigint
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  held integer;
  fences bigint[];
BEGIN
  -- Both tokens' locks, in one order: the successor's clean-up must not run between
  -- its tombstone check and the hand-over.
  PERFORM asynclock.lock_token(least(tok, successor));
  PERFORM asynclock.lock_token(greatest(tok, successor));
  SELECT count(*) INTO held FROM (
    SELECT 1 FROM asynclock.leases
    WHERE key = ANY (keys) AND token = tok AND expires_at > now() ORDER BY key FOR UPDATE
  ) AS mine;
  IF held < cardinality(keys)
     OR EXISTS (SELECT 1 FROM asynclock.released WHERE token = successor) THEN
    RETURN ARRAY[asynclock.release(keys, tok)::integer];
  END IF;
  WITH given AS (
    UPDATE asynclock.leases
    SET token = successor, fence = asynclock.next_fence(key),
        expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = ANY (keys) AND token = tok
    RETURNING key, fence
  )
  SELECT array_agg(fence ORDER BY array_position(keys, key)) INTO fences FROM given;
  PERFORM asynclock.remember_release(tok);
  RETURN 1 || fences;
END $$;

-- Take `wanted` permits of the semaphore `sem` of `lim` for `tok`. Returns {1, fence}
-- (a holder already holding `tok` keeps its fence), {0, ms} until the first holder's
-- lease runs out (-1: none, or a released token), or {-1, limit in force} when live
-- holders use another limit. Serialised per semaphore by a transaction lock.
CREATE OR REPLACE FUNCTION asynclock.sem_acquire(
  sem text, tok text, ttl_ms bigint, lim integer, wanted integer
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  in_force integer;
  in_use integer;
  f bigint;
BEGIN
  PERFORM asynclock.lock_token(tok);
  PERFORM asynclock.lock_key(sem);
  DELETE FROM asynclock.permits WHERE key = sem AND expires_at <= now();
  IF EXISTS (SELECT 1 FROM asynclock.released WHERE token = tok) THEN
    RETURN ARRAY[0, -1];
  END IF;
  UPDATE asynclock.permits SET expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = sem AND token = tok RETURNING fence INTO f;
  IF FOUND THEN
    RETURN ARRAY[1, f];
  END IF;
  SELECT min(p.lim), coalesce(sum(p.permits), 0) INTO in_force, in_use
    FROM asynclock.permits AS p WHERE key = sem;
  IF in_force IS NOT NULL AND in_force <> lim THEN
    RETURN ARRAY[-1, in_force];
  END IF;
  IF in_use + wanted > lim THEN
    RETURN ARRAY[0, (SELECT asynclock.ms_until(min(expires_at))
                     FROM asynclock.permits WHERE key = sem)];
  END IF;
  f := asynclock.next_fence(sem);
  INSERT INTO asynclock.permits (key, token, permits, lim, fence, expires_at)
    VALUES (sem, tok, wanted, lim, f, now() + ttl_ms * interval '1 ms');
  RETURN ARRAY[1, f];
END $$;

CREATE OR REPLACE FUNCTION asynclock.sem_extend(sem text, tok text, ttl_ms bigint)
RETURNS boolean LANGUAGE sql AS $$
  WITH kept AS (
    UPDATE asynclock.permits SET expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = sem AND token = tok AND expires_at > now() RETURNING 1
  ) SELECT EXISTS (SELECT 1 FROM kept)
$$;

CREATE OR REPLACE FUNCTION asynclock.sem_release(sem text, tok text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  alive boolean;
  repeated boolean;
BEGIN
  PERFORM asynclock.lock_token(tok);
  DELETE FROM asynclock.permits WHERE key = sem AND token = tok
    RETURNING expires_at > now() INTO alive;
  IF alive THEN
    PERFORM asynclock.wake(sem);
  END IF;
  repeated := asynclock.remember_release(tok);
  RETURN repeated OR coalesce(alive, false);
END $$;

-- {live holders, permits in use, limit in force (-1: none)}.
CREATE OR REPLACE FUNCTION asynclock.sem_inspect(sem text) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
  SELECT ARRAY[count(*), coalesce(sum(permits), 0), coalesce(min(lim), -1)]::bigint[]
  FROM asynclock.permits WHERE key = sem AND expires_at > now()
$$;

-- A read-write lock `rw` (its base key): take side `side` ('r' or 'w') for `tok`. The
-- rule is scripts/rw_acquire.lua's: nobody ahead of the caller may be in its way. A
-- reader enters unless a writer holds, or a writer waits ahead of it in line; a
-- writer enters unless anyone holds, or anyone waits ahead of it. `who` is the
-- caller's side of its process in line ('' : not in line); `on_success` what a success
-- does with it ('', 'leave', 'back'). Returns {1, fence} or {0, ms}.
CREATE OR REPLACE FUNCTION asynclock.rw_acquire(
  rw text, tok text, ttl_ms bigint, side text, who text, on_success text, place_ms bigint
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
  f bigint;
  mine bigint;
  writer_until timestamptz;
  wait bigint := NULL;
BEGIN
  PERFORM asynclock.lock_token(tok);
  PERFORM asynclock.lock_key(rw);
  DELETE FROM asynclock.rw_holders WHERE key = rw AND expires_at <= now();
  DELETE FROM asynclock.rw_line WHERE key = rw AND lapse <= now();
  IF EXISTS (SELECT 1 FROM asynclock.released WHERE token = tok) THEN
    RETURN ARRAY[0, -1];
  END IF;
  UPDATE asynclock.rw_holders SET expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = rw AND token = tok AND mode = side RETURNING fence INTO f;
  IF NOT FOUND THEN
    IF who <> '' THEN
      SELECT arrival INTO mine FROM asynclock.rw_line WHERE key = rw AND member = who;
    END IF;
    SELECT expires_at INTO writer_until FROM asynclock.rw_holders
      WHERE key = rw AND mode = 'w';
    IF writer_until IS NOT NULL THEN
      wait := asynclock.ms_until(writer_until);
    ELSIF side = 'r' THEN
      IF EXISTS (SELECT 1 FROM asynclock.rw_line AS l WHERE l.key = rw
                 AND l.member LIKE 'w:%' AND (mine IS NULL OR l.arrival < mine)) THEN
        wait := -1;
      END IF;
    ELSIF EXISTS (SELECT 1 FROM asynclock.rw_holders WHERE key = rw) THEN
      SELECT asynclock.ms_until(min(expires_at)) INTO wait
        FROM asynclock.rw_holders WHERE key = rw;
    ELSIF EXISTS (SELECT 1 FROM asynclock.rw_line AS l WHERE l.key = rw
                  AND (mine IS NULL OR l.arrival < mine)) THEN
      wait := -1;
    END IF;
    IF wait IS NOT NULL THEN
      IF who <> '' THEN  -- take (or keep) the caller's place in line
        INSERT INTO asynclock.rw_line (key, member, arrival, lapse)
          VALUES (rw, who, nextval('asynclock.arrival'), now() + place_ms * interval '1 ms')
          ON CONFLICT (key, member) DO UPDATE SET lapse = excluded.lapse;
      END IF;
      RETURN ARRAY[0, wait];
    END IF;
    IF side = 'w' THEN
      f := asynclock.next_fence(rw);
    ELSE
      f := coalesce((SELECT last FROM asynclock.fences WHERE key = rw), 0);
    END IF;
    INSERT INTO asynclock.rw_holders (key, token, mode, fence, expires_at)
      VALUES (rw, tok, side, f, now() + ttl_ms * interval '1 ms');
  END IF;
  IF who <> '' AND on_success = 'leave' THEN
    DELETE FROM asynclock.rw_line WHERE key = rw AND member = who;
  ELSIF who <> '' AND on_success = 'back' THEN
    INSERT INTO asynclock.rw_line (key, member, arrival, lapse)
      VALUES (rw, who, nextval('asynclock.arrival'), now() + place_ms * interval '1 ms')
      ON CONFLICT (key, member) DO UPDATE SET arrival = excluded.arrival, lapse = excluded.lapse;
  END IF;
  RETURN ARRAY[1, f];
END $$;

CREATE OR REPLACE FUNCTION asynclock.rw_extend(rw text, tok text, ttl_ms bigint, side text)
RETURNS boolean LANGUAGE sql AS $$
  WITH kept AS (
    UPDATE asynclock.rw_holders SET expires_at = now() + ttl_ms * interval '1 ms'
    WHERE key = rw AND token = tok AND mode = side AND expires_at > now() RETURNING 1
  ) SELECT EXISTS (SELECT 1 FROM kept)
$$;

CREATE OR REPLACE FUNCTION asynclock.rw_release(rw text, tok text, side text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  alive boolean;
  repeated boolean;
BEGIN
  PERFORM asynclock.lock_token(tok);
  DELETE FROM asynclock.rw_holders WHERE key = rw AND token = tok AND mode = side
    RETURNING expires_at > now() INTO alive;
  IF alive THEN
    PERFORM asynclock.wake(rw || ':read');
    PERFORM asynclock.wake(rw || ':write');
  END IF;
  repeated := asynclock.remember_release(tok);
  RETURN repeated OR coalesce(alive, false);
END $$;

CREATE OR REPLACE FUNCTION asynclock.rw_leave(rw text, who text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM asynclock.rw_line WHERE key = rw AND member = who;
  IF FOUND THEN
    PERFORM asynclock.wake(rw || ':read');
    PERFORM asynclock.wake(rw || ':write');
  END IF;
END $$;

-- {a writer holds (0/1), live readers, writers waiting in line}.
CREATE OR REPLACE FUNCTION asynclock.rw_inspect(rw text) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
  SELECT ARRAY[
    (SELECT count(*) FROM asynclock.rw_holders
     WHERE key = rw AND mode = 'w' AND expires_at > now()),
    (SELECT count(*) FROM asynclock.rw_holders
     WHERE key = rw AND mode = 'r' AND expires_at > now()),
    (SELECT count(*) FROM asynclock.rw_line
     WHERE key = rw AND member LIKE 'w:%' AND lapse > now())
  ]::bigint[]
$$;

-- A single flight (scripts/look.lua's rule): what a caller finds. `floor` is NULL on
-- arrival. Returns (kind, floor, ms, outcome): kind 2 with an outcome to take, 1 while
-- a leader holds the lease (ms 0: it landed and is releasing), 0 when nobody does.
-- The counter is the name's last fencing token (next_fence).
CREATE OR REPLACE FUNCTION asynclock.look(owner text, landing text, floor bigint)
RETURNS TABLE (kind integer, lowest bigint, ms bigint, outcome bytea)
LANGUAGE plpgsql AS $$
DECLARE
  lease asynclock.leases%ROWTYPE;
  landed asynclock.outcomes%ROWTYPE;
  counter bigint;
BEGIN
  SELECT * INTO lease FROM asynclock.leases WHERE key = owner AND expires_at > now();
  SELECT * INTO landed FROM asynclock.outcomes AS o
    WHERE o.key = landing AND o.expires_at > now();
  counter := coalesce((SELECT last FROM asynclock.fences AS f WHERE f.key = owner), 0);
  lowest := floor;
  IF lowest IS NULL THEN
    lowest := counter + 1;
    IF lease.key IS NOT NULL AND landed.fence IS DISTINCT FROM lease.fence THEN
      lowest := lease.fence;
    END IF;
  END IF;
  IF landed.key IS NOT NULL AND (landed.fence >= lowest OR now() < landed.until) THEN
    RETURN QUERY SELECT 2, lowest, 0::bigint, landed.outcome;
  ELSIF lease.key IS NOT NULL AND landed.fence IS NOT DISTINCT FROM lease.fence THEN
    RETURN QUERY SELECT 1, lowest, 0::bigint, NULL::bytea;
  ELSIF lease.key IS NOT NULL THEN
    RETURN QUERY SELECT 1, lowest, asynclock.ms_until(lease.expires_at), NULL::bytea;
  ELSE
    RETURN QUERY SELECT 0, lowest, -2::bigint, NULL::bytea;
  END IF;
END $$;

-- Land a flight's outcome while `tok` still holds its lease, and wake the followers.
CREATE OR REPLACE FUNCTION asynclock.land(
  owner text, landing text, tok text, f bigint, result bytea, keep_ms bigint, grace_ms bigint
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM asynclock.leases
    WHERE key = owner AND token = tok AND expires_at > now() FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO asynclock.outcomes AS o (key, fence, until, expires_at, outcome)
    VALUES (landing, f, now() + keep_ms * interval '1 ms',
            now() + greatest(keep_ms, grace_ms) * interval '1 ms', result)
    ON CONFLICT (key) DO UPDATE SET fence = excluded.fence, until = excluded.until,
      expires_at = excluded.expires_at, outcome = excluded.outcome;
  PERFORM asynclock.wake(landing);
  RETURN true;
END $$;

-- An election's leader: announce while `tok` holds the lease; read both in one step.
CREATE OR REPLACE FUNCTION asynclock.announce(owner text, announcing text, tok text, said text)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM asynclock.leases
    WHERE key = owner AND token = tok AND expires_at > now() FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO asynclock.leaders (key, token, announcement) VALUES (owner, tok, said)
    ON CONFLICT (key) DO UPDATE SET token = excluded.token, announcement = excluded.announcement;
  PERFORM asynclock.wake(announcing);
  RETURN true;
END $$;

CREATE OR REPLACE FUNCTION asynclock.leader(owner text)
RETURNS TABLE (token text, announcement text) LANGUAGE sql STABLE AS $$
  SELECT l.token, CASE WHEN a.token = l.token THEN a.announcement END
  FROM asynclock.leases AS l LEFT JOIN asynclock.leaders AS a ON a.key = l.key
  WHERE l.key = owner AND l.expires_at > now()
$$;
