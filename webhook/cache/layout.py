"""Paths, manifest and usage records of the cache volume (the layout in docs/protocol.md).

<root>/models/<key>/                    published entry, immutable
<root>/models/<key>/.kserve-cache.json  manifest, written before publishing
<root>/.staging/<key>.<random>/         download in progress (never served)
<root>/.locks/<key>.<gen>               single-flight lease, one file per generation
<root>/.usage/<key>                     last use and hit/miss counts (JSON)
<root>/.progress/<key>                  the lease holder's download progress (JSON)
<root>/.trash/<name>.<time>.<random>/   an entry or staging folder renamed aside, being deleted
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import time
from collections.abc import Mapping
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

    @property
    def progress(self) -> Path:
        return self.root / ".progress"

    def progress_file(self, key: str) -> Path:
        return self.progress / _checked(key)

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
        """Create the layout's folders (fetch refuses a missing root before calling this)."""
        for path in (self.models, self.staging, self.locks, self.usage, self.trash):
            path.mkdir(parents=True, exist_ok=True)


def discard(layout: Layout, path: Path, *, key: str | None = None) -> bool:
    """Remove a folder someone may publish or read: rename it into `.trash/` (atomic: a rival
    renaming the same folder, to publish it say, wins or loses as a whole), then delete it.

    False when the folder was gone already (the rival won).
    """
    name = key if key is not None else (staging_key(path.name) or "x")
    trash = layout.trash / f"{name}.{int(time.time())}.{secrets.token_hex(6)}"
    layout.trash.mkdir(exist_ok=True)
    try:
        path.rename(trash)
    except FileNotFoundError:
        return False
    except PermissionError:
        if not path.exists() and not path.is_symlink():
            return False  # sshfs answers a lost rename race with EPERM: the rival won
        raise
    remove_tree(trash)
    return True


def remove_tree(path: Path) -> None:
    """Delete a folder, tolerating another process deleting the same folder at the same time.

    A symlink is removed itself, never what it points to.
    """
    if path.is_symlink():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
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
    sha256: str = ""
    """Hex sha256 of the file, computed at seal; "" in manifests from before versions."""


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
    endpoint: str | None = None
    """The source endpoint the downloader used (`source_endpoint`); None in older manifests."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Further top-level fields (digest, fingerprint...), kept as they are; never override."""

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k != "extra"}
        data["files"] = [asdict(f) for f in self.files]
        return json.dumps({**dict(self.extra), **data}, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            files = tuple(
                FileEntry(str(f["path"]), int(f["size"]), str(f.get("sha256", "")))
                for f in data["files"]
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
                endpoint=None if data.get("endpoint") is None else str(data["endpoint"]),
                extra={k: v for k, v in data.items() if k not in _MANIFEST_FIELDS},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise LayoutError(f"invalid manifest: {exc}") from exc


_MANIFEST_FIELDS: Final = frozenset(
    {"uri", "revision", "key", "files", "bytes", "created_at", "download_seconds", "version",
     "endpoint"}
)  # fmt: skip


def read_manifest(layout: Layout, key: str) -> Manifest | None:
    """The manifest of a published entry, or None when the entry is absent or invalid."""
    try:
        manifest = Manifest.from_json(layout.manifest(key).read_text(encoding="utf-8"))
    except (OSError, LayoutError):
        return None
    return manifest if manifest.key == key else None


def verify_entry_sizes(path: Path, manifest: Manifest) -> list[str]:
    """What is wrong with the entry at `path` against its manifest; empty when every listed
    file is there as a regular file of the listed size. One stat per file, nothing is read.
    """
    problems: list[str] = []
    total = 0
    for item in manifest.files:
        rel = Path(item.path)
        if rel.is_absolute() or ".." in rel.parts or not item.path:
            problems.append(f"{item.path}: a path outside the entry")
            continue
        try:
            st = (path / rel).stat()
        except FileNotFoundError:
            problems.append(f"{item.path}: missing")
            continue
        except OSError as exc:
            problems.append(f"{item.path}: {exc.strerror}")
            continue
        if not _is_regular(st.st_mode):
            problems.append(f"{item.path}: not a regular file")
        elif st.st_size != item.size:
            problems.append(f"{item.path}: {st.st_size} bytes, the manifest says {item.size}")
        total += item.size
    if total != manifest.bytes and not problems:
        problems.append(f"the manifest's files add up to {total} bytes, not {manifest.bytes}")
    return problems


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


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


class UnreadableRecord(OSError):
    """A record that exists but cannot be read or parsed (a torn read, ESTALE, EIO)."""


def read_usage(layout: Layout, key: str) -> Usage | None:
    """The usage record, or None when absent or unreadable (for figures, never for eviction)."""
    try:
        return read_usage_checked(layout, key)
    except UnreadableRecord:
        return None


def read_usage_checked(layout: Layout, key: str) -> Usage | None:
    """The usage record read with open/read; None when there is none.

    Raises UnreadableRecord when it exists but cannot be read or parsed: gc must then treat
    the entry as in use, never as unused.
    """
    path = layout.usage_file(key)
    try:
        with path.open("rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UnreadableRecord(exc.errno, f"usage record unreadable: {exc}", str(path)) from exc
    try:
        return Usage.from_json(key, raw.decode("utf-8"))
    except (ValueError, TypeError, AttributeError) as exc:
        raise UnreadableRecord(errno.EIO, f"usage record unparsable: {exc}", str(path)) from exc


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
    replace_file(target, json.dumps(data))
    return usage


def staging_key(name: str) -> str | None:
    """The key a staging folder name `<key>.<random>` belongs to, or None for other names."""
    key, dot, _ = name.rpartition(".")
    return key if dot and is_valid_key(key) else None


def replace_file(target: Path, text: str) -> None:
    """Write `text` to a temporary file beside `target`, then rename it over `target`: a
    reader sees the old content or the new, never half of it. The temporary is removed on
    failure."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some network filesystems refuse fsync on a directory; the rename is still atomic.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
