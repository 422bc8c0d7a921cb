"""The injected `storage-initializer`: built from the cluster config's init-container template.

Values from annotations are data only: they land in single list elements or string fields,
never in text that is parsed again, so no annotation value can add a field or change the
structure of what is injected. `${NAME}` placeholders in the template's env values and extra
args are filled in one pass (a substituted value is never scanned again).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from webhook import names
from webhook.clusterconfig import InitContainerTemplate, ServingMode
from webhook.selection import is_ours

PLACEHOLDER: Final = re.compile(r"\$\{([A-Z_]+)\}")
# Enum members as constants: reading one off its class goes through EnumType.__getattr__
# (about 70 ns), and these are compared several times per pod.
_MOUNT: Final = ServingMode.MOUNT
_COPY: Final = ServingMode.COPY

# Fields of a taken-over container that the template decides.
_OWNED_FIELDS: Final = frozenset(
    {
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
    }
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
    if "${" not in text:
        return text  # the common case, without the regex
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): copy.deepcopy without its memo and
    dispatch, which dominated the cost of building the container."""
    kind = type(value)
    if kind is dict:
        # scalars are taken as they are, without a call per leaf
        return {k: v if type(v) in _SCALARS else json_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [v if type(v) in _SCALARS else json_copy(v) for v in value]
    if kind in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {k: json_copy(v) for k, v in value.items()}
    return value


_INT64: Final = range(-(2**63), 2**63)


def _orjson_exact(value: Any) -> bool:
    """True when orjson.loads(orjson.dumps(value)) is json_copy(value), types included: str
    keys; str, bool, None, int64 and finite float leaves (exact types); dicts, lists, tuples."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and _orjson_exact(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_orjson_exact(v) for v in value)
    if kind is int:
        return value in _INT64
    if kind is float:
        return math.isfinite(value)
    return kind is str or kind is bool or value is None


@dataclass(frozen=True)
class Copies:
    """Fresh copies of one piece of a template's JSON data, cheaply.

    The template is shared by every pod and the container we return is the caller's to
    change, so each container gets its own copy: `dict()` for a flat dict, orjson parsing
    its bytes (several times faster than walking it) when that round trip is exact, else
    `json_copy`. The template is frozen: its data is never changed after validation.
    """

    value: Any
    how: Literal["flat", "orjson", "walk"]
    blob: bytes = b""

    @classmethod
    def of(cls, value: Any) -> Copies:
        if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
            return cls(value, "flat")
        if _orjson_exact(value):
            try:
                blob = orjson.dumps(value)
            except orjson.JSONEncodeError:  # e.g. a lone surrogate in a string
                return cls(value, "walk")
            if orjson.loads(blob) == json_copy(value):
                return cls(value, "orjson", blob)
        return cls(value, "walk")

    def new(self) -> Any:
        """A copy of the value that shares no dict or list with it."""
        if self.how == "flat":
            return dict(self.value)
        if self.how == "orjson":
            return orjson.loads(self.blob)
        return json_copy(self.value)


@dataclass(frozen=True)
class EnvPart:
    """One env var of the template, as the container gets it."""

    var: Copies  # its fields without the unset ones, as `model_dump(exclude_none=True)`
    renders: bool  # its value has `${NAME}` placeholders, filled per pod


@dataclass(frozen=True)
class TemplateParts:
    """What the container takes from its template whatever the pod: computed once per
    template (`InitContainerTemplate.parts`), so that a review only copies them and fills
    the `${NAME}` placeholders."""

    env: tuple[EnvPart, ...]
    env_names: frozenset[str]
    env_from: tuple[tuple[str, Copies], ...]  # (the item's `_env_from_key`, the item)
    security: Copies
    resources: Copies
    # any env value or extra arg has a placeholder: the pod's values are needed
    placeholders: bool

    @classmethod
    def of(cls, template: InitContainerTemplate) -> TemplateParts:
        env = tuple(
            EnvPart(
                Copies.of(dumped),
                isinstance(dumped.get("value"), str) and "${" in dumped["value"],
            )
            for dumped in (var.model_dump(exclude_none=True) for var in template.env)
        )
        return cls(
            env=env,
            env_names=frozenset(var.name for var in template.env),
            env_from=tuple(
                (_env_from_key(copies.new()), copies)
                for copies in (Copies.of(item) for item in template.envFrom)
            ),
            security=Copies.of(template.securityContext),
            resources=Copies.of(dict(template.resources)),
            placeholders=any(part.renders for part in env)
            or any("${" in arg for arg in template.extraArgs),
        )


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
    if spec.refresh == "never" and not (spec.digest or spec.prefetch or spec.read_only):
        return []  # asks for none of them (most pods)
    supports = FETCH_SUPPORTS if supports is None else supports
    wanted = {
        "refresh": spec.refresh != "never",
        "digest": bool(spec.digest),
        "prefetch": spec.prefetch and spec.mode is _MOUNT,
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
    if spec.mode is _COPY:
        args.append(f"--copy-to={names.MODEL_MOUNT_PATH}")
    missing = set(unsupported(spec, supports))
    if spec.refresh != "never" and "refresh" not in missing:
        args.append(f"--refresh={spec.refresh}")
    if spec.digest and "digest" not in missing:
        args.append(f"--digest={spec.digest}")
    if spec.prefetch and spec.mode is _MOUNT and "prefetch" not in missing:
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
        if (type(var) is dict or isinstance(var, Mapping)) and isinstance(var.get("value"), str):
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
_KSERVE_DEFAULTS: Final = frozenset(
    (section, name, value)
    for section, values in KSERVE_DEFAULT_RESOURCES.items()
    for name, value in values.items()
)


def merge_resources(template: Mapping[str, Any], kserve: object) -> dict[str, Any]:
    """The template's resources, except for each resource (cpu, memory, ...) that KServe's
    admin configured: any value of it that differs from KServe's shipped default, or a
    resource the template does not name. Then both its request and its limit are KServe's,
    so a request never ends above its limit."""
    return _merge_resources(json_copy(dict(template)), kserve)


def _merge_resources(out: dict[str, Any], kserve: object) -> dict[str, Any]:
    """`merge_resources` into `out`, a copy of the template's resources (it is changed).

    Plain loops, not comprehensions: this runs for every pod taken over."""
    if not (type(kserve) is dict or isinstance(kserve, Mapping)):
        return out
    given = [
        (s, part)
        for s in ("requests", "limits")
        if type(part := kserve.get(s)) is dict or isinstance(part, Mapping)
    ]
    named: set[str] = set()
    for _, part in given:
        named.update(part)
    for name in sorted(named):
        theirs: dict[str, Any] = {}
        shipped = True  # every value KServe has for it is its shipped default
        for s, part in given:
            if name in part:
                value = theirs[s] = part[name]
                shipped = shipped and (s, name, str(value)) in _KSERVE_DEFAULTS
        if shipped:
            continue
        for section in ("requests", "limits"):
            merged = dict(out.get(section) or {})
            merged.pop(name, None)
            if section in theirs:
                merged[name] = theirs[section]
            if merged:
                out[section] = merged
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
    if spec.mode is _COPY:
        mounts.append({"name": names.PROVISION_VOLUME, "mountPath": names.MODEL_MOUNT_PATH})
    return mounts


def _merge_mounts(old: list[Any], spec: FetchSpec) -> list[Any]:
    """Our mounts first, then every other mount of `old` that does not collide with them."""
    mounts: list[Any] = _cache_mounts(spec)
    ours = {m["mountPath"] for m in mounts} | {m["name"] for m in mounts}
    mounts += [
        m
        for m in old
        if (type(m) is dict or isinstance(m, Mapping))
        and m.get("name") not in (names.CACHE_VOLUME, names.PROVISION_VOLUME)
        and m.get("mountPath") not in ours
    ]
    return mounts


def _secret_env_from(old: list[Any], secret: str | None) -> list[Any]:
    if not secret:
        return old
    ref = {"secretRef": {"name": secret}}
    key = _env_from_key(ref)
    if any(
        _env_from_key(item) == key
        for item in old
        if type(item) is dict or isinstance(item, Mapping)
    ):
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


def _args(
    spec: FetchSpec, template: InitContainerTemplate, values: Mapping[str, str] | None = None
) -> list[str]:
    """`fetch_args` and the template's extra args, rendered with `values` (the spec's
    `placeholder_values`, computed here when not given and needed)."""
    args = fetch_args(spec, template)
    if template.extraArgs:
        if values is None:
            values = placeholder_values(spec) if template.parts.placeholders else {}
        args += [render(a, values) for a in template.extraArgs]
    return args


def _merge_ours(
    existing: Mapping[str, Any], *, spec: FetchSpec, template: InitContainerTemplate
) -> dict[str, Any]:
    container = dict(existing)
    container["command"] = [names.FETCH_COMMAND]
    container["args"] = _args(spec, template)
    old_mounts = [
        m for m in container.get("volumeMounts") or () if type(m) is dict or isinstance(m, Mapping)
    ]
    wanted = _cache_mounts(spec)
    cache_paths = {w["mountPath"] for w in wanted}
    mounts: list[Any] = []
    for mount in old_mounts:
        same_name = next((w for w in wanted if w["name"] == mount.get("name")), None)
        if same_name is not None:
            # keep what others added to our mount (readOnly, mountPropagation...)
            mounts.append({**mount, **same_name})
            wanted.remove(same_name)
        elif mount.get("name") == names.PROVISION_VOLUME or mount.get("mountPath") in cache_paths:
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
    parts = template.parts
    values = placeholder_values(spec) if parts.placeholders else {}
    old: Mapping[str, Any] = existing or {}
    old_env: list[dict[str, Any]] = list(old.get("env") or [])
    old_env_from: list[dict[str, Any]] = list(old.get("envFrom") or [])
    old_mounts: list[dict[str, Any]] = list(old.get("volumeMounts") or [])
    old_security = old.get("securityContext")
    old_resources = old.get("resources")
    container = {k: v for k, v in old.items() if k not in _OWNED_FIELDS}

    env: list[dict[str, Any]] = []
    for part in parts.env:
        var = part.var.new()
        if part.renders:
            var["value"] = render(var["value"], values)
        env.append(var)
    env += [var for var in old_env if var.get("name") not in parts.env_names]

    keyed = [(key, item.new()) for key, item in parts.env_from]
    keyed += [(_env_from_key(item), item) for item in old_env_from]
    if spec.secret:
        ref = {"secretRef": {"name": spec.secret}}
        keyed.append((_env_from_key(ref), ref))
    # the first of equal items, where the last of them was
    env_from = list(dict(reversed(keyed)).values())[::-1]

    security: dict[str, Any] = parts.security.new()
    if type(old_security) is dict or isinstance(old_security, Mapping):
        for key in _KEPT_SECURITY:
            if isinstance(old_security.get(key), int):
                security[key] = old_security[key]

    container.update(
        {
            "name": names.STORAGE_INITIALIZER,
            "image": template.image,
            "imagePullPolicy": template.imagePullPolicy,
            "command": [names.FETCH_COMMAND],
            "args": _args(spec, template, values),
            "resources": _merge_resources(parts.resources.new(), old_resources),
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
    if not (type(security) is dict or isinstance(security, Mapping)):
        return container
    if security.get("runAsNonRoot") is not True:
        return container
    if "runAsUser" in security or pod_security.get("runAsUser") != 0:
        return container
    fixed = {**security, "runAsUser": template.nonRootUser}
    if "runAsGroup" not in security and pod_security.get("runAsGroup") in (0, None):
        fixed["runAsGroup"] = template.nonRootUser
    container["securityContext"] = fixed
    return container
