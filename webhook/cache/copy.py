"""Copy mode: copy a published entry into the pod's own folder with kernel copies, in parallel.

`os.copy_file_range` lets the kernel (or an NFS 4.2 server) copy without user-space buffers;
where it is refused (across filesystems on older kernels) `shutil.copyfile` uses `sendfile`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook.cache.layout import MANIFEST_NAME

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


def copy_entry(
    source: Path,
    dest: Path,
    *,
    exclude: Collection[str] = (MANIFEST_NAME,),
    workers: int = DEFAULT_WORKERS,
) -> CopyStats:
    """Copy the tree at `source` into `dest` (created if needed), skipping top-level `exclude`."""
    jobs: list[tuple[Path, Path]] = []
    dest.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        rel = here.relative_to(source)
        if here == source:
            dirnames[:] = [d for d in dirnames if d not in exclude]
        for name in dirnames:
            (dest / rel / name).mkdir(exist_ok=True)
        for name in filenames:
            if here == source and name in exclude:
                continue
            jobs.append((here / name, dest / rel / name))
    total = 0
    if jobs:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs)))) as pool:
            for size in pool.map(lambda job: copy_file(*job), jobs):
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
