"""The capability probe: does a cache volume give what the protocol needs? Run once per volume.

`probe_volume(root)` tries each guarantee in a scratch folder `<root>/.probe/<random>/`;
`ensure_probed(root)` keeps the result on the volume (`<root>/.kserve-cache-probe.json`,
re-probed when missing, unreadable or written by another version) and refuses a volume that
lacks a required guarantee with `ErrorKind.UNSAFE_VOLUME`, unless the admin override is on.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

from webhook.cache.fetch import ErrorKind, FetchError
from webhook.cache.layout import replace_file

logger = logging.getLogger(__name__)

PROBE_VERSION: Final = 1
RECORD_NAME: Final = ".kserve-cache-probe.json"
SCRATCH_NAME: Final = ".probe"
ALLOW_UNSAFE_ENV: Final = "KSERVE_CACHE_ALLOW_UNSAFE_VOLUME"
ALLOW_UNSAFE_FLAG: Final = "--allow-unsafe-volume"
_WRITE_ERRNOS: Final = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)

# The backends known to lack a guarantee, named in the refusal so an admin recognises theirs.
OBJECT_FUSE: Final = "object-storage FUSE mounts (s3fs, goofys, mountpoint-s3, gcsfuse, blobfuse)"
KNOWN_LACKING: Final[Mapping[str, str]] = {
    "exclusive-create": OBJECT_FUSE + ", which make a new file visible only when it is closed",
    "rename-dir-atomic": OBJECT_FUSE + ", which copy a folder file by file (or cannot rename)",
    "rename-dir-no-replace": OBJECT_FUSE + ", which merge a folder into an existing one",
    "fsync": "FUSE filesystems without an fsync handler",
}
WHAT: Final[Mapping[str, str]] = {
    "exclusive-create": "exclusive create (O_EXCL) excludes a second creator",
    "rename-dir-atomic": "a folder rename is atomic (the same folder, not a copy)",
    "rename-dir-no-replace": "a folder rename refuses a non-empty target",
    "fsync": "fsync of files (and folders, where supported)",
    "hard-link": "hard links (not used by the protocol; reported only)",
    "symlink": "relative symbolic links (used by versioned entries)",
}


def software_version() -> str:
    try:
        return metadata.version("kserve-cache")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


@dataclass(frozen=True)
class ProbeReport:
    """What a volume guarantees. `ok` is False when a required check failed."""

    root: str
    checks: tuple[Check, ...]
    version: int = PROBE_VERSION
    software: str = field(default_factory=software_version)
    probed_at: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.required and not c.ok)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> str:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        data["ok"] = self.ok
        return json.dumps(data, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ProbeReport:
        data: dict[str, Any] = json.loads(text)
        checks = tuple(
            Check(str(c["name"]), bool(c["ok"]), str(c["detail"]), bool(c.get("required", True)))
            for c in data["checks"]
        )
        return cls(
            root=str(data["root"]),
            checks=checks,
            version=int(data["version"]),
            software=str(data["software"]),
            probed_at=float(data["probed_at"]),
            host=str(data.get("host", "")),
        )

    def format_report(self) -> str:
        """A human report: one line per guarantee, then the verdict (also used by `doctor`)."""
        lines = [f"capability probe of {self.root} (kserve-cache {self.software}, on {self.host})"]
        for c in self.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.required else "no  ")
            need = "" if c.required else " (optional)"
            lines.append(f"  {mark} {c.name}{need}: {WHAT.get(c.name, c.name)}; {c.detail}")
        if self.ok:
            lines.append("  verdict: safe for the cache protocol")
        else:
            lines.append("  verdict: UNSAFE: " + refusal(self))
        return "\n".join(lines)


def refusal(report: ProbeReport) -> str:
    """The message of a refused volume: the missing guarantees, who lacks them, the way out."""
    parts = []
    for c in report.failed:
        known = KNOWN_LACKING.get(c.name)
        parts.append(
            f"{WHAT.get(c.name, c.name)} does not hold ({c.detail})"
            + (f"; known to lack it: {known}" if known else "")
        )
    return (
        f"the cache volume {report.root} is unsafe for the cache protocol: "
        + "; ".join(parts)
        + ". Pods could be served an incomplete model. Use a POSIX shared filesystem (NFS, EFS, "
        "Filestore, Azure Files NFS/SMB, CephFS, GlusterFS), or accept the risk with "
        f"{ALLOW_UNSAFE_FLAG} / {ALLOW_UNSAFE_ENV}=1"
    )


# -- the checks ------------------------------------------------------------------------------

_SECOND_CREATOR: Final = (
    "import os, sys\n"
    "try:\n"
    "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)\n"
    "except OSError as exc:\n"
    "    print(exc.errno)\n"
    "else:\n"
    "    os.write(fd, b'second')\n"
    "    os.close(fd)\n"
    "    print(0)\n"
)


def _other_process_create(path: Path) -> int:
    """errno of an O_EXCL create of path by a second process (0 when it succeeded)."""
    proc = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-I", "-S", "-c", _SECOND_CREATOR, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        return int(proc.stdout.strip())
    except ValueError:
        return -1


def _excl(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def check_exclusive_create(scratch: Path) -> Check:
    path = scratch / "lease"
    first = _excl(path)
    try:
        os.write(first, b"first")
        os.fsync(first)
        # A second creator on another fd, while the first one still has the file open.
        lost_errnos: list[int] = []
        try:
            second = _excl(path)
        except OSError as exc:
            lost_errnos.append(exc.errno or -1)
        else:
            os.close(second)
            return Check(
                "exclusive-create", False, "a second O_EXCL open of an open file succeeded"
            )
        code = _other_process_create(path)
        if code == 0:
            return Check("exclusive-create", False, "a second process's O_EXCL create succeeded")
        lost_errnos.append(code)
    finally:
        os.close(first)
    # And after the close (object stores publish a file at close): still one creator.
    code = _other_process_create(path)
    if code == 0:
        return Check(
            "exclusive-create", False, "an O_EXCL create succeeded on a file closed before"
        )
    lost_errnos.append(code)
    if path.read_bytes() != b"first":
        return Check("exclusive-create", False, "the first creator's content was replaced")
    names = sorted({errno.errorcode.get(e, str(e)) for e in lost_errnos})
    detail = "the loser gets " + "/".join(names)
    if any(e != errno.EEXIST for e in lost_errnos):
        detail += " (not only EEXIST: a lost race is reported as such, not as a permission error)"
    return Check("exclusive-create", True, detail)


def _make_tree(folder: Path) -> dict[str, bytes]:
    files = {
        ".kserve-cache.json": b'{"probe": true}',
        "a.bin": secrets.token_bytes(4096),
        "sub/b.bin": secrets.token_bytes(1024),
        "c.txt": b"c",
    }
    for rel, body in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    return files


def _tree_is(folder: Path, files: Mapping[str, bytes]) -> bool:
    try:
        return all((folder / rel).read_bytes() == body for rel, body in files.items())
    except OSError:
        return False


def check_rename_atomic(scratch: Path) -> Check:
    src, dst = scratch / "staging", scratch / "entry"
    src.mkdir()
    files = _make_tree(src)
    dir_ino = src.stat().st_ino
    file_ino = (src / "a.bin").stat().st_ino
    try:
        src.rename(dst)
    except OSError as exc:
        happened = dst.exists()
        detail = f"rename of a folder failed: {exc.strerror}"
        if happened:
            detail = f"rename of a folder reported {exc.strerror} but happened"
        return Check("rename-dir-atomic", False, detail)
    if src.exists():
        return Check("rename-dir-atomic", False, "the source folder still exists after rename")
    if not _tree_is(dst, files):
        return Check("rename-dir-atomic", False, "the renamed folder lacks files or content")
    if dst.stat().st_ino != dir_ino or (dst / "a.bin").stat().st_ino != file_ino:
        return Check(
            "rename-dir-atomic", False, "the renamed folder is a copy (inode numbers changed)"
        )
    return Check("rename-dir-atomic", True, "same folder and files after rename")


def check_rename_no_replace(scratch: Path) -> Check:
    target = scratch / "published"
    target.mkdir()
    mine = _make_tree(target)
    rival = scratch / "rival"
    rival.mkdir()
    (rival / "a.bin").write_bytes(b"rival")
    (rival / "rival-only").write_bytes(b"x")
    try:
        rival.rename(target)
    except OSError as exc:
        if not _tree_is(target, mine) or (target / "rival-only").exists():
            return Check(
                "rename-dir-no-replace",
                False,
                f"a refused rename ({exc.strerror}) still changed the target",
            )
        if not rival.is_dir():
            return Check(
                "rename-dir-no-replace", False, "a refused rename removed the source folder"
            )
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return Check("rename-dir-no-replace", True, f"refused with {name}")
    return Check(
        "rename-dir-no-replace", False, "a folder rename replaced or merged a non-empty folder"
    )


def check_fsync(scratch: Path) -> Check:
    path = scratch / "durable"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, b"durable")
        try:
            os.fsync(fd)
        except OSError as exc:
            return Check("fsync", False, f"fsync of a file failed: {exc.strerror}")
    finally:
        os.close(fd)
    dfd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            return Check("fsync", False, f"fsync of a folder failed: {exc.strerror}")
        return Check("fsync", True, "files yes; folders not supported (tolerated)")
    finally:
        os.close(dfd)
    return Check("fsync", True, "files and folders")


def check_hard_link(scratch: Path) -> Check:
    src = scratch / "linked"
    src.write_bytes(b"link")
    try:
        (scratch / "link2").hardlink_to(src)
    except OSError as exc:
        return Check("hard-link", False, f"not supported: {exc.strerror}", required=False)
    ok = (scratch / "link2").stat().st_ino == src.stat().st_ino
    return Check("hard-link", ok, "supported" if ok else "a copy, not a link", required=False)


def check_symlink(scratch: Path) -> Check:
    target = scratch / "versions" / "v1"
    target.mkdir(parents=True)
    (target / "f").write_bytes(b"v1")
    link = scratch / "ref"
    try:
        link.symlink_to(Path("versions") / "v1")
    except OSError as exc:
        return Check("symlink", False, f"cannot create one: {exc.strerror}", required=False)
    if str(link.readlink()) != "versions/v1":
        return Check("symlink", False, "reads back a different target", required=False)
    if link.resolve() != target.resolve() or (link / "f").read_bytes() != b"v1":
        return Check("symlink", False, "does not resolve to its target", required=False)
    return Check("symlink", True, "relative links resolve", required=False)


CHECKS: Final[tuple[Callable[[Path], Check], ...]] = (
    check_exclusive_create,
    check_rename_atomic,
    check_rename_no_replace,
    check_fsync,
    check_hard_link,
    check_symlink,
)


def probe_volume(root: Path) -> ProbeReport:
    """Run every check in a fresh scratch folder under `root` and remove it afterwards.

    Raises OSError when the scratch folder cannot be made (a read-only or full volume).
    """
    base = root / SCRATCH_NAME
    base.mkdir(exist_ok=True)
    checks: list[Check] = []
    for fn in CHECKS:
        scratch = base / secrets.token_hex(6)
        scratch.mkdir()
        try:
            checks.append(fn(scratch))
        except OSError as exc:
            name = fn.__name__.removeprefix("check_").replace("_", "-")
            name = {"rename-atomic": "rename-dir-atomic"}.get(name, name)
            checks.append(Check(name, False, f"failed: {exc}", required=_required(name)))
        finally:
            _remove(scratch)
    return ProbeReport(root=str(root), checks=tuple(checks))


def _required(name: str) -> bool:
    return name not in ("hard-link", "symlink")


def _remove(path: Path) -> None:
    # A scratch folder may hold what a faulty filesystem left; never fail the probe for it.
    aside = path.with_name(f"{path.name}.gone")
    with contextlib.suppress(OSError):
        path.rename(aside)
    for leftover in (aside, path):  # a rename may report failure after it happened
        shutil.rmtree(leftover, ignore_errors=True)


def read_record(root: Path) -> ProbeReport | None:
    """The stored probe result, or None when missing, unreadable or from another version."""
    try:
        report = ProbeReport.from_json((root / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if report.version != PROBE_VERSION or report.software != software_version():
        return None
    return report


def write_record(root: Path, report: ProbeReport) -> None:
    replace_file(root / RECORD_NAME, report.to_json())


def allow_unsafe_from(flag: bool, env: Mapping[str, str] | None = None) -> bool:
    """The admin override: the command-line flag, or KSERVE_CACHE_ALLOW_UNSAFE_VOLUME=1."""
    value = (os.environ if env is None else env).get(ALLOW_UNSAFE_ENV, "")
    return flag or value.strip().lower() in ("1", "true", "yes")


def ensure_probed(root: Path, *, allow_unsafe: bool = False) -> ProbeReport:
    """The volume's probe result (stored, or probed now); refuse an unsafe volume.

    Raises FetchError: UNSAFE_VOLUME for a volume lacking a required guarantee (unless
    `allow_unsafe`), CACHE_NOT_WRITABLE / DISK_FULL when the probe cannot write.
    """
    report = read_record(root)
    if report is None:
        try:
            report = probe_volume(root)
            write_record(root, report)
        except OSError as exc:
            # fetch's own diagnosis (owner, group, mode, the fix) where it has one.
            from webhook.cache import fetch
            from webhook.cache.layout import Layout

            diagnose = getattr(fetch, "os_error", None)
            if diagnose is not None and exc.errno in _WRITE_ERRNOS:
                raise diagnose(exc, Layout(root), "probing the volume") from exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FetchError(
                    ErrorKind.DISK_FULL, f"no space left on {root} for the capability probe"
                ) from exc
            if exc.errno in _WRITE_ERRNOS:
                raise FetchError(
                    ErrorKind.CACHE_NOT_WRITABLE,
                    f"the cache volume {root} is not writable (read-only or permission "
                    f"denied) while probing it: {exc.strerror} ({exc.filename})",
                ) from exc
            raise FetchError(
                ErrorKind.UNSAFE_VOLUME, f"the capability probe of {root} failed: {exc}"
            ) from exc
    if not report.ok:
        if allow_unsafe:
            logger.warning("%s (override %s in force: going on)", refusal(report), ALLOW_UNSAFE_ENV)
            return report
        raise FetchError(ErrorKind.UNSAFE_VOLUME, refusal(report))
    return report


def add_probe_arguments(parser: Any) -> None:
    """`--allow-unsafe-volume`, shared by `fetch`, `warm` and `gc`."""
    parser.add_argument(
        ALLOW_UNSAFE_FLAG,
        dest="allow_unsafe_volume",
        action="store_true",
        help="use a cache volume that failed the capability probe (exclusive create, atomic "
        f"folder rename...) at the risk of serving incomplete models; also {ALLOW_UNSAFE_ENV}=1",
    )


def probe_from_args(root: Path, args: Any) -> ProbeReport:
    """`ensure_probed` with the override from the command line or the environment."""
    flag = bool(getattr(args, "allow_unsafe_volume", False))
    return ensure_probed(root, allow_unsafe=allow_unsafe_from(flag))
