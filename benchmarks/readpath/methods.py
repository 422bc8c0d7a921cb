"""How a model server reads its model, as the read-path benchmark measures it.

Each reader reads every byte of the model once and returns the bytes read: the time to "model
loaded" without the framework's own work (no torch here; the tensors are copied out of the
files, as a loader copies them into the model's memory).
"""

from __future__ import annotations

import mmap
import os
import shutil
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model import read_header

MiB = 1 << 20
Files = list[tuple[str, int]]


def read_sequential(root: Path, files: Files, *, block: int) -> int:
    """One reader, file after file, `block` bytes a read (a plain `f.read(block)` loop)."""
    buffer = bytearray(block)
    view = memoryview(buffer)
    total = 0
    for rel, _ in files:
        with (root / rel).open("rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def read_parallel(root: Path, files: Files, *, workers: int, block: int, part: int) -> int:
    """`workers` readers at once over parts of at most `part` bytes (large files are split),
    `block` bytes a `pread`: how concurrent loaders (the Run:ai model streamer, vLLM's
    multi-threaded safetensors loading) read."""
    jobs = [
        (rel, offset, min(part, size - offset))
        for rel, size in sorted(files, key=lambda f: -f[1])
        for offset in range(0, max(size, 1), part)
    ]
    local = threading.local()

    def one(job: tuple[str, int, int]) -> int:
        rel, offset, length = job
        buffer = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = memoryview(bytearray(block))
        fd = os.open(root / rel, os.O_RDONLY)
        try:
            done = 0
            while done < length:
                n = os.preadv(fd, [buffer[: min(block, length - done)]], offset + done)
                if n == 0:
                    break
                done += n
            return done
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, jobs))


def read_mmap_safetensors(root: Path, files: Files) -> int:
    """What `safetensors.safe_open(...)` + `get_tensor(name)` for every name does: read the
    header, mmap the file, copy each tensor out in the order of the sorted names (not the order
    on disk), page faults bringing the bytes in. Other files are read whole."""
    total = 0
    largest = max((size for _, size in files), default=0)
    target = bytearray(min(largest, 512 * MiB))
    for rel, size in files:
        path = root / rel
        if not rel.endswith(".safetensors") or size < 8:
            total += len(path.read_bytes())
            continue
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            (length,) = struct.unpack("<Q", mm[:8])
            start, header = read_header(mm[: 8 + length])
            total += start
            for name in sorted(k for k in header if k != "__metadata__"):
                begin, end = header[name]["data_offsets"]
                begin, end = begin + start, end + start
                while begin < end:
                    n = min(end - begin, len(target))
                    target[:n] = mm[begin : begin + n]
                    total += n
                    begin += n
    return total


def copy_before(source: Path, dest: Path, files: Files, *, workers: int = 8) -> int:
    """The copy of the previous release (one `copy_file_range`/`sendfile` per file, 8 files at
    a time): the baseline the parallel copy is compared with."""

    def one(job: tuple[str, int]) -> int:
        rel, _ = job
        src, dst = source / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as fin:
            size = os.fstat(fin.fileno()).st_size
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "wb") as fout:
                try:
                    done = 0
                    while done < size:
                        n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done)
                        if n == 0:
                            break
                        done += n
                    if done == size:
                        return size
                except OSError:
                    pass
        shutil.copyfile(src, dst)
        return size

    dest.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, files))


READERS: dict[str, Callable[[Path, Files], int]] = {
    "seq-1m": lambda root, files: read_sequential(root, files, block=1 * MiB),
    "seq-16m": lambda root, files: read_sequential(root, files, block=16 * MiB),
    "mmap-safetensors": read_mmap_safetensors,
}


LABELS = {
    "seq-1m": "mount: 1 reader, 1 MiB reads",
    "seq-16m": "mount: 1 reader, 16 MiB reads",
    "mmap-safetensors": "mount: mmap, safetensors order",
    "prefetch+seq-1m": "mount: prefetch, then 1 reader 1 MiB",
    "copy-before": "copy (previous release), then local read",
}


def label(name: str) -> str:
    if name.startswith("parallel-"):
        return f"mount: {name.removeprefix('parallel-')} parallel readers, 16 MiB"
    if name.startswith("prefetch-limit"):
        budget = "within its budget" if "budget" in name else "all of it"
        return f"mount: prefetch under a memory limit ({budget}), then 1 reader"
    if name.startswith("copy-") and name != "copy-before":
        return f"copy ({name.removeprefix('copy-')} workers), then local read"
    return LABELS.get(name, name)
