"""The fetch protocol on the cache volume: a checked hit, or a single-flight download and atomic
publish, safe on multi-client network filesystems (docs/protocol.md).

The steps are separate functions so that other features can compose them: `check_hit` (a
published entry, verified against its manifest), `acquire_or_wait` (the lease loop),
`download_and_publish` (staging, watchdog, `seal`, `publish`), `verify_entry_sizes` (in
layout). The downloader is passed in; KServe's own is `webhook.cache.download.
default_downloader()`. Failures raise `FetchError` with an `ErrorKind`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from webhook.cache.integrity import hash_file, manifest_digest
from webhook.cache.layout import (
    MANIFEST_NAME,
    FileEntry,
    Layout,
    Manifest,
    discard,
    fsync_dir,
    read_manifest,
    record_usage,
    staging_key,
    verify_entry_sizes,
)
from webhook.cache.lease import (
    BEATS_PER_TTL,
    Heartbeat,
    Lease,
    LeaseView,
    Watch,
    new_holder_id,
    read_current,
    try_acquire,
)
from webhook.cache.progress import (
    DEFAULT_INTERVAL,
    Progress,
    clear_progress,
    human_bytes,
    read_progress,
    tree_size,
    write_progress,
)
from webhook.keys import cache_key, is_valid_key, is_valid_revision, source_endpoint

logger = logging.getLogger(__name__)

Downloader = Callable[[str, Path], None]
"""Downloads the model at a URI into an existing empty folder; raises on failure.

It may also have an `abort()` method (called from another thread when the watchdog gives up
or the process is terminated) and a `total` attribute (bytes expected, for progress lines).
"""

PhaseHook = Callable[[str], None]
"""Called with `leased`, `downloaded`, `sealed`, `published` as the holder passes each point."""


HitCheck = Callable[..., Manifest | None]
"""`check_hit`'s signature `(layout, key, *, source)`: the whole entry's manifest, or None."""

Publisher = Callable[..., bool]
"""`publish`'s signature `(layout, key, staging, *, source=None)`: False when a rival won."""


DEFAULT_LEASE_TTL: Final = 120.0
DEFAULT_WAIT_TIMEOUT: Final = 3600.0
DEFAULT_STALL_TIMEOUT: Final = 120.0
DEFAULT_PROGRESS_INTERVAL: Final = DEFAULT_INTERVAL
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


class LeaseLost(Exception):
    """Our lease generation was superseded (a waiter judged us dead): stop, do not publish."""


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


@dataclass(frozen=True)
class Settings:
    """How one fetch behaves (timeouts, intervals); the defaults are the CLI's."""

    lease_ttl: float = DEFAULT_LEASE_TTL
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL

    def check(self) -> None:
        if self.lease_ttl <= 0 or self.wait_timeout < 0:
            raise FetchError(ErrorKind.BAD_ARGUMENTS, "lease TTL must be > 0, wait timeout >= 0")
        if self.stall_timeout <= 0 or self.progress_interval <= 0:
            raise FetchError(
                ErrorKind.BAD_ARGUMENTS, "stall timeout and progress interval must be > 0"
            )


def check_key(*, uri: str, key: str, revision: str, endpoint: str = "") -> None:
    """Refuse a key that is not the one this version computes (a webhook/fetcher version skew)."""
    if revision and not is_valid_revision(revision):
        raise FetchError(ErrorKind.BAD_ARGUMENTS, f"invalid revision {revision!r}")
    if not is_valid_key(key):
        raise FetchError(ErrorKind.BAD_ARGUMENTS, f"invalid cache key {key!r}")
    expected = cache_key(uri, revision, endpoint)
    if key != expected:
        raise FetchError(
            ErrorKind.BAD_ARGUMENTS,
            f"cache key {key!r} does not match {expected!r} computed for uri={uri!r} "
            f"revision={revision!r} endpoint={endpoint!r}: the webhook and the fetcher image "
            "disagree on the key (version skew); use images of the same release",
        )


def check_root(layout: Layout) -> None:
    """The cache root must exist: it is the volume's mount point, never created here."""
    if not layout.root.is_dir():
        raise FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"cache root {layout.root} is not a directory: is the cache PVC mounted there?",
        )


def check_writable(layout: Layout) -> None:
    """Refuse, with the diagnosis, a cache root this process may not write (before anything
    tries to). A read-only volume is left to the first write, which names it."""
    check_root(layout)
    if os.statvfs(layout.root).f_flag & os.ST_RDONLY:
        raise os_error(
            OSError(errno.EROFS, os.strerror(errno.EROFS), str(layout.root)),
            layout,
            "checking the cache volume",
        )
    if not os.access(layout.root, os.W_OK | os.X_OK, effective_ids=True):
        raise FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"the cache volume {layout.root} is not writable by this process: "
            + diagnose_permissions(layout.root),
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
    endpoint: str = "",
    source: str | None = None,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
) -> FetchResult:
    """Make `models/<key>` hold the model at `uri`: a hit, our own download, or a rival's.

    `endpoint` is the one the webhook mixed into the key; `source` is the endpoint this
    process downloads from (default: `source_endpoint(uri, os.environ)`), recorded in the
    manifest, and a hit recorded from another endpoint is refused (SOURCE_MISMATCH).
    Success is returned only for an entry whose files match its manifest's sizes.
    """
    check_key(uri=uri, key=key, revision=revision, endpoint=endpoint)
    settings = Settings(lease_ttl, wait_timeout, stall_timeout, progress_interval)
    settings.check()
    check_root(layout)
    own = source_endpoint(uri, os.environ) if source is None else source
    start = time.monotonic()
    manifest = check_hit(layout, key, source=own)
    if manifest is not None:
        return _found(layout, manifest, "hit", start)
    try:
        layout.ensure_dirs()
        clean_stale(layout, ttl=lease_ttl)
    except OSError as exc:
        raise os_error(exc, layout, "preparing the cache volume") from exc
    return acquire_or_wait(
        layout, key=key, uri=uri, revision=revision, source=own, downloader=downloader,
        settings=settings, start=start, on_phase=on_phase,
    )  # fmt: skip


def check_hit(layout: Layout, key: str, *, source: str) -> Manifest | None:
    """The manifest of a published entry that is whole (every file there with its size), or
    None (absent, unreadable, or incomplete: then it is a miss).

    Raises SOURCE_MISMATCH when the entry records another endpoint than `source`.
    """
    manifest = read_manifest(layout, key)
    if manifest is None:
        return None
    if manifest.endpoint is not None and manifest.endpoint != source:
        raise FetchError(
            ErrorKind.SOURCE_MISMATCH,
            f"cache entry {key} was downloaded from {manifest.endpoint or 'the default endpoint'}"
            f" but this pod's source is {source or 'the default endpoint'} (an endpoint set by "
            "a Secret the webhook cannot see does not change the key): refusing to serve a "
            "model from another store. Give the two sources their own keys: set "
            "cache.kserve.io/revision, or name the endpoint in a plain env var the webhook sees",
        )
    problems = verify_entry_sizes(layout.entry(key), manifest)
    if problems:
        logger.warning(
            "entry %s does not match its manifest (%s): treating it as a miss",
            key,
            "; ".join(problems[:5]),
        )
        return None
    return manifest


def acquire_or_wait(
    layout: Layout,
    *,
    key: str,
    uri: str,
    revision: str,
    source: str,
    downloader: Downloader,
    settings: Settings,
    start: float,
    on_phase: PhaseHook | None = None,
    hit: HitCheck | None = None,
    publisher: Publisher | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
) -> FetchResult:
    """Take the lease and download, or wait for the holder and hit; take over a dead lease.

    `hit` replaces `check_hit` and `publisher` replaces `publish` (versions use both);
    `manifest_extra` adds fields to the manifest written before publishing.
    """
    checked = hit or check_hit
    holder = new_holder_id()
    watch = Watch(ttl=settings.lease_ttl)
    deadline = start + settings.wait_timeout
    delay = _FIRST_POLL
    waited = False
    next_report = time.monotonic() + settings.progress_interval
    while True:
        # Whole entry first: a hit writes nothing, not even a lease generation.
        manifest = checked(layout, key, source=source)
        if manifest is not None:
            return _found(layout, manifest, "waited" if waited else "hit", start)
        try:
            view = read_current(layout, key)
            verdict = watch.look(view)
            lease = None
            if verdict != "held":
                if verdict == "dead" and view is not None:
                    logger.warning(
                        "lease on %s (gen %d, %s) unchanged for %.0fs: taking over",
                        key,
                        view.gen,
                        view.holder,
                        watch.unchanged_for(),
                    )
                lease = try_acquire(layout, key, holder=holder, after=view)
        except OSError as exc:
            raise os_error(exc, layout, "taking the lease") from exc
        if lease is not None:
            try:
                # A rival may have published between our look and our lease.
                manifest = checked(layout, key, source=source)
                if manifest is not None:
                    return _found(layout, manifest, "waited" if waited else "hit", start)
                return download_and_publish(
                    layout, lease, uri=uri, revision=revision, source=source,
                    downloader=downloader, settings=settings, start=start, on_phase=on_phase,
                    hit=checked, publisher=publisher, manifest_extra=manifest_extra,
                )  # fmt: skip
            except LeaseLost:
                logger.warning("lost the lease on %s to a newer holder: waiting for it", key)
                waited = True
                continue
            finally:
                with contextlib.suppress(OSError):
                    lease.release()
                clear_progress(layout, key, holder=holder)
        if verdict != "held":
            # Lost the race for the next generation: look at the new one soon. (Not at once:
            # a client cache that hides the winner's file would make this loop spin.)
            time.sleep(_FIRST_POLL)
            continue
        now = time.monotonic()
        remaining = deadline - now
        if remaining <= 0:
            raise FetchError(
                ErrorKind.WAIT_TIMEOUT,
                f"gave up after {settings.wait_timeout:g}s waiting for {key} to be published "
                f"(lease held by {view.holder if view else 'nobody'})",
            )
        if not waited:
            logger.info("%s is being downloaded by %s; waiting", key, _who(view))
        elif now >= next_report:
            _report_wait(layout, key, view, watch)
            next_report = now + settings.progress_interval
        waited = True
        time.sleep(min(delay, remaining))
        delay = min(delay * 1.5, _MAX_POLL, settings.lease_ttl / BEATS_PER_TTL)


def _who(view: LeaseView | None) -> str:
    return f"{view.holder} (lease generation {view.gen})" if view else "?"


def _report_wait(layout: Layout, key: str, view: LeaseView | None, watch: Watch) -> None:
    progress = read_progress(layout, key)
    if progress is not None and view is not None and progress.gen == view.gen:
        detail = f"holder's progress: {progress.line()}"
    else:
        detail = "no progress published yet"
    logger.info(
        "waiting for %s: lease held by %s, unchanged for %.0fs; %s",
        key,
        _who(view),
        watch.unchanged_for(),
        detail,
    )


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


def download_and_publish(
    layout: Layout,
    lease: Lease,
    *,
    uri: str,
    revision: str,
    source: str,
    downloader: Downloader,
    settings: Settings,
    start: float,
    on_phase: PhaseHook | None = None,
    hit: HitCheck | None = None,
    publisher: Publisher | None = None,
    manifest_extra: Mapping[str, Any] | None = None,
) -> FetchResult:
    """Holding `lease`: download into a new staging folder, seal, write the manifest, publish.

    Raises LeaseLost when a newer lease generation appears before the publish.
    """
    checked = hit or check_hit
    key = lease.key
    phase = on_phase or (lambda _name: None)
    staging = layout.new_staging(key)
    try:
        remove_orphans(layout, key)
        discard_bad_entry(layout, key, source=source)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise os_error(exc, layout, "creating the staging folder") from exc
    logger.info("miss: downloading %s into %s", uri, staging)
    lost = threading.Event()
    abort = getattr(downloader, "abort", None)

    def on_lost() -> None:
        lost.set()
        if callable(abort):
            abort()

    try:
        with Heartbeat(
            lease, interval=max(settings.lease_ttl / BEATS_PER_TTL, 0.05), on_lost=on_lost
        ) as heartbeat:
            phase("leased")
            began = time.monotonic()
            run_download(
                layout, lease, downloader=downloader, uri=uri, staging=staging,
                settings=settings, lost=lost, heartbeat=heartbeat,
            )  # fmt: skip
            download_seconds = time.monotonic() - began
            phase("downloaded")
            try:
                files = seal(staging)
            except OSError as exc:
                raise os_error(exc, layout, "writing the staging folder") from exc
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
                endpoint=source,
                extra={**(manifest_extra or {}), "digest": manifest_digest(files)},
            )
            try:
                _write_durably(staging / MANIFEST_NAME, manifest.to_json().encode())
                fsync_dir(staging)
            except OSError as exc:
                raise os_error(exc, layout, "writing the manifest") from exc
            phase("sealed")
            if lost.is_set() or not lease.is_mine():
                raise LeaseLost(key)  # a holder that sees a newer generation stops
            try:
                won = (publisher or publish)(layout, key, staging, source=source)
            except OSError as exc:
                raise os_error(exc, layout, "publishing") from exc
    except BaseException as exc:
        with contextlib.suppress(OSError):
            discard(layout, staging, key=key)
        if isinstance(exc, FetchError | OSError) and (lost.is_set() or _superseded(lease)):
            # Our staging vanished because a newer holder renamed it aside: not a failure.
            raise LeaseLost(key) from exc
        raise
    if not won:
        published = checked(layout, key, source=source)
        if published is not None:
            logger.info("a rival published %s first; discarded our copy", key)
            return _found(layout, published, "hit", start)
        raise FetchError(
            ErrorKind.DOWNLOAD_FAILED, f"{key} vanished right after a rival published it"
        )
    phase("published")
    problems = verify_entry_sizes(layout.entry(key), manifest)
    if problems:
        raise FetchError(
            ErrorKind.INTEGRITY,
            f"{key} does not match its manifest right after publishing ({'; '.join(problems)}):"
            " the volume does not rename folders atomically",
        )
    _record(layout, key, "miss")
    logger.info("published %s (%s, %d files)", key, human_bytes(manifest.bytes), len(files))
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


def _superseded(lease: Lease) -> bool:
    try:
        return lease.superseded()
    except OSError:
        return False


def run_download(
    layout: Layout,
    lease: Lease,
    *,
    downloader: Downloader,
    uri: str,
    staging: Path,
    settings: Settings,
    lost: threading.Event,
    heartbeat: Heartbeat,
) -> None:
    """Run the downloader in a thread and watch it: bytes in staging must grow.

    Every `progress_interval` a plain progress line is logged and `.progress/<key>` updated.
    When nothing moves for `stall_timeout`, the downloader is aborted (its child processes
    killed), heartbeats stop at once and STALLED is raised; when the lease is taken over,
    LeaseLost. A SIGTERM unwinding through here aborts the downloader too.
    """
    abort = getattr(downloader, "abort", None)
    outcome: dict[str, BaseException] = {}

    def target() -> None:
        try:
            downloader(uri, staging)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"download-{lease.key}", daemon=True)
    began = last_change = time.monotonic()
    size = 0
    last_mark: tuple[int, object] = (0, None)
    next_report = began + settings.progress_interval
    poll = max(0.05, min(1.0, settings.stall_timeout / 4, settings.progress_interval))
    worker.start()
    try:
        while True:
            worker.join(poll)
            if not worker.is_alive():
                break
            if lost.is_set():
                raise LeaseLost(lease.key)
            now = time.monotonic()
            size = tree_size(staging)
            # Bytes in staging, or a sign of life from the downloader (a child's messages).
            mark = (size, getattr(downloader, "activity", None))
            if mark != last_mark:
                last_mark, last_change = mark, now
            if now >= next_report:
                _report_progress(layout, lease, downloader, size, now - began)
                next_report = now + settings.progress_interval
            if now - last_change > settings.stall_timeout:
                heartbeat.stop()
                raise FetchError(
                    ErrorKind.STALLED,
                    f"download of {uri} made no progress for {settings.stall_timeout:g}s "
                    f"({human_bytes(size)} downloaded): aborted, and the lease released so "
                    "another pod can try (raise --stall-timeout for a source slow to start)",
                )
    except BaseException:
        if callable(abort):
            abort()
        raise
    error = outcome.get("error")
    if error is not None:
        if isinstance(error, FetchError):
            raise error
        if isinstance(error, OSError):
            raise os_error(error, layout, f"downloading {uri}") from error
        if isinstance(error, Exception):
            raise FetchError(
                ErrorKind.DOWNLOAD_FAILED, f"download of {uri} failed: {error}"
            ) from error
        raise error
    elapsed = time.monotonic() - began
    if elapsed >= settings.progress_interval:
        _report_progress(layout, lease, downloader, tree_size(staging), elapsed)


def _report_progress(
    layout: Layout, lease: Lease, downloader: Downloader, size: int, seconds: float
) -> None:
    total = getattr(downloader, "total", None)
    progress = Progress(
        key=lease.key,
        holder=lease.holder,
        gen=lease.gen,
        bytes=size,
        total=total if isinstance(total, int) and total > 0 else None,
        seconds=round(seconds, 3),
        rate=size / seconds if seconds > 0 else 0.0,
    )
    logger.info("downloading %s: %s", lease.key, progress.line())
    write_progress(layout, progress)


def publish(layout: Layout, key: str, staging: Path, *, source: str | None = None) -> bool:
    """Rename a sealed staging folder to `models/<key>`; False (staging removed) when a rival won.

    `rename(2)` of a folder onto an existing non-empty folder fails, so exactly one publisher
    wins. A folder there that is not a whole entry (the empty `subPath` folder Kubernetes
    creates, an incomplete copy) is renamed into `.trash/` and deleted; the caller holds the
    lease, so no other publisher is at work.
    """
    target = layout.entry(key)
    for _ in range(3):
        try:
            staging.rename(target)
        except OSError as exc:
            lost_race = exc.errno in (errno.EPERM, errno.EACCES) and target.exists()
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) and not lost_race:
                raise
        else:
            fsync_dir(layout.models)
            return True
        try:
            whole = check_hit(layout, key, source=source or "") is not None
        except FetchError:
            whole = True  # a whole entry of another endpoint: not ours to replace
        if whole:
            with contextlib.suppress(OSError):
                discard(layout, staging, key=key)
            return False
        if discard(layout, target, key=key):
            logger.warning("moved an incomplete %s aside and deleted it", target)
    raise OSError(errno.EEXIST, f"cannot publish {key}: {target} keeps reappearing")


def discard_bad_entry(layout: Layout, key: str, *, source: str) -> None:
    """Holding the lease: rename aside a published entry that does not match its manifest."""
    manifest = read_manifest(layout, key)
    if manifest is None or not layout.entry(key).exists() or layout.entry(key).is_symlink():
        return  # nothing there, or a ref to a version: replacing it is the publisher's job
    if manifest.endpoint is not None and manifest.endpoint != source:
        return  # check_hit refuses it; never ours to remove
    problems = verify_entry_sizes(layout.entry(key), manifest)
    if problems and discard(layout, layout.entry(key), key=key):
        logger.warning("renamed aside the incomplete entry %s (%s)", key, "; ".join(problems[:5]))


def seal(folder: Path) -> tuple[FileEntry, ...]:
    """Make a downloaded folder self-contained and durable; list its files.

    Symlinks (KServe's downloader links `file://` sources instead of copying them) become real
    copies, since the serving pod cannot see the link targets. Every file and folder is fsynced
    so that what gets published survives a node crash. Each file's sha256 is taken in the same
    pass (webhook.cache.integrity): the manifest digest names the version.
    """
    _materialize_links(folder)
    files: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST_NAME:
                continue
            # One read per file right after the download (kserve-storage wrote it): the
            # sha256 for the manifest and the fsync share the open.
            digest = hash_file(path, fsync=True)
            files.append(FileEntry(path=rel, size=digest.size, sha256=digest.sha256))
        fsync_dir(Path(dirpath))
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


def remove_orphans(layout: Layout, key: str) -> None:
    """Holding the lease: every other staging folder of `key` was left by an earlier holder
    (dead, or superseded). Each is renamed aside first: if that holder publishes it at the
    same moment, exactly one of the two renames wins, and nothing is deleted in place."""
    try:
        names = [p.name for p in layout.staging.iterdir()]
    except FileNotFoundError:
        return
    for name in names:
        if staging_key(name) == key and discard(layout, layout.staging / name, key=key):
            logger.info("removed staging folder %s of a former holder", name)


def clean_stale(layout: Layout, *, ttl: float, now: float | None = None) -> int:
    """Remove staging folders of keys nobody holds, untouched for longer than `ttl` (by the
    volume's clock); each is renamed aside first. Leases are left to their waiters and gc."""
    from webhook.cache.lease import volume_now

    clock = volume_now(layout) if now is None else now
    removed = 0
    try:
        names = [p.name for p in layout.staging.iterdir()]
    except FileNotFoundError:
        return 0
    for name in names:
        key = staging_key(name)
        path = layout.staging / name
        if key is None:
            continue
        view = read_current(layout, key)
        if view is not None and view.held:
            continue
        try:
            age = clock - _newest_mtime(path)
        except FileNotFoundError:
            continue
        if age > ttl and discard(layout, path, key=key):
            logger.info("removed stale staging folder %s (%.0fs old)", path, age)
            removed += 1
    return removed


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)  # noqa: PTH118
    return newest


def _write_durably(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(exc: OSError, layout: Layout, doing: str) -> FetchError:
    """The FetchError of an I/O error on the cache volume, with a diagnosis where it helps."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError(
            ErrorKind.DISK_FULL,
            f"no space left on the cache volume {layout.root} while {doing}: "
            "the partial download was removed and nothing was published",
        )
    if exc.errno == errno.EROFS:
        return FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"the cache volume {layout.root} is read-only while {doing} ({exc.filename}): "
            "check the PVC access mode (ReadWriteMany) and that the volume is not mounted "
            "readOnly in the init container",
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        where = _folder_of(exc.filename, layout.root)
        return FetchError(
            ErrorKind.CACHE_NOT_WRITABLE,
            f"permission denied on the cache volume while {doing} ({exc.filename}): "
            + diagnose_permissions(where),
        )
    return FetchError(ErrorKind.DOWNLOAD_FAILED, f"I/O error while {doing}: {exc}")


def _folder_of(filename: object, root: Path) -> Path:
    if isinstance(filename, str | os.PathLike):
        path = Path(filename)
        for candidate in (path, *path.parents):
            if candidate.is_dir():
                return candidate
    return root


FIX_HINT: Final = (
    "Most ReadWriteMany CSI drivers (NFS, EFS, Filestore, Azure Files, CephFS) ignore the "
    "pod's fsGroup (their fsGroupPolicy is None or ReadWriteOnceWithFSType), so the share "
    "keeps its own owner and mode. Prepare the share once, as root: `kserve-cache "
    "prepare-volume --cache-root <mount> --group <gid>` (docs/install.md), or by hand `chgrp "
    "<gid> <root> && chmod g+rwxs <root>` with the group the init container runs with; or "
    "run the init container as the share's owner"
)


def diagnose_permissions(folder: Path) -> str:
    """Why this process may not write `folder`, from its owner, group and mode and our ids."""
    uid, gid, groups = os.geteuid(), os.getegid(), sorted(set(os.getgroups()) | {os.getegid()})
    try:
        st = folder.stat()
    except OSError as exc:
        return f"cannot even stat {folder} ({exc.strerror}) as uid {uid} gid {gid}. {FIX_HINT}"
    mode = stat.S_IMODE(st.st_mode)
    facts = (
        f"{folder} is owned by uid {st.st_uid} gid {st.st_gid} with mode {mode:04o}; this "
        f"process runs as uid {uid}, gid {gid}, groups {groups}"
    )
    if uid == st.st_uid:
        allowed = mode & 0o300 == 0o300
    elif st.st_gid in groups:
        allowed = mode & 0o030 == 0o030
    else:
        allowed = mode & 0o003 == 0o003
    if uid == 0 or allowed:
        return (
            f"{facts}, which the mode allows: the refusal comes from elsewhere (root squash "
            "on the server, an ACL, SELinux/AppArmor, or the filesystem itself)"
        )
    return f"{facts}, so it may not create files there. {FIX_HINT}"
