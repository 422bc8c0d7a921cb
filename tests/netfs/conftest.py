"""Fixtures of the network-filesystem tests: a private GlusterFS with three client mounts
(`gluster`), the moto S3 server of tests/cache with extra models, and the fault-injecting
FUSE filesystem (`faultfs`). Without FUSE or GlusterFS the tests are skipped with the reason;
with KSERVE_CACHE_REQUIRE_NETFS=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from tests.cache.conftest import BUCKET, REGION, S3, s3

from . import faultfs as ff
from . import gluster as g
from . import procs

__all__ = ["s3"]

REQUIRED = os.environ.get("KSERVE_CACHE_REQUIRE_NETFS") == "1"

# Extra models on the S3 server: many small files (slow to delete on gluster), and one big.
MANY_FILES = 120
NETFS_MODELS = {
    **{f"many/part-{i:03d}.bin": os.urandom(2048) for i in range(MANY_FILES)},
    "many/config.json": b'{"arch": "many"}\n',
    "big/model.bin": os.urandom(24 << 20),
    "big/tokenizer.json": b'{"vocab": 3}\n',
    "big/extra.bin": os.urandom(4 << 20),
}


@pytest.fixture(autouse=True)
def _reap() -> Iterator[None]:
    yield
    procs.reap_all()


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"KSERVE_CACHE_REQUIRE_NETFS=1 but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def models(s3: S3) -> S3:
    """The S3 server with the llama model of tests/cache plus `many/` and `big/`."""
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        region_name=REGION,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
    )
    try:
        for name, body in NETFS_MODELS.items():
            if name not in s3.objects:
                client.put_object(Bucket=BUCKET, Key=name, Body=body)
                s3.objects[name] = body
    finally:
        client.close()
    return s3


@pytest.fixture(scope="session")
def gluster_volume() -> Iterator[g.Volume]:
    """This worker's GlusterFS volume on the private glusterd (started once per session)."""
    reason = g.unavailable_reason()
    if reason is not None:
        unavailable(reason)
    try:
        with g.gluster_volume() as volume:
            yield volume
    except g.GlusterError as exc:
        unavailable(f"GlusterFS could not start: {exc}")


@pytest.fixture
def gluster_options() -> dict[str, str]:
    """Volume options (`performance.md-cache-timeout`) and client mount arguments
    (`--attribute-timeout`) for a test; override with
    `@pytest.mark.parametrize("gluster_options", [{...}])`."""
    return {}


@dataclass(frozen=True)
class Nodes:
    """One cache root seen through three client mounts (node 0, 1, 2) and on the brick."""

    roots: tuple[Path, ...]
    brick: Path
    volume: g.Volume

    def __getitem__(self, index: int) -> Path:
        return self.roots[index]


@pytest.fixture
def gluster(gluster_volume: g.Volume, gluster_options: dict[str, str]) -> Iterator[Nodes]:
    """A fresh cache root folder on the gluster volume, as seen from each of the 3 mounts."""
    mounts = gluster_volume.configure(gluster_options)
    name = f"t-{secrets.token_hex(4)}"
    (mounts[0] / name).mkdir()
    roots = tuple(m / name for m in mounts)
    for root in roots:  # every client has looked the folder up before the test starts
        root.stat()
    yield Nodes(roots, gluster_volume.brick / name, gluster_volume)
    shutil.rmtree(roots[0], ignore_errors=True)
    shutil.rmtree(gluster_volume.brick / name, ignore_errors=True)


@pytest.fixture(scope="session")
def faultfs_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ff.FaultFS]:
    reason = ff.unavailable_reason()
    if reason is not None:
        unavailable(reason)
    with ff.faultfs(tmp_path_factory.mktemp("faultfs")) as fs:
        yield fs


@pytest.fixture
def faultfs(faultfs_session: ff.FaultFS) -> Iterator[ff.FaultFS]:
    """The fault-injecting FUSE filesystem, faults off, with an empty cache root `fs.root`
    (through the mount; `fs.backing_root` is the same folder on the backing store)."""
    fs = faultfs_session
    fs.set()
    name = f"t-{secrets.token_hex(4)}"
    (fs.mount / name).mkdir()
    fs.root = fs.mount / name
    fs.backing_root = fs.backing / name
    yield fs
    fs.set()
    shutil.rmtree(fs.backing / name, ignore_errors=True)
