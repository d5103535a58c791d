"""Argument checks, run before any command is sent to Redis."""

from __future__ import annotations

import math
from collections.abc import Sequence

#: The shortest lease accepted. Below this the drift allowance eats the whole lease.
MIN_TTL = 0.01

#: The longest time asynclock will ask Redis to keep a key: one year. Far past any
#: real lease (auto-extend keeps long jobs), and far from what Redis refuses.
MAX_KEEP = 365 * 24 * 3600.0


def check_name(name: object) -> str:
    """Return ``name`` if it is a non-empty ``str``; raise ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"a lock name must be a str, not {type(name).__name__}")
    if not name:
        raise ValueError("a lock name must not be empty")
    return name


def check_names(names: object) -> tuple[str, ...]:
    """Return ``names`` as a tuple of distinct, valid names; reject an empty list."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
        raise TypeError(f"names must be a list or tuple of str, not {type(names).__name__}")
    checked = tuple(check_name(name) for name in names)
    if not checked:
        raise ValueError("names must not be empty")
    if len(set(checked)) != len(checked):
        duplicates = sorted({name for name in checked if checked.count(name) > 1})
        raise ValueError(f"duplicate lock names: {duplicates}")
    return checked


def check_seconds(
    value: object, what: str, *, minimum: float = 0.0, maximum: float = math.inf
) -> float:
    """Return ``value`` as a float if it is a finite number of seconds above ``minimum``.

    ``bool`` is refused although it is an ``int``: ``ttl=True`` is a mistake, not 1 s.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds):
        raise ValueError(f"{what} must be finite, not {value!r}")
    if seconds <= 0:
        raise ValueError(f"{what} must be positive, not {value!r}")
    if seconds < minimum:
        raise ValueError(f"{what} must be at least {minimum} s, not {value!r}")
    if seconds > maximum:
        raise ValueError(f"{what} must be at most {maximum:g} s, not {value!r}")
    return seconds


def check_optional_seconds(value: object, what: str) -> float | None:
    """Like :func:`check_seconds`, but ``None`` (no limit) is allowed."""
    return None if value is None else check_seconds(value, what)


def check_count(value: object, what: str) -> int:
    """Return ``value`` if it is an ``int`` of at least 1 (``bool`` refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value!r}")
    return value


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a ``str`` without hash-tag braces."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        # The lock's hash tag follows the prefix; braces in the prefix would become
        # the tag instead and put every lock of the application in one cluster slot.
        raise ValueError(f"prefix must not contain '{{' or '}}': {prefix!r}")
    return prefix
