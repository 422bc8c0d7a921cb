"""`webhook.share`: the objects it builds bind the same storage and validate against the
Kubernetes schemas; the volumes it refuses, and why."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from webhook.share import (
    ShareError,
    ShareTarget,
    explain_same_volume,
    plan_share,
    same_volume,
    shared_volume_name,
    volume_identity,
)

from .volumes import CEPHFS_SPEC, CLAIM, EFS_SPEC, NFS_SPEC, WRITER_NS, claim, spec_with, volume

VERSIONS = ("1.30", kubernetes_validate.latest_version())
TARGETS = (ShareTarget("team-a", CLAIM), ShareTarget("team-b", CLAIM))


def by_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


@pytest.mark.parametrize(
    ("spec", "source"),
    [
        pytest.param(EFS_SPEC, "csi", id="csi-efs"),
        pytest.param(CEPHFS_SPEC, "csi", id="csi-cephfs-secrets"),
        pytest.param(NFS_SPEC, "nfs", id="nfs"),
    ],
)
@pytest.mark.parametrize("read_only", [False, True], ids=["rwx", "rox"])
def test_objects_bind_the_same_storage_and_validate(
    spec: dict[str, Any], source: str, read_only: bool
) -> None:
    pv = volume("pvc-writer", spec)
    plan = plan_share(claim("pvc-writer"), pv, targets=TARGETS, read_only=read_only)
    mode = "ReadOnlyMany" if read_only else "ReadWriteMany"
    assert plan.access_mode == mode
    volumes, claims = (
        by_kind(plan.objects, "PersistentVolume"),
        by_kind(plan.objects, "PersistentVolumeClaim"),
    )
    assert len(volumes) == len(claims) == 2
    for obj in plan.objects:
        for version in VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    for target, pv_obj, pvc in zip(TARGETS, volumes, claims, strict=True):
        new = pv_obj["spec"]
        # the same storage: driver + handle + attributes + secrets, or server + path
        assert same_volume(pv, pv_obj)
        assert volume_identity(pv_obj) == volume_identity(pv)
        expected_source = dict(spec[source], **({"readOnly": True} if read_only else {}))
        assert new[source] == expected_source
        assert new["persistentVolumeReclaimPolicy"] == "Retain"
        assert new["accessModes"] == [mode]
        assert new["storageClassName"] == ""
        ro_option = ["ro"] if read_only and source == "nfs" else []
        assert new.get("mountOptions", []) == [*spec.get("mountOptions", []), *ro_option]
        assert (new["claimRef"]["namespace"], new["claimRef"]["name"]) == (
            target.namespace,
            target.claim,
        )
        assert pv_obj["metadata"]["name"] == shared_volume_name("pvc-writer", target)
        # the claim binds exactly that volume, without a StorageClass
        assert pvc["metadata"]["namespace"] == target.namespace
        assert pvc["metadata"]["name"] == target.claim
        assert pvc["spec"]["volumeName"] == pv_obj["metadata"]["name"]
        assert pvc["spec"]["storageClassName"] == ""
        assert pvc["spec"]["accessModes"] == [mode]
        assert pvc["spec"]["resources"]["requests"]["storage"] == spec["capacity"]["storage"]
        assert pvc["metadata"]["annotations"]["cache.kserve.io/shared-from"] == (
            f"{WRITER_NS}/{CLAIM}"
        )
    assert pv["spec"] == spec  # input untouched


def test_names_are_deterministic_and_distinct() -> None:
    pv = volume("pvc-writer", EFS_SPEC)
    first = plan_share(claim("pvc-writer"), pv, targets=TARGETS)
    again = plan_share(claim("pvc-writer"), pv, targets=TARGETS)
    assert first.objects == again.objects
    names = [o["metadata"]["name"] for o in by_kind(first.objects, "PersistentVolume")]
    assert len(set(names)) == 2
    long = ShareTarget("n" * 63, "c" * 253)
    name = shared_volume_name("pvc-writer", long)
    assert len(name) <= 253
    kubernetes_validate.validate(
        plan_share(claim("pvc-writer"), pv, targets=[long]).objects[0], VERSIONS[-1], strict=True
    )
    assert name != shared_volume_name("pvc-other", long)


def test_read_only_csi_share_warns_about_the_pod_flag() -> None:
    plan = plan_share(
        claim("pvc-writer"), volume("pvc-writer", EFS_SPEC), targets=TARGETS, read_only=True
    )
    (warning,) = plan.warnings
    assert "persistentVolumeClaim.readOnly: true" in warning
    nfs = plan_share(
        claim("pvc-writer"), volume("pvc-writer", NFS_SPEC), targets=TARGETS, read_only=True
    )
    assert nfs.warnings == ()  # the `ro` mount option binds every pod


def test_delete_reclaim_policy_is_a_warning() -> None:
    plan = plan_share(claim("pvc-writer"), volume("pvc-writer", CEPHFS_SPEC), targets=TARGETS)
    (warning,) = plan.warnings
    assert "Delete" in warning
    assert "Retain" in warning
    assert (
        plan_share(claim("pvc-writer"), volume("pvc-writer", EFS_SPEC), targets=TARGETS).warnings
        == ()
    )


def test_same_volume() -> None:
    efs = volume("a", EFS_SPEC)
    other_ap = volume(
        "b",
        spec_with(
            EFS_SPEC, csi={**EFS_SPEC["csi"], "volumeHandle": "fs-0123456789abcdef0::fsap-ffff"}
        ),
    )
    other_driver = volume("c", spec_with(EFS_SPEC, csi={**EFS_SPEC["csi"], "driver": "x.csi.io"}))
    nfs = volume("d", NFS_SPEC)
    nfs_same = volume(
        "e", spec_with(NFS_SPEC, nfs={"server": "NFS.example.internal", "path": "/exports/models"})
    )
    nfs_other = volume(
        "f", spec_with(NFS_SPEC, nfs={"server": "nfs.example.internal", "path": "/x"})
    )
    assert same_volume(efs, volume("g", EFS_SPEC))
    assert not same_volume(efs, other_ap)
    assert not same_volume(efs, other_driver)
    assert same_volume(nfs, nfs_same)
    assert not same_volume(nfs, nfs_other)
    assert not same_volume(efs, nfs)
    host = volume("h", {"hostPath": {"path": "/x"}})
    assert not same_volume(host, host)  # nothing unknown is ever "the same"
    assert "are the same volume" in explain_same_volume(efs, volume("g", EFS_SPEC))
    message = explain_same_volume(efs, other_ap)
    assert "NOT the shared volume" in message
    assert "fsap-ffff" in message


BLOCK = {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "10Gi"}}


@pytest.mark.parametrize(
    ("pvc", "spec", "read_only", "why"),
    [
        pytest.param(claim(None, phase="Pending"), EFS_SPEC, False, "not bound", id="unbound"),
        pytest.param(claim("pvc-writer", phase="Lost"), EFS_SPEC, False, "not bound", id="lost"),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, hostPath={"path": "/srv/models"}, accessModes=["ReadWriteMany"]),
            False,
            "hostPath",
            id="hostpath",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, local={"path": "/mnt/disks/ssd1"}),
            False,
            "local volume",
            id="local",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, awsElasticBlockStore={"volumeID": "vol-1"}),
            False,
            "EBS",
            id="aws-ebs-in-tree",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, gcePersistentDisk={"pdName": "d1"}),
            False,
            "one node",
            id="gce-pd-in-tree",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, azureDisk={"diskName": "d", "diskURI": "u"}),
            False,
            "Azure Disk",
            id="azure-disk-in-tree",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, csi={"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"}),
            False,
            "block or node-local",
            id="ebs-csi",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(
                EFS_SPEC, csi={"driver": "pd.csi.storage.gke.io", "volumeHandle": "projects/p/d"}
            ),
            False,
            "block or node-local",
            id="pd-csi-even-if-rwx-claimed",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, accessModes=["ReadWriteOnce"]),
            False,
            "offers only ReadWriteOnce",
            id="rwo-only-csi",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, accessModes=["ReadWriteOncePod"]),
            True,
            "offers only ReadWriteOncePod",
            id="rwop-only",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, accessModes=["ReadOnlyMany"]),
            False,
            "share it with --read-only",
            id="rox-volume-read-write-share",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, volumeMode="Block"),
            False,
            "raw block",
            id="block-mode",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, claimRef={"namespace": "other", "name": "theirs"}),
            False,
            "reserved for other/theirs",
            id="pv-of-another-claim",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(BLOCK, csi=None, iscsi={"targetPortal": "t", "iqn": "i", "lun": 0}),
            False,
            "iSCSI",
            id="iscsi",
        ),
        pytest.param(
            claim("pvc-writer"),
            spec_with(EFS_SPEC, csi=None, cephfs={"monitors": ["m"]}),
            False,
            "CSI and NFS",
            id="unsupported-in-tree",
        ),
    ],
)
def test_refusals(pvc: dict[str, Any], spec: dict[str, Any], read_only: bool, why: str) -> None:
    with pytest.raises(ShareError, match=why):
        plan_share(pvc, volume("pvc-writer", spec), targets=TARGETS, read_only=read_only)


@pytest.mark.parametrize(
    ("targets", "why"),
    [
        pytest.param([], "no target", id="none"),
        pytest.param([ShareTarget("Team_A", CLAIM)], "not a namespace", id="bad-namespace"),
        pytest.param([ShareTarget("team-a", "-x")], "not a claim", id="bad-claim"),
        pytest.param([ShareTarget("team-a", CLAIM)] * 2, "twice", id="duplicate"),
        pytest.param([ShareTarget(WRITER_NS, CLAIM)], "writer's own claim", id="itself"),
    ],
)
def test_bad_targets(targets: list[ShareTarget], why: str) -> None:
    with pytest.raises(ShareError, match=why):
        plan_share(claim("pvc-writer"), volume("pvc-writer", EFS_SPEC), targets=targets)
