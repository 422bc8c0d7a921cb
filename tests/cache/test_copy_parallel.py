"""Copy mode's parallel copy and mount mode's prefetch, on real files: what is copied is exactly
the manifest's files, byte for byte (sha256), by every kernel method; a vanished or changed entry
is detected; the prefetch reads every byte into the page cache (counted by the kernel)."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import mmap
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from webhook.cache.copy import (
    METHODS,
    EntryVanished,
    Part,
    _Copier,
    copy_manifest_files,
    parse_block_size,
    parse_workers,
    plan_parts,
)
from webhook.cache.layout import FileEntry, Manifest
from webhook.cache.prefetch import memory_budget, prefetch_manifest_files

KiB = 1024
BLOCK = 64 * KiB  # the smallest block size: parts of 256 KiB, so a 1 MiB file has 4 parts


def sha256s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_entry(root: Path) -> Manifest:
    """Large files (several parts each, sizes not a multiple of a block), small ones, an empty
    one, nested folders."""
    files = {
        "model-00001-of-00002.safetensors": os.urandom(1024 * KiB + 17),
        "model-00002-of-00002.safetensors": os.urandom(700 * KiB + 3),
        "exactly-two-parts.bin": os.urandom(512 * KiB),
        "config.json": b'{"hidden_size": 8}',
        "empty.bin": b"",
        **{f"tokenizer/part-{i}.txt": os.urandom(100 + i * 999) for i in range(12)},
    }
    for name, body in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(body)
    return Manifest(
        uri="s3://b/m",
        revision="",
        key="m-0123456789abcdef",
        files=tuple(FileEntry(path=n, size=len(b)) for n, b in sorted(files.items())),
        bytes=sum(map(len, files.values())),
        created_at=0.0,
        download_seconds=0.0,
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workers", [1, 3, 8])
def test_copy_is_byte_exact_with_every_method(tmp_path: Path, method: str, workers: int) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    (source / "not-in-the-manifest.bin").write_bytes(b"left behind")
    dest = tmp_path / "mnt" / "models"

    stats = copy_manifest_files(
        source,
        dest,
        manifest,
        workers=workers,
        block_size=BLOCK,
        method=method,  # type: ignore[arg-type]
    )

    want = sha256s(source)
    del want["not-in-the-manifest.bin"]
    assert sha256s(dest) == want
    assert stats.files == len(manifest.files)
    assert stats.bytes == manifest.bytes
    assert stats.parts == 5 + 3 + 2 + 14  # split files in parts, the others whole
    assert stats.method == (method if method != "auto" else stats.method)
    assert stats.method in METHODS


def test_copy_overwrites_a_longer_stale_copy(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    dest = tmp_path / "dest"
    dest.mkdir()
    for name in ("model-00001-of-00002.safetensors", "config.json"):
        (dest / name).write_bytes(b"stale" * 400_000)
    copy_manifest_files(source, dest, manifest, block_size=BLOCK)
    assert sha256s(dest) == sha256s(source)


def test_copy_across_filesystems_falls_back_to_sendfile(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's folder")
    source = shm / f"kc-copy-{os.getpid()}-{tmp_path.name}"
    try:
        manifest = make_entry(source)
        stats = copy_manifest_files(source, tmp_path / "dest", manifest, block_size=BLOCK)
        assert sha256s(tmp_path / "dest") == sha256s(source)
        # copy_file_range across filesystems is refused by current kernels (EXDEV) or done by
        # the kernel's generic splice: either way a kernel copy, never the read/write loop
        assert stats.method in ("sendfile", "copy_file_range")
    finally:
        shutil.rmtree(source)


def test_a_vanished_or_changed_entry_is_detected(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    (source / "model-00002-of-00002.safetensors").unlink()  # a file in parts
    with pytest.raises(EntryVanished, match="disappeared"):
        copy_manifest_files(source, tmp_path / "a", manifest, block_size=BLOCK)
    (source / "model-00002-of-00002.safetensors").write_bytes(b"x" * (700 * KiB))
    with pytest.raises(EntryVanished, match="the manifest says"):
        copy_manifest_files(source, tmp_path / "b", manifest, block_size=BLOCK)
    (source / "model-00002-of-00002.safetensors").write_bytes(b"x" * (700 * KiB + 3))
    (source / "tokenizer" / "part-3.txt").unlink()  # a whole small file
    with pytest.raises(EntryVanished, match="disappeared"):
        copy_manifest_files(source, tmp_path / "c", manifest, block_size=BLOCK, workers=4)
    evicted = source.rename(tmp_path / "trash")
    with pytest.raises(EntryVanished):
        copy_manifest_files(source, tmp_path / "d", manifest, block_size=BLOCK)
    assert evicted.exists()


@pytest.mark.parametrize("method", ["copy_file_range", "sendfile", "readwrite"])
def test_a_file_that_ends_early_is_detected_by_each_part(tmp_path: Path, method: str) -> None:
    """A file truncated while its parts are being copied: the part past the new end sees EOF."""
    src = tmp_path / "shard.bin"
    src.write_bytes(os.urandom(300 * KiB))
    dst = tmp_path / "copy.bin"
    dst.write_bytes(b"")
    part = Part("shard.bin", src, dst, size=512 * KiB, offset=256 * KiB, length=256 * KiB)
    with pytest.raises(EntryVanished, match=r"ended at byte \d+, the manifest says 524288"):
        _Copier(method, BLOCK).copy_part(part)  # type: ignore[arg-type]


def test_paths_outside_the_entry_are_refused(tmp_path: Path) -> None:
    for bad in ("../escape", "/etc/passwd", ""):
        manifest = Manifest(
            uri="s3://b/m",
            revision="",
            key="k",
            files=(FileEntry(path=bad, size=1),),
            bytes=1,
            created_at=0.0,
            download_seconds=0.0,
        )
        with pytest.raises(EntryVanished, match="outside the entry"):
            plan_parts(tmp_path, manifest, part_size=BLOCK)
    assert not any(tmp_path.iterdir())


# prefetch ------------------------------------------------------------------------------------


def rchar() -> int:
    """Bytes this process (all its threads) read, counted by the kernel."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of `path` in the page cache, pages of `path`), from mincore(2)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
        vector = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        return sum(v & 1 for v in vector), pages


def evict(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def test_prefetch_reads_every_byte_into_the_page_cache(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    evict(source)
    large = source / "model-00001-of-00002.safetensors"
    if resident_pages(large)[0] != 0:
        pytest.skip("this filesystem keeps the pages (tmpfs?): residency cannot be observed")

    before = rchar()
    stats = prefetch_manifest_files(source, manifest, workers=4, block_size=BLOCK, budget=None)
    read = rchar() - before

    assert stats.bytes == manifest.bytes
    assert stats.files == len(manifest.files)
    assert stats.skipped_files == 0
    assert read >= manifest.bytes  # every byte went through read(2)
    for entry in manifest.files:
        if entry.size:
            resident, pages = resident_pages(source / entry.path)
            assert resident == pages, entry.path


def test_prefetch_stays_within_its_budget(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    budget = 1024 * KiB + 17 + 512 * KiB + 100  # fits the first two files in manifest order
    before = rchar()
    stats = prefetch_manifest_files(source, manifest, block_size=BLOCK, budget=budget)
    read = rchar() - before
    assert stats.bytes <= budget
    assert stats.skipped_files > 0
    assert stats.bytes + stats.skipped_bytes == manifest.bytes
    assert stats.files + stats.skipped_files == len(manifest.files)
    assert stats.bytes <= read < stats.bytes + stats.skipped_bytes


def test_prefetch_of_a_vanished_entry_raises(tmp_path: Path) -> None:
    source = tmp_path / "entry"
    manifest = make_entry(source)
    (source / "model-00001-of-00002.safetensors").write_bytes(b"short")
    with pytest.raises(EntryVanished, match="the manifest says"):
        prefetch_manifest_files(source, manifest, block_size=BLOCK, budget=None)
    shutil.rmtree(source)
    with pytest.raises(EntryVanished, match="disappeared"):
        prefetch_manifest_files(source, manifest, block_size=BLOCK, budget=None)


@pytest.mark.parametrize(
    ("files", "want"),
    [
        pytest.param({"memory.max": "1000\n", "memory.current": "200\n"}, 640, id="v2"),
        pytest.param({"memory.max": "max\n", "memory.current": "200\n"}, None, id="v2-no-limit"),
        pytest.param(
            {"memory/memory.limit_in_bytes": "2000", "memory/memory.usage_in_bytes": "1000"},
            800,
            id="v1",
        ),
        pytest.param(
            {
                "memory/memory.limit_in_bytes": "9223372036854771712",
                "memory/memory.usage_in_bytes": "1",
            },
            None,
            id="v1-unlimited",
        ),
        pytest.param({"memory.max": "1000\n", "memory.current": "2000\n"}, 0, id="over"),
        pytest.param({}, None, id="unreadable"),
    ],
)
def test_memory_budget_from_the_cgroup(
    tmp_path: Path, files: dict[str, str], want: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert memory_budget(tmp_path, tmp_path / "no-such-proc-file") == want


def test_memory_budget_of_our_own_cgroup(tmp_path: Path) -> None:
    """The limit is read in this process's own cgroup folder (from /proc/self/cgroup)."""
    (tmp_path / "kubepods" / "pod1" / "c1").mkdir(parents=True)
    (tmp_path / "kubepods" / "pod1" / "c1" / "memory.max").write_text("10000\n")
    (tmp_path / "kubepods" / "pod1" / "c1" / "memory.current").write_text("0\n")
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text("0\n")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/kubepods/pod1/c1\n")
    assert memory_budget(tmp_path, proc) == 8000


@pytest.mark.parametrize(
    ("text", "want"),
    [("16Mi", 16 << 20), ("65536", 65536), ("512Ki", 512 << 10), ("4M", 4_000_000), ("1gi", None)],
)
def test_block_size_values(text: str, want: int | None) -> None:
    if want is None:
        with pytest.raises(ValueError, match="64Ki to 256Mi"):
            parse_block_size(text)
    else:
        assert parse_block_size(text) == want


@pytest.mark.parametrize("text", ["", "16Mx", "-1", "1.5Mi", "16 Mi", "1Ti"])
def test_bad_block_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_block_size(text)


@pytest.mark.parametrize("text", ["0", "65", "x", "", "-2", "1.0"])
def test_bad_worker_counts_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="from 1 to 64"):
        parse_workers(text)


# fetch --prefetch, --parallel, --block-size (real processes) ---------------------------------


def test_fetch_prefetch_reads_the_entry_into_the_page_cache(tmp_path: Path) -> None:
    from tests.cache.conftest import run_fetch

    source = tmp_path / "src" / "llama"
    manifest = make_entry(source)
    uri = f"file://{source}"
    root = tmp_path / "cache"
    root.mkdir()
    first = run_fetch(uri, root)
    assert first.code == 0, first.stderr
    entry = Path(first.result["path"])
    evict(entry)
    if resident_pages(entry / "model-00001-of-00002.safetensors")[0] != 0:
        pytest.skip("this filesystem keeps the pages (tmpfs?): residency cannot be observed")

    run = run_fetch(uri, root, extra=("--prefetch", "--parallel=3"))

    assert run.code == 0, run.stderr
    assert run.result["outcome"] == "hit"
    assert run.result["prefetched_bytes"] == manifest.bytes
    assert run.result["prefetch_skipped_bytes"] == 0
    for item in manifest.files:
        if item.size:
            resident, pages = resident_pages(entry / item.path)
            assert resident == pages, item.path
    without = run_fetch(uri, root, extra=("--prefetch=false",))
    assert without.code == 0
    assert "prefetched_bytes" not in without.result


def test_fetch_copy_with_parallel_parts_is_byte_exact(tmp_path: Path) -> None:
    from tests.cache.conftest import run_fetch

    source = tmp_path / "src" / "llama"
    make_entry(source)
    root = tmp_path / "cache"
    root.mkdir()
    dest = tmp_path / "mnt" / "models"
    run = run_fetch(
        f"file://{source}",
        root,
        extra=("--copy-to", str(dest), "--parallel=5", "--block-size=64Ki"),
    )
    assert run.code == 0, run.stderr
    assert sha256s(dest) == sha256s(source)
    assert run.result["copied_bytes"] == sum(
        p.stat().st_size for p in source.rglob("*") if p.is_file()
    )


@pytest.mark.parametrize(
    "flag",
    ["--parallel=0", "--parallel=many", "--block-size=1", "--block-size=1Gi", "--prefetch=yes"],
)
def test_fetch_refuses_bad_read_flags_and_changes_nothing(tmp_path: Path, flag: str) -> None:
    from tests.cache.conftest import fetch_args

    root = tmp_path / "cache"
    root.mkdir()
    proc = subprocess.run(
        [*fetch_args("file:///nowhere/m", root), flag],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 2
    assert flag.split("=")[0] in proc.stderr
    assert not any(root.iterdir())
