"""The private servers of the demo, the benchmarks and the tests (``asynclock._server``)."""

from __future__ import annotations

import glob
import os
import tempfile

import pytest

from asynclock._server import LocalCluster, RedisServer


def server_dirs() -> set[str]:
    """The working directories of private servers that exist now."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "asynclock-server-*")))


def test_a_server_that_does_not_start_leaves_no_directory_behind() -> None:
    before = server_dirs()
    server = RedisServer(args=("--no-such-option", "1"))
    with pytest.raises(RuntimeError, match="did not start"), server:
        pass  # pragma: no cover
    assert server_dirs() == before


def test_a_cluster_that_does_not_start_leaves_no_directory_behind() -> None:
    before = server_dirs()
    cluster = LocalCluster(primaries=3)
    cluster.servers[-1].args += ("--no-such-option", "1")  # one node fails to start
    with pytest.raises(RuntimeError, match="did not start"), cluster:
        pass  # pragma: no cover
    assert server_dirs() == before
