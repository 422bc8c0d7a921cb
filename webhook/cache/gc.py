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
    list_keys,
    read_lease,
    read_manifest,
    read_usage,
)
from webhook.cache.lease import break_if_stale
from webhook.keys import is_valid_key

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


@dataclass(frozen=True)
class Staging:
    """A staging folder: its name, the key it belongs to (None when unparsable), its age."""

    name: str
    key: str | None
    modified: float
    leased: bool = False


@dataclass(frozen=True)
class Lease:
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

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < 0:
            raise GcError("max_bytes must not be negative")
        if self.max_usage is not None and not 0 <= self.max_usage <= 100:
            raise GcError("max_usage is a percentage between 0 and 100")
        if self.max_age is not None and self.max_age < 0:
            raise GcError("max_age must not be negative")
        if self.grace < 0 or self.lease_ttl <= 0:
            raise GcError("grace must not be negative and lease_ttl must be positive")

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
            lease.key for lease in snapshot.leases if now - lease.heartbeat > budget.lease_ttl
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


def scan(layout: Layout, *, now: float, lease_ttl: float) -> Snapshot:
    """Read entries, staging folders, leases and trash from the volume (no changes)."""
    entries = []
    for key in list_keys(layout):
        manifest = read_manifest(layout, key)
        usage = read_usage(layout, key)
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
        last_used = max(created, usage.last_used if usage else 0.0)
        lease = read_lease(layout, key)
        leased = lease is not None and lease.is_live(ttl=lease_ttl, now=now)
        entries.append(Entry(key, size, last_used, leased=leased, valid=valid))

    staging = []
    for path in _children(layout.staging):
        owner = _key_prefix(path.name)
        held = read_lease(layout, owner) if owner else None
        with contextlib.suppress(FileNotFoundError):
            live = held is not None and held.is_live(ttl=lease_ttl, now=now)
            staging.append(Staging(path.name, owner, _newest_mtime(path), leased=live))

    leases = []
    for path in _children(layout.locks):
        if is_valid_key(path.name):
            lease = read_lease(layout, path.name)
            if lease is not None:
                leases.append(Lease(path.name, lease.heartbeat))

    trash = []
    for path in _children(layout.trash):
        parts = path.name.rsplit(".", 2)
        try:
            stamp = float(parts[1]) if len(parts) == 3 else _mtime(path)
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


def remove_tree(path: Path) -> None:
    """Delete a folder, tolerating another process deleting the same folder at the same time."""
    if not path.exists():
        return
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))  # noqa: PTH108, PTH118
        for name in dirnames:
            sub = os.path.join(dirpath, name)  # noqa: PTH118
            if os.path.islink(sub):  # noqa: PTH114
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(sub)  # noqa: PTH108
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(sub)  # noqa: PTH106
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


@dataclass
class Outcome:
    """What an executed plan did; `skipped` maps a key to why it was left after all."""

    evicted: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    staging_removed: list[str] = field(default_factory=list)
    leases_removed: list[str] = field(default_factory=list)
    trash_removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evicted": self.evicted,
            "freed_bytes": self.freed_bytes,
            "skipped": self.skipped,
            "staging_removed": self.staging_removed,
            "leases_removed": self.leases_removed,
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
    for decision in plan.evict:
        try:
            _evict_one(layout, decision, budget=budget, clock=clock, outcome=outcome)
        except OSError as exc:
            logger.error("could not evict %s: %s", decision.key, exc)
            outcome.errors.append(f"{decision.key}: {exc}")
    for name in plan.stale_staging:
        _remove_staging(layout, name, budget=budget, clock=clock, outcome=outcome)
    for key in plan.dead_leases:
        # The fetchers' own protocol: renamed to a tombstone, linked back if it changed hands.
        if break_if_stale(layout, key, ttl=budget.lease_ttl, now=clock()):
            outcome.leases_removed.append(key)
    for name in plan.old_trash:
        remove_tree(layout.trash / name)
        outcome.trash_removed.append(name)
    return outcome


def _busy(layout: Layout, key: str, *, budget: Budget, now: float) -> str:
    lease = read_lease(layout, key)
    if lease is not None and lease.is_live(ttl=budget.lease_ttl, now=now):
        return "leased"
    usage = read_usage(layout, key)
    if usage is not None and now - usage.last_used < budget.grace:
        return "used-since-plan"
    return ""


def _evict_one(
    layout: Layout,
    decision: Decision,
    *,
    budget: Budget,
    clock: Callable[[], float],
    outcome: Outcome,
) -> None:
    key = decision.key
    before = read_usage(layout, key)
    seen = before.last_used if before else 0.0
    busy = _busy(layout, key, budget=budget, now=clock())
    if busy:
        outcome.skipped[key] = busy
        return
    source = layout.entry(key)
    trash = layout.new_trash(key, now=clock())
    trash.parent.mkdir(exist_ok=True)
    try:
        source.rename(trash)
    except FileNotFoundError:
        outcome.skipped[key] = "gone"  # another gc got there first
        return
    after = read_usage(layout, key)
    if after is not None and after.last_used > seen and decision.reason != "invalid":
        # A fetch found the entry between our check and the rename: put it back whole.
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
    outcome.evicted.append(key)
    outcome.freed_bytes += decision.bytes
    logger.info("evicted %s (%s bytes, %s)", key, decision.bytes, decision.reason)


def _remove_staging(
    layout: Layout, name: str, *, budget: Budget, clock: Callable[[], float], outcome: Outcome
) -> None:
    key = _key_prefix(name)
    if key is not None:
        lease = read_lease(layout, key)
        if lease is not None and lease.is_live(ttl=budget.lease_ttl, now=clock()):
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
