"""Mount mode's optional prefetch: read an entry's files in parallel, in the init container, so
that the model server's first reads come from the node's page cache instead of the network.

The page cache that a read fills is charged to the memory cgroup of the reader: the init
container's memory limit bounds what can be prefetched (beyond it the kernel evicts the first
files while the last are read). `prefetch_manifest_files` reads at most `budget` bytes (by
default about 80 % of this container's cgroup limit, when it has one) and reports the rest.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook.cache.copy import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_WORKERS,
    PART_BLOCKS,
    EntryVanished,
    Part,
    plan_parts,
    run_parts,
)
from webhook.cache.layout import Manifest

logger = logging.getLogger(__name__)

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
BUDGET_SHARE: Final = 0.8
"""Share of the cgroup's free memory that the prefetch fills, leaving room for the rest."""
PREFETCH_BLOCK_SIZE: Final = 4 << 20
"""Bytes a read: the kernel's readahead makes the requests to the volume, and a small buffer
per thread keeps the init container's own memory low."""


@dataclass(frozen=True)
class PrefetchStats:
    files: int
    bytes: int
    skipped_files: int
    skipped_bytes: int
    seconds: float
    budget: int | None


def _own_cgroups(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    """The folders of this process's memory cgroup (v2 unified, then v1 `memory`), then the
    roots (inside a container the cgroup namespace makes the root the container's own)."""
    folders: list[Path] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            folders.append(cgroup_root / rel)
        elif "memory" in controllers.split(","):
            folders.append(cgroup_root / "memory" / rel)
    return [*folders, cgroup_root, cgroup_root / "memory"]


def memory_budget(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int | None:
    """About 80 % of what this process's memory cgroup (v2 or v1) may still hold; None when it
    has no limit or none can be read."""
    names = (("memory.max", "memory.current"), ("memory.limit_in_bytes", "memory.usage_in_bytes"))
    for folder in _own_cgroups(cgroup_root, proc_cgroup):
        for limit_name, usage_name in names:
            try:
                limit_text = (folder / limit_name).read_text().strip()
                usage = int((folder / usage_name).read_text().strip())
            except (OSError, ValueError):
                continue
            if not limit_text.isdigit() or int(limit_text) >= 1 << 60:  # "max", v1's "unlimited"
                return None
            return max(0, int((int(limit_text) - usage) * BUDGET_SHARE))
    return None


def prefetch_manifest_files(
    root: Path,
    manifest: Manifest,
    *,
    workers: int = DEFAULT_WORKERS,
    block_size: int = PREFETCH_BLOCK_SIZE,
    budget: int | None = -1,
) -> PrefetchStats:
    """Read every byte of the manifest's files under `root` (in parallel parts) into the page
    cache, in manifest order, up to `budget` bytes (-1: `memory_budget()`; None: no budget).
    Files past the budget are left out whole. A missing or resized file raises EntryVanished."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if block_size < 64 * 1024:
        raise ValueError("block_size must be at least 64 KiB")
    began = time.monotonic()
    if budget == -1:
        budget = memory_budget()
    chosen: list[str] = []
    planned = 0
    skipped_files = skipped_bytes = 0
    for entry in manifest.files:
        if budget is not None and planned + entry.size > budget:
            skipped_files += 1
            skipped_bytes += entry.size
            continue
        chosen.append(entry.path)
        planned += entry.size
    keep = set(chosen)
    parts = [
        p
        for p in plan_parts(root, manifest, part_size=PART_BLOCKS * DEFAULT_BLOCK_SIZE)
        if p.rel in keep
    ]
    total = run_parts(parts, _Reader(block_size).read_part, workers=workers)
    seconds = time.monotonic() - began
    if skipped_files:
        logger.warning(
            "prefetch: %d files (%d bytes) left out: they do not fit in this container's "
            "memory budget of %d bytes (page cache is charged to the reader's memory limit)",
            skipped_files,
            skipped_bytes,
            budget,
        )
    logger.info("prefetched %d files (%d bytes) in %.2fs", len(keep), total, seconds)
    return PrefetchStats(
        files=len(keep),
        bytes=total,
        skipped_files=skipped_files,
        skipped_bytes=skipped_bytes,
        seconds=seconds,
        budget=budget,
    )


class _Reader:
    """Reads parts with `preadv` into one buffer per thread. (`sendfile` to /dev/null fills the
    page cache too, with less CPU, but a process reading the same files right after it was
    measured at cold-cache speed now and then; plain reads never were.)"""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._local = threading.local()

    def read_part(self, part: Part) -> int:
        try:
            fd = os.open(part.source, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise EntryVanished(f"{part.source} disappeared during the prefetch") from exc
        try:
            size = os.fstat(fd).st_size
            if size != part.size:
                raise EntryVanished(f"{part.source} is {size} bytes, the manifest says {part.size}")
            if part.offset == 0 and part.length:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            done = self._read(fd, part)
        finally:
            os.close(fd)
        if done != part.length:
            raise EntryVanished(
                f"{part.source} ended at byte {part.offset + done}, the manifest says {part.size}"
            )
        return done

    def _read(self, fd: int, part: Part) -> int:
        buffer: memoryview | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(self.block_size))
        done = 0
        while done < part.length:
            want = min(self.block_size, part.length - done)
            n = os.preadv(fd, [buffer[:want]], part.offset + done)
            if n == 0:
                break
            done += n
        return done
