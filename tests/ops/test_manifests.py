"""The gc CronJob and warm Job examples: valid Kubernetes objects, restricted, wired to the
cache claim, RBAC for the pods list, and arguments our own parser accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from webhook.cli import build_parser

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
WEBHOOK_IMAGE = "ghcr.io/kserve-cache/kserve-cache:0.1.0"
FETCHER_IMAGE = "ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0"


def load(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def check_pod(spec: dict[str, Any], command: str, image: str) -> list[str]:
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc["fsGroupChangePolicy"] == "OnRootMismatch"
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsNonRoot"] is True
    assert container["image"] == image
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "kserve-model-cache"
    args: list[str] = container["args"]
    assert args[0] == command
    assert args[args.index("--cache-root") + 1] == mounts["cache"]
    return args


@pytest.mark.parametrize("name", ["gc-cronjob.yaml", "warm-job.yaml"])
@pytest.mark.parametrize("version", ["1.30", kubernetes_validate.latest_version()])
def test_examples_are_valid_objects(name: str, version: str) -> None:
    for obj in load(name).values():
        kubernetes_validate.validate(obj, version, strict=True)


def parse(args: list[str], root: Path) -> object:
    """Parse as `kserve-cache` would, with the cache root pointing at a real folder here."""
    local = list(args)
    local[local.index("--cache-root") + 1] = str(root)
    return build_parser().parse_args(local)


def test_gc_cronjob(tmp_path: Path) -> None:
    objs = load("gc-cronjob.yaml")
    cron = objs[("CronJob", "kserve-cache-gc")]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    spec = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    # gc needs no downloader: the smaller webhook image
    parsed: Any = parse(check_pod(spec, "gc", WEBHOOK_IMAGE), tmp_path)
    assert (parsed.max_usage, parsed.max_age, parsed.grace) == (80.0, 30 * 86400.0, 3600.0)
    assert parsed.no_cluster is False
    assert parsed.dry_run is False
    # The ServiceAccount the pod runs as may list pods in every namespace, and nothing else.
    account = spec["serviceAccountName"]
    namespace = cron["metadata"]["namespace"]
    assert ("ServiceAccount", account) in objs
    (binding,) = [obj for (kind, _), obj in objs.items() if kind == "ClusterRoleBinding"]
    assert {"kind": "ServiceAccount", "name": account, "namespace": namespace} in binding[
        "subjects"
    ]
    role = objs[("ClusterRole", binding["roleRef"]["name"])]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]


def test_warm_job(tmp_path: Path) -> None:
    job = load("warm-job.yaml")[("Job", "warm-sklearn-iris")]
    spec = job["spec"]["template"]["spec"]
    parsed: Any = parse(check_pod(spec, "warm", FETCHER_IMAGE), tmp_path)
    assert parsed.uri.startswith("gs://")
    assert spec["automountServiceAccountToken"] is False
