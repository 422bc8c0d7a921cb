"""The init-container template checked as what it becomes (pure): sample predictor pods are
patched with the config, in mount and copy mode, and the injected container is checked with
the rules the API server applies to a `corev1.Container` (the typed fragments of
`clusterconfig`, names, mounts, requests within limits). A config that would make patched
pods invalid is refused at load time, never sent in a patch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import ValidationError

from webhook import kserve, names
from webhook.clusterconfig import (
    ENV_NAME,
    ClusterConfig,
    ConfigError,
    ContainerSecurityContext,
    PolicyMode,
    ResourceRequirements,
    ServingMode,
    parse_quantity,
)

_CONTAINER_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_SAMPLE_NAMESPACE: Final = "kserve-cache-config-check"


def sample_pods() -> list[tuple[str, dict[str, Any]]]:
    """A predictor pod after KServe's pod mutator, and one KServe did not touch."""
    isvc = {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "sample", "annotations": {names.ENABLED: "true"}},
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "sklearn"},
                    "image": "kserve/sklearnserver:latest",
                    "storageUri": "s3://bucket/models/sample",
                }
            }
        },
    }
    made = kserve.predictor_pod(isvc, namespace=_SAMPLE_NAMESPACE).pod
    return [("after KServe's pod mutator", kserve.pod_mutator(made)), ("without KServe", made)]


def _problems(container: Mapping[str, Any], pod: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    name = str(container.get("name", ""))
    if not _CONTAINER_NAME.fullmatch(name) or len(name) > 63:
        problems.append(f"name {name!r} is not a DNS-1123 label")
    image = container.get("image")
    if not isinstance(image, str) or not image or any(c.isspace() for c in image):
        problems.append(f"image {image!r} is not an image reference")
    for field in ("command", "args"):
        if not all(isinstance(a, str) for a in container.get(field) or ()):
            problems.append(f"{field}: every item must be a string")
    for var in container.get("env") or ():
        if not ENV_NAME.fullmatch(str(var.get("name", ""))):
            problems.append(f"env name {var.get('name')!r} is not a valid variable name")
    volumes = {v.get("name") for v in (pod.get("spec") or {}).get("volumes") or ()}
    paths: set[str] = set()
    for mount in container.get("volumeMounts") or ():
        if mount.get("name") not in volumes:
            problems.append(f"volumeMounts: {mount.get('name')!r} is not a volume of the pod")
        path = str(mount.get("mountPath", "")).rstrip("/") or "/"
        if not path.startswith("/"):
            problems.append(f"volumeMounts: mountPath {path!r} is not absolute")
        if path in paths:
            problems.append(f"volumeMounts: two mounts at {path}")
        paths.add(path)
    try:
        ResourceRequirements.model_validate(container.get("resources") or {})
        ContainerSecurityContext.model_validate(container.get("securityContext") or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        problems.append(f"{where or 'resources/securityContext'}: {err['msg']}")
    return problems


def check_config(config: ClusterConfig, *, source: str = "<config>") -> None:
    """Raise ConfigError when a pod patched with `config` would be refused by the API server."""
    from webhook.review import decide  # review imports this module's users

    for mode in (ServingMode.MOUNT, ServingMode.COPY):
        forced = config.model_copy(
            update={
                "policy": PolicyMode.FORCED,
                "servingMode": mode,
                "excludedNamespaces": frozenset(),
                "injectWithoutKServe": True,
            }
        )
        for label, pod in sample_pods():
            decision = decide(
                pod, namespace=_SAMPLE_NAMESPACE, config=forced, namespace_annotations=None
            )
            if decision.kind != "mutated":
                raise ConfigError(
                    f"{source}: a sample predictor pod ({label}, {mode.value} mode) is not "
                    f"cached with this config: {decision.reason or decision.detail}"
                )
            spec = decision.after.get("spec") or {}
            ours = next(
                c
                for c in spec.get("initContainers") or ()
                if c.get("name") == names.STORAGE_INITIALIZER
            )
            problems = _problems(ours, decision.after)
            if problems:
                raise ConfigError(
                    f"{source}: initContainer: the injected container would be invalid "
                    f"({label}, {mode.value} mode): {'; '.join(problems)}"
                )


__all__ = ["check_config", "parse_quantity", "sample_pods"]
