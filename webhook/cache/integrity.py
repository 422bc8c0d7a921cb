"""Integrity of a version: sha256 and size of every file, and the manifest digest that names it.

The digest is the sha256 of the canonical file list (sorted paths, sizes and sha256s, compact
JSON), so the same model downloaded twice, on any cluster, has the same digest; a pin
(`--digest=sha256:<hex>`) therefore names content, not a download. Hashes are computed when a
version is sealed: kserve-storage writes the files itself, so sealing reads them once more
(right after the download, usually from the page cache); the fsync of seal and the hash share
that one open.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

CHUNK: Final = 1 << 20
DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_HEX_RE: Final = re.compile(r"[0-9a-f]{64}")


class IntegrityError(ValueError):
    """A digest string or a file list that is not well formed."""


class Hashed(Protocol):
    """A file row with a hash: `FileDigest` here, `layout.FileEntry` in manifests."""

    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class FileDigest:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Problem:
    """One file that does not match: `missing`, `size`, `hash` or `unhashed` (no sha256 known)."""

    path: str
    kind: str
    detail: str = ""


def parse_digest(text: str) -> str:
    """`sha256:<64 hex>` (lower case) or IntegrityError."""
    value = text.strip().lower()
    if not DIGEST_RE.fullmatch(value):
        raise IntegrityError(f"not a digest: {text!r} (expected sha256:<64 hex digits>)")
    return value


def hash_file(path: Path, *, fsync: bool = False) -> FileDigest:
    """Size and sha256 of one file, streamed; optionally fsynced through the same descriptor."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        size = 0
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            try:
                os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                    raise
    finally:
        os.close(fd)
    return FileDigest(path=path.name, size=size, sha256=digest.hexdigest())


def hash_tree(
    folder: Path, *, skip: Iterable[str] = (), fsync: bool = False
) -> tuple[FileDigest, ...]:
    """Every regular file under `folder` (relative paths, sorted), hashed; `skip` names excluded."""
    skipped = set(skip)
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if rel in skipped:
                continue
            one = hash_file(path, fsync=fsync)
            files.append(FileDigest(path=rel, size=one.size, sha256=one.sha256))
    return tuple(sorted(files, key=lambda f: f.path))


def canonical_manifest(files: Sequence[Hashed]) -> bytes:
    """The bytes the digest is taken of: sorted file rows, compact JSON, no other field."""
    rows = sorted(({"path": f.path, "sha256": f.sha256, "size": f.size} for f in files),
                  key=lambda r: str(r["path"]))  # fmt: skip
    return json.dumps({"files": rows}, sort_keys=True, separators=(",", ":")).encode()


def manifest_digest(files: Sequence[Hashed]) -> str:
    """`sha256:<hex>` of the canonical manifest; IntegrityError if a file has no hash."""
    for f in files:
        if not _HEX_RE.fullmatch(f.sha256):
            raise IntegrityError(f"{f.path} has no sha256: the version cannot be named")
    return "sha256:" + hashlib.sha256(canonical_manifest(files)).hexdigest()


def files_from_manifest(data: Any) -> tuple[FileDigest, ...]:
    """The file rows of a manifest's JSON (`sha256` "" when the manifest predates hashing)."""
    try:
        return tuple(
            FileDigest(str(f["path"]), int(f["size"]), str(f.get("sha256", "")))
            for f in data["files"]
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IntegrityError(f"invalid manifest file list: {exc}") from exc


def _safe(folder: Path, rel: str) -> Path | None:
    path = folder / rel
    if rel.startswith("/") or ".." in Path(rel).parts:
        return None
    return path


def verify_sizes(folder: Path, files: Sequence[FileDigest]) -> list[Problem]:
    """O(files): each listed file exists, is a regular file and has its size."""
    problems = []
    for f in files:
        path = _safe(folder, f.path)
        if path is None:
            problems.append(Problem(f.path, "missing", "path leaves the version folder"))
            continue
        try:
            st = path.lstat()
        except FileNotFoundError:
            problems.append(Problem(f.path, "missing"))
            continue
        if not path.is_file() or path.is_symlink():
            problems.append(Problem(f.path, "missing", "not a regular file"))
        elif st.st_size != f.size:
            problems.append(Problem(f.path, "size", f"{st.st_size} bytes, manifest says {f.size}"))
    return problems


def verify_full(folder: Path, files: Sequence[FileDigest]) -> list[Problem]:
    """O(bytes): sizes, then every file re-hashed against its sha256."""
    problems = verify_sizes(folder, files)
    bad = {p.path for p in problems}
    for f in files:
        if f.path in bad:
            continue
        if not f.sha256:
            problems.append(Problem(f.path, "unhashed", "the manifest has no sha256 for it"))
            continue
        got = hash_file(folder / f.path)
        if got.sha256 != f.sha256:
            problems.append(Problem(f.path, "hash", f"sha256 {got.sha256[:12]}..., "
                                    f"manifest says {f.sha256[:12]}..."))  # fmt: skip
    return problems


def describe(problems: Sequence[Problem], *, limit: int = 5) -> str:
    """A short human summary: `w.bin: hash (...); 2 more`."""
    parts = [f"{p.path}: {p.kind}" + (f" ({p.detail})" if p.detail else "") for p in problems]
    more = len(parts) - limit
    return "; ".join(parts[:limit]) + (f"; {more} more" if more > 0 else "")
