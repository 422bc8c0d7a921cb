"""`kserve-cache verify`: check versions against their manifests (sizes, or a full re-hash),
report, and optionally quarantine the corrupt ones. Exits 1 when any version is corrupt.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from webhook.cli.gc import existing_dir

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "verify",
        help="re-check cached versions against their manifests; quarantine corrupt ones",
        description="Check every version of every key (or of --key) against its manifest: "
        "file sizes by default, every sha256 with --full. Prints one line per version (JSON "
        "with --json) and exits 1 when a version is corrupt. --quarantine renames corrupt "
        "versions to <cache-root>/.quarantine/, so no new pod starts on them.",
    )
    p.add_argument("--cache-root", required=True, type=existing_dir, help="the cache volume")
    p.add_argument("--key", help="only this key (default: every key)")
    p.add_argument("--full", action="store_true", help="re-hash every file (O(bytes))")
    p.add_argument("--quarantine", action="store_true", help="rename corrupt versions aside")
    p.add_argument("--json", action="store_true", help="print one JSON object per version")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook.cache.integrity import describe
    from webhook.cache.layout import Layout
    from webhook.cache.versions import all_versions, cache_keys, check_version, quarantine
    from webhook.keys import is_valid_key

    layout = Layout(args.cache_root)
    if args.key is not None and not is_valid_key(args.key):
        sys.stderr.write(f"kserve-cache verify: error: not a cache key: {args.key!r}\n")
        return 2
    keys = [args.key] if args.key else cache_keys(layout)
    corrupt = checked = 0
    for key in keys:
        versions = all_versions(layout, key)
        if args.key and not versions:
            sys.stderr.write(f"kserve-cache verify: error: no versions of {key} in the cache\n")
            return 2
        for info in versions:
            check = check_version(info, full=args.full)
            checked += 1
            moved = ""
            if not check.ok:
                corrupt += 1
                if args.quarantine:
                    try:
                        moved = str(quarantine(layout, info))
                    except OSError as exc:
                        logger.error("could not quarantine %s: %s", info.path, exc)
            row = {
                "key": key,
                "version": info.version or "(plain folder)",
                "current": info.current,
                "digest": info.digest,
                "ok": check.ok,
                "level": "full" if args.full else "size",
                "files": len(info.files),
                "problems": [
                    {"path": p.path, "kind": p.kind, "detail": p.detail} for p in check.problems
                ],
                "quarantined_to": moved,
            }
            if args.json:
                sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
            else:
                status = "ok" if check.ok else "CORRUPT"
                where = f" -> quarantined to {moved}" if moved else ""
                current = " (current)" if info.current else ""
                detail = f": {describe(check.problems)}" if check.problems else ""
                sys.stdout.write(f"{status:8} {key} {row['version']}{current}{detail}{where}\n")
    if not args.json:
        sys.stdout.write(f"{checked} version(s) checked, {corrupt} corrupt\n")
    return 1 if corrupt else 0
