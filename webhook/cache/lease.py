"""Single-flight lease on a cache key: `.locks/<key>` created with O_EXCL, heartbeat by mtime.

A waiter breaks a lease whose heartbeat is older than the TTL by renaming it to a unique
tombstone name: only one rename of the same file succeeds, so two waiters never both take over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from webhook.cache.layout import Layout, read_lease

logger = logging.getLogger(__name__)


def new_holder_id() -> str:
    """Who holds a lease: the pod (hostname), the process and a random part for uniqueness."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    """A lease this process created; the unique `holder` id tells it apart from a later one.

    (Not the inode: a deleted lease's inode number is reused at once by the next lease.)
    """

    layout: Layout
    key: str
    holder: str

    @property
    def path(self) -> Path:
        return self.layout.lock(self.key)

    def is_mine(self) -> bool:
        """True while the lease file on the volume is still the one this process created."""
        try:
            return _holder_of(self.path.read_text(encoding="utf-8")) == self.holder
        except FileNotFoundError:
            return False

    def touch(self) -> bool:
        """Refresh the heartbeat; False when the lease was taken from us."""
        if not self.is_mine():
            return False
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return False
        return True


def try_acquire(layout: Layout, key: str, *, holder: str, now: float | None = None) -> Lease | None:
    """Create the lease with O_EXCL; None when somebody else holds it.

    Raises OSError for anything but "already exists" (a read-only or full volume).
    """
    path = layout.lock(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        body = json.dumps({"holder": holder, "created": time.time() if now is None else now})
        os.write(fd, body.encode())
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)
    logger.debug("lease %s taken by %s", key, holder)
    return Lease(layout=layout, key=key, holder=holder)


def _tombstone(layout: Layout, key: str) -> Path:
    # Starts with a dot and holds dots: never a valid key, so no reader takes it for a lease.
    return layout.locks / f".{key}.{secrets.token_hex(6)}.dead"


def break_if_stale(layout: Layout, key: str, *, ttl: float, now: float | None = None) -> bool:
    """Remove the lease on `key` when its heartbeat is older than `ttl`; True when this call did.

    The stale file is renamed to a tombstone first. If, between our look and our rename, the
    holder changed (another waiter already took over), the file we moved is a live lease: it
    is linked back (atomic, fails if a third lease appeared) and we report False.
    """
    info = read_lease(layout, key)
    if info is None or info.is_live(ttl=ttl, now=now):
        return False
    path = layout.lock(key)
    tomb = _tombstone(layout, key)
    try:
        path.rename(tomb)
    except FileNotFoundError:
        return False  # somebody else broke or released it first
    try:
        moved = tomb.stat()
        text = tomb.read_text(encoding="utf-8")
        stale = (time.time() if now is None else now) - moved.st_mtime > ttl
        same = stale and _holder_of(text) == info.holder
        if not same:
            with contextlib.suppress(FileExistsError):
                os.link(tomb, path)
            logger.info("lease %s changed hands while breaking it; left in place", key)
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tomb.unlink()
    logger.warning(
        "broke stale lease %s of %s (heartbeat %.1fs old)",
        key,
        info.holder,
        (time.time() if now is None else now) - info.heartbeat,
    )
    return True


def _holder_of(text: str) -> str:
    try:
        return str(json.loads(text)["holder"])
    except (ValueError, KeyError, TypeError):
        return "<unreadable>"


def release(lease: Lease) -> bool:
    """Remove the lease if it is still ours (moved aside first, so we never delete a rival's)."""
    tomb = _tombstone(lease.layout, lease.key)
    try:
        lease.path.rename(tomb)
    except FileNotFoundError:
        return False
    try:
        if _holder_of(tomb.read_text(encoding="utf-8")) != lease.holder:
            with contextlib.suppress(FileExistsError):
                os.link(tomb, lease.path)
            logger.warning("lease %s was no longer ours at release", lease.key)
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tomb.unlink()
    logger.debug("lease %s released by %s", lease.key, lease.holder)
    return True


def clean_dead_leases(layout: Layout, *, ttl: float, now: float | None = None) -> int:
    """Break every lease whose heartbeat is older than `ttl`; remove old tombstones."""
    count = 0
    try:
        names = [p.name for p in layout.locks.iterdir()]
    except FileNotFoundError:
        return 0
    clock = time.time() if now is None else now
    for name in names:
        path = layout.locks / name
        if name.startswith("."):
            # A tombstone left by a process killed between its rename and its unlink.
            try:
                if clock - path.stat().st_mtime > ttl:
                    path.unlink()
            except FileNotFoundError:
                pass
            continue
        try:
            if break_if_stale(layout, name, ttl=ttl, now=now):
                count += 1
        except ValueError:
            logger.debug("ignoring %s in %s: not a key", name, layout.locks)
    return count


class Heartbeat:
    """A daemon thread refreshing the lease mtime every `interval` seconds until stopped."""

    def __init__(self, lease: Lease, *, interval: float) -> None:
        self._lease = lease
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.key}", daemon=True
        )
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._lease.touch()
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES):
                    logger.error("cannot refresh lease %s: %s", self._lease.key, exc)
                continue
            if not alive and not self.lost:
                # Publishing stays safe (one atomic rename wins); only the single-flight
                # saving is lost, so we keep going rather than throw the download away.
                self.lost = True
                logger.warning("lease %s was taken over; finishing anyway", self._lease.key)
