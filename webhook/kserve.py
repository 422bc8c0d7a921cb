"""KServe's side of a predictor pod, emulated for `preview` (pure): the pod KServe's controller
makes from an InferenceService, and the `storage-initializer` KServe's pod mutator injects.
"""

from __future__ import annotations

import copy
import json
import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

from webhook import names

logger = logging.getLogger(__name__)

DEPLOYMENT_MODE: Final = "serving.kserve.io/deploymentMode"
KSERVE_IMAGE: Final = "kserve/storage-initializer:latest"
PVC_SOURCE_VOLUME: Final = "kserve-pvc-source"
MIN_SCALE: Final = "autoscaling.knative.dev/min-scale"
MAX_SCALE: Final = "autoscaling.knative.dev/max-scale"
AUTOSCALING_CLASS: Final = "autoscaling.knative.dev/class"

# KServe's `ServiceAnnotationDisallowedList`: InferenceService annotations its controller does
# not copy to the predictor (the scale bounds come from min/maxReplicas instead, and the source
# URI annotation is rewritten from `storageUri`).
DROPPED_ANNOTATIONS: Final = frozenset(
    {
        MIN_SCALE,
        MAX_SCALE,
        names.KSERVE_SOURCE_URI,
        "kubectl.kubernetes.io/last-applied-configuration",
    }
)

# Model frameworks of the v1beta1 PredictorSpec (the older form of `spec.predictor.model`).
FRAMEWORKS: Final = (
    "model",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "pmml",
    "lightgbm",
    "paddle",
    "huggingface",
)

CONTAINER_FIELDS: Final = frozenset(
    {
        "name",
        "image",
        "command",
        "args",
        "workingDir",
        "ports",
        "envFrom",
        "env",
        "resources",
        "resizePolicy",
        "restartPolicy",
        "volumeMounts",
        "volumeDevices",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "imagePullPolicy",
        "securityContext",
        "stdin",
        "stdinOnce",
        "tty",
    }
)

POD_SPEC_FIELDS: Final = frozenset(
    {
        "volumes",
        "initContainers",
        "ephemeralContainers",
        "restartPolicy",
        "terminationGracePeriodSeconds",
        "activeDeadlineSeconds",
        "dnsPolicy",
        "nodeSelector",
        "serviceAccountName",
        "serviceAccount",
        "automountServiceAccountToken",
        "nodeName",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "shareProcessNamespace",
        "securityContext",
        "imagePullSecrets",
        "hostname",
        "subdomain",
        "affinity",
        "schedulerName",
        "tolerations",
        "hostAliases",
        "priorityClassName",
        "priority",
        "dnsConfig",
        "readinessGates",
        "runtimeClassName",
        "enableServiceLinks",
        "preemptionPolicy",
        "overhead",
        "topologySpreadConstraints",
        "setHostnameAsFQDN",
        "os",
        "hostUsers",
        "schedulingGates",
        "resourceClaims",
        "resources",
    }
)

# The env KServe's storage-initializer gets for Hugging Face downloads (shipped defaults).
_HF_ENV: Final = (
    ("HF_HUB_ENABLE_HF_TRANSFER", "1"),
    ("HF_XET_HIGH_PERFORMANCE", "1"),
    ("HF_XET_NUM_CONCURRENT_RANGE_GETS", "8"),
)


class DeploymentMode(StrEnum):
    SERVERLESS = "Serverless"  # Knative: the pod comes from a Knative revision
    RAW = "RawDeployment"  # "Standard": a plain Deployment


_MODE_NAMES: Final = {
    "serverless": DeploymentMode.SERVERLESS,
    "knative": DeploymentMode.SERVERLESS,
    "rawdeployment": DeploymentMode.RAW,
    "standard": DeploymentMode.RAW,
}


class InferenceServiceError(ValueError):
    """The InferenceService cannot be turned into a predictor pod; the message says why."""


@dataclass(frozen=True)
class PredictorPod:
    """The predictor pod KServe would create for an InferenceService, before any webhook."""

    pod: dict[str, Any]
    mode: DeploymentMode
    storage_uri: str | None


def deployment_mode(annotations: Mapping[str, Any]) -> DeploymentMode:
    """The mode named by `serving.kserve.io/deploymentMode` (Serverless when absent)."""
    raw = annotations.get(DEPLOYMENT_MODE)
    if raw is None:
        return DeploymentMode.SERVERLESS
    mode = _MODE_NAMES.get(str(raw).strip().lower())
    if mode is None:
        raise InferenceServiceError(
            f"metadata.annotations[{DEPLOYMENT_MODE}]: {raw!r} is not Serverless/Knative or "
            "RawDeployment/Standard (ModelMesh pods are not KServe predictor pods of this shape)"
        )
    return mode


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InferenceServiceError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _strings(value: Any, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in _mapping(value, where).items():
        if not isinstance(item, str):
            raise InferenceServiceError(
                f"{where}[{key}]: must be a string, got {type(item).__name__} (quote it in YAML)"
            )
        out[str(key)] = item
    return out


def _storage_uri_env(container: Mapping[str, Any]) -> str | None:
    for var in container.get("env") or ():
        if isinstance(var, Mapping) and var.get("name") == "STORAGE_URI":
            value = var.get("value")
            return value if isinstance(value, str) and value else None
    return None


def _predictor_containers(predictor: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """The predictor's containers (kserve-container first) and its storage URI."""
    for framework in FRAMEWORKS:
        spec = predictor.get(framework)
        if spec is None:
            continue
        spec = _mapping(spec, f"spec.predictor.{framework}")
        container = {k: copy.deepcopy(v) for k, v in spec.items() if k in CONTAINER_FIELDS}
        container["name"] = names.KSERVE_CONTAINER
        uri = spec.get("storageUri")
        if uri is not None and not isinstance(uri, str):
            raise InferenceServiceError(f"spec.predictor.{framework}.storageUri: not a string")
        return [container], uri or None
    raw = predictor.get("containers")
    if isinstance(raw, list) and raw and all(isinstance(c, Mapping) for c in raw):
        containers = [copy.deepcopy(dict(c)) for c in raw]
        # A custom predictor's first container is the model server.
        containers[0]["name"] = names.KSERVE_CONTAINER
        return containers, _storage_uri_env(containers[0])
    raise InferenceServiceError(
        "spec.predictor: no model (spec.predictor.model, a framework such as sklearn, or "
        "containers)"
    )


def predictor_pod(
    isvc: Mapping[str, Any],
    *,
    namespace: str,
    mode: DeploymentMode | None = None,
) -> PredictorPod:
    """The predictor pod KServe's controller (and Knative or the Deployment) would create.

    Labels: the InferenceService's, the predictor's, `component=predictor` and the
    InferenceService label. Annotations: the InferenceService's and the predictor's minus
    KServe's dropped ones, plus the source-URI annotation from `storageUri`. The model server
    container is `kserve-container`; its image comes from a ServingRuntime in a cluster and
    is left out when the InferenceService does not name one.
    """
    meta = _mapping(isvc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InferenceServiceError("metadata.name: missing")
    spec = _mapping(isvc.get("spec"), "spec")
    if spec.get("predictor") is None:
        raise InferenceServiceError("spec.predictor: missing")
    predictor = _mapping(spec.get("predictor"), "spec.predictor")
    isvc_labels = _strings(meta.get("labels"), "metadata.labels")
    isvc_annotations = _strings(meta.get("annotations"), "metadata.annotations")
    predictor_labels = _strings(predictor.get("labels"), "spec.predictor.labels")
    predictor_annotations = _strings(predictor.get("annotations"), "spec.predictor.annotations")
    chosen = mode or deployment_mode(isvc_annotations)
    containers, uri = _predictor_containers(predictor)

    component = f"{name}-{names.PREDICTOR}"
    labels = {
        **isvc_labels,
        names.ISVC_LABEL: name,
        names.COMPONENT_LABEL: names.PREDICTOR,
        **predictor_labels,
    }
    annotations = {
        k: v
        for k, v in {**isvc_annotations, **predictor_annotations}.items()
        if k not in DROPPED_ANNOTATIONS
    }
    if uri:
        annotations[names.KSERVE_SOURCE_URI] = uri
    if chosen is DeploymentMode.SERVERLESS:
        revision = f"{component}-00001"
        labels.update(
            {
                "serving.knative.dev/service": component,
                "serving.knative.dev/configuration": component,
                "serving.knative.dev/revision": revision,
                "app": revision,
            }
        )
        annotations.setdefault(AUTOSCALING_CLASS, "kpa.autoscaling.knative.dev")
        annotations[MIN_SCALE] = str(predictor.get("minReplicas", 1))
        if predictor.get("maxReplicas"):
            annotations[MAX_SCALE] = str(predictor["maxReplicas"])
        generate_name = f"{revision}-deployment-"
    else:
        labels["app"] = f"isvc.{component}"
        generate_name = f"{component}-"

    pod_spec: dict[str, Any] = {
        k: copy.deepcopy(v) for k, v in predictor.items() if k in POD_SPEC_FIELDS
    }
    pod_spec["containers"] = containers
    storage_uris = _storage_uris(predictor.get("storageUris"))
    if storage_uris:
        if uri:
            raise InferenceServiceError(
                "spec.predictor: storageUri and storageUris are mutually exclusive"
            )
        _add_multi_initializer(
            pod_spec, storage_uris, read_only=_read_only({"metadata": {"annotations": annotations}})
        )
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": generate_name,
            "namespace": str(meta.get("namespace") or namespace),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": pod_spec,
    }
    return PredictorPod(pod=pod, mode=chosen, storage_uri=uri)


def _storage_uris(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        raise InferenceServiceError("spec.predictor.storageUris: expected a non-empty list")
    out = []
    for position, item in enumerate(raw):
        where = f"spec.predictor.storageUris[{position}]"
        item = _mapping(item, where)
        uri, path = item.get("uri"), item.get("mountPath", names.MODEL_MOUNT_PATH)
        if not isinstance(uri, str) or not uri:
            raise InferenceServiceError(f"{where}.uri: missing")
        if not isinstance(path, str) or not path.startswith("/"):
            raise InferenceServiceError(f"{where}.mountPath: not an absolute path")
        out.append((uri, path))
    return out


def _add_multi_initializer(
    pod_spec: dict[str, Any], uris: list[tuple[str, str]], *, read_only: bool
) -> None:
    """What KServe's controller makes of `storageUris`: one `storage-initializer` with
    uri/path argument pairs and one emptyDir at the common parent of the paths (the pod
    carries no source-URI annotation, so KServe's pod mutator adds nothing)."""
    parent = posixpath.commonpath([path for _, path in uris])
    pod_spec.setdefault("initContainers", []).append(
        {
            "name": names.STORAGE_INITIALIZER,
            "image": KSERVE_IMAGE,
            "args": [part for pair in uris for part in pair],
            "resources": {
                "limits": {"cpu": "1", "memory": "1Gi"},
                "requests": {"cpu": "100m", "memory": "100Mi"},
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [{"name": names.PROVISION_VOLUME, "mountPath": parent}],
        }
    )
    pod_spec.setdefault("volumes", []).append({"name": names.PROVISION_VOLUME, "emptyDir": {}})
    for container in pod_spec["containers"][:1]:
        container.setdefault("volumeMounts", []).append(
            {"name": names.PROVISION_VOLUME, "mountPath": parent, "readOnly": read_only}
        )


def _find(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((i for i in items if isinstance(i, dict) and i.get("name") == name), None)


def would_mutate(pod: Mapping[str, Any]) -> bool:
    """True when KServe's pod mutator would add its downloader or PVC mount to this pod.

    Its webhook selects pods with the InferenceService label; it acts when the source-URI
    annotation is there and no `storage-initializer` exists yet (oci:// modelcars aside).
    """
    meta = pod.get("metadata")
    if not isinstance(meta, Mapping):
        return False
    labels = meta.get("labels")
    annotations = meta.get("annotations")
    if not isinstance(labels, Mapping) or names.ISVC_LABEL not in labels:
        return False
    if not isinstance(annotations, Mapping):
        return False
    uri = annotations.get(names.KSERVE_SOURCE_URI)
    if not isinstance(uri, str) or not uri or urlsplit(uri).scheme.lower() == "oci":
        return False
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        return False
    init = [c for c in spec.get("initContainers") or () if isinstance(c, dict)]
    return _find(init, names.STORAGE_INITIALIZER) is None


def _mount(container: dict[str, Any], mount: dict[str, Any]) -> None:
    mounts = [m for m in container.get("volumeMounts") or () if isinstance(m, dict)]
    if not any(m.get("mountPath") == mount["mountPath"] for m in mounts):
        mounts.append(mount)
    container["volumeMounts"] = mounts


def inject_storage_initializer(
    pod: Mapping[str, Any],
    *,
    image: str = KSERVE_IMAGE,
) -> dict[str, Any]:
    """The pod after KServe's pod mutator, with KServe's shipped defaults.

    `pvc://claim/path`: the claim mounted read-only at /mnt/models (subPath `path`), no init
    container. Other URIs: KServe's `storage-initializer` downloading into the
    `kserve-provision-location` emptyDir, mounted read-only on `kserve-container`. The input
    is not modified; a pod the mutator would leave alone comes back as an equal copy.
    """
    out: dict[str, Any] = copy.deepcopy(dict(pod))
    if not would_mutate(out):
        return out
    uri: str = out["metadata"]["annotations"][names.KSERVE_SOURCE_URI]
    spec: dict[str, Any] = out["spec"]
    containers = [c for c in spec.get("containers") or () if isinstance(c, dict)]
    model_server = _find(containers, names.KSERVE_CONTAINER)
    volumes: list[dict[str, Any]] = list(spec.get("volumes") or [])
    parts = urlsplit(uri)
    if parts.scheme.lower() == "pvc":
        if _find(volumes, PVC_SOURCE_VOLUME) is None:
            claim = {"claimName": parts.netloc}
            volumes.append({"name": PVC_SOURCE_VOLUME, "persistentVolumeClaim": claim})
        spec["volumes"] = volumes
        if model_server is not None:
            mount: dict[str, Any] = {"name": PVC_SOURCE_VOLUME, "mountPath": names.MODEL_MOUNT_PATH}
            sub_path = parts.path.strip("/")
            if sub_path:
                mount["subPath"] = sub_path
            mount["readOnly"] = True
            _mount(model_server, mount)
        return out

    initializer = {
        "name": names.STORAGE_INITIALIZER,
        "image": image,
        "args": [uri, names.MODEL_MOUNT_PATH],
        "env": [{"name": k, "value": v} for k, v in _HF_ENV],
        "resources": {
            "limits": {"cpu": "1", "memory": "1Gi"},
            "requests": {"cpu": "100m", "memory": "100Mi"},
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": names.PROVISION_VOLUME, "mountPath": names.MODEL_MOUNT_PATH}],
    }
    spec["initContainers"] = [*(spec.get("initContainers") or []), initializer]
    if _find(volumes, names.PROVISION_VOLUME) is None:
        volumes.append({"name": names.PROVISION_VOLUME, "emptyDir": {}})
    spec["volumes"] = volumes
    if model_server is not None:
        _mount(
            model_server,
            {
                "name": names.PROVISION_VOLUME,
                "mountPath": names.MODEL_MOUNT_PATH,
                "readOnly": _read_only(out),
            },
        )
    return out


def _read_only(pod: Mapping[str, Any]) -> bool:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(names.KSERVE_READONLY, "")) != "false"


ISTIO_STATUS: Final = "sidecar.istio.io/status"
ISTIO_INTERCEPTION: Final = "sidecar.istio.io/interceptionMode"
ISTIO_INIT: Final = "istio-init"
ISTIO_UID: Final = 1337


def set_istio_cni_uid(pod: Mapping[str, Any]) -> dict[str, Any]:
    """KServe's `SetIstioCniSecurityContext`: under Istio CNI the `storage-initializer` (ours
    too, once it took KServe's place) runs as the proxy's uid so that its downloads bypass the
    proxy, which is not running yet. From `serving.kserve.io/storage-initializer-uid`, else
    (no istio-init, REDIRECT interception) the sidecar's runAsUser or 1337."""
    out: dict[str, Any] = copy.deepcopy(dict(pod))
    spec = out.get("spec") or {}
    init = [c for c in spec.get("initContainers") or () if isinstance(c, dict)]
    target = _find(init, names.STORAGE_INITIALIZER)
    if target is None:
        return out
    annotations = (out.get("metadata") or {}).get("annotations") or {}
    uid: int | None = None
    raw = annotations.get(names.KSERVE_INITIALIZER_UID)
    if raw is not None:
        try:
            uid = int(raw)
        except ValueError:
            return out
    else:
        if _find(init, ISTIO_INIT) is not None or annotations.get(ISTIO_INTERCEPTION) != "REDIRECT":
            return out
        try:
            status = json.loads(annotations.get(ISTIO_STATUS, ""))
        except ValueError:
            return out
        sidecars = status.get("containers") if isinstance(status, dict) else None
        if not isinstance(sidecars, list) or not sidecars:
            return out
        containers = [c for c in spec.get("containers") or () if isinstance(c, dict)]
        sidecar = _find(containers, str(sidecars[0]))
        if sidecar is None:
            return out
        uid = (sidecar.get("securityContext") or {}).get("runAsUser") or ISTIO_UID
    security = dict(target.get("securityContext") or {})
    security["runAsUser"] = uid
    target["securityContext"] = security
    return out


def pod_mutator(pod: Mapping[str, Any], *, image: str = KSERVE_IMAGE) -> dict[str, Any]:
    """KServe's pod mutator as a whole, as far as the storage initializer goes: the injection
    (once) and the Istio CNI uid (on every call, on whichever `storage-initializer` is there)."""
    return set_istio_cni_uid(inject_storage_initializer(pod, image=image))
