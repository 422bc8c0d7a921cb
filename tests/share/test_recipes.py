"""The shared-cache manifests: valid objects, the write policy they encode (only the writer
namespace's admins can run writers; `share` needs exactly PV/claim get+create), and the warm
CronJob's script run for real, against the local S3 server, with a list of models."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.cache.conftest import BUCKET, CLI, S3, tree
from webhook import names
from webhook.keys import is_valid_revision, normalize_uri

EXAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "examples"
FILES = ("shared-cache.yaml", "warm-cronjob.yaml")
VERSIONS = ("1.30", kubernetes_validate.latest_version())


def load(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("version", VERSIONS)
def test_valid_objects(name: str, version: str) -> None:
    for obj in load(name).values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_namespaces_encode_who_writes() -> None:
    objs = load("shared-cache.yaml")
    writer = objs[("Namespace", "model-cache")]
    tenants = [
        o for (kind, name), o in objs.items() if kind == "Namespace" and name != "model-cache"
    ]
    assert tenants
    for ns in [writer, *tenants]:
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for ns in tenants:
        annotations = ns["metadata"]["annotations"]
        assert annotations[names.PREFIX + "read-only"] == "true"
        assert annotations[names.PREFIX + "on-miss"] in ("wait", "private")
    # the writable claim lives in the writer namespace only
    (claim,) = [o for (kind, _), o in objs.items() if kind == "PersistentVolumeClaim"]
    assert claim["metadata"]["namespace"] == "model-cache"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rbac_grants_the_writer_namespace_and_share_only() -> None:
    objs = load("shared-cache.yaml")
    role = objs[("Role", "kserve-cache-writer")]
    binding = objs[("RoleBinding", "kserve-cache-writer")]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "model-cache"
    assert binding["roleRef"]["name"] == "kserve-cache-writer"
    assert [s["kind"] for s in binding["subjects"]] == ["Group"]
    share = objs[("ClusterRole", "kserve-cache-share")]
    assert share["rules"] == [
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "create"]},
    ]
    assert objs[("ClusterRoleBinding", "kserve-cache-share")]["subjects"] == binding["subjects"]
    # nothing here lets anyone create pods, update or delete volumes, or edit Namespaces
    for (kind, _), obj in objs.items():
        for rule in obj.get("rules", []) if kind in ("Role", "ClusterRole") else []:
            if "pods" in rule["resources"]:
                assert set(rule["verbs"]) <= {"get", "list", "watch"}
            assert "namespaces" not in rule["resources"]
            if "persistentvolumes" in rule["resources"]:
                assert "delete" not in rule["verbs"]
                assert "update" not in rule["verbs"]


def cronjob() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    objs = load("warm-cronjob.yaml")
    cron = objs[("CronJob", "kserve-cache-warm")]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    return cron, pod, mounts


def test_cronjob_is_restricted_and_wired() -> None:
    objs = load("warm-cronjob.yaml")
    cron, pod, mounts = cronjob()
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["metadata"]["namespace"] == "model-cache"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "kserve-model-cache"
    configmap = volumes["list"]["configMap"]["name"]
    assert ("ConfigMap", configmap) in objs
    assert ("ServiceAccount", pod["serviceAccountName"]) in objs
    script = container["args"][0]
    assert f"--cache-root {mounts['cache']}" in script
    assert f"{mounts['list']}/models" in script


def test_listed_models_are_valid_lines() -> None:
    text = load("warm-cronjob.yaml")[("ConfigMap", "kserve-cache-warm-list")]["data"]["models"]
    lines = [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines
    for fields in lines:
        assert len(fields) in (1, 2)
        assert "://" in normalize_uri(fields[0])
        if len(fields) == 2:
            assert is_valid_revision(fields[1])


def test_the_cronjob_script_warms_every_listed_model(s3: S3, tmp_path: Path) -> None:
    _, pod, mounts = cronjob()
    script: str = pod["containers"][0]["args"][0]
    cache, lists = tmp_path / "cache", tmp_path / "list"
    cache.mkdir()
    lists.mkdir()
    (lists / "models").write_text(
        "# URI  REVISION\n"
        "\n"
        f"s3://{BUCKET}/llama\n"
        f"s3://{BUCKET}/missing-model\n"
        f"s3://{BUCKET}/llama   r2\n"
    )
    local = script.replace(f"--cache-root {mounts['cache']}", f"--cache-root {cache}").replace(
        f"{mounts['list']}/models", str(lists / "models")
    )
    env = s3.env(PATH=f"{CLI.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["/bin/sh", "-c", local], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 1, proc.stderr  # one model is missing: the Job fails
    assert f"warm failed: s3://{BUCKET}/missing-model" in proc.stderr
    assert "1 model(s) could not be warmed" in proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["outcome"] for r in results] == ["miss", "error", "miss"]
    assert results[2]["revision"] == "r2"
    assert results[0]["key"] != results[2]["key"]
    expected = {
        name.removeprefix("llama/"): hashlib.sha256(body).hexdigest()
        for name, body in s3.objects.items()
        if name.startswith("llama/")
    }
    for result in (results[0], results[2]):
        files = tree(cache / "models" / result["key"])
        files.pop(".kserve-cache.json")
        assert {n: hashlib.sha256(b).hexdigest() for n, b in files.items()} == expected
    # a second run is all hits for what is there
    again = subprocess.run(
        ["/bin/sh", "-c", local], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    outcomes = [json.loads(line)["outcome"] for line in again.stdout.splitlines() if line.strip()]
    assert outcomes == ["hit", "error", "hit"]


def policy_programs() -> list[tuple[str, Any]]:
    import celpy

    objs = load("shared-cache.yaml")
    policy = objs[("ValidatingAdmissionPolicy", "kserve-cache-read-only-tenants")]
    env = celpy.Environment()
    return [
        (rule["message"], env.program(env.compile(rule["expression"])))
        for rule in policy["spec"]["validations"]
    ]


def admitted(pod: dict[str, Any]) -> list[str]:
    """The messages of the policy's rules this pod breaks (empty: admitted)."""
    import celpy

    activation = {"object": celpy.json_to_cel(pod)}
    return [message for message, program in policy_programs() if not program.evaluate(activation)]


def cache_volume(**claim: Any) -> dict[str, Any]:
    return {"name": "kserve-cache", "persistentVolumeClaim": {"claimName": CLAIM_NAME, **claim}}


CLAIM_NAME = "kserve-model-cache"


@pytest.mark.parametrize(
    ("volumes", "refused"),
    [
        pytest.param(None, [], id="no-volumes"),
        pytest.param([cache_volume(readOnly=True)], [], id="read-only-cache"),
        pytest.param(
            [cache_volume(readOnly=True), {"name": "m", "emptyDir": {}}], [], id="with-emptydir"
        ),
        pytest.param(
            [{"name": "d", "persistentVolumeClaim": {"claimName": "scratch"}}], [], id="own-claim"
        ),
        pytest.param([cache_volume()], ["read-only"], id="cache-without-readonly"),
        pytest.param([cache_volume(readOnly=False)], ["read-only"], id="cache-readonly-false"),
        pytest.param(
            [{"name": "x", "csi": {"driver": "efs.csi.aws.com", "volumeAttributes": {}}}],
            ["inline"],
            id="inline-csi-of-the-share",
        ),
        pytest.param(
            [{"name": "x", "csi": {"driver": "secrets-store.csi.k8s.io"}}], [], id="other-csi"
        ),
    ],
)
def test_read_only_policy(volumes: list[dict[str, Any]] | None, refused: list[str]) -> None:
    pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": []}}
    if volumes is not None:
        pod["spec"]["volumes"] = volumes
    broken = admitted(pod)
    assert len(broken) == len(refused)
    for message, word in zip(broken, refused, strict=True):
        assert word in message


def test_policy_binds_the_tenant_namespaces() -> None:
    objs = load("shared-cache.yaml")
    binding = objs[("ValidatingAdmissionPolicyBinding", "kserve-cache-read-only-tenants")]
    assert binding["spec"]["validationActions"] == ["Deny"]
    selector = binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"]
    tenants = [o for (kind, n), o in objs.items() if kind == "Namespace" and n != "model-cache"]
    for ns in tenants:
        assert selector.items() <= ns["metadata"]["labels"].items()
    writer = objs[("Namespace", "model-cache")]
    assert not selector.items() <= writer["metadata"]["labels"].items()
