"""The injected `storage-initializer`: built from the cluster config's init-container template.

Values from annotations are data only: they land in single list elements or string fields,
never in text that is parsed again, so no annotation value can add a field or change the
structure of what is injected. `${NAME}` placeholders in the template's env values and extra
args are filled in one pass (a substituted value is never scanned again).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from webhook import names
from webhook.clusterconfig import InitContainerTemplate, ServingMode

PLACEHOLDER: Final = re.compile(r"\$\{([A-Z_]+)\}")

# Fields of a taken-over container that the template decides.
_OWNED_FIELDS: Final = (
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "resources",
    "securityContext",
    "env",
    "envFrom",
    "volumeMounts",
    "terminationMessagePath",
    "terminationMessagePolicy",
)


@dataclass(frozen=True)
class FetchSpec:
    """What the init container must fetch, and where."""

    uri: str
    key: str
    revision: str
    mode: ServingMode
    pvc: str
    secret: str | None
    cache_mount_path: str
    isvc: str
    namespace: str


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill `${NAME}` placeholders in one pass; unknown names stay as written."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): copy.deepcopy without its memo and
    dispatch, which dominated the cost of building the container."""
    kind = type(value)
    if kind is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [json_copy(v) for v in value]
    if kind in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    return value


def _env_from_key(item: Mapping[str, Any]) -> str:
    return repr(sorted((k, repr(v)) for k, v in item.items()))


def fetch_args(spec: FetchSpec, template: InitContainerTemplate) -> list[str]:
    args = ["fetch", "--uri", spec.uri, "--cache-root", spec.cache_mount_path, "--key", spec.key]
    if spec.revision:
        args += ["--revision", spec.revision]
    args += [
        "--lease-ttl",
        str(template.leaseTTLSeconds),
        "--wait-timeout",
        str(template.waitTimeoutSeconds),
    ]
    if spec.mode is ServingMode.COPY:
        args += ["--copy-to", names.MODEL_MOUNT_PATH]
    return args


def build_init_container(
    existing: Mapping[str, Any] | None,
    *,
    spec: FetchSpec,
    template: InitContainerTemplate,
) -> dict[str, Any]:
    """Our `storage-initializer`, taking over `existing` (KServe's, or ours from a first pass).

    Kept from `existing`: credential env vars, envFrom, secret mounts and any field the
    template does not own. Decided by the template: image, command, args, resources, security.
    What is kept is shared with `existing`, never changed (so the patch diff skips it); what
    comes from the template is copied, so no pod can alias the config.
    """
    values = {
        "CACHE_KEY": spec.key,
        "STORAGE_URI": spec.uri,
        "REVISION": spec.revision,
        "PVC": spec.pvc,
        "INFERENCE_SERVICE": spec.isvc,
        "NAMESPACE": spec.namespace,
    }
    container: dict[str, Any] = dict(existing) if existing else {}
    old_env: list[dict[str, Any]] = list(container.get("env") or [])
    old_env_from: list[dict[str, Any]] = list(container.get("envFrom") or [])
    old_mounts: list[dict[str, Any]] = list(container.get("volumeMounts") or [])
    for field_name in _OWNED_FIELDS:
        container.pop(field_name, None)

    template_env = [var.model_dump(exclude_none=True) for var in template.env]
    for var in template_env:
        if "value" in var:
            var["value"] = render(var["value"], values)
    template_names = {var["name"] for var in template_env}
    env = template_env + [var for var in old_env if var.get("name") not in template_names]

    env_from = [json_copy(item) for item in template.envFrom] + old_env_from
    if spec.secret:
        env_from.append({"secretRef": {"name": spec.secret}})
    env_from = list({_env_from_key(item): item for item in reversed(env_from)}.values())[::-1]

    mounts: list[dict[str, Any]] = [
        {"name": names.CACHE_VOLUME, "mountPath": spec.cache_mount_path},
    ]
    if spec.mode is ServingMode.COPY:
        mounts.append({"name": names.PROVISION_VOLUME, "mountPath": names.MODEL_MOUNT_PATH})
    ours = {m["mountPath"] for m in mounts} | {m["name"] for m in mounts}
    mounts += [
        m
        for m in old_mounts
        if m.get("name") not in (names.CACHE_VOLUME, names.PROVISION_VOLUME)
        and m.get("mountPath") not in ours
    ]

    container.update(
        {
            "name": names.STORAGE_INITIALIZER,
            "image": template.image,
            "imagePullPolicy": template.imagePullPolicy,
            "command": [names.FETCH_COMMAND],
            "args": fetch_args(spec, template) + [render(a, values) for a in template.extraArgs],
            "resources": json_copy(template.resources),
            "securityContext": json_copy(template.securityContext),
            "terminationMessagePath": template.terminationMessagePath,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": mounts,
        }
    )
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    return container
