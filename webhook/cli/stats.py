"""`kserve-cache stats`: entries, bytes, last use, hits, misses and hit rate over a window, as a
table, JSON or Prometheus text.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from typing import Any

from webhook.cli.gc import duration_arg, existing_dir, human_age, human_bytes, table

logger = logging.getLogger(__name__)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "stats",
        help="cache contents and hit/miss figures as a table, JSON or Prometheus text",
        description="Read-only report of the cache: entries, sizes, last use, hits, misses, "
        "waits, hit rate over --window and free space.",
    )
    p.add_argument("--cache-root", required=True, type=existing_dir, help="the cache volume")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument(
        "--prometheus", action="store_true", help="print Prometheus text exposition format"
    )
    p.add_argument(
        "--window",
        type=duration_arg,
        default=86400.0,
        metavar="DURATION",
        help="hit rate over this recent period (default 24h)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from webhook.cache.layout import Layout
    from webhook.cache.stats import collect, stats_to_dict, to_prometheus

    if args.window <= 0:
        sys.stderr.write("kserve-cache stats: error: --window must be more than zero\n")
        return 2
    stats = collect(Layout(args.cache_root), window=args.window)
    if args.prometheus:
        sys.stdout.write(to_prometheus(stats, window_label=window_text(args.window)))
    elif args.json:
        sys.stdout.write(json.dumps(stats_to_dict(stats), indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render(stats))
    return 0


def window_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= max(size, 2 * 86400 if unit == "d" else 0) and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def render(stats: Any) -> str:
    from webhook.cache.stats import rows

    now = stats.now
    body = [
        (
            k.key if k.present else f"{k.key} (evicted)",
            human_bytes(k.bytes) if k.present else "-",
            "-" if k.last_used is None else human_age(now - k.last_used),
            str(k.hits),
            str(k.misses),
            str(k.waits),
            f"{k.window_hits}/{k.window_misses}/{k.window_waits}",
        )
        for k in rows(stats)
    ]
    window = window_text(stats.window)
    out = []
    if body:
        out.append(
            table(("KEY", "SIZE", "LAST USED", "HITS", "MISSES", "WAITS", f"{window} H/M/W"), body)
        )
    else:
        out.append("the cache is empty\n")
    rate = stats.hit_rate
    out.append(
        f"entries: {len(stats.entries)}, size: {human_bytes(stats.bytes)}, "
        f"hit rate ({window}): {'-' if rate is None else f'{100 * rate:.1f}%'}"
        f" ({stats.total('window_hits')} hits, {stats.total('window_misses')} misses, "
        f"{stats.total('window_waits')} waits)\n"
    )
    fs = stats.filesystem
    if fs is not None:
        out.append(
            f"filesystem: {human_bytes(fs.free)} free of {human_bytes(fs.total)} "
            f"({fs.usage_percent():.1f}% used)\n"
        )
    if stats.staging or stats.leases:
        out.append(f"downloads: {stats.staging} staging folders, {stats.leases} leases\n")
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    out.append(f"as of {stamp}\n")
    return "".join(out)
