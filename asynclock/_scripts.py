"""Lua scripts: read once from ``scripts/*.lua``, run by SHA, reloaded on NOSCRIPT."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script of the package, identified by its SHA1.

    Calling it sends ``EVALSHA``; a server that does not know the script (a new or
    restarted server, or ``SCRIPT FLUSH``) answers ``NOSCRIPT``, and the call falls
    back to ``EVAL`` with the full text once, which also caches it on that server.
    With Redis Cluster the client routes the call by its keys, which share one slot.
    """

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    @classmethod
    def load(cls, name: str, *, after: tuple[str, ...] = ()) -> Script:
        """Read ``scripts/<name>.lua`` from the package, after the scripts ``after``.

        Redis runs a script as one text, so code shared by several scripts (such as
        ``common.lua``) is put in front of each that uses it.
        """
        folder = resources.files(__package__).joinpath("scripts")
        parts = [folder.joinpath(f"{part}.lua").read_text() for part in (*after, name)]
        return cls(name, "\n".join(parts))

    async def __call__(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        """Run the script on ``client`` with ``keys`` and ``args``; return its reply."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


# Every script of the package, one per method of a Resource (asynclock/_resource.py):
# NamedLocks (asynclock/_names.py) runs the first four, SemaphorePermits
# (asynclock/_semaphore.py) the others. Each that uses common.lua gets it in front.
ACQUIRE = Script.load("acquire", after=("common",))
EXTEND = Script.load("extend")
RELEASE = Script.load("release", after=("common",))
HAND_OVER = Script.load("hand_over", after=("common",))
SEMAPHORE_ACQUIRE = Script.load("semaphore_acquire", after=("common",))
SEMAPHORE_EXTEND = Script.load("semaphore_extend", after=("common",))
SEMAPHORE_RELEASE = Script.load("semaphore_release", after=("common",))
SEMAPHORE_INSPECT = Script.load("semaphore_inspect", after=("common",))
