"""`kserve-cache gc`: evict least-recently-used entries down to a size, usage or age budget,
never one a live pod, a live lease or the grace period protects.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from webhook.cache.gc import GcError, Plan, parse_duration, parse_size
from webhook.cache.progress import human_bytes

logger = logging.getLogger(__name__)

PAGE_SIZE = 500


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return path


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except GcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except GcError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def percent_arg(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"not a percentage between 0 and 100: {text!r}")
    return value


def margin_arg(text: str) -> float | None:
    return None if text.strip() == "auto" else duration_arg(text)


def seconds_arg(text: str) -> float:
    value = duration_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than zero: {text!r}")
    return value


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gc",
        help="evict least-recently-used entries down to a budget, never one in use",
        description=(
            "Evict least-recently-used cache entries until the cache fits --max-bytes and "
            "--max-usage, and entries unused for --max-age. Never evicts an entry used within "
            "--grace, one with a live lease, or one a live pod refers to (listed with the "
            "Kubernetes API). Also removes stale staging folders and dead leases."
        ),
    )
    p.add_argument("--cache-root", required=True, type=existing_dir, help="the cache volume")
    p.add_argument(
        "--max-bytes", type=size_arg, metavar="SIZE", help="budget for all entries (10G, 500Mi)"
    )
    p.add_argument(
        "--max-usage",
        type=percent_arg,
        metavar="PCT",
        help="evict until the filesystem is at most PCT%% full",
    )
    p.add_argument(
        "--max-age", type=duration_arg, metavar="DURATION", help="evict entries unused this long"
    )
    p.add_argument(
        "--grace",
        type=duration_arg,
        default=3600.0,
        metavar="DURATION",
        help="never evict an entry used this recently (default 1h)",
    )
    p.add_argument(
        "--lease-ttl",
        type=seconds_arg,
        default=120.0,
        metavar="SECONDS",
        help="a lease without a heartbeat this long is dead (default 120, as fetch)",
    )
    p.add_argument(
        "--cache-margin",
        type=margin_arg,
        default=None,
        metavar="DURATION",
        help="how long evicted entries wait in .trash before the final check of their usage "
        "record; must exceed the clients' attribute caches (default auto: 0 on a local "
        "filesystem, 65s on NFS, SMB, CephFS, GlusterFS and other FUSE mounts)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument(
        "--no-cluster",
        action="store_true",
        help="do not ask the Kubernetes API which entries live pods use (unsafe)",
    )
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    p.add_argument("--json", action="store_true", help="print the plan and outcome as JSON")
    p.add_argument(
        "--usage-dir",
        action="append",
        type=existing_dir,
        default=[],
        metavar="DIR",
        help="also count the uses read-only consumers recorded here (fetch --usage-dir); repeat",
    )
    from webhook.cache.probe import add_probe_arguments

    add_probe_arguments(p)
    p.set_defaults(run=run)


def list_pods(kubeconfig: str | None) -> list[dict[str, Any]]:
    """Every pod of the cluster as raw dicts, page by page."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    pods: list[dict[str, Any]] = []
    with client.ApiClient(configuration) as api:
        core = client.CoreV1Api(api)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": PAGE_SIZE, "_request_timeout": 30}
            if token:
                kwargs["_continue"] = token
            response = core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)
            try:
                data = json.loads(response.data)
            finally:
                response.release_conn()
            pods.extend(data.get("items") or [])
            token = (data.get("metadata") or {}).get("continue")
            if not token:
                return pods


NO_BUDGET_NOTE = (
    "kserve-cache gc: no budget given (--max-bytes, --max-usage or --max-age): no entry is "
    "evicted; only stale staging folders, dead leases and old trash are cleaned up\n"
)


def run(args: argparse.Namespace) -> int:
    from webhook import names
    from webhook.cache.gc import (
        Budget,
        cache_margin_for,
        execute,
        keys_in_use,
        plan_gc,
        plan_to_dict,
        scan,
    )
    from webhook.cache.layout import Layout

    try:
        budget = Budget(
            max_bytes=args.max_bytes,
            max_usage=args.max_usage,
            max_age=args.max_age,
            grace=args.grace,
            lease_ttl=args.lease_ttl,
            cache_margin=(
                cache_margin_for(args.cache_root)
                if args.cache_margin is None
                else args.cache_margin
            ),
        )
    except GcError as exc:
        sys.stderr.write(f"kserve-cache gc: error: {exc}\n")
        return 2
    if not budget.any:
        sys.stderr.write(NO_BUDGET_NOTE)
    in_use: frozenset[str] | None
    live_pods: frozenset[str] | None = None
    unrecorded: frozenset[str] = frozenset()
    if args.no_cluster:
        sys.stderr.write(
            "WARNING: --no-cluster: live pods are NOT checked. An entry a running pod mounts "
            "can be evicted, and the pod then sees an empty /mnt/models on its next start.\n"
        )
        in_use = None
    else:
        try:
            pods = list_pods(args.kubeconfig)
        except Exception as exc:  # any failure means we cannot prove an entry is unused
            sys.stderr.write(
                f"kserve-cache gc: error: cannot list pods, nothing evicted: {exc}\n"
                "  (give --kubeconfig, run in-cluster with a ServiceAccount that may list pods,"
                " or accept the risk with --no-cluster)\n"
            )
            return 1
        from webhook.cache.readonly import keys_mounted

        # every namespace's pods: also those mounting models/<key> of a shared volume by hand
        in_use = keys_in_use(pods, annotation=names.STATUS) | keys_mounted(pods)
        live_pods, unrecorded = pod_names(pods), keys_mounted(pods)
        logger.info("%d pods listed, %d cache keys in use", len(pods), len(in_use))

    if not args.dry_run:  # gc renames and deletes: only on a volume that passed the probe
        from webhook.cache.fetch import FetchError
        from webhook.cache.probe import probe_from_args

        try:
            probe_from_args(args.cache_root, args)
        except FetchError as exc:
            sys.stderr.write(f"kserve-cache gc: error: {exc.message}\n")
            return exc.kind.exit_code
    layout = Layout(args.cache_root)
    now = time.time()
    snapshot = scan(layout, now=now, lease_ttl=budget.lease_ttl)
    if args.usage_dir:  # uses that read-only consumers recorded elsewhere (issue 16)
        from webhook.cache.readonly import merge_usage

        snapshot = merge_usage(snapshot, args.usage_dir)
    plan = plan_gc(snapshot, budget=budget, now=now, in_use=in_use)
    outcome = None if args.dry_run else execute(layout, plan, budget=budget)
    from webhook.cache.versions import evict_old_versions, plan_old_versions

    old_versions = plan_old_versions(
        layout,
        live_pods=live_pods,
        keys_in_use=in_use,
        unrecorded=unrecorded,
        now=now,
        grace=budget.grace,
    )
    evicted_versions = [] if args.dry_run else evict_old_versions(layout, old_versions)
    if args.json:
        report = {
            "cache_root": str(args.cache_root),
            "dry_run": args.dry_run,
            "plan": plan_to_dict(plan),
            "outcome": None if outcome is None else outcome.to_dict(),
            "old_versions": [
                {"key": v.key, "version": v.version, "action": v.action, "reason": v.reason}
                for v in old_versions
            ],
            "old_versions_evicted": [f"{v.key}/{v.version}" for v in evicted_versions],
        }
        sys.stdout.write(json.dumps(report, indent=1, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_plan(plan, now=now, dry_run=args.dry_run))
        if outcome is not None:
            sys.stdout.write(
                f"evicted {len(outcome.evicted)} entries ({human_bytes(outcome.freed_bytes)}), "
                f"removed {len(outcome.staging_removed)} staging folders, "
                f"{len(outcome.leases_removed)} dead leases, "
                f"{len(outcome.trash_removed)} trash folders\n"
            )
            for key, why in sorted(outcome.skipped.items()):
                sys.stdout.write(f"kept after all: {key} ({why})\n")
        for v in old_versions:
            done = "evicted" if v in evicted_versions else v.action
            sys.stdout.write(f"old version {v.key}/{v.version}: {done} ({v.reason})\n")
    for line in plan.over_budget:
        logger.warning("still over budget: %s", line)
    if outcome is not None and outcome.errors:
        for line in outcome.errors:
            sys.stderr.write(f"kserve-cache gc: error: {line}\n")
        return 1
    return 0


def pod_names(pods: list[dict[str, Any]]) -> frozenset[str]:
    """Names (and hostnames) of the pods that are not finished: fetch records the version
    each pod got under its hostname, which is the pod's name unless `spec.hostname` is set."""
    found: set[str] = set()
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        for name in (meta.get("name"), spec.get("hostname")):
            if isinstance(name, str) and name:
                found.add(name)
    return frozenset(found)


def human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines) + "\n"


def render_plan(plan: Plan, *, now: float, dry_run: bool) -> str:
    rows = [
        (d.key, human_bytes(d.bytes), human_age(now - d.last_used), d.action, d.reason)
        for d in plan.decisions
    ]
    out = [f"gc plan{' (dry run, nothing changed)' if dry_run else ''}:\n"]
    if rows:
        out.append(table(("KEY", "SIZE", "LAST USED", "ACTION", "REASON"), rows))
    else:
        out.append("no entries\n")
    for title, items in (
        ("stale staging folders", plan.stale_staging),
        ("dead leases", plan.dead_leases),
        ("old trash", plan.old_trash),
    ):
        if items:
            out.append(f"{title}: {', '.join(items)}\n")
    out.append(
        f"entries: {len(plan.decisions)} -> {len(plan.keep)}, "
        f"bytes: {human_bytes(plan.bytes_before)} -> {human_bytes(plan.bytes_after)}"
    )
    if plan.usage_before is not None and plan.usage_after is not None:
        out.append(f", filesystem use: {plan.usage_before:.1f}% -> {plan.usage_after:.1f}%")
    out.append("\n")
    if not plan.cluster_checked:
        out.append("live pods NOT checked (--no-cluster)\n")
    return "".join(out)
