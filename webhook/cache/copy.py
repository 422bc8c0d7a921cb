"""Copy mode: copy a published entry into the pod's own folder with kernel copies, in parallel.

`os.copy_file_range` lets the kernel (or an NFS 4.2 server) copy without user-space buffers;
where it is refused (across filesystems on older kernels) `shutil.copyfile` uses `sendfile`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook.cache.layout import Manifest

logger = logging.getLogger(__name__)

DEFAULT_WORKERS: Final = 8
_CHUNK: Final = 1 << 30
_NO_COPY_FILE_RANGE: Final = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}
)


@dataclass(frozen=True)
class CopyStats:
    files: int
    bytes: int


class EntryVanished(RuntimeError):
    """The entry was evicted (or changed) while it was being copied: the copy is incomplete."""


def copy_manifest_files(
    source: Path, dest: Path, manifest: Manifest, *, workers: int = DEFAULT_WORKERS
) -> CopyStats:
    """Copy exactly the files the manifest lists and check each size against it.

    Walking the folder instead would silently copy nothing from an entry that gc evicted a
    moment ago; the manifest says what a complete copy is.
    """
    jobs: list[tuple[Path, Path, int]] = []
    for entry in manifest.files:
        rel = Path(entry.path)
        if rel.is_absolute() or ".." in rel.parts:
            raise EntryVanished(
                f"manifest of {source} lists a path outside the entry: {entry.path}"
            )
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        jobs.append((source / rel, dest / rel, entry.size))

    def one(job: tuple[Path, Path, int]) -> int:
        src, dst, expected = job
        try:
            size = copy_file(src, dst)
        except FileNotFoundError as exc:
            raise EntryVanished(f"{src} disappeared during the copy") from exc
        if size != expected:
            raise EntryVanished(f"{src} is {size} bytes, the manifest says {expected}")
        return size

    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    if jobs:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            for size in pool.map(one, jobs):
                total += size
    logger.info("copied %d files (%d bytes) from %s to %s", len(jobs), total, source, dest)
    return CopyStats(files=len(jobs), bytes=total)


def copy_file(source: Path, dest: Path) -> int:
    """Copy one file with `copy_file_range`, falling back to `shutil.copyfile`; its size."""
    with source.open("rb") as src:
        size = os.fstat(src.fileno()).st_size
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as dst:
            try:
                done = 0
                while done < size:
                    n = os.copy_file_range(src.fileno(), dst.fileno(), min(_CHUNK, size - done))
                    if n == 0:
                        break
                    done += n
                if done == size:
                    shutil.copymode(source, dest)
                    return size
            except OSError as exc:
                if exc.errno not in _NO_COPY_FILE_RANGE:
                    raise
    shutil.copyfile(source, dest)
    shutil.copymode(source, dest)
    return size
