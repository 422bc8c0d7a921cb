"""The harness itself: three separate clients of one volume, with their own caches."""

from __future__ import annotations

import os
import time

import pytest

from .conftest import Nodes

pytestmark = pytest.mark.netfs


def test_three_clients_see_one_volume(gluster: Nodes) -> None:
    (gluster[0] / "a").write_bytes(b"from node 0")
    assert (gluster[1] / "a").read_bytes() == b"from node 0"
    assert (gluster[2] / "a").read_bytes() == b"from node 0"
    assert (gluster.brick / "a").read_bytes() == b"from node 0"
    pids = {m.pid for m in gluster.volume.mounts}
    assert len(pids) == 3, "each node is its own client process"


@pytest.mark.parametrize("gluster_options", [{"performance.md-cache-timeout": "60"}])
def test_md_cache_timeout_keeps_stale_attributes(gluster: Nodes) -> None:
    """With md-cache-timeout 60 a client keeps an old size: the harness really caches."""
    (gluster[0] / "f").write_bytes(b"abc")
    assert (gluster[1] / "f").stat().st_size == 3
    with (gluster[0] / "f").open("ab") as fh:
        fh.write(b"defgh")
        fh.flush()
        os.fsync(fh.fileno())
    time.sleep(1.2)  # past the default 1 s timeout, far inside 60 s
    assert (gluster.brick / "f").stat().st_size == 8
    assert (gluster[1] / "f").stat().st_size == 3
