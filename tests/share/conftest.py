"""Fixtures for the shared-cache tests: the S3 server of tests/cache, and one cache folder seen
twice, as the writer's volume and through a real read-only bind mount (a reader's volume)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cache.conftest import s3  # noqa: F401  (the session's S3 server fixture)


@dataclass(frozen=True)
class SharedCache:
    """`writer`: the folder a trusted writer mounts read-write; `reader`: the same folder as a
    tenant's pod mounts it (`ro`: a read-only bind; `rw`: a writable bind, to prove that fetch
    --read-only does not even try to write)."""

    writer: Path
    reader: Path
    view: str


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def can_bind_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture(params=["ro", "rw"])
def shared(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SharedCache]:
    if not can_bind_mount():
        pytest.skip("bind mounts need root and mount(8)")
    writer = tmp_path / "writer-volume"
    reader = tmp_path / "reader-volume"
    writer.mkdir()
    reader.mkdir()
    _mount("--bind", str(writer), str(reader))
    try:
        if request.param == "ro":
            _mount("-o", "remount,ro,bind", str(reader))
            probe = reader / ".write-probe"
            with pytest.raises(OSError, match="Read-only file system"):
                probe.write_text("x")
        yield SharedCache(writer, reader, request.param)
    finally:
        subprocess.run(["umount", str(reader)], check=False, capture_output=True)


@pytest.fixture
def read_only_bind(tmp_path: Path) -> Iterator[SharedCache]:
    """Only the read-only view (for tests where a writable view adds nothing)."""
    if not can_bind_mount():
        pytest.skip("bind mounts need root and mount(8)")
    writer = tmp_path / "writer-volume"
    reader = tmp_path / "reader-volume"
    writer.mkdir()
    reader.mkdir()
    _mount("--bind", str(writer), str(reader))
    try:
        _mount("-o", "remount,ro,bind", str(reader))
        yield SharedCache(writer, reader, "ro")
    finally:
        subprocess.run(["umount", str(reader)], check=False, capture_output=True)
