"""Which pods the webhook caches, and where their model comes from (pure)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit

from webhook import names
from webhook.skips import Skip, SkipReason

# The URI formats of KServe's default ClusterStorageContainer, plus file:// for local stores.
SUPPORTED_SCHEMES: Final = frozenset(
    {"gs", "s3", "hdfs", "webhdfs", "hf", "modelscope", "http", "https", "file"}
)
MAX_URI_LEN: Final = 2048
_BAD_URI_CHARS: Final = re.compile(r"[\x00-\x20\x7f-\x9f\"'`\\<>{}|^]")


class Origin(StrEnum):
    ANNOTATION = "annotation"  # cache.kserve.io/storage-uri
    KSERVE = "kserve"  # KServe's storage-initializer-sourceuri annotation
    KSERVE_ARGS = "kserve-args"  # the args of KServe's storage-initializer
    STATUS = "status"  # our own status annotation, from an earlier pass
    STORAGE_SPEC = "storage-spec"  # a `storage:` spec: the first arg of KServe's initializer


@dataclass(frozen=True)
class ModelSource:
    uri: str
    origin: Origin


def _is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """isinstance(value, Mapping), without the ABC machinery (100+ ns) for the dicts of a
    parsed review: these helpers run several times per pod."""
    return type(value) is dict or isinstance(value, Mapping)


def metadata(pod: Mapping[str, Any]) -> tuple[Mapping[str, str], Mapping[str, str]]:
    """(labels, annotations) of a pod, empty when missing or malformed."""
    meta = pod.get("metadata")
    if not _is_mapping(meta):
        return {}, {}
    labels = meta.get("labels")
    annotations = meta.get("annotations")
    return (
        labels if _is_mapping(labels) else {},
        annotations if _is_mapping(annotations) else {},
    )


def find_init_container(pod: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    spec = pod.get("spec")
    if not _is_mapping(spec):
        return None
    for container in spec.get("initContainers") or ():
        if isinstance(container, dict) and container.get("name") == name:
            return container
    return None


def check_pod(pod: Mapping[str, Any], *, namespace: str, excluded: frozenset[str]) -> None:
    """Raise Skip unless this is a KServe predictor pod the webhook may consider."""
    if namespace in excluded:
        raise Skip(SkipReason.EXCLUDED_NAMESPACE, namespace)
    labels, _ = metadata(pod)
    if names.ISVC_LABEL not in labels:
        raise Skip(SkipReason.NOT_KSERVE, f"no {names.ISVC_LABEL} label")
    component = labels.get(names.COMPONENT_LABEL)
    if component != names.PREDICTOR:
        raise Skip(SkipReason.NOT_PREDICTOR, f"component={component}")
    if names.KSERVE_LOCALMODEL_LABEL in labels:
        raise Skip(SkipReason.LOCAL_MODEL_CACHE, "served from KServe's LocalModelCache")


def validate_uri(uri: str) -> str | None:
    """None for a URI the cache can take, else why not."""
    if not uri or len(uri) > MAX_URI_LEN:
        return f"must be 1 to {MAX_URI_LEN} characters"
    if _BAD_URI_CHARS.search(uri):
        return "contains spaces, quotes, braces or control characters"
    parts = urlsplit(uri)
    if parts.scheme.lower() not in SUPPORTED_SCHEMES:
        return f"scheme {parts.scheme or '(none)'!r} is not one of {sorted(SUPPORTED_SCHEMES)}"
    if not (parts.netloc or parts.path.strip("/")):
        return "names no bucket, host or path"
    if ".." in parts.path.split("/"):
        return "contains a '..' path segment"
    return None


def is_ours(container: Mapping[str, Any] | None) -> bool:
    """True for a `storage-initializer` this webhook made (it runs `kserve-cache fetch`)."""
    if container is None:
        return False
    command = container.get("command")
    args = container.get("args")
    return (
        isinstance(command, list)
        and command == [names.FETCH_COMMAND]
        and isinstance(args, list)
        and bool(args)
        and args[0] == "fetch"
    )


def is_placeholder_uri(uri: object) -> bool:
    """True for the source URI of a `storage:` spec, which only KServe's mutator resolves."""
    return isinstance(uri, str) and uri.startswith(names.KSERVE_STORAGE_PLACEHOLDER + "://")


def find_model_source(pod: Mapping[str, Any]) -> ModelSource | None:
    """The storage URI: ours, else KServe's annotation, else the args of KServe's initializer.

    A `storage:` spec leaves a placeholder in KServe's annotation: the real URI is the first
    argument KServe's mutator gave its initializer (or, after our take-over, our status).
    """
    _, annotations = metadata(pod)
    ours = annotations.get(names.STORAGE_URI)
    if ours is not None:
        return ModelSource(str(ours), Origin.ANNOTATION)
    kserve = annotations.get(names.KSERVE_SOURCE_URI)
    initializer = find_init_container(pod, names.STORAGE_INITIALIZER)
    if kserve and not (is_placeholder_uri(kserve) and initializer is not None):
        return ModelSource(str(kserve), Origin.KSERVE)
    if initializer is not None:
        if is_ours(initializer):
            status = _status_uri(annotations.get(names.STATUS))
            return ModelSource(status, Origin.STATUS) if status is not None else None
        args = initializer.get("args") or []
        if args and isinstance(args[0], str):
            origin = Origin.STORAGE_SPEC if kserve else Origin.KSERVE_ARGS
            return ModelSource(args[0], origin)
    return None


def check_initializer_shape(pod: Mapping[str, Any]) -> None:
    """Raise Skip for a KServe initializer that downloads anything but one URI to /mnt/models.

    `storageUris` (a base model plus adapters...) gives KServe's initializer uri/path argument
    pairs: `fetch` downloads one URI per run, so caching the first would drop the others.
    """
    initializer = find_init_container(pod, names.STORAGE_INITIALIZER)
    if initializer is None or is_ours(initializer):
        return
    args = initializer.get("args")
    if not isinstance(args, list) or len(args) < 2:
        return
    if len(args) > 2:
        uris = [str(a) for a in args[0::2]]
        raise Skip(
            SkipReason.MULTIPLE_STORAGE_URIS,
            f"KServe's storage-initializer downloads {len(uris)} URIs (storageUris); the cache "
            "takes one URI at /mnt/models",
        )
    target = args[1]
    if not isinstance(target, str) or target.rstrip("/") != names.MODEL_MOUNT_PATH:
        raise Skip(
            SkipReason.CUSTOM_MODEL_PATH,
            f"KServe's storage-initializer downloads to {str(target)[:100]!r}, not "
            f"{names.MODEL_MOUNT_PATH} (storageUris with a mountPath)",
        )


def check_os(pod: Mapping[str, Any]) -> None:
    """Raise Skip for Windows pods: the injected container uses Linux-only fields."""
    spec = pod.get("spec")
    os_spec = spec.get("os") if _is_mapping(spec) else None
    if _is_mapping(os_spec) and str(os_spec.get("name", "")).lower() == "windows":
        raise Skip(SkipReason.WINDOWS_POD, "spec.os.name is windows")


def _status_uri(raw: object) -> str | None:
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    uri = data.get("uri") if isinstance(data, dict) else None
    return uri if isinstance(uri, str) else None


def check_source(source: ModelSource | None) -> ModelSource:
    """Raise Skip for sources the cache must not take (pvc://, oci://, unknown, hostile)."""
    if source is None:
        raise Skip(SkipReason.NO_STORAGE_URI)
    scheme = urlsplit(source.uri).scheme.lower()
    if scheme == "pvc":
        raise Skip(SkipReason.PVC_URI, "the model is already on a volume")
    if scheme == "oci":
        raise Skip(SkipReason.MODELCAR_URI, "served by KServe's modelcar")
    if is_placeholder_uri(source.uri):
        raise Skip(
            SkipReason.UNSUPPORTED_URI,
            "a storage: spec URI is resolved by KServe's pod mutator, which has not run",
        )
    problem = validate_uri(source.uri)
    if problem is not None:
        reason = (
            SkipReason.INVALID_ANNOTATION
            if source.origin is Origin.ANNOTATION
            else SkipReason.UNSUPPORTED_URI
        )
        raise Skip(reason, f"storage URI {problem}")
    return source
