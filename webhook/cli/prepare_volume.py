"""`kserve-cache prepare-volume`: make a new cache share usable by non-root init containers.

Most RWX CSI drivers ignore the pod's `fsGroup`, so the share's root stays `root:root 0755`
and a non-root `fetch` cannot write. Run this once as root (a Job, see
manifests/examples/prepare-volume-job.yaml): it creates the layout with folders owned by the
configured group, group-writable and setgid (new files and folders inherit the group), then
runs the capability probe. Idempotent; `--dry-run` changes nothing.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

DEFAULT_GID: Final = 1000  # the cluster config's default fsGroup (webhook.clusterconfig)
FOLDER_MODE: Final = 0o2775  # rwxrwsr-x: group-writable, setgid
# The layout of docs/protocol.md; the root itself is prepared too.
FOLDERS: Final = (
    "models", "versions", ".staging", ".locks", ".usage", ".trash", ".progress", ".probe"
)  # fmt: skip


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prepare-volume",
        help="one-time, as root: the cache layout on a new share, writable by a group",
        description="Create the cache layout on a new share with group-writable, setgid "
        "folders for --gid, so non-root init containers can use it on CSI drivers that "
        "ignore fsGroup. Run once as root; running again changes only what differs. Then "
        "probes the volume (exclusive create, atomic rename...) and records the result.",
    )
    p.add_argument("--cache-root", required=True, type=Path, help="mount path of the share")
    p.add_argument(
        "--gid",
        "--group",
        dest="gid",
        type=_gid,
        default=DEFAULT_GID,
        help=f"the group the init containers run with: the pods' fsGroup or runAsGroup "
        f"(default {DEFAULT_GID}, the cluster config's fsGroup default)",
    )
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    from webhook.cache.probe import add_probe_arguments

    add_probe_arguments(p)
    p.set_defaults(run=run)


def _gid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 2_147_483_647:
        raise argparse.ArgumentTypeError(f"not a group id: {text!r}")
    return value


@dataclass(frozen=True)
class Change:
    path: str
    action: str  # "create", "chgrp", "chmod" (several joined by "+"), or "ok"


def plan(root: Path, gid: int) -> list[Change]:
    """What `prepare` would do: one entry per folder (the root first)."""
    out: list[Change] = []
    for path in (root, *(root / name for name in FOLDERS)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            out.append(Change(str(path), "create"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder", str(path))
        actions = []
        if st.st_gid != gid:
            actions.append("chgrp")
        if stat.S_IMODE(st.st_mode) & FOLDER_MODE != FOLDER_MODE:
            actions.append("chmod")
        out.append(Change(str(path), "+".join(actions) or "ok"))
    return out


def prepare(root: Path, gid: int) -> list[Change]:
    """Create and fix the folders; returns what was done. Raises OSError (EPERM: not root)."""
    changes = plan(root, gid)
    for change in changes:
        path = Path(change.path)
        if change.action == "ok":
            continue
        if change.action == "create":
            path.mkdir(mode=0o755)
        st = path.lstat()
        if st.st_gid != gid:
            os.chown(path, -1, gid)
        # chmod after chown: chown clears the setgid bit.
        os.chmod(path, stat.S_IMODE(st.st_mode) | FOLDER_MODE)  # noqa: PTH101 - no follow
    return changes


def run(args: argparse.Namespace) -> int:
    from webhook.cache.fetch import FetchError
    from webhook.cache.probe import probe_from_args

    root: Path = args.cache_root
    if not root.is_dir():
        return _fail(args, 5, f"{root} is not a folder: is the share mounted there?")
    try:
        changes = plan(root, args.gid) if args.dry_run else prepare(root, args.gid)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EPERM, errno.EACCES):
            hint = (
                " (run it as root, with CAP_CHOWN and CAP_FOWNER: the example Job "
                "manifests/examples/prepare-volume-job.yaml does)"
            )
        return _fail(args, 5, f"cannot prepare {exc.filename or root}: {exc.strerror}{hint}")
    report = None
    if not args.dry_run:
        try:
            report = probe_from_args(root, args)
        except FetchError as exc:
            return _fail(args, exc.kind.exit_code, exc.message)
    if args.json:
        doc: dict[str, Any] = {
            "cache_root": str(root),
            "gid": args.gid,
            "dry_run": args.dry_run,
            "folders": [{"path": c.path, "action": c.action} for c in changes],
            "probe": None if report is None else json.loads(report.to_json()),
        }
        sys.stdout.write(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        return 0
    verb = "would " if args.dry_run else ""
    for c in changes:
        what = "already prepared" if c.action == "ok" else f"{verb}{c.action}"
        sys.stdout.write(f"{c.path}: {what}\n")
    mode = stat.filemode(FOLDER_MODE | stat.S_IFDIR)
    sys.stdout.write(f"folders: group {args.gid}, mode {mode} (group-writable, setgid)\n")
    if report is not None:
        sys.stdout.write(report.format_report() + "\n")
    return 0


def _fail(args: argparse.Namespace, code: int, message: str) -> int:
    sys.stderr.write(f"kserve-cache prepare-volume: error: {message}\n")
    if args.json:
        sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
    return code
