"""The fetch protocol on the cache volume: hit, or single-flight download and atomic publish.

The downloader is passed in, so the protocol runs with any source; KServe's own downloader is
`webhook.cache.download.default_downloader()`. Failures raise `FetchError` with an `ErrorKind`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook.cache.layout import (
    MANIFEST_NAME,
    FileEntry,
    Layout,
    Manifest,
    read_lease,
    read_manifest,
    record_usage,
    staging_key,
)
from webhook.cache.lease import (
    Heartbeat,
    Lease,
    break_if_stale,
    clean_dead_leases,
    new_holder_id,
    release,
    try_acquire,
)
from webhook.keys import cache_key, is_valid_key, is_valid_revision

logger = logging.getLogger(__name__)

Downloader = Callable[[str, Path], None]
"""Downloads the model at a URI into an existing empty folder; raises on failure."""

PhaseHook = Callable[[str], None]
"""Called with `leased`, `downloaded`, `sealed`, `published` as the holder passes each point."""

DEFAULT_LEASE_TTL: Final = 120.0
DEFAULT_WAIT_TIMEOUT: Final = 3600.0
_FIRST_POLL: Final = 0.1
_MAX_POLL: Final = 2.0


class ErrorKind(enum.Enum):
    """Classes of failure, each with its own exit code of `kserve-cache fetch`."""

    DOWNLOAD_FAILED = "download-failed"
    BAD_ARGUMENTS = "bad-arguments"
    BAD_CREDENTIALS = "bad-credentials"
    NOT_FOUND = "not-found"
    CACHE_NOT_WRITABLE = "cache-not-writable"
    DISK_FULL = "disk-full"
    WAIT_TIMEOUT = "wait-timeout"
    UNREACHABLE = "unreachable"
    UNSAFE_VOLUME = "unsafe-volume"
    STALLED = "stalled"
    SOURCE_MISMATCH = "source-mismatch"
    INTEGRITY = "integrity"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self]


EXIT_CODES: Final[dict[ErrorKind, int]] = {
    ErrorKind.DOWNLOAD_FAILED: 1,
    ErrorKind.BAD_ARGUMENTS: 2,
    ErrorKind.BAD_CREDENTIALS: 3,
    ErrorKind.NOT_FOUND: 4,
    ErrorKind.CACHE_NOT_WRITABLE: 5,
    ErrorKind.DISK_FULL: 6,
    ErrorKind.WAIT_TIMEOUT: 7,
    ErrorKind.UNREACHABLE: 8,
    ErrorKind.UNSAFE_VOLUME: 9,
    ErrorKind.STALLED: 10,
    ErrorKind.SOURCE_MISMATCH: 11,
    ErrorKind.INTEGRITY: 12,
}


class FetchError(Exception):
    """A fetch that failed; nothing was published and the staging folder is gone."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class FetchResult:
    outcome: str  # "hit", "miss" or "waited"
    key: str
    uri: str
    revision: str
    path: Path
    bytes: int
    files: int
    seconds: float
    download_seconds: float = 0.0
    lease_lost: bool = False


def check_key(*, uri: str, key: str, revision: str) -> None:
    """Refuse a key that is not the one this version computes (a webhook/fetcher version skew)."""
    if revision and not is_valid_revision(revision):
        raise FetchError(ErrorKind.BAD_ARGUMENTS, f"invalid revision {revision!r}")
    if not is_valid_key(key):
        raise FetchError(ErrorKind.BAD_ARGUMENTS, f"invalid cache key {key!r}")
    expected = cache_key(uri, revision)
    if key != expected:
        raise FetchError(
            ErrorKind.BAD_ARGUMENTS,
            f"cache key {key!r} does not match {expected!r} computed for uri={uri!r} "
            f"revision={revision!r}: the webhook and the fetcher image disagree on the key "
            "(version skew); use images of the same release",
        )


def fetch_entry(
    layout: Layout,
    *,
    uri: str,
    key: str,
    revision: str = "",
    downloader: Downloader,
    lease_ttl: float = DEFAULT_LEASE_TTL,
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    on_phase: PhaseHook | None = None,
) -> FetchResult:
    """Make `models/<key>` hold the model at `uri`: a hit, our own download, or a rival's."""
    check_key(uri=uri, key=key, revision=revision)
    if lease_ttl <= 0 or wait_timeout < 0:
        raise FetchError(ErrorKind.BAD_ARGUMENTS, "lease TTL must be > 0, wait timeout >= 0")
    start = time.monotonic()
    manifest = read_manifest(layout, key)
    if manifest is not None:
        return _found(layout, manifest, "hit", start)

    try:
        layout.ensure_dirs()
        clean_stale(layout, ttl=lease_ttl)
    except OSError as exc:
        raise _os_error(exc, layout, "preparing the cache volume") from exc

    holder = new_holder_id()
    deadline = start + wait_timeout
    delay = _FIRST_POLL
    waited = False
    while True:
        try:
            lease = try_acquire(layout, key, holder=holder)
        except OSError as exc:
            raise _os_error(exc, layout, "taking the lease") from exc
        if lease is not None:
            try:
                # A rival may have published and released between our look and our lease.
                manifest = read_manifest(layout, key)
                if manifest is not None:
                    return _found(layout, manifest, "waited" if waited else "hit", start)
                return _download_and_publish(
                    layout, lease, uri=uri, revision=revision, downloader=downloader,
                    ttl=lease_ttl, start=start, on_phase=on_phase,
                )  # fmt: skip
            finally:
                release(lease)
        if break_if_stale(layout, key, ttl=lease_ttl):
            continue
        manifest = read_manifest(layout, key)
        if manifest is not None:
            return _found(layout, manifest, "waited" if waited else "hit", start)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            info = read_lease(layout, key)
            who = info.holder if info else "nobody"
            raise FetchError(
                ErrorKind.WAIT_TIMEOUT,
                f"gave up after {wait_timeout:g}s waiting for {key} to be published "
                f"(lease held by {who})",
            )
        if not waited:
            info = read_lease(layout, key)
            logger.info("%s is being downloaded by %s; waiting", key, info.holder if info else "?")
        waited = True
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, _MAX_POLL, lease_ttl / 2)


def _found(layout: Layout, manifest: Manifest, outcome: str, start: float) -> FetchResult:
    _record(layout, manifest.key, outcome)
    return FetchResult(
        outcome=outcome,
        key=manifest.key,
        uri=manifest.uri,
        revision=manifest.revision,
        path=layout.entry(manifest.key),
        bytes=manifest.bytes,
        files=len(manifest.files),
        seconds=time.monotonic() - start,
    )


def _record(layout: Layout, key: str, outcome: str) -> None:
    # Usage feeds eviction; failing to write it must not fail the pod (read-only mounts, races).
    try:
        record_usage(layout, key, outcome)
    except OSError as exc:
        logger.warning("could not record usage of %s: %s", key, exc)


def _download_and_publish(
    layout: Layout,
    lease: Lease,
    *,
    uri: str,
    revision: str,
    downloader: Downloader,
    ttl: float,
    start: float,
    on_phase: PhaseHook | None,
) -> FetchResult:
    key = lease.key
    phase = on_phase or (lambda _name: None)
    staging = layout.new_staging(key)
    try:
        _remove_orphans(layout, key)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise _os_error(exc, layout, "creating the staging folder") from exc
    logger.info("miss: downloading %s into %s", uri, staging)
    try:
        with Heartbeat(lease, interval=max(ttl / 4, 0.05)) as heartbeat:
            phase("leased")
            began = time.monotonic()
            try:
                downloader(uri, staging)
            except FetchError:
                raise
            except OSError as exc:
                raise _os_error(exc, layout, f"downloading {uri}") from exc
            except Exception as exc:
                raise FetchError(
                    ErrorKind.DOWNLOAD_FAILED, f"download of {uri} failed: {exc}"
                ) from exc
            download_seconds = time.monotonic() - began
            phase("downloaded")
            try:
                files = seal(staging)
            except OSError as exc:
                raise _os_error(exc, layout, "writing the staging folder") from exc
            if not files:
                raise FetchError(ErrorKind.NOT_FOUND, f"no files found at {uri}")
            manifest = Manifest(
                uri=uri,
                revision=revision,
                key=key,
                files=files,
                bytes=sum(f.size for f in files),
                created_at=time.time(),
                download_seconds=round(download_seconds, 3),
            )
            try:
                _write_durably(staging / MANIFEST_NAME, manifest.to_json().encode())
                _fsync_dir(staging)
            except OSError as exc:
                raise _os_error(exc, layout, "writing the manifest") from exc
            phase("sealed")
            try:
                won = publish(layout, key, staging)
            except OSError as exc:
                raise _os_error(exc, layout, "publishing") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not won:
        published = read_manifest(layout, key)
        if published is not None:
            logger.info("a rival published %s first; discarded our copy", key)
            return _found(layout, published, "hit", start)
        raise FetchError(
            ErrorKind.DOWNLOAD_FAILED, f"{key} vanished right after a rival published it"
        )
    phase("published")
    _record(layout, key, "miss")
    logger.info("published %s (%d bytes, %d files)", key, manifest.bytes, len(files))
    return FetchResult(
        outcome="miss",
        key=key,
        uri=uri,
        revision=revision,
        path=layout.entry(key),
        bytes=manifest.bytes,
        files=len(files),
        seconds=time.monotonic() - start,
        download_seconds=download_seconds,
        lease_lost=heartbeat.lost,
    )


def publish(layout: Layout, key: str, staging: Path) -> bool:
    """Rename a sealed staging folder to `models/<key>`; False (staging removed) when a rival won.

    `rename(2)` of a folder onto an existing non-empty folder fails, so exactly one publisher
    wins. A folder there without a valid manifest is not an entry (say, a `subPath` folder
    Kubernetes created): it is moved aside to staging, where stale-staging cleaning removes it.
    """
    target = layout.entry(key)
    for _ in range(3):
        try:
            staging.rename(target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        else:
            _fsync_dir(layout.models)
            return True
        if read_manifest(layout, key) is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return False
        aside = layout.new_staging(key)
        with contextlib.suppress(FileNotFoundError):
            target.rename(aside)
            logger.warning("moved an incomplete %s aside to %s", target, aside)
    raise OSError(errno.EEXIST, f"cannot publish {key}: {target} keeps reappearing")


def seal(folder: Path) -> tuple[FileEntry, ...]:
    """Make a downloaded folder self-contained and durable; list its files.

    Symlinks (KServe's downloader links `file://` sources instead of copying them) become real
    copies, since the serving pod cannot see the link targets. Every file and folder is fsynced
    so that what gets published survives a node crash.
    """
    _materialize_links(folder)
    files: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST_NAME:
                files.append(FileEntry(path=rel, size=size))
        _fsync_dir(Path(dirpath))
    return tuple(files)


def _materialize_links(folder: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            target = path.resolve()
            if not target.exists():
                raise FetchError(ErrorKind.NOT_FOUND, f"downloaded link {name} points nowhere")
            tmp = path.with_name(f".{name}.materializing")
            if target.is_dir():
                shutil.copytree(target, tmp, symlinks=False)
                path.unlink()
                tmp.rename(path)
            else:
                shutil.copyfile(target, tmp)
                tmp.replace(path)
        # os.walk lists links to folders as folders without entering them; the copies are
        # real folders now and get walked below.


def _remove_orphans(layout: Layout, key: str) -> None:
    # Only the lease holder writes staging folders of its key, and we hold the lease now:
    # any other one was left by a holder that died (or lost the lease), so free its space.
    for path in layout.staging.iterdir():
        if staging_key(path.name) == key:
            logger.info("removing staging folder %s of a former holder", path)
            shutil.rmtree(path, ignore_errors=True)


def clean_stale(layout: Layout, *, ttl: float, now: float | None = None) -> int:
    """Remove staging folders older than `ttl` whose key has no live lease, and dead leases."""
    clock = time.time() if now is None else now
    removed = 0
    clean_dead_leases(layout, ttl=ttl, now=now)
    try:
        names = [p.name for p in layout.staging.iterdir()]
    except FileNotFoundError:
        return 0
    for name in names:
        key = staging_key(name)
        path = layout.staging / name
        if key is None:
            continue
        info = read_lease(layout, key)
        if info is not None and info.is_live(ttl=ttl, now=now):
            continue
        try:
            age = clock - path.lstat().st_mtime
        except FileNotFoundError:
            continue
        if age > ttl:
            logger.info("removing stale staging folder %s (%.0fs old)", path, age)
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network filesystems refuse fsync on a directory; the rename is still atomic.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _os_error(exc: OSError, layout: Layout, doing: str) -> FetchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(
            ErrorKind.DISK_FULL,
            f"no space left on the cache volume {layout.root} while {doing}: "
            "the partial download was removed and nothing was published",
        )
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"the cache volume {layout.root} is not writable while {doing}: {exc.strerror} "
            f"({exc.filename}); check the PVC access mode and the pod's fsGroup/runAsUser",
        )
    return FetchError(ErrorKind.DOWNLOAD_FAILED, f"I/O error while {doing}: {exc}")
