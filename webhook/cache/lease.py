"""Single-flight lease on a cache key that is never broken while alive, for shared filesystems.

A lease is a series of generation files `.locks/<key>.<gen>`; the highest generation present is
the lease. Its holder rewrites it (a beat counter inside) every TTL/4. A waiter judges it dead
only on its own monotonic clock, after seeing no change in the file's content for TTL + margin;
it takes over by creating generation gen+1 with O_EXCL, which exactly one process can do. A
holder that sees a newer generation stops. Lease files are never deleted by fetchers (release
marks the file `released`), so a generation name is never reused. See docs/protocol.md.
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from webhook.cache.layout import Layout
from webhook.keys import is_valid_key

logger = logging.getLogger(__name__)

BEATS_PER_TTL: Final = 4
"""The holder rewrites its lease TTL/4 seconds apart."""
MARGIN_FRACTION: Final = 0.25
"""A waiter declares a lease dead after TTL * (1 + MARGIN_FRACTION) without an observed change."""
RETIRE_AFTER_TTLS: Final = 10
"""gc removes a superseded generation only when it is this many TTLs old (volume clock)."""

HELD: Final = "held"
RELEASED: Final = "released"
UNREADABLE: Final = "unreadable"


def new_holder_id() -> str:
    """Who holds a lease: the pod (hostname), the process and a random part for uniqueness."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


def dead_after(ttl: float) -> float:
    """Seconds without an observed change after which a waiter may take a lease over."""
    return ttl * (1.0 + MARGIN_FRACTION)


def lease_path(layout: Layout, key: str, gen: int) -> Path:
    """`.locks/<key>.<gen>`; generation 0 is the `.locks/<key>` file of earlier releases."""
    layout.lock(key)  # validates the key
    return layout.locks / (key if gen == 0 else f"{key}.{gen}")


def parse_lease_name(name: str) -> tuple[str, int] | None:
    """(key, generation) of a lease file name, or None for tombstones and other names."""
    if is_valid_key(name):
        return name, 0
    key, dot, gen = name.rpartition(".")
    if dot and gen.isdigit() and len(gen) <= 12 and is_valid_key(key):
        return key, int(gen)
    return None


@dataclass(frozen=True)
class LeaseView:
    """What a reader saw of a key's lease: its highest generation, read with open/read."""

    key: str
    gen: int
    holder: str
    state: str  # HELD, RELEASED or UNREADABLE (unreadable counts as held)
    beat: int
    mtime: float
    signature: bytes | None  # what changes when the holder beats; None when unreadable

    @property
    def held(self) -> bool:
        return self.state != RELEASED


def generations(layout: Layout, key: str) -> list[int]:
    """The generations of `key` present, ascending: a listing, then probes by name upward.

    The probes catch a generation a cached directory listing does not show yet.
    """
    prefix = f"{key}."
    found: set[int] = set()
    try:
        with os.scandir(layout.locks) as it:
            for item in it:
                if item.name == key or item.name.startswith(prefix):
                    parsed = parse_lease_name(item.name)
                    if parsed is not None and parsed[0] == key:
                        found.add(parsed[1])
    except FileNotFoundError:
        return []
    gen = max(found, default=0) + 1
    while lease_path(layout, key, gen).exists():
        found.add(gen)
        gen += 1
    return sorted(found)


def read_view(layout: Layout, key: str, gen: int) -> LeaseView | None:
    """One generation's file, read with open/read (close-to-open consistency on NFS)."""
    path = lease_path(layout, key, gen)
    try:
        with path.open("rb") as f:
            raw = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:  # ESTALE, EIO: we cannot tell, so it is held and unchanged
        logger.debug("lease %s unreadable: %s", path, exc)
        return LeaseView(key, gen, "<unreadable>", UNREADABLE, -1, 0.0, None)
    try:
        data = json.loads(raw)
        holder = str(data["holder"])
        state = RELEASED if data.get("state") == RELEASED else HELD
        beat = int(data.get("beat", 0))
    except (ValueError, KeyError, TypeError):
        return LeaseView(key, gen, "<unreadable>", UNREADABLE, -1, mtime, None)
    # Earlier releases beat by mtime, not content: for them the mtime is part of the change.
    signature = raw + (str(mtime).encode() if gen == 0 else b"")
    return LeaseView(key, gen, holder, state, beat, mtime, signature)


def read_current(layout: Layout, key: str) -> LeaseView | None:
    """The lease on `key` (its highest generation), or None when there never was one."""
    for _ in range(3):
        gens = generations(layout, key)
        if not gens:
            return None
        view = read_view(layout, key, gens[-1])
        if view is not None:
            return view
        # Retired between the listing and the read (gc, old generations only): look again.
    return None


def read_holder(layout: Layout, key: str) -> LeaseView | None:
    """The lease on `key` when someone holds it (held or unreadable), else None."""
    view = read_current(layout, key)
    return view if view is not None and view.held else None


RECORD_SIZE: Final = 512
"""Every lease file has this size (JSON padded with spaces): a client whose cached size is
stale never reads a truncated or over-long record."""


def _body(holder: str, *, gen: int, beat: int, state: str) -> bytes:
    text = json.dumps(
        {"holder": holder[:300], "gen": gen, "beat": beat, "state": state, "wall": time.time()},
        sort_keys=True,
    ).encode()
    return text.ljust(RECORD_SIZE)


def _create_exclusive(path: Path, body: bytes) -> bool:
    """Create `path` with O_EXCL holding `body`; False when it exists (a lost race)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except PermissionError:
        # sshfs and some FUSE backends answer a lost exclusive create with EPERM/EACCES.
        if path.exists():
            return False
        raise
    try:
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _replace(path: Path, body: bytes) -> None:
    """Rewrite a lease file in place: one write of the whole fixed-size record at offset 0.

    In place, not write-aside-and-rename: the file keeps its inode, so a client whose entry
    cache still maps the name to it (FUSE entry timeouts) reads the new content, not a
    deleted file's. One write of 512 bytes is one write on the server; a reader that still
    catches half of one sees unparsable JSON, which counts as "no change".
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, body, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


class Lease:
    """Generation `gen` of the lease on `key`, created by this process."""

    def __init__(self, layout: Layout, key: str, *, holder: str, gen: int) -> None:
        self.layout = layout
        self.key = key
        self.holder = holder
        self.gen = gen
        self.beat = 0
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return lease_path(self.layout, self.key, self.gen)

    def superseded(self) -> bool:
        """True when a newer generation exists: someone took the lease over."""
        return any(g > self.gen for g in generations(self.layout, self.key))

    def is_mine(self) -> bool:
        """True while no newer generation exists. Only we write our generation's file (gc
        retires superseded ones only), so its content needs no check: a transient ENOENT or
        ESTALE of our own file through a client cache must not make us give up."""
        return not self.superseded()

    def touch(self) -> bool:
        """One heartbeat: rewrite the lease with the next beat; False when it is not ours."""
        with self._lock:
            if not self.is_mine():
                return False
            self.beat += 1
            _replace(self.path, _body(self.holder, gen=self.gen, beat=self.beat, state=HELD))
            return True

    def release(self) -> bool:
        """Mark the lease released (never deleted); False when it was no longer ours."""
        with self._lock:
            if not self.is_mine():
                logger.warning(
                    "lease %s (gen %d) was no longer ours at release", self.key, self.gen
                )
                return False
            self.beat += 1
            _replace(self.path, _body(self.holder, gen=self.gen, beat=self.beat, state=RELEASED))
        logger.debug("lease %s gen %d released by %s", self.key, self.gen, self.holder)
        return True


def try_acquire(
    layout: Layout, key: str, *, holder: str, after: LeaseView | None = None
) -> Lease | None:
    """Take the lease by creating the generation after `after`; None when someone else did.

    `after` is the generation the caller saw released, or watched dead for TTL + margin. Without
    it, the lease is taken only if it is free now. Raises OSError for anything but a lost race.
    """
    layout.locks.mkdir(parents=True, exist_ok=True)
    if after is None:
        current = read_current(layout, key)
        if current is not None and current.held:
            return None
        gen = (current.gen if current else 0) + 1
    else:
        gen = after.gen + 1
    path = lease_path(layout, key, gen)
    if not _create_exclusive(path, _body(holder, gen=gen, beat=0, state=HELD)):
        return None
    lease = Lease(layout, key, holder=holder, gen=gen)
    if lease.superseded():
        # Our view was stale by more than one generation: the newer one is the lease.
        with contextlib.suppress(OSError):
            _replace(path, _body(holder, gen=gen, beat=1, state=RELEASED))
        return None
    logger.debug("lease %s gen %d taken by %s", key, gen, holder)
    return lease


def release(lease: Lease) -> bool:
    return lease.release()


class Watch:
    """A waiter's judgment of a lease, on its own monotonic clock.

    `look(view)` says `free` (no lease or released), `held`, or `dead`: the same generation with
    the same content for longer than TTL + margin. An unreadable lease is held and unchanged.
    """

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = dead_after(ttl)
        self._clock = clock
        self._seen: tuple[int, bytes | None] | None = None
        self._since = 0.0

    def look(self, view: LeaseView | None) -> str:
        if view is None or not view.held:
            return "free"
        now = self._clock()
        mark = (view.gen, view.signature)
        if (
            self._seen is None
            or mark[0] != self._seen[0]
            or (mark[1] is not None and mark[1] != self._seen[1])
        ):
            self._seen, self._since = mark, now
            return "held"
        return "dead" if now - self._since > self.limit else "held"

    def unchanged_for(self) -> float:
        return self._clock() - self._since if self._seen is not None else 0.0


def volume_now(layout: Layout) -> float:
    """The volume's own clock: the mtime of a file created now (the server sets it on NFS).

    Used only where a one-shot process (gc) must judge an age; falls back to local time.
    """
    probe = layout.locks / f".clock.{secrets.token_hex(6)}"
    try:  # no folder is created for it: a dry run must change nothing
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            stamp = os.fstat(fd).st_mtime
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            probe.unlink()
    except OSError:
        return time.time()
    return stamp


def break_dead(layout: Layout, view: LeaseView, *, by: str) -> bool:
    """Break a lease judged dead by creating the next generation already released.

    The holder of `view`, if it is alive after all, sees the newer generation and stops; no
    lease file is removed, so no third process can slip in. True when this call broke it.
    """
    gen = view.gen + 1
    path = lease_path(layout, view.key, gen)
    if not _create_exclusive(path, _body(by, gen=gen, beat=0, state=RELEASED)):
        return False
    logger.warning("broke lease %s gen %d of %s", view.key, view.gen, view.holder)
    return True


def retire(layout: Layout, key: str, gen: int) -> bool:
    """Remove a superseded generation: renamed to a tombstone (atomic), then deleted."""
    path = lease_path(layout, key, gen)
    tomb = layout.locks / f".{path.name}.{secrets.token_hex(6)}.dead"
    try:
        path.rename(tomb)
    except FileNotFoundError:
        return False
    with contextlib.suppress(FileNotFoundError):
        tomb.unlink()
    return True


def list_leases(layout: Layout) -> list[LeaseView]:
    """The current lease of every key that has one, held or released, sorted by key."""
    keys: set[str] = set()
    try:
        with os.scandir(layout.locks) as it:
            for item in it:
                parsed = parse_lease_name(item.name)
                if parsed is not None:
                    keys.add(parsed[0])
    except FileNotFoundError:
        return []
    views = [read_current(layout, key) for key in sorted(keys)]
    return [v for v in views if v is not None]


def superseded_generations(layout: Layout, key: str) -> list[int]:
    gens = generations(layout, key)
    return gens[:-1]


class Heartbeat:
    """A daemon thread rewriting the lease every `interval` seconds until stopped.

    When the lease is superseded (a waiter judged us dead), `lost` is set and `on_lost` runs:
    the holder must stop, not finish.
    """

    def __init__(
        self, lease: Lease, *, interval: float, on_lost: Callable[[], None] | None = None
    ) -> None:
        self._lease = lease
        self._interval = interval
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.key}", daemon=True
        )
        self.lost = False

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating at once (a stalled download must let a waiter take over)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                alive = self._lease.touch()
            except OSError as exc:
                if exc.errno in (errno.EROFS, errno.EACCES, errno.ENOSPC):
                    logger.error("cannot refresh lease %s: %s", self._lease.key, exc)
                continue
            if not alive and not self.lost:
                self.lost = True
                logger.warning(
                    "lease %s (gen %d) was taken over: stopping", self._lease.key, self._lease.gen
                )
                if self._on_lost is not None:
                    self._on_lost()
                return
