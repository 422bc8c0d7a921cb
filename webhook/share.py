"""One cache volume for many namespaces: the PersistentVolume and claim that bind a namespace to
the volume behind another namespace's claim, the refusals for volumes that cannot be shared
safely, and `same_volume` for `doctor`. Pure: Kubernetes objects (raw dicts) in and out.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

READ_WRITE_MANY: Final = "ReadWriteMany"
READ_ONLY_MANY: Final = "ReadOnlyMany"
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
SHARED_FROM: Final = "cache.kserve.io/shared-from"
SOURCE_VOLUME: Final = "cache.kserve.io/source-volume"
SHARE_MODE: Final = "cache.kserve.io/share-mode"

_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")

# In-tree volume types, and why none of them can be one cache for several namespaces.
REFUSED_SOURCES: Final[Mapping[str, str]] = {
    "hostPath": "a hostPath volume is a folder on one node: a pod on any other node gets "
    "another, empty folder",
    "local": "a local volume is a disk of one node: pods elsewhere cannot mount it, and pods "
    "of other namespaces would all be pinned to that node",
    "awsElasticBlockStore": "an EBS disk attaches to one node at a time (ReadWriteOnce)",
    "gcePersistentDisk": "a GCE persistent disk is writable from one node only",
    "azureDisk": "an Azure Disk attaches to one node at a time (ReadWriteOnce)",
    "cinder": "a Cinder volume attaches to one node at a time",
    "vsphereVolume": "a vSphere disk attaches to one node at a time",
    "rbd": "an RBD image with a filesystem on it is safe on one node only",
    "iscsi": "an iSCSI LUN with a filesystem on it is safe on one node only",
    "fc": "a Fibre Channel LUN with a filesystem on it is safe on one node only",
    "portworxVolume": "in-tree Portworx volumes are not supported: use its CSI driver",
    "flexVolume": "FlexVolume drivers give no sharing guarantees",
}

# CSI drivers of block or node-local storage: a second PV on the same handle would mount one
# filesystem from two nodes (corruption) or pin every namespace to one node.
RWO_CSI_DRIVERS: Final[Mapping[str, str]] = {
    "ebs.csi.aws.com": "Amazon EBS",
    "pd.csi.storage.gke.io": "GCE persistent disk",
    "disk.csi.azure.com": "Azure Disk",
    "cinder.csi.openstack.org": "OpenStack Cinder",
    "csi.vsphere.vmware.com": "vSphere block disk",
    "rbd.csi.ceph.com": "Ceph RBD",
    "hostpath.csi.k8s.io": "CSI hostpath (one node)",
    "topolvm.io": "TopoLVM (node-local LVM)",
    "topolvm.cybozu.com": "TopoLVM (node-local LVM)",
    "local.csi.openebs.io": "OpenEBS LocalPV",
    "rawfile.csi.openebs.io": "OpenEBS rawfile LocalPV",
    "lvm.csi.metal-stack.io": "node-local LVM",
    "dobs.csi.digitalocean.com": "DigitalOcean block storage",
    "linodebs.csi.linode.com": "Linode block storage",
    "csi.hetzner.cloud": "Hetzner Cloud volume",
    "driver.longhorn.io": "Longhorn (block; RWX goes through its own NFS share-manager)",
}

SHARED_SOURCES: Final = ("csi", "nfs")


class ShareError(ValueError):
    """A claim or volume that cannot be shared, or bad input; nothing was generated."""


@dataclass(frozen=True)
class ShareTarget:
    """Where to bind the shared volume: a namespace and the name of its cache claim there."""

    namespace: str
    claim: str


@dataclass(frozen=True)
class SharePlan:
    """The objects to create (a PersistentVolume then its claim, per target) and warnings."""

    source_claim: str
    source_volume: str
    identity: str
    access_mode: str
    objects: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...] = ()


def volume_identity(pv: Mapping[str, Any]) -> tuple[str, ...] | None:
    """What names the storage behind a PersistentVolume: `("csi", driver, handle)` or
    `("nfs", server, path)`; None for a type `share` does not handle."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi")
    if isinstance(csi, Mapping) and csi.get("driver") and csi.get("volumeHandle"):
        return ("csi", str(csi["driver"]), str(csi["volumeHandle"]))
    nfs = spec.get("nfs")
    if isinstance(nfs, Mapping) and nfs.get("server") and nfs.get("path"):
        path = "/" + str(nfs["path"]).strip("/")
        return ("nfs", str(nfs["server"]).lower(), path)
    return None


def describe_identity(identity: Sequence[str] | None) -> str:
    if identity is None:
        return "an unsupported volume type"
    kind, first, second = identity
    if kind == "csi":
        return f"CSI driver {first}, volumeHandle {second}"
    return f"NFS {first}:{second}"


def same_volume(pv_a: Mapping[str, Any], pv_b: Mapping[str, Any]) -> bool:
    """True when two PersistentVolumes name the same storage (same CSI driver and handle, or
    the same NFS server and path): what a shared cache claim must be bound to."""
    a = volume_identity(pv_a)
    return a is not None and a == volume_identity(pv_b)


def explain_same_volume(pv_a: Mapping[str, Any], pv_b: Mapping[str, Any]) -> str:
    """A one-line verdict for `doctor`: the same storage, or which two storages they are."""
    a, b = volume_identity(pv_a), volume_identity(pv_b)
    name_a = (pv_a.get("metadata") or {}).get("name", "?")
    name_b = (pv_b.get("metadata") or {}).get("name", "?")
    if a is not None and a == b:
        return f"{name_a} and {name_b} are the same volume ({describe_identity(a)})"
    return (
        f"{name_b} ({describe_identity(b)}) is NOT the shared volume {name_a} "
        f"({describe_identity(a)}): this namespace has its own cache, probably a fresh empty "
        "one from a StorageClass; rebind it with `kserve-cache share`"
    )


def shared_volume_name(source_volume: str, target: ShareTarget) -> str:
    """A deterministic PersistentVolume name for a target: `<claim>-<namespace>-<hash>`."""
    digest = hashlib.sha256(
        f"{source_volume}\n{target.namespace}\n{target.claim}".encode()
    ).hexdigest()[:10]
    stem = f"{target.claim}-{target.namespace}"[: 253 - len(digest) - 1].rstrip("-.")
    return f"{stem}-{digest}"


def check_shareable(
    claim: Mapping[str, Any], pv: Mapping[str, Any], *, read_only: bool
) -> list[str]:
    """Raise ShareError for a claim or volume that cannot be shared; return warnings."""
    meta = claim.get("metadata") or {}
    where = f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"
    phase = (claim.get("status") or {}).get("phase")
    volume_name = (claim.get("spec") or {}).get("volumeName")
    if meta.get("deletionTimestamp"):
        raise ShareError(f"claim {where} is being deleted")
    if phase != "Bound" or not volume_name:
        raise ShareError(
            f"claim {where} is not bound (phase {phase or 'unknown'}): there is no volume to "
            "share yet; wait until `kubectl get pvc` says Bound"
        )
    pv_meta = pv.get("metadata") or {}
    if pv_meta.get("name") != volume_name:
        raise ShareError(f"claim {where} is bound to {volume_name}, not {pv_meta.get('name')}")
    spec = pv.get("spec") or {}
    ref = spec.get("claimRef") or {}
    if ref and (ref.get("namespace"), ref.get("name")) != (meta.get("namespace"), meta.get("name")):
        raise ShareError(
            f"volume {volume_name} is reserved for {ref.get('namespace')}/{ref.get('name')}, "
            f"not {where}"
        )
    if spec.get("volumeMode") == "Block":
        raise ShareError(
            f"volume {volume_name} is a raw block device (volumeMode: Block): the cache needs "
            "a shared filesystem"
        )
    for source, why in REFUSED_SOURCES.items():
        if source in spec:
            raise ShareError(f"volume {volume_name} cannot be shared: {why}")
    identity = volume_identity(pv)
    if identity is None:
        raise ShareError(
            f"volume {volume_name} cannot be shared: kserve-cache share handles CSI and NFS "
            "volumes (a ReadWriteMany filesystem such as NFS, EFS, CephFS, Filestore, Azure "
            "Files); this one is neither"
        )
    if identity[0] == "csi" and identity[1] in RWO_CSI_DRIVERS:
        raise ShareError(
            f"volume {volume_name} cannot be shared: {identity[1]} "
            f"({RWO_CSI_DRIVERS[identity[1]]}) is block or node-local storage; two PVs on "
            "one handle would mount one filesystem from several nodes"
        )
    modes = set(spec.get("accessModes") or ())
    if not modes & {READ_WRITE_MANY, READ_ONLY_MANY}:
        raise ShareError(
            f"volume {volume_name} offers only {', '.join(sorted(modes)) or 'no access mode'}: "
            "pods on other nodes cannot mount it; the cache needs ReadWriteMany"
        )
    if not read_only and READ_WRITE_MANY not in modes:
        raise ShareError(
            f"volume {volume_name} offers ReadOnlyMany only: share it with --read-only"
        )
    warnings = []
    if spec.get("persistentVolumeReclaimPolicy", "Delete") != "Retain":
        warnings.append(
            f"volume {volume_name} has persistentVolumeReclaimPolicy "
            f"{spec.get('persistentVolumeReclaimPolicy', 'Delete')}: deleting claim {where} "
            "deletes the storage every namespace shares; set Retain: kubectl patch pv "
            f'{volume_name} -p \'{{"spec":{{"persistentVolumeReclaimPolicy":"Retain"}}}}\''
        )
    return warnings


def _check_names(targets: Sequence[ShareTarget]) -> None:
    for target in targets:
        if not _DNS_LABEL.fullmatch(target.namespace):
            raise ShareError(f"not a namespace name: {target.namespace!r}")
        if not _DNS_SUBDOMAIN.fullmatch(target.claim):
            raise ShareError(f"not a claim name: {target.claim!r}")
    seen = [(t.namespace, t.claim) for t in targets]
    if len(set(seen)) != len(seen):
        raise ShareError("a target namespace is given twice")


def plan_share(
    claim: Mapping[str, Any],
    pv: Mapping[str, Any],
    *,
    targets: Sequence[ShareTarget],
    read_only: bool = False,
) -> SharePlan:
    """For each target, a PersistentVolume on the same storage as `pv` (reclaim Retain,
    pre-bound to the target claim by `claimRef`) and the claim that binds it."""
    if not targets:
        raise ShareError("no target namespace (give --to NAMESPACE)")
    _check_names(targets)
    warnings = check_shareable(claim, pv, read_only=read_only)
    meta = claim.get("metadata") or {}
    source = f"{meta['namespace']}/{meta['name']}"
    for target in targets:
        if (target.namespace, target.claim) == (meta["namespace"], meta["name"]):
            raise ShareError(f"{source} is the writer's own claim; choose another namespace")
    pv_name = str(pv["metadata"]["name"])
    mode = READ_ONLY_MANY if read_only else READ_WRITE_MANY
    if read_only and "csi" in (pv.get("spec") or {}):
        warnings.append(
            "the kubelet mounts a CSI volume read-only only for pods whose volume says "
            "persistentVolumeClaim.readOnly: true (ReadOnlyMany is a binding label): enforce "
            "it in the target namespaces with the ValidatingAdmissionPolicy of "
            "manifests/examples/shared-cache.yaml (label them cache.kserve.io/read-only-tenant)"
        )
    objects: list[dict[str, Any]] = []
    for target in targets:
        name = shared_volume_name(pv_name, target)
        objects.append(_volume(pv, name=name, target=target, mode=mode, source=source))
        objects.append(_claim(pv, volume=name, target=target, mode=mode, source=source))
    return SharePlan(
        source_claim=source,
        source_volume=pv_name,
        identity=describe_identity(volume_identity(pv)),
        access_mode=mode,
        objects=tuple(objects),
        warnings=tuple(warnings),
    )


def _labels_and_annotations(
    *, source: str, source_volume: str, mode: str
) -> dict[str, dict[str, str]]:
    return {
        "labels": {MANAGED_BY: "kserve-cache"},
        "annotations": {
            SHARED_FROM: source,
            SOURCE_VOLUME: source_volume,
            SHARE_MODE: "read-only" if mode == READ_ONLY_MANY else "read-write",
        },
    }


def _volume(
    pv: Mapping[str, Any], *, name: str, target: ShareTarget, mode: str, source: str
) -> dict[str, Any]:
    spec = pv["spec"]
    new_spec: dict[str, Any] = {
        "capacity": copy.deepcopy(spec.get("capacity") or {"storage": "1Gi"}),
        "accessModes": [mode],
        "persistentVolumeReclaimPolicy": "Retain",
        "storageClassName": "",
        "volumeMode": "Filesystem",
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": target.namespace,
            "name": target.claim,
        },
    }
    for kind in SHARED_SOURCES:
        if kind in spec:
            volume_source = copy.deepcopy(dict(spec[kind]))
            if mode == READ_ONLY_MANY:
                volume_source["readOnly"] = True  # CSI: ControllerPublish read-only
            new_spec[kind] = volume_source
    for field in ("mountOptions", "nodeAffinity"):
        if spec.get(field):
            new_spec[field] = copy.deepcopy(spec[field])
    if mode == READ_ONLY_MANY and "nfs" in spec and "ro" not in new_spec.get("mountOptions", []):
        # ReadOnlyMany is only a label for binding, and the kubelet takes a PV's read-only
        # flag from the pod (persistentVolumeClaim.readOnly). The in-tree NFS plugin mounts
        # per pod with the PV's mountOptions, so `ro` here binds every pod of the namespace.
        new_spec["mountOptions"] = [*new_spec.get("mountOptions", []), "ro"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            **_labels_and_annotations(
                source=source, source_volume=str(pv["metadata"]["name"]), mode=mode
            ),
        },
        "spec": new_spec,
    }


def _claim(
    pv: Mapping[str, Any], *, volume: str, target: ShareTarget, mode: str, source: str
) -> dict[str, Any]:
    capacity = (pv["spec"].get("capacity") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": target.claim,
            "namespace": target.namespace,
            **_labels_and_annotations(
                source=source, source_volume=str(pv["metadata"]["name"]), mode=mode
            ),
        },
        "spec": {
            "accessModes": [mode],
            "storageClassName": "",
            "volumeName": volume,
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": capacity}},
        },
    }


# --- doctor: is a namespace's cache claim the shared volume? ---------------------------------


def shared_source(claim: Mapping[str, Any]) -> str | None:
    """The writer's claim (`NAMESPACE/NAME`) a claim was bound to by `share`, if it was."""
    value = ((claim.get("metadata") or {}).get("annotations") or {}).get(SHARED_FROM)
    return str(value) if value else None


def is_read_only_share(claim: Mapping[str, Any]) -> bool:
    """A claim `share --read-only` made: ReadOnlyMany is then what it must be."""
    annotations = (claim.get("metadata") or {}).get("annotations") or {}
    return bool(annotations.get(SHARE_MODE) == "read-only")


@dataclass(frozen=True)
class SharedVolumeVerdict:
    ok: bool
    detail: str
    hint: str = ""


def check_shared_volume(
    *,
    claim_ref: str,
    volume: Mapping[str, Any] | None,
    source_ref: str,
    source_volume: Mapping[str, Any] | None,
) -> SharedVolumeVerdict:
    """Whether the claim `claim_ref` is bound to the same storage as the writer's `source_ref`."""
    if source_volume is None:
        return SharedVolumeVerdict(
            False,
            f"{claim_ref} says it shares {source_ref}, whose volume cannot be found",
            f"check the writer's claim: kubectl -n {source_ref.split('/')[0]} get pvc",
        )
    if volume is None:
        return SharedVolumeVerdict(
            False, f"{claim_ref} is not bound to a volume yet", f"kserve-cache share {source_ref}"
        )
    if same_volume(source_volume, volume):
        return SharedVolumeVerdict(
            True, f"{claim_ref} shares {source_ref}: {explain_same_volume(source_volume, volume)}"
        )
    target_ns = claim_ref.split("/")[0]
    return SharedVolumeVerdict(
        False,
        f"{claim_ref}: {explain_same_volume(source_volume, volume)}",
        f"kserve-cache share {source_ref} --to {target_ns} (after removing the claim there)",
    )


def separate_caches(volumes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Claims (`NAMESPACE/NAME` -> their PersistentVolume) of one StorageClass on different
    volumes: each namespace downloads its own copy (the trap `share` avoids)."""
    by_class: dict[str, list[str]] = {}
    for ref, pv in sorted(volumes.items()):
        klass = (pv.get("spec") or {}).get("storageClassName")
        if klass:
            by_class.setdefault(str(klass), []).append(ref)
    found = []
    for klass, refs in sorted(by_class.items()):
        identities = {volume_identity(volumes[ref]) for ref in refs}
        if len(refs) > 1 and len(identities) == len(refs):
            found.append(
                f"{', '.join(refs)} are {len(refs)} separate volumes of StorageClass {klass}: "
                "each namespace downloads every model again"
            )
    return found
