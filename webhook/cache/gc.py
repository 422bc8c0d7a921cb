"""Cache eviction: a pure planner (entries and budgets in, an eviction plan out) and the
executor that carries a plan out on the volume, renaming each entry out of `models/` before
deleting it so that no reader ever sees half a folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from webhook.cache.layout import (
    Layout,
    UnreadableRecord,
    Usage,
    list_keys,
    read_manifest,
    read_usage_checked,
    remove_tree,
)
from webhook.cache.lease import (
    RETIRE_AFTER_TTLS,
    break_dead,
    dead_after,
    generations,
    list_leases,
    new_holder_id,
    read_current,
    read_holder,
    read_view,
    retire,
    volume_now,
)
from webhook.keys import is_valid_key

__all__ = ["remove_tree"]

logger = logging.getLogger(__name__)

DEFAULT_GRACE: Final = 3600.0
DEFAULT_LEASE_TTL: Final = 120.0

_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?)?[Bb]?\s*")
_SIZE_UNITS: Final = {
    None: 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_DURATION_UNITS: Final = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


class GcError(ValueError):
    """A budget or a duration that cannot be understood."""


def parse_size(text: str) -> int:
    """`10G` -> 10**9, `10Gi` -> 2**30 * 10, `512` -> 512 (bytes)."""
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        raise GcError(f"not a size: {text!r} (use a number with K, M, G, T, Ki, Mi, Gi or Ti)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_duration(text: str) -> float:
    """`7d`, `12h`, `1h30m`, `90s` or plain seconds (`300`) -> seconds."""
    stripped = text.strip()
    with contextlib.suppress(ValueError):
        seconds = float(stripped)
        if seconds >= 0:
            return seconds
        raise GcError(f"not a duration: {text!r} (negative)")
    parts = _DURATION_RE.findall(stripped)
    if not parts or "".join(n + u for n, u in parts) != stripped:
        raise GcError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 90s or 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


# --- the pure part -------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What the planner knows of one published entry."""

    key: str
    bytes: int
    last_used: float
    leased: bool = False
    valid: bool = True
    usage_unreadable: bool = False
    """Its usage record exists but could not be read: treated as in use, never as unused."""


@dataclass(frozen=True)
class Staging:
    """A staging folder: its name, the key it belongs to (None when unparsable), its age."""

    name: str
    key: str | None
    modified: float
    leased: bool = False


@dataclass(frozen=True)
class Lease:
    """A held lease and its last rewrite, on the local clock (corrected by the volume's)."""

    key: str
    heartbeat: float


@dataclass(frozen=True)
class Trash:
    name: str
    stamp: float


@dataclass(frozen=True)
class Filesystem:
    """The filesystem holding the cache, in bytes, as `df` counts it: `used` by anyone, `free`
    for unprivileged users (space reserved for root is neither), `total` the raw size.
    """

    total: int
    used: int
    free: int

    @property
    def capacity(self) -> int:
        return self.used + self.free

    def usage_percent(self, *, freed: int = 0) -> float:
        """Percentage in use, as `df` shows it, after freeing `freed` bytes."""
        if not self.capacity:
            return 0.0
        return 100.0 * max(0, self.used - freed) / self.capacity


@dataclass(frozen=True)
class Budget:
    max_bytes: int | None = None
    max_usage: float | None = None
    max_age: float | None = None
    grace: float = DEFAULT_GRACE
    lease_ttl: float = DEFAULT_LEASE_TTL
    cache_margin: float = 0.0
    """Seconds an evicted entry waits in `.trash/` before the final check of its usage record:
    longer than the clients' attribute/entry caches, so that check sees every use made before
    the rename (`cache_margin_for` picks it from the filesystem type)."""

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 0:
            raise GcError("max_bytes must not be negative")
        if self.max_usage is not None and not 0 <= self.max_usage <= 100:
            raise GcError("max_usage is a percentage between 0 and 100")
        if self.max_age is not None and self.max_age < 0:
            raise GcError("max_age must not be negative")
        if self.grace < 0 or self.lease_ttl <= 0 or self.cache_margin < 0:
            raise GcError(
                "grace and cache margin must not be negative and lease_ttl must be positive"
            )

    @property
    def any(self) -> bool:
        return self.max_bytes is not None or self.max_usage is not None or self.max_age is not None


@dataclass(frozen=True)
class Decision:
    """One entry and what the plan does with it: `evict` or `keep`, and why."""

    key: str
    bytes: int
    last_used: float
    action: str
    reason: str


@dataclass(frozen=True)
class Snapshot:
    """Everything gc reads from the volume (and the cluster) before planning."""

    entries: tuple[Entry, ...]
    staging: tuple[Staging, ...] = ()
    leases: tuple[Lease, ...] = ()
    trash: tuple[Trash, ...] = ()
    filesystem: Filesystem | None = None


@dataclass(frozen=True)
class Plan:
    decisions: tuple[Decision, ...]
    stale_staging: tuple[str, ...]
    dead_leases: tuple[str, ...]
    old_trash: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    filesystem: Filesystem | None
    cluster_checked: bool
    over_budget: tuple[str, ...] = ()

    @property
    def evict(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "evict")

    @property
    def keep(self) -> tuple[Decision, ...]:
        return tuple(d for d in self.decisions if d.action == "keep")

    @property
    def usage_before(self) -> float | None:
        return None if self.filesystem is None else self.filesystem.usage_percent()

    @property
    def usage_after(self) -> float | None:
        if self.filesystem is None:
            return None
        return self.filesystem.usage_percent(freed=self.bytes_before - self.bytes_after)


def plan_gc(
    snapshot: Snapshot,
    *,
    budget: Budget,
    now: float,
    in_use: frozenset[str] | None,
) -> Plan:
    """Which entries to evict, least recently used first, and which housekeeping to do.

    Protected, whatever the budget: keys in `in_use` (referenced by a live pod), entries with
    a live lease, entries used within the grace period. `in_use=None` means the cluster was
    not asked. An entry without a valid manifest can never be served, so it goes whenever it
    is not protected. A budget that only protected entries keep exceeded is reported in
    `over_budget`, not forced.
    """
    if budget.max_usage is not None and snapshot.filesystem is None:
        raise GcError("a usage budget needs the filesystem figures")
    entries = sorted(snapshot.entries, key=lambda e: (e.last_used, e.key))
    reasons: dict[str, str] = {}
    candidates: deque[Entry] = deque()
    for entry in entries:
        protection = _protection(entry, budget=budget, now=now, in_use=in_use)
        if protection:
            reasons[entry.key] = protection
        elif not entry.valid:
            reasons[entry.key] = "evict:invalid"
        elif budget.max_age is not None and now - entry.last_used > budget.max_age:
            reasons[entry.key] = "evict:age"
        else:
            candidates.append(entry)

    total = sum(e.bytes for e in entries)
    remaining = total - sum(e.bytes for e in entries if reasons.get(e.key, "").startswith("evict:"))
    over: list[str] = []
    for name, limit in _limits(snapshot, budget=budget, total=total):
        while remaining > limit and candidates:
            victim = candidates.popleft()
            reasons[victim.key] = f"evict:{name}"
            remaining -= victim.bytes
        if remaining > limit:
            over.append(f"{name}: {remaining - limit} bytes over, the rest is protected")

    decisions = []
    for entry in entries:
        reason = reasons.get(entry.key, "keep:within-budget")
        action, _, why = reason.partition(":")
        decisions.append(Decision(entry.key, entry.bytes, entry.last_used, action, why))
    return Plan(
        decisions=tuple(decisions),
        stale_staging=tuple(
            s.name for s in snapshot.staging if not s.leased and now - s.modified > budget.lease_ttl
        ),
        dead_leases=tuple(
            lease.key
            for lease in snapshot.leases
            if now - lease.heartbeat > dead_after(budget.lease_ttl)
        ),
        old_trash=tuple(t.name for t in snapshot.trash if now - t.stamp > budget.lease_ttl),
        bytes_before=total,
        bytes_after=remaining,
        filesystem=snapshot.filesystem,
        cluster_checked=in_use is not None,
        over_budget=tuple(over),
    )


def _protection(entry: Entry, *, budget: Budget, now: float, in_use: frozenset[str] | None) -> str:
    if in_use is not None and entry.key in in_use:
        return "keep:in-use"
    if entry.leased:
        return "keep:leased"
    if entry.usage_unreadable:
        return "keep:usage-unreadable"
    if now - entry.last_used < budget.grace:
        return "keep:grace"
    return ""


def _limits(snapshot: Snapshot, *, budget: Budget, total: int) -> list[tuple[str, int]]:
    """Each budget as a ceiling on the bytes of the entries that stay."""
    limits = []
    if budget.max_bytes is not None:
        limits.append(("bytes", budget.max_bytes))
    if budget.max_usage is not None and snapshot.filesystem is not None:
        fs = snapshot.filesystem
        # Freeing entry bytes is the only lever: the cache must shrink by what is over.
        target_used = int(fs.capacity * budget.max_usage / 100)
        limits.append(("usage", total - max(0, fs.used - target_used)))
    return limits


def keys_in_use(pods: Iterable[Mapping[str, Any]], *, annotation: str) -> frozenset[str]:
    """Cache keys named by the status annotation of pods that are not finished."""
    keys = set()
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            continue
        raw = ((pod.get("metadata") or {}).get("annotations") or {}).get(annotation)
        if not raw:
            continue
        try:
            key = json.loads(raw).get("key")
        except (ValueError, AttributeError):
            meta = pod.get("metadata") or {}
            logger.warning(
                "pod %s/%s has an unreadable %s annotation",
                meta.get("namespace"),
                meta.get("name"),
                annotation,
            )
            continue
        if isinstance(key, str) and is_valid_key(key):
            keys.add(key)
    return frozenset(keys)


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    return {
        "cluster_checked": plan.cluster_checked,
        "bytes_before": plan.bytes_before,
        "bytes_after": plan.bytes_after,
        "usage_percent_before": plan.usage_before,
        "usage_percent_after": plan.usage_after,
        "evict": [_decision_dict(d) for d in plan.evict],
        "keep": [_decision_dict(d) for d in plan.keep],
        "stale_staging": list(plan.stale_staging),
        "dead_leases": list(plan.dead_leases),
        "old_trash": list(plan.old_trash),
        "over_budget": list(plan.over_budget),
    }


def _decision_dict(decision: Decision) -> dict[str, Any]:
    return {
        "key": decision.key,
        "bytes": decision.bytes,
        "last_used": decision.last_used,
        "reason": decision.reason,
    }


# --- the edge: reading and changing the volume ---------------------------------------------


def read_filesystem(path: Path) -> Filesystem:
    st = os.statvfs(path)
    return Filesystem(
        total=st.f_blocks * st.f_frsize,
        used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
    )


def scan(layout: Layout, *, now: float, lease_ttl: float) -> Snapshot:  # noqa: ARG001
    """Read entries, staging folders, leases and trash from the volume (no changes but a
    probe file that reads the volume's clock).

    Conservative on shared storage: a usage record that exists but cannot be read or parsed
    (another node's write seen through a cache, ESTALE) counts as a use now; a held lease
    protects its entry however old it looks. File times are put on the local clock by the
    volume's own (`volume_now`), never compared with the local clock directly.
    """
    skew = volume_now(layout) - time.time() if layout.root.is_dir() else 0.0
    entries = []
    for key in list_keys(layout):
        manifest = read_manifest(layout, key)
        unreadable = False
        try:
            usage = read_usage_checked(layout, key)
        except UnreadableRecord as exc:
            logger.warning("%s: counting %s as in use now", exc, key)
            usage, unreadable = Usage(key=key, last_used=now), True
        try:
            if manifest is not None:
                size, created, valid = manifest.bytes, manifest.created_at, True
            else:
                size, created, valid = (
                    tree_bytes(layout.entry(key)),
                    _mtime(layout.entry(key)),
                    False,
                )
        except FileNotFoundError:
            continue  # evicted or replaced while we looked
        # A fresh entry counts as used when it was published, even if an older usage
        # record of the same key (from before an eviction) says otherwise.
        last_used = max(created - skew, usage.last_used if usage else 0.0)
        leased = read_holder(layout, key) is not None
        entries.append(
            Entry(key, size, last_used, leased=leased, valid=valid, usage_unreadable=unreadable)
        )

    staging = []
    for path in _children(layout.staging):
        owner = _key_prefix(path.name)
        held = read_holder(layout, owner) if owner else None
        with contextlib.suppress(FileNotFoundError):
            modified = _newest_mtime(path) - skew
            staging.append(Staging(path.name, owner, modified, leased=held is not None))

    leases = [
        Lease(view.key, view.mtime - skew)
        for view in list_leases(layout)
        if view.held and view.signature is not None
    ]

    trash = []
    for path in _children(layout.trash):
        parts = path.name.rsplit(".", 2)
        try:
            stamp = float(parts[1]) if len(parts) == 3 else _mtime(path) - skew
        except (ValueError, FileNotFoundError):
            stamp = 0.0
        trash.append(Trash(path.name, stamp))

    return Snapshot(
        entries=tuple(entries),
        staging=tuple(staging),
        leases=tuple(leases),
        trash=tuple(trash),
        filesystem=read_filesystem(layout.root),
    )


def _children(path: Path) -> list[Path]:
    try:
        return sorted(path.iterdir())
    except FileNotFoundError:
        return []


def _key_prefix(name: str) -> str | None:
    key, dot, _ = name.rpartition(".")
    return key if dot and is_valid_key(key) else None


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def _newest_mtime(path: Path) -> float:
    """The latest change anywhere in a folder: a download writes deep inside it."""
    newest = _mtime(path)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)  # noqa: PTH118
    return newest


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size  # noqa: PTH118
    return total


@dataclass
class Outcome:
    """What an executed plan did; `skipped` maps a key to why it was left after all."""

    evicted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    staging_removed: list[str] = field(default_factory=list)
    leases_removed: list[str] = field(default_factory=list)
    generations_retired: int = 0
    trash_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evicted": self.evicted,
            "freed_bytes": self.freed_bytes,
            "skipped": self.skipped,
            "staging_removed": self.staging_removed,
            "leases_removed": self.leases_removed,
            "generations_retired": self.generations_retired,
            "trash_removed": self.trash_removed,
            "errors": self.errors,
        }


def execute(
    layout: Layout,
    plan: Plan,
    *,
    budget: Budget,
    clock: Callable[[], float] = time.time,
) -> Outcome:
    """Carry out a plan. Every step tolerates another gc doing the same step at the same time.

    Each entry is checked again just before it goes (a lease taken or a use recorded since
    the scan keeps it), renamed to `.trash/`, checked once more (a fetch that hit in between
    gets its entry back), and only then deleted.
    """
    outcome = Outcome()
    aside: list[tuple[Decision, Path, float]] = []
    for decision in plan.evict:
        try:
            moved = _move_aside(layout, decision, budget=budget, clock=clock, outcome=outcome)
        except OSError as exc:
            logger.error("could not evict %s: %s", decision.key, exc)
            outcome.errors.append(f"{decision.key}: {exc}")
            continue
        if moved is not None:
            aside.append((decision, *moved))
    if aside and budget.cache_margin > 0:
        # Another node's use may reach us that much later through our client's caches.
        logger.info(
            "waiting %.0fs (cache margin) before the final check of %d entries",
            budget.cache_margin,
            len(aside),
        )
        time.sleep(budget.cache_margin)
    for decision, trash, seen in aside:
        try:
            _final_check(layout, decision, trash, seen, outcome=outcome)
        except OSError as exc:
            logger.error("could not evict %s: %s", decision.key, exc)
            outcome.errors.append(f"{decision.key}: {exc}")
    for name in plan.stale_staging:
        _remove_staging(layout, name, budget=budget, clock=clock, outcome=outcome)
    for key in plan.dead_leases:
        if _break_if_dead(layout, key, budget=budget):
            outcome.leases_removed.append(key)
    outcome.generations_retired = retire_superseded(layout, ttl=budget.lease_ttl)
    for name in plan.old_trash:
        remove_tree(layout.trash / name)
        outcome.trash_removed.append(name)
    return outcome


def _break_if_dead(layout: Layout, key: str, *, budget: Budget) -> bool:
    """Break a held lease still unchanged and older than TTL + margin by the volume's clock.

    Breaking creates the next generation, already released: nothing is deleted, the holder
    (if alive after all) stops, and the next fetcher takes the lease at once.
    """
    view = read_current(layout, key)
    if view is None or not view.held or view.signature is None:
        return False
    if volume_now(layout) - view.mtime <= dead_after(budget.lease_ttl):
        return False
    return break_dead(layout, view, by=f"gc/{new_holder_id()}")


NETWORK_FILESYSTEMS: Final = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs",
                               "lustre", "gpfs", "9p", "fuse", "beegfs", "afs")  # fmt: skip
NETWORK_CACHE_MARGIN: Final = 65.0
"""NFS caches attributes for at most 60 s by default (acregmax/acdirmax); GlusterFS's
md-cache-timeout is at most 60 s; kernel FUSE entry/attribute timeouts are set per mount."""


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding `path` (from /proc/self/mountinfo), or ""."""
    target = str(path.resolve())
    best, kind = "", ""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(
            best
        ):
            best, kind = mount, right.split()[0] if right.split() else ""
    return kind


def cache_margin_for(path: Path) -> float:
    """The default cache margin: 0 on a local filesystem, 65 s on a network or FUSE one."""
    kind = filesystem_type(path)
    family = kind.split(".", 1)[0]
    return NETWORK_CACHE_MARGIN if family in NETWORK_FILESYSTEMS else 0.0


def retire_superseded(layout: Layout, *, ttl: float) -> int:
    """Remove lease generations older than the newest of their key and RETIRE_AFTER_TTLS TTLs
    old (volume clock); the newest generation stays, so a generation number is never reused.
    Also removes tombstones and temporary files left by killed processes."""
    keys: set[str] = set()
    now = volume_now(layout)
    retired = 0
    for path in _children(layout.locks):
        if path.name.startswith("."):
            with contextlib.suppress(FileNotFoundError):
                if now - path.lstat().st_mtime > ttl * RETIRE_AFTER_TTLS:
                    path.unlink()
            continue
        key = path.name if is_valid_key(path.name) else _key_prefix(path.name)
        if key is not None:
            keys.add(key)
    for key in sorted(keys):
        for gen in generations(layout, key)[:-1]:
            view = read_view(layout, key, gen)
            if view is not None and now - view.mtime > ttl * RETIRE_AFTER_TTLS:
                retired += retire(layout, key, gen)
    return retired


def _busy(layout: Layout, key: str, *, budget: Budget, now: float) -> str:
    if read_holder(layout, key) is not None:
        return "leased"
    try:
        usage = read_usage_checked(layout, key)
    except UnreadableRecord:
        return "usage-unreadable"
    if usage is not None and now - usage.last_used < budget.grace:
        return "used-since-plan"
    return ""


def _move_aside(
    layout: Layout,
    decision: Decision,
    *,
    budget: Budget,
    clock: Callable[[], float],
    outcome: Outcome,
) -> tuple[Path, float] | None:
    """Check an entry once more, then rename it into `.trash/`: (its trash path, the last use
    the plan knew), or None when it stays."""
    key = decision.key
    try:
        before = read_usage_checked(layout, key)
    except UnreadableRecord:
        outcome.skipped[key] = "usage-unreadable"
        return None
    seen = max(decision.last_used, before.last_used if before else 0.0)
    busy = _busy(layout, key, budget=budget, now=clock())
    if busy:
        outcome.skipped[key] = busy
        return None
    source = layout.entry(key)
    trash = layout.new_trash(key, now=clock())
    trash.parent.mkdir(exist_ok=True)
    try:
        source.rename(trash)
    except FileNotFoundError:
        outcome.skipped[key] = "gone"  # another gc got there first
        return None
    return trash, seen


def _final_check(
    layout: Layout, decision: Decision, trash: Path, seen: float, *, outcome: Outcome
) -> None:
    """After the rename (and the cache margin): re-read the record with open/read
    (close-to-open consistency on NFS). A use newer than the plan, or a record we cannot
    read, means a fetch found the entry before the rename: put it back whole."""
    key = decision.key
    source = layout.entry(key)
    try:
        after = read_usage_checked(layout, key)
        used = after is not None and after.last_used > seen
    except UnreadableRecord:
        used = True
    if used and decision.reason != "invalid":
        try:
            trash.rename(source)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            # A new copy was published meanwhile; ours is redundant.
        else:
            outcome.skipped[key] = "used-during-eviction"
            return
    remove_tree(trash)
    from webhook.cache.versions import drop_versions

    drop_versions(layout, key)  # a ref's versions go with it (nothing names them now)
    outcome.evicted.append(key)
    outcome.freed_bytes += decision.bytes
    logger.info("evicted %s (%s bytes, %s)", key, decision.bytes, decision.reason)


def _remove_staging(
    layout: Layout,
    name: str,
    *,
    budget: Budget,  # noqa: ARG001 (the same signature as the other steps)
    clock: Callable[[], float],
    outcome: Outcome,
) -> None:
    key = _key_prefix(name)
    if key is not None and read_holder(layout, key) is not None:
        outcome.skipped[name] = "leased"
        return
    # Renamed first, so a slow downloader can never publish a folder we are deleting.
    trash = layout.new_trash(key, now=clock()) if key else layout.trash / f"{name}.{int(clock())}.x"
    trash.parent.mkdir(exist_ok=True)
    try:
        (layout.staging / name).rename(trash)
    except FileNotFoundError:
        return
    remove_tree(trash)
    outcome.staging_removed.append(name)
