"""Checks of a patched pod: the Kubernetes schema (kubernetes-validate) and the pod rules the
schema does not capture, which the API server enforces at admission."""

from __future__ import annotations

import posixpath
from typing import Any

import kubernetes_validate

K8S_VERSION = "1.37"


def schema_errors(obj: dict[str, Any], version: str = K8S_VERSION) -> str | None:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    return None


def pod_rule_errors(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    errors: list[str] = []
    volumes = [v.get("name") for v in spec.get("volumes") or []]
    if len(volumes) != len(set(volumes)):
        errors.append(f"duplicate volume names: {volumes}")
    containers = [
        *(spec.get("initContainers") or []),
        *(spec.get("containers") or []),
        *(spec.get("ephemeralContainers") or []),
    ]
    names = [c.get("name") for c in containers]
    if len(names) != len(set(names)):
        errors.append(f"duplicate container names: {names}")
    for container in containers:
        paths: list[str] = []
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                errors.append(f"{container.get('name')}: mount of unknown volume {mount}")
            paths.append(str(mount.get("mountPath", "")).rstrip("/"))
            sub = mount.get("subPath")
            if sub is not None and (
                posixpath.isabs(sub) or ".." in sub.split("/") or sub != posixpath.normpath(sub)
            ):
                errors.append(f"{container.get('name')}: bad subPath {sub!r}")
        if len(paths) != len(set(paths)):
            errors.append(f"{container.get('name')}: duplicate mountPaths {paths}")
    return errors
