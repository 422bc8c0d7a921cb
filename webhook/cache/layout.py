"""Paths, manifest and usage records of the cache volume (the layout in docs/protocol.md).

<root>/models/<key>/                    published entry, immutable
<root>/models/<key>/.kserve-cache.json  manifest, written before publishing
<root>/.staging/<key>.<random>/         download in progress (never served)
<root>/.locks/<key>                     single-flight lease
<root>/.usage/<key>                     last use and hit/miss counts (JSON)
<root>/.trash/<key>.<time>.<random>/    an entry gc renamed out of models/ and is deleting
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from webhook.keys import is_valid_key

MANIFEST_NAME: Final = ".kserve-cache.json"
MANIFEST_VERSION: Final = 1
RECENT_MAX: Final = 256


class LayoutError(ValueError):
    """A key or a record on the volume is not what the protocol allows."""


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def locks(self) -> Path:
        return self.root / ".locks"

    @property
    def usage(self) -> Path:
        return self.root / ".usage"

    def entry(self, key: str) -> Path:
        return self.models / _checked(key)

    def manifest(self, key: str) -> Path:
        return self.entry(key) / MANIFEST_NAME

    def lock(self, key: str) -> Path:
        return self.locks / _checked(key)

    def usage_file(self, key: str) -> Path:
        return self.usage / _checked(key)

    def new_staging(self, key: str) -> Path:
        return self.staging / f"{_checked(key)}.{secrets.token_hex(6)}"

    @property
    def trash(self) -> Path:
        """Where `gc` renames an entry before deleting it, so nobody sees half a folder."""
        return self.root / ".trash"

    def new_trash(self, key: str, *, now: float) -> Path:
        """`.trash/<key>.<unix seconds>.<random>`: the stamp lets a later run sweep leftovers."""
        return self.trash / f"{_checked(key)}.{int(now)}.{secrets.token_hex(6)}"

    def ensure_dirs(self) -> None:
        for path in (self.models, self.staging, self.locks, self.usage):
            path.mkdir(parents=True, exist_ok=True)


def list_keys(layout: Layout) -> list[str]:
    """The keys of the folders in `models/`, sorted; names that are not keys are skipped."""
    try:
        names = [p.name for p in layout.models.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_valid_key(n))


def _checked(key: str) -> str:
    if not is_valid_key(key):
        raise LayoutError(f"not a cache key: {key!r}")
    return key


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int


@dataclass(frozen=True)
class Manifest:
    uri: str
    revision: str
    key: str
    files: tuple[FileEntry, ...]
    bytes: int
    created_at: float
    download_seconds: float
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        data = asdict(self)
        data["files"] = [asdict(f) for f in self.files]
        return json.dumps(data, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            files = tuple(
                FileEntry(path=str(f["path"]), size=int(f["size"])) for f in data["files"]
            )
            return cls(
                uri=str(data["uri"]),
                revision=str(data["revision"]),
                key=str(data["key"]),
                files=files,
                bytes=int(data["bytes"]),
                created_at=float(data["created_at"]),
                download_seconds=float(data["download_seconds"]),
                version=int(data.get("version", MANIFEST_VERSION)),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"invalid manifest: {exc}") from exc


def read_manifest(layout: Layout, key: str) -> Manifest | None:
    """The manifest of a published entry, or None when the entry is absent or invalid."""
    try:
        manifest = Manifest.from_json(layout.manifest(key).read_text(encoding="utf-8"))
    except (OSError, LayoutError):
        return None
    return manifest if manifest.key == key else None


@dataclass
class Usage:
    key: str
    last_used: float = 0.0
    hits: int = 0
    misses: int = 0
    waits: int = 0
    recent: list[tuple[float, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, key: str, text: str) -> Usage:
        data: dict[str, Any] = json.loads(text)
        return cls(
            key=key,
            last_used=float(data.get("last_used", 0.0)),
            hits=int(data.get("hits", 0)),
            misses=int(data.get("misses", 0)),
            waits=int(data.get("waits", 0)),
            recent=[(float(t), str(o)) for t, o in data.get("recent", [])],
        )


def read_usage(layout: Layout, key: str) -> Usage | None:
    try:
        return Usage.from_json(key, layout.usage_file(key).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None


def record_usage(layout: Layout, key: str, outcome: str, *, now: float | None = None) -> Usage:
    """Count one use (`hit`, `miss` or `waited`) of an entry and stamp its last use.

    The record is replaced atomically (write then rename), so a reader never sees half of
    it; two pods recording at the same instant may lose one count, never the record.
    """
    stamp = time.time() if now is None else now
    usage = read_usage(layout, key) or Usage(key=key)
    usage.last_used = max(usage.last_used, stamp)
    if outcome == "hit":
        usage.hits += 1
    elif outcome == "miss":
        usage.misses += 1
    elif outcome == "waited":
        usage.waits += 1
    else:
        raise LayoutError(f"unknown outcome {outcome!r}")
    usage.recent = [*usage.recent, (stamp, outcome)][-RECENT_MAX:]
    data = asdict(usage)
    del data["key"]
    target = layout.usage_file(key)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{key}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    try:
        tmp.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return usage


@dataclass(frozen=True)
class LeaseInfo:
    """A lease file: who holds it (JSON inside) and its last heartbeat (the file's mtime)."""

    holder: str
    created: float
    heartbeat: float

    def is_live(self, *, ttl: float, now: float | None = None) -> bool:
        return ((time.time() if now is None else now) - self.heartbeat) <= ttl


def read_lease(layout: Layout, key: str) -> LeaseInfo | None:
    """The lease on `key`, or None when nobody holds it. A garbled lease still counts as held."""
    path = layout.lock(key)
    try:
        heartbeat = path.stat().st_mtime
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        data = json.loads(text)
        return LeaseInfo(str(data["holder"]), float(data["created"]), heartbeat)
    except (ValueError, KeyError, TypeError):
        return LeaseInfo("<unreadable>", heartbeat, heartbeat)


def staging_key(name: str) -> str | None:
    """The key a staging folder name `<key>.<random>` belongs to, or None for other names."""
    key, dot, _ = name.rpartition(".")
    return key if dot and is_valid_key(key) else None
