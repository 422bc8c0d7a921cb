"""Policy resolution: built-in < cluster config < namespace annotations < pod annotations.

A pure function of plain data. Every value is validated at the layer that sets it; a bad value
is ignored with a warning (the lower layer's value stays), and the decision records which layer
set each setting, for `preview --explain` and the status annotation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from webhook import names
from webhook.clusterconfig import (
    DIGEST,
    ClusterConfig,
    PolicyMode,
    ServingMode,
    is_dns1123_subdomain,
    is_refresh,
)
from webhook.keys import is_valid_revision
from webhook.skips import SkipReason

MAX_VALUE_LEN: Final = 253
# Keys only admins set (Namespace annotations, cluster config); a pod setting one is told so.
ADMIN_ONLY: Final = ("policy", "fs-group", "pod-overrides", "on-miss")
_CLUSTER_FIELDS: Final = (
    ("policy", "policy"),
    ("pvc", "pvc"),
    ("serving-mode", "servingMode"),
    ("fs-group", "fsGroup"),
    ("pod-overrides", "podOverrides"),
    ("refresh", "refresh"),
    ("prefetch", "prefetch"),
    ("read-only", "readOnly"),
    ("on-miss", "onMiss"),
)
T = TypeVar("T")


class Layer(StrEnum):
    BUILTIN = "built-in"
    CLUSTER = "cluster"
    NAMESPACE = "namespace"
    POD = "pod"
    SHAPE = "pod shape"  # the pod's shape overrode a setting (copy mode for a writer)

    @property
    def short(self) -> str:
        """The compact name used in the status annotation."""
        return _SHORT[self]


_SHORT: Final = {
    Layer.BUILTIN: "default",
    Layer.CLUSTER: "cluster",
    Layer.NAMESPACE: "ns",
    Layer.POD: "pod",
    Layer.SHAPE: "shape",
}
# Members read for every pod, as constants: reading one off its class goes through
# EnumType.__getattr__ (about 70 ns), and resolve_policy reads some thirty.
_BUILTIN: Final = Layer.BUILTIN
_CLUSTER: Final = Layer.CLUSTER
_NAMESPACE: Final = Layer.NAMESPACE
_POD: Final = Layer.POD
_OPT_IN: Final = PolicyMode.OPT_IN
_FORCED: Final = PolicyMode.FORCED
_DISABLED: Final = PolicyMode.DISABLED
# Settings shown by `status_sources`, and their compact names there.
_STATUS_SETTINGS: Final = (
    ("policy", "policy"),
    ("enabled", "enabled"),
    ("pvc", "pvc"),
    ("serving-mode", "mode"),
    ("secret", "secret"),
    ("fs-group", "fsGroup"),
    ("revision", "revision"),
    ("refresh", "refresh"),
    ("digest", "digest"),
    ("prefetch", "prefetch"),
    ("read-only", "readOnly"),
    ("on-miss", "onMiss"),
)


@dataclass(frozen=True)
class Policy:
    """What the layers decided for one pod."""

    mode: PolicyMode
    enabled: bool | None
    cache: bool
    skip: SkipReason | None
    pvc: str
    serving_mode: ServingMode
    fs_group: int
    secret: str | None
    revision: str
    pod_overrides: frozenset[str]
    sources: Mapping[str, Layer] = field(default_factory=dict)
    refresh: str = "never"
    digest: str = ""
    prefetch: bool = False
    read_only: bool = False
    on_miss: str = "wait"
    warnings: tuple[str, ...] = ()

    def explain(self) -> list[tuple[str, str, str]]:
        """(setting, value, layer) rows, in a stable order."""
        values: dict[str, Any] = {
            "policy": self.mode.value,
            "enabled": "" if self.enabled is None else str(self.enabled).lower(),
            "pvc": self.pvc,
            "serving-mode": self.serving_mode.value,
            "fs-group": str(self.fs_group),
            "secret": self.secret or "",
            "revision": self.revision,
            "pod-overrides": ",".join(sorted(self.pod_overrides)),
            "refresh": self.refresh,
            "digest": self.digest,
            "prefetch": str(self.prefetch).lower(),
            "read-only": str(self.read_only).lower(),
            "on-miss": self.on_miss,
        }
        return [(k, str(v), self.sources.get(k, _BUILTIN).value) for k, v in values.items()]

    def status_sources(self) -> dict[str, str]:
        """Which layer decided each setting, compactly, for `cache.kserve.io/status`.

        `policy`, `pvc` and `mode` always; the others only when a layer set them, e.g.
        `{"enabled": "pod", "mode": "cluster", "policy": "ns", "pvc": "ns"}`.
        """
        always = {"policy", "pvc", "serving-mode"}
        return {
            short: self.sources.get(setting, _BUILTIN).short
            for setting, short in _STATUS_SETTINGS
            if setting in always or setting in self.sources
        }


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValueError("expected true or false")


def _parse_mode(value: str) -> PolicyMode:
    try:
        return PolicyMode(value.strip())
    except ValueError:
        raise ValueError(f"expected one of {', '.join(m.value for m in PolicyMode)}") from None


def _parse_serving_mode(value: str) -> ServingMode:
    try:
        return ServingMode(value.strip())
    except ValueError:
        raise ValueError(f"expected one of {', '.join(m.value for m in ServingMode)}") from None


def _parse_name(value: str) -> str:
    if not is_dns1123_subdomain(value):
        raise ValueError("expected a DNS-1123 name (lower-case letters, digits, '-', '.')")
    return value


def _parse_fs_group(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError("expected a positive integer")
    number = int(value)
    if not 1 <= number <= 2_147_483_647:
        raise ValueError("expected an integer from 1 to 2147483647")
    return number


def _parse_overrides(value: str) -> frozenset[str]:
    """A comma list of keys; empty or `none`: pods may set none of them."""
    if value.strip().lower() == "none":
        return frozenset()
    keys = frozenset(k.strip() for k in value.split(",") if k.strip())
    unknown = keys - names.OVERRIDABLE
    if unknown:
        allowed = ", ".join(sorted(names.OVERRIDABLE))
        raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {allowed} (or none)")
    return keys


def _parse_revision(value: str) -> str:
    if not is_valid_revision(value):
        raise ValueError("expected 1-63 characters of [A-Za-z0-9._-]")
    return value


def _parse_refresh(value: str) -> str:
    if not is_refresh(value.strip()):
        raise ValueError("expected never, on-start or interval=<duration> (e.g. interval=6h)")
    return value.strip()


def _parse_digest(value: str) -> str:
    if not DIGEST.fullmatch(value.strip()):
        raise ValueError("expected sha256: and 64 lower-case hex digits")
    return value.strip()


def _parse_on_miss(value: str) -> str:
    if value.strip() not in ("wait", "private"):
        raise ValueError("expected wait or private")
    return value.strip()


def _show(value: str) -> str:
    """A short, printable rendering of a hostile value for a warning."""
    shown = value if len(value) <= 64 else value[:61] + "..."
    return repr(shown)


class _Resolver:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.sources: dict[str, Layer] = {}
        self.warnings: list[str] = []

    def take(
        self,
        setting: str,
        current: T,
        raw: str | None,
        parse: Callable[[str], T],
        layer: Layer,
    ) -> T:
        if raw is None:
            return current
        where = "namespace" if layer is _NAMESPACE else "pod"
        key = names.PREFIX + setting
        if not isinstance(raw, str):
            self.warnings.append(
                f"{key}: ignored the {where} value in namespace {self.namespace!r}: not a string"
            )
            return current
        if len(raw) > MAX_VALUE_LEN:
            self.warnings.append(
                f"{key}: ignored the {where} value in namespace {self.namespace!r}: "
                f"longer than {MAX_VALUE_LEN} characters"
            )
            return current
        try:
            value = parse(raw)
        except ValueError as exc:
            # A Namespace's annotations are the admins': the pod's creator may not be allowed
            # to read them, so their value is never echoed (the pod's own values are).
            shown = f" {_show(raw)}" if layer is _POD else ""
            self.warnings.append(
                f"{key}: ignored the {where} value{shown} in namespace {self.namespace!r}: {exc}"
            )
            return current
        self.sources[setting] = layer
        return value


def resolve_policy(
    *,
    cluster: ClusterConfig,
    namespace_annotations: Mapping[str, str] | None,
    pod_annotations: Mapping[str, str],
    namespace: str = "",
) -> Policy:
    """Resolve the settings for one pod from the four layers."""
    ns = namespace_annotations or {}
    r = _Resolver(namespace)
    # A setting the config file names is the cluster's, even when it repeats the default.
    customized = cluster.customized
    for setting, attr in _CLUSTER_FIELDS:
        if attr in customized:
            r.sources[setting] = _CLUSTER

    mode = r.take("policy", cluster.policy, ns.get(names.POLICY), _parse_mode, _NAMESPACE)
    pvc = r.take("pvc", cluster.pvc, ns.get(names.PVC), _parse_name, _NAMESPACE)
    serving = r.take(
        "serving-mode",
        cluster.servingMode,
        ns.get(names.SERVING_MODE),
        _parse_serving_mode,
        _NAMESPACE,
    )
    fs_group = r.take(
        "fs-group", cluster.fsGroup, ns.get(names.FS_GROUP), _parse_fs_group, _NAMESPACE
    )
    overrides_raw = ns.get(names.POD_OVERRIDES)
    overrides = r.take(
        "pod-overrides", cluster.podOverrides, overrides_raw, _parse_overrides, _NAMESPACE
    )
    if overrides_raw is not None and r.sources.get("pod-overrides") is not _NAMESPACE:
        # The admin meant to narrow what pods may set: a typo must not widen it (fail closed).
        overrides = frozenset()
        r.sources["pod-overrides"] = _NAMESPACE
        r.warnings[-1] += "; pods may set none of the keys until it is fixed"
    secret: str | None = r.take("secret", None, ns.get(names.SECRET), _parse_name, _NAMESPACE)
    enabled: bool | None = r.take("enabled", None, ns.get(names.ENABLED), _parse_bool, _NAMESPACE)
    refresh = r.take("refresh", cluster.refresh, ns.get(names.REFRESH), _parse_refresh, _NAMESPACE)
    prefetch = r.take("prefetch", cluster.prefetch, ns.get(names.PREFETCH), _parse_bool, _NAMESPACE)
    read_only = r.take(
        "read-only", cluster.readOnly, ns.get(names.READ_ONLY), _parse_bool, _NAMESPACE
    )
    on_miss = r.take(
        "on-miss", str(cluster.onMiss), ns.get(names.ON_MISS), _parse_on_miss, _NAMESPACE
    )

    # Pod layer: `enabled` and `revision` always; starred keys only where admins allow them;
    # admin-only keys never.
    for setting in ADMIN_ONLY:
        if names.PREFIX + setting in pod_annotations:
            r.warnings.append(
                f"{names.PREFIX}{setting}: ignored the pod value in namespace {namespace!r}: "
                "only the Namespace or the cluster config can set it"
            )
    pod_enabled: bool | None = r.take(
        "enabled", None, pod_annotations.get(names.ENABLED), _parse_bool, _POD
    )
    if pod_enabled is not None:
        enabled = pod_enabled
    revision_raw = pod_annotations.get(names.REVISION)
    revision = r.take("revision", "", revision_raw, _parse_revision, _POD)
    revision_invalid = revision_raw is not None and r.sources.get("revision") is not _POD

    def pod_value(setting: str, current: T, parse: Callable[[str], T]) -> T:
        raw = pod_annotations.get(names.PREFIX + setting)
        if raw is None:
            return current
        if setting not in overrides:
            r.warnings.append(
                f"{names.PREFIX}{setting}: ignored the pod value: namespace "
                f"{namespace!r} does not allow pods to set it (pod-overrides: "
                f"{','.join(sorted(overrides)) or 'none'})"
            )
            return current
        return r.take(setting, current, raw, parse, _POD)

    refresh = r.take("refresh", refresh, pod_annotations.get(names.REFRESH), _parse_refresh, _POD)
    digest = r.take("digest", "", pod_annotations.get(names.DIGEST), _parse_digest, _POD)
    prefetch = r.take("prefetch", prefetch, pod_annotations.get(names.PREFETCH), _parse_bool, _POD)
    # read-only: a pod may make itself a read-only consumer, never turn an admin's off
    pod_read_only = pod_annotations.get(names.READ_ONLY)
    if pod_read_only is not None:
        before = r.sources.get("read-only")
        wanted = r.take("read-only", read_only, pod_read_only, _parse_bool, _POD)
        if wanted is False:
            if before is None:
                r.sources.pop("read-only", None)
            else:
                r.sources["read-only"] = before
            if read_only:
                r.warnings.append(
                    f"{names.READ_ONLY}: ignored the pod value 'false' in namespace "
                    f"{namespace!r}: only the Namespace or the cluster config can turn it off"
                )
        read_only = read_only or wanted
    pvc = pod_value("pvc", pvc, _parse_name)
    serving = pod_value("serving-mode", serving, _parse_serving_mode)
    secret = pod_value("secret", secret, _parse_name)

    skip: SkipReason | None = None
    if mode is _DISABLED:
        skip = SkipReason.POLICY_DISABLED
        if pod_enabled:
            r.warnings.append(
                f"{names.ENABLED}: ignored: caching is disabled in namespace {namespace!r}"
            )
    elif mode is _FORCED:
        if pod_enabled is False:
            r.warnings.append(
                f"{names.ENABLED}: ignored 'false': caching is forced in namespace {namespace!r}"
            )
    elif mode is _OPT_IN:
        if enabled is False:
            skip = SkipReason.OPTED_OUT
        elif enabled is not True:
            skip = SkipReason.NOT_OPTED_IN
    elif enabled is False:
        skip = SkipReason.OPTED_OUT
    if skip is None and revision_invalid:
        # Caching under another revision would serve a stale model: admit without the cache.
        skip = SkipReason.INVALID_ANNOTATION

    return Policy(
        mode=mode,
        enabled=enabled,
        cache=skip is None,
        skip=skip,
        pvc=pvc,
        serving_mode=serving,
        fs_group=fs_group,
        secret=secret,
        revision=revision,
        pod_overrides=overrides,
        sources=dict(r.sources),
        warnings=tuple(r.warnings),
        refresh=refresh,
        digest=digest,
        prefetch=prefetch,
        read_only=read_only,
        on_miss=on_miss,
    )
