"""faultfs: a pass-through FUSE filesystem over a backing folder, with switchable faults that
real shared filesystems have and GlusterFS does not show.

Faults (keys of the JSON control file, re-read whenever it changes):
- `nonexcl`: exclusive create does not exclude while the first creator has the file open (an
  object-storage FUSE mount makes a new file visible only when it is closed; the last close
  wins).
- `rename_copy`: `"manifest-first"` or `"file-by-file"`: a folder rename is a copy, one file at
  a time (`copy_delay` seconds apart; the manifest first, or last), merging into an existing
  target, then the source is deleted.
- `rename_lies`: a folder rename happens, then reports EIO.
- `eperm`: a lost race (EEXIST / ENOTEMPTY from create, mkdir or rename) reports EPERM (sshfs).
- `estale`: list of globs (paths from the mount root, e.g. `*/.usage/*`): opening a matching
  file fails with ESTALE, `estale_times` times per path (0: always). The kernel retries an
  open that got ESTALE once (LOOKUP_REVAL, as for NFS), so 2 makes one failed open visible.

Run as its own process: `python tests/netfs/faultfs.py BACKING MOUNTPOINT CONTROL`; the
`FaultFS` class below starts, configures and unmounts it for the tests.
"""

# A pass-through filesystem mirrors the os calls it serves, with the signatures libfuse gives.
# ruff: noqa: PTH101, PTH102, PTH103, PTH104, PTH105, PTH106, PTH108, PTH112, PTH115, PTH116
# ruff: noqa: PTH118, PTH119, PTH120, PTH123, PTH211, ARG002

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PENDING = ".faultfs-pending-"
MANIFEST = ".kserve-cache.json"


def unavailable_reason() -> str | None:
    if not Path("/dev/fuse").exists():
        return "no /dev/fuse: FUSE is unavailable"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "no fusermount3 (apt fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy/libfuse unavailable: {exc}"
    return None


def _serve(backing: str, mountpoint: str, control: str) -> None:
    import mfusepy
    from mfusepy import FuseOSError, Operations

    class Faults(Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self) -> None:
            self.root = backing
            self.control = control
            self.stamp: float = -1.0
            self.faults: dict[str, Any] = {}
            self.mutex = threading.Lock()
            self.pending: dict[int, tuple[str, str]] = {}  # fd -> (temp, real)
            self.stale_counts: dict[str, int] = {}

        # -- control --------------------------------------------------------------------
        def _f(self) -> dict[str, Any]:
            try:
                stamp = os.stat(self.control).st_mtime_ns
            except OSError:
                return self.faults
            if stamp != self.stamp:
                with self.mutex, contextlib.suppress(OSError, ValueError):
                    with open(self.control, encoding="utf-8") as fh:
                        self.faults = json.load(fh)
                    self.stamp = stamp
                    self.stale_counts.clear()
            return self.faults

        def _p(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _hidden(self, path: str) -> bool:
            return os.path.basename(path).startswith(PENDING)

        def _lost_race(self, exc: OSError) -> FuseOSError:
            if self._f().get("eperm") and exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return FuseOSError(errno.EPERM)
            return FuseOSError(exc.errno or errno.EIO)

        # -- metadata -------------------------------------------------------------------
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            if self._hidden(path):
                raise FuseOSError(errno.ENOENT)
            try:
                st = (
                    os.fstat(fh)
                    if fh is not None and fh in self.pending
                    else os.lstat(self._p(path))
                )
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc
            keys = (
                "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
            )  # fmt: skip
            out = {k: getattr(st, k) for k in keys}
            for k in ("atime", "mtime", "ctime"):
                out[f"st_{k}"] = out.pop(f"st_{k}_ns")
            return out

        def access(self, path: str, amode: int) -> int:
            if not os.access(self._p(path), amode):
                raise FuseOSError(errno.EACCES)
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(self._p(path), mode)
            return 0

        def chown(self, path: str, uid: int, gid: int) -> int:
            os.lchown(self._p(path), uid, gid)
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            if times is None:
                os.utime(self._p(path))
            else:
                os.utime(self._p(path), ns=times)
            return 0

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._p(path), length)
            return 0

        def readdir(self, path: str, fh: int) -> list[Any]:
            # With use_ino an entry without an inode number is skipped by readdir(3).
            out: list[Any] = []
            for name in (".", ".."):
                st = os.lstat(self._p(path) if name == "." else self._p(path) + "/..")
                out.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
            with os.scandir(self._p(path)) as entries:
                for e in entries:
                    if not e.name.startswith(PENDING):
                        mode = e.stat(follow_symlinks=False).st_mode
                        out.append((e.name, {"st_mode": mode, "st_ino": e.inode()}, 0))
            return out

        def readlink(self, path: str) -> str:
            return os.readlink(self._p(path))

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(self._p(path))
            return {
                k: getattr(sv, k)
                for k in (
                    "f_bavail",
                    "f_bfree",
                    "f_blocks",
                    "f_bsize",
                    "f_favail",
                    "f_ffree",
                    "f_files",
                    "f_flag",
                    "f_frsize",
                    "f_namemax",
                )
            }

        # -- namespace ------------------------------------------------------------------
        def mkdir(self, path: str, mode: int) -> int:
            try:
                os.mkdir(self._p(path), mode)
            except OSError as exc:
                raise self._lost_race(exc) from exc
            return 0

        def rmdir(self, path: str) -> int:
            try:
                os.rmdir(self._p(path))
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc
            return 0

        def unlink(self, path: str) -> int:
            try:
                os.unlink(self._p(path))
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc
            return 0

        def symlink(self, target: str, source: str) -> int:
            os.symlink(source, self._p(target))
            return 0

        def link(self, target: str, source: str) -> int:
            os.link(self._p(source), self._p(target))
            return 0

        def rename(self, old: str, new: str) -> int:
            faults = self._f()
            src, dst = self._p(old), self._p(new)
            if os.path.isdir(src) and faults.get("rename_copy"):
                self._copy_rename(src, dst, faults)
                return 0
            try:
                os.rename(src, dst)
            except OSError as exc:
                raise self._lost_race(exc) from exc
            if os.path.isdir(dst) and faults.get("rename_lies"):
                raise FuseOSError(errno.EIO)
            return 0

        def _copy_rename(self, src: str, dst: str, faults: dict[str, Any]) -> None:
            delay = float(faults.get("copy_delay", 0.0))
            files: list[str] = []
            for dirpath, _dirs, names in os.walk(src):
                files += [os.path.relpath(os.path.join(dirpath, n), src) for n in names]
            files.sort(key=lambda rel: (rel != MANIFEST, rel))
            if faults["rename_copy"] != "manifest-first":
                files.sort(key=lambda rel: (rel == MANIFEST, rel))
            os.makedirs(dst, exist_ok=True)
            for rel in files:
                target = os.path.join(dst, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(src, rel), target)
                if delay:
                    time.sleep(delay)
            shutil.rmtree(src)

        # -- files ----------------------------------------------------------------------
        def create(self, path: str, mode: int, flags: int = 0) -> int:
            real = self._p(path)
            if self._f().get("nonexcl") and flags & os.O_EXCL:
                # Invisible until closed: a second O_EXCL creator does not see the first.
                temp = os.path.join(os.path.dirname(real), PENDING + secrets.token_hex(6))
                fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
                with self.mutex:
                    self.pending[fd] = (temp, real)
                return fd
            try:
                return os.open(real, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
            except OSError as exc:
                raise self._lost_race(exc) from exc

        def open(self, path: str, flags: int) -> int:
            faults = self._f()
            globs = faults.get("estale") or []
            if any(fnmatch.fnmatch(path, g) for g in globs):
                times = int(faults.get("estale_times", 0))
                with self.mutex:
                    seen = self.stale_counts.get(path, 0)
                    self.stale_counts[path] = seen + 1
                if times == 0 or seen < times:
                    raise FuseOSError(errno.ESTALE)
            try:
                return os.open(self._p(path), flags)
            except OSError as exc:
                raise FuseOSError(exc.errno or errno.EIO) from exc

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            return os.pwrite(fh, data, offset)

        def flush(self, path: str, fh: int) -> int:
            # close() waits for flush (release is asynchronous): the file appears at close.
            with self.mutex:
                pending = self.pending.pop(fh, None)
            if pending is not None:
                os.replace(*pending)  # the last one to close wins
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            os.fsync(fh)
            return 0

        def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            self.flush(path, fh)
            os.close(fh)
            return 0

    mfusepy.FUSE(
        Faults(),
        mountpoint,
        foreground=True,
        nothreads=False,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        use_ino=True,
        fsname="faultfs",
    )


@dataclass
class FaultFS:
    """A running faultfs: `mount` is what the code under test uses, `backing` the truth."""

    base: Path
    proc: subprocess.Popen[bytes] | None = None
    faults: dict[str, Any] = field(default_factory=dict)
    root: Path = Path()  # a test's cache root through the mount (set by the fixture)
    backing_root: Path = Path()  # the same folder on the backing store

    @property
    def backing(self) -> Path:
        return self.base / "backing"

    @property
    def mount(self) -> Path:
        return self.base / "mnt"

    @property
    def control(self) -> Path:
        return self.base / "control.json"

    def set(self, **faults: Any) -> None:
        """Switch faults on (and every other one off); effective for the next operation."""
        self.faults = dict(faults)
        tmp = self.control.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.faults), encoding="utf-8")
        tmp.replace(self.control)
        # The mtime must change even within one clock tick.
        stamp = time.time_ns() + secrets.randbelow(1000)
        os.utime(self.control, ns=(stamp, stamp))

    def start(self) -> None:
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        self.set()
        log = (self.base / "faultfs.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.backing), str(self.mount), str(self.control)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        end = time.monotonic() + 30
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                text = (self.base / "faultfs.log").read_text(errors="replace")
                raise RuntimeError(f"faultfs did not mount: {text[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if os.path.ismount(self.mount):
            tool = shutil.which("fusermount3") or "fusermount"
            proc = subprocess.run([tool, "-u", str(self.mount)], capture_output=True, check=False)
            if proc.returncode != 0:
                subprocess.run([tool, "-uz", str(self.mount)], capture_output=True, check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@contextlib.contextmanager
def faultfs(base: Path) -> Iterator[FaultFS]:
    fs = FaultFS(base)
    fs.start()
    try:
        yield fs
    finally:
        fs.stop()


if __name__ == "__main__":
    _serve(*sys.argv[1:4])
