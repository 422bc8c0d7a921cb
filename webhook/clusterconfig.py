"""The cluster config: its schema, defaults and validation (pure; loading lives in `config`)."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webhook import names

DNS1123_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN: Final = re.compile(
    r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*"
)
ENV_NAME: Final = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")


class PolicyMode(StrEnum):
    OPT_IN = "opt-in"
    DEFAULT_ON = "default-on"
    FORCED = "forced"
    DISABLED = "disabled"


class ServingMode(StrEnum):
    MOUNT = "mount"
    COPY = "copy"


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
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class EnvVar(_Strict):
    name: Annotated[str, Field(pattern=ENV_NAME.pattern, max_length=256)]
    value: str | None = None
    valueFrom: dict[str, Any] | None = None


class InitContainerTemplate(_Strict):
    """The `storage-initializer` we inject; `${NAME}` placeholders are filled per pod."""

    image: Annotated[str, Field(min_length=1, max_length=512)] = (
        "ghcr.io/kserve-cache/kserve-cache-fetcher:0.1.0"
    )
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resources: dict[str, Any] = Field(default_factory=_default_resources)
    env: tuple[EnvVar, ...] = ()
    envFrom: tuple[dict[str, Any], ...] = ()
    extraArgs: tuple[str, ...] = ()
    securityContext: dict[str, Any] = Field(default_factory=_restricted_security_context)
    terminationMessagePath: str = "/dev/termination-log"
    leaseTTLSeconds: Annotated[int, Field(ge=5, le=86_400)] = 120
    waitTimeoutSeconds: Annotated[int, Field(ge=10, le=86_400)] = 3_600


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
    initContainer: InitContainerTemplate = Field(default_factory=InitContainerTemplate)

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
        return ClusterConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc
