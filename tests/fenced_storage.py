"""A toy storage that refuses writes carrying a fencing token below the highest seen.

It lives in Redis (keys ``storage:*``), apart from the locks, as a database of the
application's own would; one Lua script makes each check-and-write atomic.
"""

from __future__ import annotations

import redis

WRITE = """
local highest = tonumber(redis.call('GET', KEYS[1]) or '0')
local token = tonumber(ARGV[1])
if token < highest then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class FencedStorage:
    """``write(value, token)`` succeeds only if ``token`` is not below the highest seen."""

    def __init__(self, url: str, name: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.keys = (f"storage:{name}:highest", f"storage:{name}:value")

    def write(self, value: str, token: int) -> bool:
        """Write ``value`` if ``token`` is current; return whether it was accepted."""
        return bool(self.client.eval(WRITE, 2, *self.keys, token, value))

    def value(self) -> bytes | None:
        """The value last accepted."""
        return self.client.get(self.keys[1])  # type: ignore[return-value]
