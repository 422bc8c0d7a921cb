"""Named entries and immutable versions: `models/<key>` is a relative symlink to
`versions/<key>/<version>/`, replaced atomically when a new version is published.

The kubelet resolves a `subPath` by evaluating its symlinks and requiring the result inside the
volume (pkg/volume/util/subpath: `EvalSymlinks`, then `PathWithinBase`), then bind-mounts the
result: a container sees the version the ref named when it started, for its whole life.
`resolve_subpath` is that rule as a pure function; every ref this module writes passes it
before it is renamed into place. A plain folder at `models/<key>` (the layout before versions)
stays valid and counts as one version until the first refresh moves it under `versions/`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

from webhook.cache.layout import Layout, fsync_dir, replace_file
from webhook.keys import is_valid_key

logger = logging.getLogger(__name__)

VERSIONS: Final = "versions"
VERSION_RE: Final = re.compile(r"[0-9a-f]{16}|legacy-[0-9]{1,12}")
SERVED_NAME: Final = ".served.json"
SERVED_MAX: Final = 512
_MAX_LINKS: Final = 255  # filepath.EvalSymlinks gives up after 255 links
_RENAME_EXCHANGE: Final = 2
_AT_FDCWD: Final = -100


class RefError(OSError):
    """A ref that would not resolve inside the volume, or a version name that is not ours."""


class SubPathError(ValueError):
    """The kubelet would refuse this subPath (or create an empty folder in its place)."""


# --- the kubelet's subPath rule, pure --------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """What `lstat` says of a path: `dir`, `file`, `link` (with its target) or `missing`."""

    kind: str
    target: str = ""


Lookup = Callable[[PurePosixPath], Node]


def eval_symlinks(path: PurePosixPath, *, lookup: Lookup) -> PurePosixPath:
    """Go's `filepath.EvalSymlinks` on an absolute path: every component must exist."""
    if not path.is_absolute():
        raise SubPathError(f"{path} is not absolute")
    todo = deque(path.parts[1:])
    resolved = PurePosixPath("/")
    links = 0
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            resolved = resolved.parent
            continue
        candidate = resolved / name
        node = lookup(candidate)
        if node.kind == "missing":
            raise SubPathError(f"lstat {candidate}: no such file or directory")
        if node.kind == "link":
            links += 1
            if links > _MAX_LINKS:
                raise SubPathError(f"{path}: too many links")
            target = PurePosixPath(node.target)
            if target.is_absolute():
                resolved = PurePosixPath("/")
                todo.extendleft(reversed(target.parts[1:]))
            else:
                todo.extendleft(reversed(target.parts))
            continue
        if node.kind != "dir" and todo:
            raise SubPathError(f"{candidate}: not a directory")
        resolved = candidate
    return resolved


def path_within_base(full: PurePosixPath, base: PurePosixPath) -> bool:
    """mount-utils `PathWithinBase`: `filepath.Rel(base, full)` does not start with `..`."""
    try:
        full.relative_to(base)
    except ValueError:
        return False
    return True


def resolve_subpath(volume: PurePosixPath, sub_path: str, *, lookup: Lookup) -> PurePosixPath:
    """The folder the kubelet bind-mounts for `subPath: sub_path` of a volume at `volume`.

    As kubelet's makeMounts + doBindSubPath: the subPath must be relative without `..`
    components; a missing target is refused here (the kubelet would create an empty folder,
    or fail on a dangling link); both paths are symlink-evaluated and the result must lie
    within the evaluated volume path.
    """
    sub = PurePosixPath(sub_path)
    if sub.is_absolute():
        raise SubPathError(f"subPath {sub_path!r} must not be absolute")
    if ".." in sub.parts:
        raise SubPathError(f"subPath {sub_path!r} must not contain '..'")
    real_volume = eval_symlinks(volume, lookup=lookup)
    real_path = eval_symlinks(volume / sub, lookup=lookup)
    if not path_within_base(real_path, real_volume):
        raise SubPathError(f"subpath {real_path} not within volume path {real_volume}")
    if lookup(real_path).kind != "dir":
        raise SubPathError(f"{real_path} is not a directory")
    return real_path


def fs_lookup(path: PurePosixPath) -> Node:
    """`Lookup` on the real filesystem."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return Node("missing")
    import stat

    if stat.S_ISLNK(st.st_mode):
        return Node("link", str(Path(path).readlink()))
    return Node("dir" if stat.S_ISDIR(st.st_mode) else "file")


# --- refs and versions ---------------------------------------------------------------------


def versions_of(layout: Layout, key: str) -> Path:
    return layout.root / VERSIONS / _key(key)


def version_dir(layout: Layout, key: str, version: str) -> Path:
    return versions_of(layout, key) / _version(version)


def ref_target(key: str, version: str) -> str:
    """The link text of a ref: relative, so it resolves on every node that mounts the volume."""
    return f"../{VERSIONS}/{_key(key)}/{_version(version)}"


def version_id(digest: str) -> str:
    """The folder name of a version: the first 16 hex digits of its manifest digest."""
    hexpart = digest.removeprefix("sha256:")
    return _version(hexpart[:16])


@dataclass(frozen=True)
class Ref:
    """What `models/<key>` is now: `absent`, `folder` (plain, pre-versions), `link`, `broken`."""

    kind: str
    version: str = ""
    path: Path | None = None

    @property
    def servable(self) -> bool:
        return self.kind in ("folder", "link")


def read_ref(layout: Layout, key: str) -> Ref:
    """Resolve the ref once; `path` is the real folder to read (a swap later does not move it)."""
    entry = layout.entry(key)
    try:
        target = str(entry.readlink())
    except FileNotFoundError:
        return Ref("absent")
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
        return Ref("folder", "", entry) if entry.is_dir() else Ref("broken")
    match = re.fullmatch(rf"\.\./{VERSIONS}/([^/]+)/([^/]+)", target)
    if match is None or match.group(1) != key or not VERSION_RE.fullmatch(match.group(2)):
        return Ref("broken")
    path = version_dir(layout, key, match.group(2))
    return Ref("link", match.group(2), path) if path.is_dir() else Ref("broken", match.group(2))


def list_versions(layout: Layout, key: str) -> list[str]:
    try:
        names = [p.name for p in versions_of(layout, key).iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if VERSION_RE.fullmatch(n))


def check_ref(layout: Layout, name: str, *, expected: Path) -> None:
    """Refuse a link at `models/<name>` that the kubelet would not resolve to `expected`."""
    root = PurePosixPath(Path(layout.root).absolute())
    try:
        real = resolve_subpath(root, f"models/{name}", lookup=fs_lookup)
        want = eval_symlinks(PurePosixPath(expected.absolute()), lookup=fs_lookup)
    except SubPathError as exc:
        raise RefError(errno.EINVAL, f"refusing ref models/{name}: {exc}") from exc
    if real != want:
        raise RefError(errno.EINVAL, f"refusing ref models/{name}: resolves to {real}, not {want}")


def install_version(layout: Layout, key: str, staging: Path, version: str) -> tuple[Path, bool]:
    """Rename a sealed staging folder to `versions/<key>/<version>`; (path, False) when that
    version already exists (same digest: same content), the staging folder then goes to trash.
    """
    target = version_dir(layout, key, version)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging.rename(target)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        _to_trash(layout, key, staging)
        return target, False
    fsync_dir(target.parent)
    return target, True


def swap_ref(layout: Layout, key: str, version: str) -> Ref:
    """Point `models/<key>` at `versions/<key>/<version>` atomically; returns the previous ref.

    A new link with a temporary name is checked against the kubelet's rule, then renamed over
    the old link. A plain folder there (pre-versions layout) is exchanged with the link in one
    `renameat2(RENAME_EXCHANGE)` where the filesystem has it, then moved to
    `versions/<key>/legacy-<time>`; elsewhere it is moved first and the link renamed in after,
    a window of two renames in which the entry is absent (once per key, at migration).
    """
    target = version_dir(layout, key, version)
    if not target.is_dir():
        raise RefError(errno.ENOENT, f"version {target} does not exist")
    layout.models.mkdir(parents=True, exist_ok=True)
    tmp_name = f".{key}.{secrets.token_hex(6)}.ref"
    tmp = layout.models / tmp_name
    tmp.symlink_to(ref_target(key, version))
    try:
        check_ref(layout, tmp_name, expected=target)
        previous = read_ref(layout, key)
        entry = layout.entry(key)
        if previous.kind == "folder":
            _migrate(layout, key, tmp, entry)
        else:
            tmp.rename(entry)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_symlink():
                tmp.unlink()
    fsync_dir(layout.models)
    logger.info("ref %s -> %s (was %s %s)", key, version, previous.kind, previous.version)
    return previous


def _migrate(layout: Layout, key: str, link: Path, entry: Path) -> None:
    legacy = versions_of(layout, key) / f"legacy-{int(time.time())}"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    if exchange(link, entry):
        # `link`'s name now holds the old folder; the ref already names the new version.
        link.rename(legacy)
        logger.info("migrated plain folder %s to %s (atomic exchange)", entry, legacy)
        return
    entry.rename(legacy)
    try:
        link.rename(entry)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        # Something (a kubelet making a missing subPath) created a folder in the window.
        _to_trash(layout, key, entry)
        link.rename(entry)
    logger.info("migrated plain folder %s to %s (two renames)", entry, legacy)


def exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (`renameat2(RENAME_EXCHANGE)`); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is None:
        return False
    rc = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _to_trash(layout: Layout, key: str, path: Path) -> None:
    trash = layout.new_trash(key, now=time.time())
    trash.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.rename(trash)
    import shutil

    shutil.rmtree(trash, ignore_errors=True)


# --- which version each pod got (gc keeps a version while a live pod may be on it) ---------


def record_served(
    layout: Layout, key: str, version: str, *, pod: str, now: float | None = None
) -> None:
    """Note that `pod` (its hostname) started on `version`; replaced atomically."""
    stamp = time.time() if now is None else now
    path = versions_of(layout, key) / SERVED_NAME
    served = read_served(layout, key)
    served[pod] = (version, stamp)
    newest = sorted(served.items(), key=lambda kv: kv[1][1])[-SERVED_MAX:]
    data = {p: {"version": v, "at": t} for p, (v, t) in newest}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, json.dumps(data, sort_keys=True))


def read_served(layout: Layout, key: str) -> dict[str, tuple[str, float]]:
    """pod -> (version, when); {} when there is no record (or it is unreadable)."""
    try:
        data = json.loads((versions_of(layout, key) / SERVED_NAME).read_text(encoding="utf-8"))
        return {str(p): (str(r["version"]), float(r["at"])) for p, r in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def symlinks_work(root: Path) -> bool:
    """A quick check on the volume itself (the capability probe's `symlink` check is preferred)."""
    name = root / f".symlink-check.{secrets.token_hex(4)}"
    try:
        name.symlink_to("versions")
        ok = str(name.readlink()) == "versions"
    except OSError:
        return False
    finally:
        with contextlib.suppress(OSError):
            name.unlink()
    return ok


def _key(key: str) -> str:
    if not is_valid_key(key):
        raise RefError(errno.EINVAL, f"not a cache key: {key!r}")
    return key


def _version(version: str) -> str:
    if not VERSION_RE.fullmatch(version):
        raise RefError(errno.EINVAL, f"not a version name: {version!r}")
    return version
