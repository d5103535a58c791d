"""Key names: every name and kind gets its own keys, and a name's keys share a slot."""

from __future__ import annotations

import itertools

import pytest
from redis.crc import key_slot

from asynclock._names import NamedLocks, base_key, fence_key, has_hash_tag, owner_key
from asynclock._permits import SemaphorePermits

TRICKY = ["x", "{x}", "{x}:fence", "}x", "x}", "a}b", "{}", "{", "}", "lock:{x}", "{a}{b}", "é"]
KINDS = ["lock", "fence", "semaphore"]


def test_has_hash_tag_follows_the_server_rule() -> None:
    assert has_hash_tag("{x}")
    assert has_hash_tag("a{b}c")
    assert not has_hash_tag("{}x")
    assert not has_hash_tag("x}{")
    assert not has_hash_tag("plain")


def test_no_two_names_or_kinds_share_a_key() -> None:
    keys = [base_key("asynclock:", kind, name) for kind in KINDS for name in TRICKY]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("name", TRICKY)
def test_every_key_of_a_name_is_in_one_slot(name: str) -> None:
    keys = [base_key("asynclock:", kind, name) + suffix for kind in KINDS for suffix in ("", ":x")]
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_names_sharing_a_tag_share_a_slot_and_plain_names_are_readable() -> None:
    slots = {key_slot(owner_key("p:", name).encode()) for name in ["{a}:1", "{a}:2", "x{a}"]}
    assert len(slots) == 1
    assert owner_key("asynclock:", "jobs:report") == "asynclock:lock:{jobs:report}"
    assert fence_key("asynclock:", "jobs:report") == "asynclock:fence:{jobs:report}"
    pairs = itertools.combinations(["x", "{x}", "}x"], 2)
    assert all(owner_key("p:", a) != owner_key("p:", b) for a, b in pairs)


def test_no_two_locks_or_semaphores_share_any_key() -> None:
    # Every key a script touches, tombstones and lines included, for names that end
    # like another name's keys do (`{t}job` and `{t}job:releases`).
    names = [*TRICKY, "{t}job", "{t}job:releases", "{t}job:holders", "{t}job:holders:releases"]
    users: dict[str, tuple[str, str]] = {}
    for name in names:
        for key in NamedLocks("asynclock:", (name,)).keys:
            assert users.setdefault(key, ("lock", name)) == ("lock", name)
        for key in SemaphorePermits("asynclock:", name, 2, 1).keys:
            assert users.setdefault(key, ("semaphore", name)) == ("semaphore", name)
