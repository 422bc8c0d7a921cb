"""Versions of a cache entry: refresh policy, the shared interval check, what a version's
manifest says (digest, fingerprint, commit), and checking a version or the whole cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from webhook.cache.integrity import (
    FileDigest,
    IntegrityError,
    Problem,
    files_from_manifest,
    manifest_digest,
    verify_full,
    verify_sizes,
)
from webhook.cache.layout import MANIFEST_NAME, Layout, list_keys
from webhook.cache.refs import Ref, list_versions, read_ref, version_dir, versions_of
from webhook.keys import is_valid_key

logger = logging.getLogger(__name__)

DEFAULT_REFRESH: Final = "never"
QUARANTINE: Final = ".quarantine"
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)([wdhms])")
_UNITS: Final = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
MIN_INTERVAL: Final = 1.0


class PolicyError(ValueError):
    """A refresh policy or a verify level that cannot be understood."""


@dataclass(frozen=True)
class Refresh:
    """`never`, `on-start`, or `interval` with its seconds."""

    mode: str
    interval: float = 0.0

    def __str__(self) -> str:
        return f"interval={_duration_text(self.interval)}" if self.mode == "interval" else self.mode


def parse_refresh(text: str) -> Refresh:
    """`never` | `on-start` | `interval=<duration>` (`30s`, `10m`, `1h30m`, `1d`; >= 1s)."""
    value = text.strip()
    if value in ("never", "on-start"):
        return Refresh(value)
    if value.startswith("interval="):
        raw = value[len("interval=") :]
        parts = _DURATION_RE.findall(raw)
        if parts and "".join(n + u for n, u in parts) == raw:
            seconds = sum(float(n) * _UNITS[u] for n, u in parts)
            if seconds >= MIN_INTERVAL:
                return Refresh("interval", seconds)
    raise PolicyError(
        f"not a refresh policy: {text!r} (use never, on-start or interval=<duration> "
        "such as interval=10m, at least 1s)"
    )


def parse_verify(text: str) -> str:
    if text not in ("size", "full"):
        raise PolicyError(f"not a verify level: {text!r} (use size or full)")
    return text


def _duration_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# --- the shared interval: at most one source check per key per interval window -------------


def claim_check(layout: Layout, key: str, *, interval: float, now: float | None = None) -> bool:
    """True for exactly one caller per key and interval window (windows aligned to the epoch).

    The claim is a file created with O_EXCL in `versions/<key>/`: no lease to break, no clock
    of another host compared with ours. Claims of older windows are removed.
    """
    stamp = time.time() if now is None else now
    window = int(stamp // interval)
    folder = versions_of(layout, key)
    folder.mkdir(parents=True, exist_ok=True)
    name = f".check-{int(interval)}-{window}"
    try:
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.close(fd)
    for old in folder.glob(f".check-{int(interval)}-*"):
        with contextlib.suppress(ValueError, FileNotFoundError):
            if int(old.name.rsplit("-", 1)[1]) < window:
                old.unlink()
    return True


# --- what a version says of itself ---------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    """A version folder (or the plain pre-versions folder) and its manifest's extra fields."""

    key: str
    version: str  # "" for a plain folder at models/<key>
    path: Path
    current: bool
    manifest: dict[str, Any] | None
    files: tuple[FileDigest, ...] = ()

    @property
    def digest(self) -> str:
        return str((self.manifest or {}).get("digest", ""))

    @property
    def fingerprint(self) -> str:
        return str(((self.manifest or {}).get("fingerprint") or {}).get("value", ""))

    @property
    def commit(self) -> str:
        return str(((self.manifest or {}).get("fingerprint") or {}).get("commit", ""))

    @property
    def created_at(self) -> float | None:
        value = (self.manifest or {}).get("created_at")
        return float(value) if isinstance(value, int | float) else None


def read_version(key: str, path: Path, *, version: str, current: bool) -> VersionInfo:
    try:
        data = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("key") != key:
            raise ValueError("manifest of another key")
        files = files_from_manifest(data)
    except (OSError, ValueError, IntegrityError):
        return VersionInfo(key, version, path, current, None)
    return VersionInfo(key, version, path, current, data, files)


def current_version(layout: Layout, key: str) -> tuple[Ref, VersionInfo | None]:
    """The ref, resolved once, and the version it names (None when nothing is servable)."""
    ref = read_ref(layout, key)
    if not ref.servable or ref.path is None:
        return ref, None
    info = read_version(key, ref.path, version=ref.version, current=True)
    return ref, (info if info.manifest is not None else None)


def all_versions(layout: Layout, key: str) -> list[VersionInfo]:
    """The current version (or plain folder) first, then the older versions of `key`."""
    ref = read_ref(layout, key)
    found: list[VersionInfo] = []
    if ref.kind == "folder" and ref.path is not None:
        found.append(read_version(key, ref.path, version="", current=True))
    for name in list_versions(layout, key):
        path = version_dir(layout, key, name)
        current = ref.kind == "link" and ref.version == name
        found.append(read_version(key, path, version=name, current=current))
    return sorted(found, key=lambda v: (not v.current, v.version))


def cache_keys(layout: Layout) -> list[str]:
    """Keys with an entry in models/ or versions under versions/."""
    keys = set(list_keys(layout))
    with contextlib.suppress(FileNotFoundError):
        keys |= {p.name for p in (layout.root / "versions").iterdir() if is_valid_key(p.name)}
    with contextlib.suppress(FileNotFoundError):
        for p in layout.models.iterdir():
            if p.is_symlink() and is_valid_key(p.name):
                keys.add(p.name)
    return sorted(keys)


# --- checking ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    info: VersionInfo
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_version(info: VersionInfo, *, full: bool) -> Check:
    """Sizes (O(files)) or full re-hash, and the manifest's digest against its own file list."""
    if info.manifest is None:
        return Check(info, (Problem(MANIFEST_NAME, "missing", "no valid manifest"),))
    problems = list(
        verify_full(info.path, info.files) if full else verify_sizes(info.path, info.files)
    )
    if info.digest and all(f.sha256 for f in info.files):
        try:
            computed = manifest_digest(info.files)
        except IntegrityError as exc:
            problems.append(Problem(MANIFEST_NAME, "hash", str(exc)))
        else:
            if computed != info.digest:
                problems.append(
                    Problem(MANIFEST_NAME, "hash", f"digest {info.digest} but files say {computed}")
                )
    if full and not info.digest:
        problems = [p for p in problems if p.kind != "unhashed"]
        if not info.files or not all(f.sha256 for f in info.files):
            # A manifest from before hashing: only sizes can be checked; say so, not "corrupt".
            logger.info("%s %s has no hashes (written before versions): sizes only",
                        info.key, info.version or "(plain folder)")  # fmt: skip
    return Check(info, tuple(problems))


def quarantine(layout: Layout, info: VersionInfo, *, now: float | None = None) -> Path:
    """Rename a corrupt version aside to `.quarantine/<key>.<version>.<time>`.

    Pods already running keep their bind mount; a ref naming it now dangles, so no new
    container starts on it (the kubelet refuses a dangling subPath) and the next fetch
    downloads again.
    """
    stamp = int(time.time() if now is None else now)
    target = layout.root / QUARANTINE / f"{info.key}.{info.version or 'plain'}.{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    info.path.rename(target)
    logger.warning("quarantined %s to %s", info.path, target)
    return target


# --- old versions: kept while a live pod may have started on them -------------------------


@dataclass(frozen=True)
class OldVersion:
    key: str
    version: str
    path: Path
    action: str  # "evict" or "keep"
    reason: str


def plan_old_versions(
    layout: Layout,
    *,
    live_pods: frozenset[str] | None,
    keys_in_use: frozenset[str] | None,
    now: float,
    grace: float,
    unrecorded: frozenset[str] = frozenset(),
) -> list[OldVersion]:
    """Every version that is not the one its ref names, and whether gc may remove it.

    Kept: a version a live pod started on (fetch records `pod -> version` in
    `versions/<key>/.served.json`); a `legacy-*` folder (pods from before versions left no
    record) while any live pod uses the key; every old version of a key in `unrecorded` (live
    pods mount it without fetch recording their version: read-only consumers, hand-made
    mounts); anything served or installed within `grace`.
    `live_pods=None` (the cluster was not asked) leaves only the grace rule, as gc does for
    entries.
    """
    from webhook.cache.refs import read_served

    plan: list[OldVersion] = []
    for key in cache_keys(layout):
        ref = read_ref(layout, key)
        served = read_served(layout, key)
        for name in list_versions(layout, key):
            if ref.kind == "link" and ref.version == name:
                continue
            path = version_dir(layout, key, name)
            pods = {p for p, (v, _) in served.items() if v == name}
            last = max([t for p, (v, t) in served.items() if v == name], default=0.0)
            with contextlib.suppress(FileNotFoundError):
                last = max(last, path.stat().st_mtime)
            if key in unrecorded:
                why = "keep", "live pods mount the key without a record of their version"
            elif live_pods is not None and pods & live_pods:
                why = "keep", f"live pod {sorted(pods & live_pods)[0]} started on it"
            elif name.startswith("legacy-") and keys_in_use is not None and key in keys_in_use:
                why = "keep", "pre-versions folder of a key live pods use"
            elif now - last < grace:
                why = "keep", "served or installed within the grace period"
            else:
                why = "evict", "superseded, no live pod on it"
            plan.append(OldVersion(key, name, path, *why))
    return plan


def evict_old_versions(layout: Layout, plan: list[OldVersion]) -> list[OldVersion]:
    """Rename each evictable old version to `.trash/` (then delete it); the evicted ones.

    The ref is read again first: a version that became current since the plan stays.
    """
    import shutil

    evicted = []
    for old in plan:
        if old.action != "evict":
            continue
        ref = read_ref(layout, old.key)
        if ref.kind == "link" and ref.version == old.version:
            continue
        trash = layout.new_trash(old.key, now=time.time())
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            old.path.rename(trash)
        except FileNotFoundError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        evicted.append(old)
        logger.info("evicted old version %s/%s (%s)", old.key, old.version, old.reason)
    return evicted


def drop_versions(layout: Layout, key: str) -> None:
    """After gc evicted `models/<key>`: move `versions/<key>` to trash when nothing names it."""
    import shutil

    if read_ref(layout, key).kind != "absent":
        return
    folder = versions_of(layout, key)
    trash = layout.new_trash(key, now=time.time())
    trash.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
