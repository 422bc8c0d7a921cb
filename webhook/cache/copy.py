"""Copy mode: copy a published entry into the pod's own folder, in parallel parts, in the kernel.

Shared filesystems give one reader a fraction of what they give several (each request waits a
round trip), so large files are split into parts that `workers` threads copy at once, and small
files are copied whole, several at a time. Each part is copied by the kernel: `copy_file_range`
where the two folders allow it (same filesystem; an NFS 4.2 server copies without the client),
otherwise `sendfile` (a kernel copy from any readable file, e.g. NFS or FUSE into the node's
disk), and plain `pread`/`pwrite` of `block_size` only where neither works.
benchmarks/readpath measures the methods; docs/performance.md has the figures.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from webhook.cache.layout import Manifest

logger = logging.getLogger(__name__)

MiB: Final = 1 << 20
DEFAULT_WORKERS: Final = 8
DEFAULT_BLOCK_SIZE: Final = 16 * MiB
PART_BLOCKS: Final = 4
"""A file larger than `PART_BLOCKS * block_size` is split into parts of that size."""
_NO_KERNEL_COPY: Final = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}
)

Method = Literal["auto", "copy_file_range", "sendfile", "readwrite"]
METHODS: Final[tuple[Method, ...]] = ("auto", "copy_file_range", "sendfile", "readwrite")


@dataclass(frozen=True)
class CopyStats:
    files: int
    bytes: int
    parts: int = 0
    method: str = ""


class EntryVanished(RuntimeError):
    """The entry was evicted (or changed) while it was being copied: the copy is incomplete."""


@dataclass(frozen=True)
class Part:
    """Bytes [offset, offset + length) of one file (a whole file when it is its only part)."""

    rel: str
    source: Path
    dest: Path
    size: int
    offset: int
    length: int

    @property
    def whole(self) -> bool:
        return self.offset == 0 and self.length == self.size


def plan_parts(
    root: Path, manifest: Manifest, *, part_size: int, dest: Path | None = None
) -> list[Part]:
    """The manifest's files as parts of at most `part_size` bytes, large files first, so the
    long copies start at once and the small files fill the gaps. Refuses paths that leave the
    entry (a manifest is data from the volume)."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    files: list[tuple[str, int]] = []
    for entry in manifest.files:
        rel = Path(entry.path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise EntryVanished(f"manifest of {root} lists a path outside the entry: {entry.path}")
        files.append((entry.path, entry.size))
    parts: list[Part] = []
    for path, size in sorted(files, key=lambda f: -f[1]):
        target = (dest / path) if dest is not None else root / path
        if size <= part_size:
            parts.append(Part(path, root / path, target, size, 0, size))
            continue
        for offset in range(0, size, part_size):
            parts.append(
                Part(path, root / path, target, size, offset, min(part_size, size - offset))
            )
    return parts


def run_parts(parts: Iterable[Part], work: Callable[[Part], int], *, workers: int) -> int:
    """Run `work` on every part with `workers` threads; the sum of what it returns. The first
    error stops the parts not yet started and is raised."""
    todo = list(parts)
    if not todo:
        return 0
    if workers <= 1 or len(todo) == 1:
        return sum(work(part) for part in todo)
    failed = threading.Event()

    def guarded(part: Part) -> int:
        if failed.is_set():
            return 0
        try:
            return work(part)
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(max_workers=min(workers, len(todo))) as pool:
        futures: list[Future[int]] = [pool.submit(guarded, part) for part in todo]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                future.result()  # raises it
    return sum(f.result() for f in futures)


def copy_manifest_files(
    source: Path,
    dest: Path,
    manifest: Manifest,
    *,
    workers: int = DEFAULT_WORKERS,
    block_size: int = DEFAULT_BLOCK_SIZE,
    method: Method = "auto",
) -> CopyStats:
    """Copy exactly the files the manifest lists and check each size against it.

    Walking the folder instead would silently copy nothing from an entry that gc evicted a
    moment ago; the manifest says what a complete copy is. A missing file or one whose size is
    not the manifest's raises EntryVanished.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if block_size < 64 * 1024:
        raise ValueError("block_size must be at least 64 KiB")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}")
    parts = plan_parts(source, manifest, part_size=PART_BLOCKS * block_size, dest=dest)
    dest.mkdir(parents=True, exist_ok=True)
    for folder in sorted({p.dest.parent for p in parts}):
        folder.mkdir(parents=True, exist_ok=True)
    # Files in several parts are created at their full size first; each part then writes its
    # own range (no part extends the file under another).
    split = {p.rel: p for p in parts if not p.whole}
    for part in split.values():
        _check_size(part.source, _stat_size(part.source), part.size)
        _create(part.dest, part.size)
    copier = _Copier(method, block_size)
    total = run_parts(parts, copier.copy_part, workers=workers)
    for part in split.values():
        shutil.copymode(part.source, part.dest)
    logger.info(
        "copied %d files (%d bytes, %d parts, %s) from %s to %s",
        len(manifest.files),
        total,
        len(parts),
        copier.used,
        source,
        dest,
    )
    return CopyStats(files=len(manifest.files), bytes=total, parts=len(parts), method=copier.used)


def _stat_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError as exc:
        raise EntryVanished(f"{path} disappeared during the copy") from exc


def _check_size(path: Path, size: int, expected: int) -> None:
    if size != expected:
        raise EntryVanished(f"{path} is {size} bytes, the manifest says {expected}")


def _create(path: Path, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


class _Copier:
    """Copies parts with the first kernel method that works here, shared by the threads."""

    def __init__(self, method: Method, block_size: int) -> None:
        self.block_size = block_size
        order: list[Method] = ["copy_file_range", "sendfile", "readwrite"]
        self.methods = order if method == "auto" else [method]
        self._lock = threading.Lock()
        self._local = threading.local()
        self.used = ""

    def copy_part(self, part: Part) -> int:
        try:
            src = os.open(part.source, os.O_RDONLY)
        except FileNotFoundError as exc:
            raise EntryVanished(f"{part.source} disappeared during the copy") from exc
        try:
            if part.whole:
                _check_size(part.source, os.fstat(src).st_size, part.size)
                dst = os.open(part.dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            else:
                dst = os.open(part.dest, os.O_WRONLY)
            try:
                if part.length:
                    if part.offset == 0:
                        os.posix_fadvise(src, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    self._copy_range(src, dst, part)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        if part.whole:
            shutil.copymode(part.source, part.dest)
        return part.length

    def _copy_range(self, src: int, dst: int, part: Part) -> None:
        while True:
            with self._lock:
                method = self.methods[0]
            try:
                done = _COPY[method](self, src, dst, part)
            except OSError as exc:
                # a method this pair of filesystems refuses is dropped for all the parts
                if exc.errno not in _NO_KERNEL_COPY or method == "readwrite":
                    raise
                with self._lock:
                    if len(self.methods) > 1 and self.methods[0] == method:
                        logger.debug("%s refused (%s): next method", method, exc)
                        self.methods.pop(0)
                    elif len(self.methods) == 1:
                        raise
                continue
            if done != part.length:
                raise EntryVanished(
                    f"{part.source} ended at byte {part.offset + done}, "
                    f"the manifest says {part.size}"
                )
            with self._lock:
                self.used = self.used or method
            return

    def _copy_file_range(self, src: int, dst: int, part: Part) -> int:
        done = 0
        while done < part.length:
            at = part.offset + done
            n = os.copy_file_range(src, dst, part.length - done, at, at)
            if n == 0:
                break
            done += n
        return done

    def _sendfile(self, src: int, dst: int, part: Part) -> int:
        os.lseek(dst, part.offset, os.SEEK_SET)
        done = 0
        while done < part.length:
            n = os.sendfile(dst, src, part.offset + done, min(self.block_size, part.length - done))
            if n == 0:
                break
            done += n
        return done

    def _readwrite(self, src: int, dst: int, part: Part) -> int:
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = bytearray(self.block_size)
        view = memoryview(buffer)
        done = 0
        while done < part.length:
            at = part.offset + done
            n = os.preadv(src, [view[: min(self.block_size, part.length - done)]], at)
            if n == 0:
                break
            written = 0
            while written < n:
                written += os.pwrite(dst, view[written:n], at + written)
            done += n
        return done


_COPY: Final[dict[str, Callable[[_Copier, int, int, Part], int]]] = {
    "copy_file_range": _Copier._copy_file_range,
    "sendfile": _Copier._sendfile,
    "readwrite": _Copier._readwrite,
}


def copy_file(source: Path, dest: Path) -> int:
    """Copy one file with the kernel (`copy_file_range`, else `sendfile`, else read/write);
    its size."""
    size = _stat_size(source)
    part = Part(source.name, source, dest, size, 0, size)
    _Copier("auto", DEFAULT_BLOCK_SIZE).copy_part(part)
    return size


MAX_WORKERS: Final = 64
MIN_BLOCK_SIZE: Final = 64 * 1024
MAX_BLOCK_SIZE: Final = 256 * MiB
_UNITS: Final = {"": 1, "k": 1000, "m": 1000**2, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30}


def parse_workers(text: str) -> int:
    """`--parallel`: an integer from 1 to 64 (ValueError otherwise)."""
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"expected an integer from 1 to {MAX_WORKERS}, got {text!r}")
    return int(text)


def parse_block_size(text: str) -> int:
    """`--block-size`: bytes, or a Kubernetes-style quantity (`16Mi`, `512Ki`, `4M`), from
    64Ki to 256Mi (ValueError otherwise)."""
    raw = text.strip()
    digits = raw.rstrip("KMGkmgi")
    unit = raw[len(digits) :].lower()
    if not digits.isdigit() or unit not in _UNITS:
        raise ValueError(f"expected bytes or a size like 16Mi, got {text!r}")
    size = int(digits) * _UNITS[unit]
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size must be from 64Ki to 256Mi, got {text!r}")
    return size
