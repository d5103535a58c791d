-- Report a semaphore's live holders, by the server's clock. Changes nothing.
--
-- KEYS[1]: holders (sorted set)   KEYS[2]: permits (hash)   KEYS[3]: limit
--
-- Returns {live holders, permits they hold, limit in force or -1 when unused}.
local holders, permits_key, limit_key = KEYS[1], KEYS[2], KEYS[3]

local now = clock_ms()

local live = redis.call('ZRANGEBYSCORE', holders, '(' .. now, '+inf')
local in_use = 0
for _, token in ipairs(live) do
  local held = redis.call('HGET', permits_key, token)
  if held then
    in_use = in_use + tonumber(string.match(held, '^(%d+):'))
  end
end
local limit = tonumber(redis.call('GET', limit_key)) or -1
return {#live, in_use, limit}
