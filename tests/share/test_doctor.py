"""`kserve-cache doctor` on a shared cache, against the fake API server: a claim `share` bound is
checked against the writer's volume (same handle passes; a fresh empty volume fails), a
read-only share's ReadOnlyMany is right, and namespaces with separate volumes of one
StorageClass get a warning."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakekube import FakeKube
from webhook.cli import main
from webhook.share import ShareTarget, plan_share

from .volumes import CLAIM, EFS_SPEC, WRITER_NS, spec_with

WRITER_PV = "pvc-writer"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    with FakeKube() as server:
        server.add_volume(WRITER_PV, EFS_SPEC)
        server.add_claim(WRITER_NS, CLAIM, volume_name=WRITER_PV)
        yield server


def shared_into(kube: FakeKube, namespace: str) -> None:
    """What `share --read-only --apply` creates, stored in the fake cluster."""
    writer = kube.claim(WRITER_NS, CLAIM)
    source = kube.volume(WRITER_PV)
    assert writer is not None
    assert source is not None
    plan = plan_share(writer, source, targets=[ShareTarget(namespace, CLAIM)], read_only=True)
    pv, pvc = plan.objects
    kube.add_volume(pv["metadata"]["name"], pv["spec"])
    kube.add_claim(
        namespace,
        CLAIM,
        access_modes=("ReadOnlyMany",),
        volume_name=pv["metadata"]["name"],
        annotations=pvc["metadata"]["annotations"],
    )


def doctor(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str
) -> dict[str, dict[str, Any]]:
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    main(["doctor", "--kubeconfig", str(config), "-o", "json", *args])
    report = json.loads(capsys.readouterr().out)
    return {c["name"]: c for c in report["checks"] if c["group"] == "namespaces"}


def test_a_shared_claim_on_the_writer_volume_passes(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shared_into(kube, "tenant-a")
    checks = doctor(kube, tmp_path, capsys, "--check-namespace", "tenant-a")
    assert checks[f"shared tenant-a/{CLAIM}"]["status"] == "ok"
    assert "are the same volume" in checks[f"shared tenant-a/{CLAIM}"]["detail"]
    assert checks[f"access tenant-a/{CLAIM}"]["status"] == "ok"
    assert "read-only share" in checks[f"access tenant-a/{CLAIM}"]["detail"]


def test_a_fresh_empty_volume_fails(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = spec_with(
        EFS_SPEC, csi={**EFS_SPEC["csi"], "volumeHandle": "fs-0123456789abcdef0::fsap-fresh"}
    )
    kube.add_volume(
        "pvc-fresh", spec_with(other, claimRef={"namespace": "tenant-b", "name": CLAIM})
    )
    kube.add_claim("tenant-b", CLAIM, volume_name="pvc-fresh")
    checks = doctor(
        kube,
        tmp_path,
        capsys,
        "--check-namespace",
        "tenant-b",
        "--check-namespace",
        WRITER_NS,
        "--shared-claim",
        f"{WRITER_NS}/{CLAIM}",
    )
    verdict = checks[f"shared tenant-b/{CLAIM}"]
    assert verdict["status"] == "fail"
    assert "NOT the shared volume" in verdict["detail"]
    assert "fsap-fresh" in verdict["detail"]
    assert "kserve-cache share" in verdict["hint"]
    assert f"shared {WRITER_NS}/{CLAIM}" not in checks  # the writer is the reference
    warning = checks["one-cache-per-cluster"]
    assert warning["status"] == "warn"
    assert "2 separate volumes of StorageClass efs-sc" in warning["detail"]


def test_claims_that_are_not_shared_are_not_judged(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checks = doctor(kube, tmp_path, capsys, "--check-namespace", WRITER_NS)
    assert not [name for name in checks if name.startswith("shared ")]
    assert "one-cache-per-cluster" not in checks
