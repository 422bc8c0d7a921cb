"""PersistentVolumes and claims as a cluster shows them, for the share tests."""

from __future__ import annotations

import copy
from typing import Any

WRITER_NS = "models"
CLAIM = "kserve-model-cache"

EFS_SPEC: dict[str, Any] = {
    "accessModes": ["ReadWriteMany"],
    "capacity": {"storage": "500Gi"},
    "csi": {
        "driver": "efs.csi.aws.com",
        "volumeHandle": "fs-0123456789abcdef0::fsap-0a1b2c3d4e5f60718",
        "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "1700-8081-efs"},
    },
    "persistentVolumeReclaimPolicy": "Retain",
    "storageClassName": "efs-sc",
    "volumeMode": "Filesystem",
    "claimRef": {"namespace": WRITER_NS, "name": CLAIM, "kind": "PersistentVolumeClaim"},
}

CEPHFS_SPEC: dict[str, Any] = {
    "accessModes": ["ReadWriteMany"],
    "capacity": {"storage": "1Ti"},
    "csi": {
        "driver": "rook-ceph.cephfs.csi.ceph.com",
        "volumeHandle": "0001-0009-rook-ceph-0000000000000001-6c2e",
        "volumeAttributes": {
            "clusterID": "rook-ceph",
            "fsName": "myfs",
            "subvolumeName": "csi-vol-6c2e",
        },
        "nodeStageSecretRef": {"name": "rook-csi-cephfs-node", "namespace": "rook-ceph"},
        "controllerExpandSecretRef": {
            "name": "rook-csi-cephfs-provisioner",
            "namespace": "rook-ceph",
        },
    },
    "mountOptions": ["noatime"],
    "persistentVolumeReclaimPolicy": "Delete",
    "storageClassName": "rook-cephfs",
    "volumeMode": "Filesystem",
    "claimRef": {"namespace": WRITER_NS, "name": CLAIM},
}

NFS_SPEC: dict[str, Any] = {
    "accessModes": ["ReadWriteMany"],
    "capacity": {"storage": "200Gi"},
    "nfs": {"server": "nfs.example.internal", "path": "/exports/models/"},
    "mountOptions": ["nfsvers=4.1", "hard"],
    "persistentVolumeReclaimPolicy": "Retain",
    "storageClassName": "",
    "volumeMode": "Filesystem",
    "claimRef": {"namespace": WRITER_NS, "name": CLAIM},
}


def spec_with(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            spec.pop(key, None)
        else:
            spec[key] = value
    return spec


def volume(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": spec,
    }


def claim(volume_name: str | None, *, phase: str = "Bound") -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "storageClassName": "efs-sc"}
    if volume_name:
        spec["volumeName"] = volume_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": CLAIM, "namespace": WRITER_NS},
        "spec": spec,
        "status": {"phase": phase},
    }
