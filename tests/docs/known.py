"""What the code really offers, for the docs and monitoring tests: every metric name the
webhook's /metrics and the cache exporter can expose (with their labels), and every command
and flag of the real argparse parser."""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from webhook import certs
from webhook.app import Metrics
from webhook.cache.layout import Layout, record_usage
from webhook.cache.stats import compute_stats, to_prometheus
from webhook.cli import build_parser
from webhook.namespaces import NamespaceMetrics
from webhook.tls import CertificateExpiry

# The series names a family exposes: a counter `x` is only ever `x_total` (and `x_created`)
# on /metrics, so docs or rules naming a bare `x` name nothing.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": ("",),
    "unknown": ("",),
}
# Labels Prometheus adds when it scrapes a target (and that PromQL may name).
TARGET_LABELS = frozenset({"namespace", "pod", "job", "instance", "service", "container"})


def _families(registry: CollectorRegistry) -> dict[str, frozenset[str]]:
    names: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        labels = frozenset(
            {label for sample in family.samples for label in sample.labels} - {"le", "quantile"}
        )
        for name in (family.name + s for s in SUFFIXES[family.type]):
            names[name] = names.get(name, frozenset()) | labels
    return names


@functools.cache
def webhook_metrics(tmp: Path) -> dict[str, frozenset[str]]:
    """Metric name -> label names, from the registries `serve` builds."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.outcome("mutated", "").inc()
    metrics.bad_requests.labels("json").inc()
    metrics.config_reloads.labels("ok").inc()
    metrics.latency.observe(0.001)
    ns = NamespaceMetrics(registry)
    for counter in (ns.watch_restarts, ns.fallbacks, ns.claim_watch_restarts):
        counter.labels("error").inc()
    files = certs.write_self_signed(tmp / "certs", hosts=["localhost"])
    registry.register(CertificateExpiry(files.cert_file))  # type: ignore[arg-type]
    found = _families(registry)
    found["kserve_cache_admissions_total"] |= {"outcome", "reason"}
    return found


@functools.cache
def exporter_metrics(tmp: Path) -> dict[str, frozenset[str]]:
    """Metric name -> label names, from `stats --serve` on a cache with one used entry."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.ops.helpers import build_entry
    from webhook.cli.stats import Exporter

    root = tmp / "cache"
    root.mkdir(parents=True)
    layout = Layout(root)
    layout.ensure_dirs()
    built = build_entry(layout, "m", size=10, last_used=time.time(), created_at=time.time())
    record_usage(layout, built.key, "miss")
    text = Exporter(root, window=86400.0, min_interval=0.0).text()
    stats = compute_stats(manifests={}, sizes={}, usages={}, now=0.0, window=1.0)
    text += to_prometheus(stats, window_label="1s")
    found: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = frozenset(label for s in family.samples for label in s.labels)
        for name in (family.name + s for s in SUFFIXES[family.type]):
            found[name] = found.get(name, frozenset()) | labels
    return found


def all_metrics(tmp: Path) -> dict[str, frozenset[str]]:
    return {**webhook_metrics(tmp / "webhook"), **exporter_metrics(tmp / "exporter")}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")
