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
from webhook.selection import is_ours

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
    endpoint: str = ""
    refresh: str = "never"
    digest: str = ""
    prefetch: bool = False
    read_only: bool = False
    on_miss: str = "wait"


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


# The optional flags of `kserve-cache fetch` the webhook may emit: only those fetch's parser
# has (a test checks this set against the real parser). A setting whose flag is missing here
# is reported as not applied, never sent.
FETCH_SUPPORTS: Final = frozenset(
    {"endpoint", "copy-to", "refresh", "digest", "prefetch", "read-only", "on-miss"}
)
# Settings that need a flag of their own, and that flag.
FLAG_OF: Final = {
    "refresh": "refresh",
    "digest": "digest",
    "prefetch": "prefetch",
    "read-only": "read-only",
    "on-miss": "on-miss",
}


def unsupported(spec: FetchSpec, supports: frozenset[str] | None = None) -> list[str]:
    """The settings `spec` asks for that this release's `fetch` cannot do yet."""
    supports = FETCH_SUPPORTS if supports is None else supports
    wanted = {
        "refresh": spec.refresh != "never",
        "digest": bool(spec.digest),
        "prefetch": spec.prefetch and spec.mode is ServingMode.MOUNT,
        "read-only": spec.read_only,
        "on-miss": spec.read_only,
    }
    return [s for s, on in wanted.items() if on and FLAG_OF[s] not in supports]


def escape(value: str) -> str:
    """`value` as the kubelet will pass it: it expands `$(NAME)` in command, args and env
    values, and turns `$$` into `$`, so every `$` of data we write is doubled."""
    return value.replace("$", "$$")


def fetch_args(
    spec: FetchSpec,
    template: InitContainerTemplate,
    *,
    supports: frozenset[str] | None = None,
) -> list[str]:
    """`fetch` and its flags, each one `--flag=value` argument: a value that starts with `-`
    can never be taken for an option, and `$` is escaped for the kubelet."""
    args = [
        "fetch",
        f"--uri={escape(spec.uri)}",
        f"--cache-root={escape(spec.cache_mount_path)}",
        f"--key={escape(spec.key)}",
    ]
    if spec.revision:
        args.append(f"--revision={escape(spec.revision)}")
    if spec.endpoint:
        args.append(f"--endpoint={escape(spec.endpoint)}")
    args += [
        f"--lease-ttl={template.leaseTTLSeconds}",
        f"--wait-timeout={template.waitTimeoutSeconds}",
    ]
    if spec.mode is ServingMode.COPY:
        args.append(f"--copy-to={names.MODEL_MOUNT_PATH}")
    missing = set(unsupported(spec, supports))
    if spec.refresh != "never" and "refresh" not in missing:
        args.append(f"--refresh={spec.refresh}")
    if spec.digest and "digest" not in missing:
        args.append(f"--digest={spec.digest}")
    if spec.prefetch and spec.mode is ServingMode.MOUNT and "prefetch" not in missing:
        args.append("--prefetch=true")
    if spec.read_only and not missing & {"read-only", "on-miss"}:
        args += ["--read-only", f"--on-miss={spec.on_miss}"]
    return args


def placeholder_values(spec: FetchSpec) -> dict[str, str]:
    """What `${NAME}` placeholders of the template become (escaped for the kubelet)."""
    raw = {
        "CACHE_KEY": spec.key,
        "STORAGE_URI": spec.uri,
        "REVISION": spec.revision,
        "PVC": spec.pvc,
        "INFERENCE_SERVICE": spec.isvc,
        "NAMESPACE": spec.namespace,
    }
    return {k: escape(v) for k, v in raw.items()}


def plain_env(
    container: Mapping[str, Any] | None, template: InitContainerTemplate
) -> dict[str, str]:
    """The env vars with a literal `value` that the downloader will see: the container's,
    under the template's (as `build_init_container` merges them). Secret-provided variables
    (`valueFrom`, `envFrom`) are invisible here; `fetch` checks those itself."""
    env: dict[str, str] = {}
    for var in (container or {}).get("env") or ():
        if isinstance(var, Mapping) and isinstance(var.get("value"), str):
            env[str(var.get("name"))] = var["value"]
    for tvar in template.env:
        if tvar.value is not None:
            env[tvar.name] = tvar.value
        else:
            env.pop(tvar.name, None)
    return env


# KServe's shipped storage-initializer resources (its ConfigMap defaults). A value that
# differs shows that the cluster's KServe admin configured it.
KSERVE_DEFAULT_RESOURCES: Final = {
    "requests": {"cpu": "100m", "memory": "100Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}


def merge_resources(template: Mapping[str, Any], kserve: object) -> dict[str, Any]:
    """The template's resources, except for each resource (cpu, memory, ...) that KServe's
    admin configured: any value of it that differs from KServe's shipped default, or a
    resource the template does not name. Then both its request and its limit are KServe's,
    so a request never ends above its limit."""
    out: dict[str, Any] = json_copy(dict(template))
    if not isinstance(kserve, Mapping):
        return out
    sections = [s for s in ("requests", "limits") if isinstance(kserve.get(s), Mapping)]
    named = {name for s in sections for name in kserve[s]}
    for name in sorted(named):
        theirs = {s: kserve[s][name] for s in sections if name in kserve[s]}
        defaults = KSERVE_DEFAULT_RESOURCES
        configured = any(str(value) != defaults.get(s, {}).get(name) for s, value in theirs.items())
        if not configured:
            continue
        for section in ("requests", "limits"):
            part = dict(out.get(section) or {})
            part.pop(name, None)
            if section in theirs:
                part[name] = theirs[section]
            if part:
                out[section] = part
            else:
                out.pop(section, None)
    return out


# securityContext fields KServe sets on its initializer that must survive the take-over:
# the Istio CNI uid (its downloads must bypass a proxy that is not running yet).
_KEPT_SECURITY: Final = ("runAsUser", "runAsGroup")


def _cache_mounts(spec: FetchSpec) -> list[dict[str, Any]]:
    cache: dict[str, Any] = {"name": names.CACHE_VOLUME, "mountPath": spec.cache_mount_path}
    if spec.read_only and not unsupported(spec):
        cache["readOnly"] = True  # a read-only consumer never writes the shared cache
    mounts: list[dict[str, Any]] = [cache]
    if spec.mode is ServingMode.COPY:
        mounts.append({"name": names.PROVISION_VOLUME, "mountPath": names.MODEL_MOUNT_PATH})
    return mounts


def _merge_mounts(old: list[Any], spec: FetchSpec) -> list[Any]:
    """Our mounts first, then every other mount of `old` that does not collide with them."""
    mounts: list[Any] = list(_cache_mounts(spec))
    ours = {m["mountPath"] for m in mounts} | {m["name"] for m in mounts}
    mounts += [
        m
        for m in old
        if isinstance(m, Mapping)
        and m.get("name") not in (names.CACHE_VOLUME, names.PROVISION_VOLUME)
        and m.get("mountPath") not in ours
    ]
    return mounts


def _secret_env_from(old: list[Any], secret: str | None) -> list[Any]:
    if not secret:
        return old
    ref = {"secretRef": {"name": secret}}
    if any(_env_from_key(item) == _env_from_key(ref) for item in old if isinstance(item, Mapping)):
        return old
    return [*old, ref]


def build_init_container(
    existing: Mapping[str, Any] | None,
    *,
    spec: FetchSpec,
    template: InitContainerTemplate,
    pod_security: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our `storage-initializer`: KServe's taken over, or ours from an earlier call merged.

    Taking over (KServe's, or none): the template is rendered once. Kept from KServe's:
    credential env vars, envFrom, secret and CA-bundle mounts, its runAsUser/runAsGroup, the
    resources its admin configured (`merge_resources`) and any field the template does not
    own. Ours already (a re-invocation): only what the cache needs is set (command, args,
    the cache mounts, the secret's envFrom); everything else stays as other admission
    plugins left it (imagePullPolicy, resources, securityContext...).
    """
    if existing is not None and is_ours(existing):
        container = _merge_ours(existing, spec=spec, template=template)
    else:
        container = _take_over(existing, spec=spec, template=template)
    return _startable(container, pod_security or {}, template)


def _args(spec: FetchSpec, template: InitContainerTemplate) -> list[str]:
    values = placeholder_values(spec)
    return fetch_args(spec, template) + [render(a, values) for a in template.extraArgs]


def _merge_ours(
    existing: Mapping[str, Any], *, spec: FetchSpec, template: InitContainerTemplate
) -> dict[str, Any]:
    container = dict(existing)
    container["command"] = [names.FETCH_COMMAND]
    container["args"] = _args(spec, template)
    old_mounts = [m for m in container.get("volumeMounts") or () if isinstance(m, Mapping)]
    wanted = _cache_mounts(spec)
    mounts: list[Any] = []
    for mount in old_mounts:
        same_name = next((w for w in wanted if w["name"] == mount.get("name")), None)
        if same_name is not None:
            # keep what others added to our mount (readOnly, mountPropagation...)
            mounts.append({**mount, **same_name})
            wanted.remove(same_name)
        elif mount.get("name") == names.PROVISION_VOLUME or mount.get("mountPath") in {
            w["mountPath"] for w in _cache_mounts(spec)
        }:
            continue  # the copy-mode mount of an earlier call now in mount mode
        else:
            mounts.append(mount)
    container["volumeMounts"] = mounts + wanted
    env_from = _secret_env_from(list(container.get("envFrom") or []), spec.secret)
    if env_from:
        container["envFrom"] = env_from
    return container


def _take_over(
    existing: Mapping[str, Any] | None, *, spec: FetchSpec, template: InitContainerTemplate
) -> dict[str, Any]:
    values = placeholder_values(spec)
    container: dict[str, Any] = dict(existing) if existing else {}
    old_env: list[dict[str, Any]] = list(container.get("env") or [])
    old_env_from: list[dict[str, Any]] = list(container.get("envFrom") or [])
    old_mounts: list[dict[str, Any]] = list(container.get("volumeMounts") or [])
    old_security = container.get("securityContext")
    old_resources = container.get("resources")
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

    security: dict[str, Any] = json_copy(template.securityContext)
    if isinstance(old_security, Mapping):
        for key in _KEPT_SECURITY:
            if isinstance(old_security.get(key), int):
                security[key] = old_security[key]

    container.update(
        {
            "name": names.STORAGE_INITIALIZER,
            "image": template.image,
            "imagePullPolicy": template.imagePullPolicy,
            "command": [names.FETCH_COMMAND],
            "args": _args(spec, template),
            "resources": merge_resources(template.resources, old_resources),
            "securityContext": security,
            "terminationMessagePath": template.terminationMessagePath,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": _merge_mounts(old_mounts, spec),
        }
    )
    if env:
        container["env"] = env
    if env_from:
        container["envFrom"] = env_from
    return container


def _startable(
    container: dict[str, Any], pod_security: Mapping[str, Any], template: InitContainerTemplate
) -> dict[str, Any]:
    """A pod that runs as uid 0 and our `runAsNonRoot: true` would never start (the kubelet
    refuses it): give our container an explicit non-root uid and gid of its own."""
    security = container.get("securityContext")
    if not isinstance(security, Mapping) or security.get("runAsNonRoot") is not True:
        return container
    if "runAsUser" in security or pod_security.get("runAsUser") != 0:
        return container
    fixed = {**security, "runAsUser": template.nonRootUser}
    if "runAsGroup" not in security and pod_security.get("runAsGroup") in (0, None):
        fixed["runAsGroup"] = template.nonRootUser
    container["securityContext"] = fixed
    return container
