"""Cache figures for `kserve-cache stats`: what is in the cache, how it is used, hit rate over a
window; computed from the manifests and usage records, rendered as a dict or Prometheus text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from webhook.cache.gc import Filesystem, read_filesystem, tree_bytes
from webhook.cache.layout import Layout, Manifest, Usage, list_keys, read_manifest, read_usage
from webhook.cache.lease import list_leases
from webhook.keys import is_valid_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntryStats:
    """One key: its entry (when published) and its usage record (when any)."""

    key: str
    present: bool
    uri: str = ""
    revision: str = ""
    bytes: int = 0
    files: int = 0
    created_at: float | None = None
    download_seconds: float | None = None
    last_used: float | None = None
    hits: int = 0
    misses: int = 0
    waits: int = 0
    window_hits: int = 0
    window_misses: int = 0
    window_waits: int = 0
    digest: str = ""
    fingerprint: str = ""
    commit: str = ""


@dataclass(frozen=True)
class CacheStats:
    keys: tuple[EntryStats, ...]
    now: float
    window: float
    filesystem: Filesystem | None = None
    staging: int = 0
    leases: int = 0

    @property
    def entries(self) -> tuple[EntryStats, ...]:
        return tuple(k for k in self.keys if k.present)

    @property
    def bytes(self) -> int:
        return sum(k.bytes for k in self.entries)

    def total(self, name: str) -> int:
        return sum(int(getattr(k, name)) for k in self.keys)

    def window_bytes(self, outcome: str) -> int:
        """Bytes of the entries that the window's hits served (`window_hits`) or its misses
        downloaded (`window_misses`); evicted keys count 0 (their size is gone with them)."""
        return sum(int(getattr(k, outcome)) * k.bytes for k in self.keys if k.present)

    @property
    def hit_rate(self) -> float | None:
        """Hits over all uses in the window; a pod that waited for a download is not a hit."""
        uses = self.total("window_hits") + self.total("window_misses") + self.total("window_waits")
        return self.total("window_hits") / uses if uses else None


def compute_stats(
    *,
    manifests: Mapping[str, Manifest | None],
    sizes: Mapping[str, int],
    usages: Mapping[str, Usage],
    now: float,
    window: float,
    filesystem: Filesystem | None = None,
    staging: int = 0,
    leases: int = 0,
) -> CacheStats:
    """Figures per key. `manifests` holds the published entries (None: no valid manifest, the
    size then comes from `sizes`); keys with a usage record only were evicted or never made it.
    """
    since = now - window
    keys = []
    for key in sorted(set(manifests) | set(usages)):
        usage = usages.get(key)
        present = key in manifests
        manifest = manifests.get(key)
        recent = [outcome for stamp, outcome in (usage.recent if usage else []) if stamp >= since]
        keys.append(
            EntryStats(
                key=key,
                present=present,
                uri=manifest.uri if manifest else "",
                revision=manifest.revision if manifest else "",
                bytes=manifest.bytes if manifest else sizes.get(key, 0) if present else 0,
                files=len(manifest.files) if manifest else 0,
                created_at=manifest.created_at if manifest else None,
                download_seconds=manifest.download_seconds if manifest else None,
                digest=str(manifest.extra.get("digest", "")) if manifest else "",
                fingerprint=_fingerprint(manifest, "value"),
                commit=_fingerprint(manifest, "commit"),
                last_used=usage.last_used if usage and usage.last_used else None,
                hits=usage.hits if usage else 0,
                misses=usage.misses if usage else 0,
                waits=usage.waits if usage else 0,
                window_hits=recent.count("hit"),
                window_misses=recent.count("miss"),
                window_waits=recent.count("waited"),
            )
        )
    return CacheStats(
        keys=tuple(keys),
        now=now,
        window=window,
        filesystem=filesystem,
        staging=staging,
        leases=leases,
    )


def _fingerprint(manifest: Manifest | None, field: str) -> str:
    """A field of the source fingerprint a version was downloaded with (versions)."""
    found = manifest.extra.get("fingerprint") if manifest else None
    return str(found.get(field, "")) if isinstance(found, dict) else ""


def collect(layout: Layout, *, window: float, now: float | None = None) -> CacheStats:
    """Read the figures from the volume (read-only)."""
    manifests: dict[str, Manifest | None] = {}
    sizes: dict[str, int] = {}
    for key in list_keys(layout):
        manifests[key] = read_manifest(layout, key)
        if manifests[key] is None:
            sizes[key] = tree_bytes(layout.entry(key))
    usages = {}
    for key in _names(layout, "usage"):
        usage = read_usage(layout, key)
        if usage is not None:
            usages[key] = usage
    return compute_stats(
        manifests=manifests,
        sizes=sizes,
        usages=usages,
        now=time.time() if now is None else now,
        window=window,
        filesystem=read_filesystem(layout.root),
        staging=len(_names(layout, "staging", keys_only=False)),
        leases=sum(1 for view in list_leases(layout) if view.held),
    )


def _names(layout: Layout, folder: str, *, keys_only: bool = True) -> list[str]:
    path = getattr(layout, folder)
    try:
        names = [p.name for p in path.iterdir()]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_valid_key(n) or not (keys_only or n.startswith(".")))


def stats_to_dict(stats: CacheStats) -> dict[str, Any]:
    fs = stats.filesystem
    return {
        "now": stats.now,
        "window_seconds": stats.window,
        "entries": len(stats.entries),
        "bytes": stats.bytes,
        "hits": stats.total("hits"),
        "misses": stats.total("misses"),
        "waits": stats.total("waits"),
        "window": {
            "hits": stats.total("window_hits"),
            "misses": stats.total("window_misses"),
            "waits": stats.total("window_waits"),
            "hit_rate": stats.hit_rate,
            "hit_bytes": stats.window_bytes("window_hits"),
            "miss_bytes": stats.window_bytes("window_misses"),
        },
        "filesystem": None
        if fs is None
        else {
            "total_bytes": fs.total,
            "used_bytes": fs.used,
            "free_bytes": fs.free,
            "used_percent": round(fs.usage_percent(), 2),
        },
        "staging_folders": stats.staging,
        "leases": stats.leases,
        "keys": [
            {
                "key": k.key,
                "present": k.present,
                "uri": k.uri,
                "revision": k.revision,
                "bytes": k.bytes,
                "files": k.files,
                "created_at": k.created_at,
                "download_seconds": k.download_seconds,
                "version": {
                    "digest": k.digest,
                    "fingerprint": k.fingerprint,
                    "commit": k.commit,
                    "age_seconds": None
                    if k.created_at is None
                    else round(stats.now - k.created_at, 1),
                },
                "last_used": k.last_used,
                "hits": k.hits,
                "misses": k.misses,
                "waits": k.waits,
                "window": {
                    "hits": k.window_hits,
                    "misses": k.window_misses,
                    "waits": k.window_waits,
                },
            }
            for k in stats.keys
        ],
    }


def to_prometheus(stats: CacheStats, *, window_label: str) -> str:
    """Text exposition format, for the node exporter's textfile collector or a sidecar."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, window_label=window_label))
    return generate_latest(registry).decode("utf-8")


class _Collector:
    def __init__(self, stats: CacheStats, *, window_label: str) -> None:
        self.stats = stats
        self.window_label = window_label

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats
        yield GaugeMetricFamily("kserve_cache_entries", "Published entries.", value=len(s.entries))
        yield GaugeMetricFamily("kserve_cache_bytes", "Bytes of all entries.", value=s.bytes)
        yield GaugeMetricFamily(
            "kserve_cache_staging_folders", "Downloads in progress or abandoned.", value=s.staging
        )
        yield GaugeMetricFamily(
            "kserve_cache_leases", "Lease files (live or dead).", value=s.leases
        )
        if s.filesystem is not None:
            yield GaugeMetricFamily(
                "kserve_cache_free_bytes",
                "Space free on the cache filesystem.",
                value=s.filesystem.free,
            )
            yield GaugeMetricFamily(
                "kserve_cache_used_bytes",
                "Space used on the cache filesystem (by anything).",
                value=s.filesystem.used,
            )
            yield GaugeMetricFamily(
                "kserve_cache_filesystem_bytes",
                "Size of the cache filesystem.",
                value=s.filesystem.total,
            )
        per_entry: tuple[tuple[str, str, Callable[[EntryStats], float | None]], ...] = (
            ("kserve_cache_entry_bytes", "Bytes of an entry.", lambda k: k.bytes),
            ("kserve_cache_entry_files", "Files in an entry.", lambda k: k.files),
            (
                "kserve_cache_entry_created_timestamp_seconds",
                "When the entry was published.",
                lambda k: k.created_at,
            ),
        )
        for name, doc, value in per_entry:
            family = GaugeMetricFamily(name, doc, labels=["key"])
            for k in s.entries:
                figure = value(k)
                if figure is not None:
                    family.add_metric([k.key], figure)
            yield family
        last = GaugeMetricFamily(
            "kserve_cache_last_used_timestamp_seconds", "Last use of a key.", labels=["key"]
        )
        for k in s.keys:
            if k.last_used is not None:
                last.add_metric([k.key], k.last_used)
        yield last
        for field_name, name, doc in (
            ("hits", "kserve_cache_hits", "Fetches that found the entry."),
            ("misses", "kserve_cache_misses", "Fetches that downloaded the entry."),
            ("waits", "kserve_cache_waits", "Fetches that waited for another download."),
        ):
            counter = CounterMetricFamily(name, doc, labels=["key"])
            for k in s.keys:
                counter.add_metric([k.key], getattr(k, field_name))
            yield counter
        window = [self.window_label]
        for field_name, name, doc in (
            ("window_hits", "kserve_cache_window_hits", "Hits within the window."),
            ("window_misses", "kserve_cache_window_misses", "Misses within the window."),
            ("window_waits", "kserve_cache_window_waits", "Waits within the window."),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["window"])
            gauge.add_metric(window, s.total(field_name))
            yield gauge
        for field_name, name, doc in (
            (
                "window_hits",
                "kserve_cache_window_hit_bytes",
                "Bytes served from the cache by the hits within the window.",
            ),
            (
                "window_misses",
                "kserve_cache_window_miss_bytes",
                "Bytes downloaded into the cache by the misses within the window.",
            ),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["window"])
            gauge.add_metric(window, s.window_bytes(field_name))
            yield gauge
        yield GaugeMetricFamily(
            "kserve_cache_stats_timestamp_seconds",
            "When these figures were read from the volume.",
            value=s.now,
        )
        if s.hit_rate is not None:
            ratio = GaugeMetricFamily(
                "kserve_cache_window_hit_ratio",
                "Hits over all fetches within the window.",
                labels=["window"],
            )
            ratio.add_metric(window, s.hit_rate)
            yield ratio


def rows(stats: CacheStats) -> Sequence[EntryStats]:
    """Entries first (most recently used first), then keys known only from usage records."""
    return sorted(stats.keys, key=lambda k: (not k.present, -(k.last_used or 0.0), k.key))
