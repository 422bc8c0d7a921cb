"""The cluster config: its schema, defaults and validation (pure; loading lives in `config`)."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from webhook import names

if TYPE_CHECKING:
    from webhook.template import TemplateParts

DNS1123_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
ENV_NAME: Final = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
# A Kubernetes resource.Quantity (the API server's own grammar).
QUANTITY: Final = re.compile(
    r"[+-]?(\d+\.?\d*|\.\d+)((Ki|Mi|Gi|Ti|Pi|Ei)|[numkMGTPE]|[eE][+-]?\d+)?"
)
# A qualified resource name (`cpu`, `memory`, `ephemeral-storage`, `nvidia.com/gpu`).
RESOURCE_NAME: Final = re.compile(
    r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)


class PolicyMode(StrEnum):
    OPT_IN = "opt-in"
    DEFAULT_ON = "default-on"
    FORCED = "forced"
    DISABLED = "disabled"


class ServingMode(StrEnum):
    MOUNT = "mount"
    COPY = "copy"


REFRESH: Final = re.compile(r"never|on-start|interval=(\d{1,9}(\.\d{1,9})?[wdhms]){1,5}")
_DURATION_UNITS: Final = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def is_refresh(value: str) -> bool:
    """`never`, `on-start` or `interval=<duration>` (`30s`, `10m`, `1h30m`, `1d`; at least 1s),
    the grammar of `kserve-cache fetch --refresh`."""
    if not REFRESH.fullmatch(value):
        return False
    if not value.startswith("interval="):
        return True
    parts = re.findall(r"(\d+(?:\.\d+)?)([wdhms])", value[len("interval=") :])
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts) >= 1.0


DIGEST: Final = re.compile(r"sha256:[0-9a-f]{64}")


class ConfigError(ValueError):
    """The cluster config file cannot be used; the message says where and why."""


def is_dns1123_subdomain(value: str) -> bool:
    return len(value) <= 253 and DNS1123_SUBDOMAIN.fullmatch(value) is not None


def _restricted_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _default_resources() -> dict[str, Any]:
    # KServe's shipped storage-initializer defaults.
    return {
        "requests": {"cpu": "100m", "memory": "100Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }


class _Strict(BaseModel):
    """A frozen model whose `cached_property` values are derived from its fields.

    pydantic keeps those values in `__dict__` next to the fields (equality, hashing, repr and
    `model_dump` look at the fields only), and its copies copy `__dict__`: a copy forgets
    them, or `model_copy(update=...)` would keep values derived from the old fields.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def __copy__(self) -> Self:
        copied = super().__copy__()
        _forget_derived(copied)
        return copied

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Self:
        copied = super().__deepcopy__(memo)
        _forget_derived(copied)
        return copied


def _forget_derived(model: BaseModel) -> None:
    """Drop the cached values of `model`'s properties: they are computed again when asked."""
    fields = type(model).model_fields
    for name in [name for name in model.__dict__ if name not in fields]:
        del model.__dict__[name]


class _Fragment(BaseModel):
    """A corev1 fragment: unknown fields are refused (a typo must not reach a patch)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


ProfileType = Literal["RuntimeDefault", "Localhost", "Unconfined"]


class _Profile(_Fragment):
    type: ProfileType
    localhostProfile: str | None = None

    @model_validator(mode="after")
    def _localhost(self) -> _Profile:
        if (self.type == "Localhost") != (self.localhostProfile is not None):
            raise ValueError("localhostProfile is set exactly when type is Localhost")
        return self


class _Capabilities(_Fragment):
    add: list[Annotated[str, Field(pattern=r"^[A-Z_0-9]+$")]] = Field(default_factory=list)
    drop: list[Annotated[str, Field(pattern=r"^[A-Z_0-9]+$")]] = Field(default_factory=list)


class _SELinuxOptions(_Fragment):
    user: str | None = None
    role: str | None = None
    type: str | None = None
    level: str | None = None


_Id = Annotated[int, Field(ge=0, le=2_147_483_647)]


class ContainerSecurityContext(_Fragment):
    """corev1.SecurityContext, Linux fields only (the webhook skips Windows pods)."""

    allowPrivilegeEscalation: bool | None = None
    capabilities: _Capabilities | None = None
    privileged: bool | None = None
    procMount: Literal["Default", "Unmasked"] | None = None
    readOnlyRootFilesystem: bool | None = None
    runAsGroup: _Id | None = None
    runAsNonRoot: bool | None = None
    runAsUser: _Id | None = None
    seLinuxOptions: _SELinuxOptions | None = None
    seccompProfile: _Profile | None = None
    appArmorProfile: _Profile | None = None

    @model_validator(mode="after")
    def _startable(self) -> ContainerSecurityContext:
        if self.runAsNonRoot and self.runAsUser == 0:
            raise ValueError("runAsNonRoot: true with runAsUser: 0 never starts")
        if self.privileged and self.allowPrivilegeEscalation is False:
            raise ValueError("privileged: true needs allowPrivilegeEscalation (the API refuses it)")
        return self


_SUFFIXES: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(value: object) -> Decimal:
    """The value of a Kubernetes quantity (`100m` is 0.1, `1Gi` is 2**30); ValueError else."""
    text = str(value)
    match = QUANTITY.fullmatch(text)
    if isinstance(value, bool) or match is None:
        raise ValueError(f"{value!r} is not a quantity (such as 100m, 1, 512Mi, 2Gi)")
    number, suffix = match.group(1), match.group(2) or ""
    if suffix[:1] in ("e", "E") and suffix not in _SUFFIXES:
        return Decimal(text.lstrip("+"))
    return Decimal(number) * _SUFFIXES[suffix] * (-1 if text.startswith("-") else 1)


def _quantity(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{value!r} is not a quantity")
    if not QUANTITY.fullmatch(str(value)):
        raise ValueError(f"{value!r} is not a quantity (such as 100m, 1, 512Mi, 2Gi)")
    return value


Quantity = Annotated[str | int | float, AfterValidator(_quantity)]


class ResourceRequirements(_Fragment):
    model_config = ConfigDict(extra="forbid", frozen=True)  # quantities may be numbers

    requests: dict[str, Quantity] = Field(default_factory=dict)
    limits: dict[str, Quantity] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, amount in value.items():
            if len(name) > 253 or not RESOURCE_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a resource name")
            if parse_quantity(amount) < 0:
                raise ValueError(f"{name}: {amount!r} is negative")
        return value

    @model_validator(mode="after")
    def _within_limits(self) -> ResourceRequirements:
        for name, amount in self.requests.items():
            if name in self.limits and parse_quantity(amount) > parse_quantity(self.limits[name]):
                raise ValueError(
                    f"requests.{name} ({amount}) is above limits.{name} ({self.limits[name]})"
                )
        return self


class _Ref(_Fragment):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    optional: bool | None = None


class EnvFromSource(_Fragment):
    configMapRef: _Ref | None = None
    secretRef: _Ref | None = None
    prefix: Annotated[str, Field(pattern=f"^{ENV_NAME.pattern}$")] | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvFromSource:
        if (self.configMapRef is None) == (self.secretRef is None):
            raise ValueError("exactly one of configMapRef and secretRef")
        return self


_VALUE_SOURCES: Final = frozenset(
    {"fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef"}
)


class EnvVar(_Strict):
    name: Annotated[str, Field(pattern=f"^{ENV_NAME.pattern}$", max_length=256)]
    value: str | None = None
    valueFrom: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.valueFrom is not None:
            if self.value:
                raise ValueError("value and valueFrom are exclusive")
            if len(self.valueFrom) != 1 or not set(self.valueFrom) <= _VALUE_SOURCES:
                raise ValueError(f"valueFrom takes exactly one of {sorted(_VALUE_SOURCES)}")
        return self


class InitContainerTemplate(_Strict):
    """The `storage-initializer` we inject; `${NAME}` placeholders are filled per pod."""

    image: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")] = (
        "ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0"
    )
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: dict[str, Any] = Field(default_factory=_default_resources)
    env: tuple[EnvVar, ...] = ()
    envFrom: tuple[dict[str, Any], ...] = ()
    extraArgs: tuple[str, ...] = ()
    securityContext: dict[str, Any] = Field(default_factory=_restricted_security_context)
    terminationMessagePath: Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=4096)] = (
        "/dev/termination-log"
    )
    # The uid (and gid) given to the init container of a pod that runs as root (uid 0): the
    # restricted securityContext says runAsNonRoot, which the kubelet refuses with uid 0.
    nonRootUser: Annotated[int, Field(ge=1, le=2_147_483_647)] = 65532
    leaseTTLSeconds: Annotated[int, Field(ge=5, le=86_400)] = 120
    waitTimeoutSeconds: Annotated[int, Field(ge=10, le=86_400)] = 3_600

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, Any]) -> dict[str, Any]:
        ResourceRequirements.model_validate(value)
        return value

    @field_validator("securityContext")
    @classmethod
    def _security(cls, value: dict[str, Any]) -> dict[str, Any]:
        ContainerSecurityContext.model_validate(value)
        return value

    @field_validator("envFrom")
    @classmethod
    def _env_from(cls, value: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        for item in value:
            EnvFromSource.model_validate(item)
        return value

    @cached_property
    def parts(self) -> TemplateParts:
        """What every container built from this template gets whatever the pod, computed once
        per template (see `template.TemplateParts`)."""
        from webhook.template import TemplateParts  # it builds on this module

        return TemplateParts.of(self)


class ClusterConfig(_Strict):
    """Cluster-wide defaults; every key has a default, so an empty file is valid."""

    policy: PolicyMode = PolicyMode.OPT_IN
    pvc: str = "kserve-model-cache"
    servingMode: ServingMode = ServingMode.MOUNT
    fsGroup: Annotated[int, Field(ge=1, le=2_147_483_647)] = 1000
    podOverrides: frozenset[str] = names.OVERRIDABLE
    excludedNamespaces: frozenset[str] = frozenset(
        {"kube-system", "kube-public", "kube-node-lease"}
    )
    injectWithoutKServe: bool = False
    onError: Literal["admit", "refuse"] = "admit"
    cacheMountPath: str = names.CACHE_MOUNT_PATH
    # Mutable sources: when fetch looks again at a cached entry's source.
    refresh: str = "never"
    # Mount mode: read the entry into the node's page cache before the model server starts.
    prefetch: bool = False
    # Read-only consumers: the cache is never written by these pods' init containers.
    readOnly: bool = False
    # What a read-only consumer does on a miss: wait for a trusted writer, or download
    # privately into its own emptyDir (copy mode).
    onMiss: Literal["wait", "private"] = "wait"
    initContainer: InitContainerTemplate = Field(default_factory=InitContainerTemplate)

    @cached_property
    def customized(self) -> frozenset[str]:
        """The fields this config sets: named in its file, or not their default.

        Computed once per config: `resolve_policy` asks for every pod which settings are the
        cluster's, and a default `ClusterConfig` to compare with costs more than the rest of
        the resolution.
        """
        defaults = ClusterConfig()
        return frozenset(
            name
            for name in type(self).model_fields
            if name in self.model_fields_set or getattr(self, name) != getattr(defaults, name)
        )

    @field_validator("refresh")
    @classmethod
    def _refresh(cls, value: str) -> str:
        if not is_refresh(value):
            raise ValueError(f"{value!r}: expected never, on-start or interval=<duration>")
        return value

    @field_validator("pvc")
    @classmethod
    def _pvc_name(cls, value: str) -> str:
        if not is_dns1123_subdomain(value):
            raise ValueError(f"{value!r} is not a valid PersistentVolumeClaim name")
        return value

    @field_validator("podOverrides")
    @classmethod
    def _overrides(cls, value: frozenset[str]) -> frozenset[str]:
        unknown = value - names.OVERRIDABLE
        if unknown:
            allowed = ", ".join(sorted(names.OVERRIDABLE))
            raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {allowed}")
        return value

    @field_validator("cacheMountPath")
    @classmethod
    def _mount_path(cls, value: str) -> str:
        if not value.startswith("/") or ".." in value.split("/") or value == names.MODEL_MOUNT_PATH:
            raise ValueError(f"{value!r} must be an absolute path other than /mnt/models")
        return value


def parse_config(text: str, *, source: str = "<config>") -> ClusterConfig:
    """Validate the text of a config file; raise ConfigError naming the bad field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top, got {type(data).__name__}")
    try:
        config = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
    from webhook.configcheck import check_config  # it patches sample pods with `config`

    check_config(config, source=source)
    return config
