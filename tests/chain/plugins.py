"""The members of the chain: in-tree plugins (AlwaysPullImages, LimitRanger), a policy engine
that hardens every container, Istio's sidecar injector (CNI mode), KServe's pod mutator (the
emulation `preview` uses) and ours (`review()`, its patch applied as the API server does).
Each mutator comes with the validator that proves its change survived the chain."""

from __future__ import annotations

import base64
import json
import re
from decimal import Decimal
from typing import Any

import jsonpatch

from tests.chain.simulator import Mutator, Pod, Validator
from tests.golden_cases import make_review
from webhook import kserve, names
from webhook.clusterconfig import ClusterConfig
from webhook.namespaces import NamespaceView
from webhook.review import review_body

ISTIO_LABEL = "sidecar.istio.io/inject"
ISTIO_PROXY = "istio-proxy"


def containers(pod: Pod) -> list[dict[str, Any]]:
    spec = pod.get("spec") or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


# AlwaysPullImages ------------------------------------------------------------------------------


def always_pull(pod: Pod) -> Pod:
    for container in containers(pod):
        container["imagePullPolicy"] = "Always"
    return pod


def always_pull_errors(pod: Pod) -> list[str]:
    return [
        f"{c.get('name')}: imagePullPolicy {c.get('imagePullPolicy')!r}, not Always"
        for c in containers(pod)
        if c.get("imagePullPolicy") != "Always"
    ]


# LimitRanger -------------------------------------------------------------------------------

LIMIT_DEFAULTS = {"cpu": "2", "memory": "2Gi", "ephemeral-storage": "4Gi"}
REQUEST_DEFAULTS = {"cpu": "50m", "memory": "64Mi", "ephemeral-storage": "1Gi"}
_SUFFIX = {
    "": 1,
    "m": Decimal("0.001"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: object) -> Decimal:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value))
    assert match, value
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def limit_ranger(pod: Pod) -> Pod:
    """The namespace's LimitRange defaults: a missing limit gets the default limit, a missing
    request the default request (never above the container's limit)."""
    for container in containers(pod):
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {})
        requests = resources.setdefault("requests", {})
        for name, value in LIMIT_DEFAULTS.items():
            limits.setdefault(name, value)
        for name, value in REQUEST_DEFAULTS.items():
            if name not in requests:
                requests[name] = min(value, limits[name], key=quantity)
    return pod


def limit_ranger_errors(pod: Pod) -> list[str]:
    errors = []
    for container in containers(pod):
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        for name in LIMIT_DEFAULTS:
            if name not in limits or name not in requests:
                errors.append(f"{container.get('name')}: no {name} request and limit")
            elif quantity(requests[name]) > quantity(limits[name]):
                errors.append(f"{container.get('name')}: {name} request above its limit")
    return errors


# a policy engine (Kyverno/Gatekeeper style) ----------------------------------------------------

HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def harden(pod: Pod) -> Pod:
    for container in containers(pod):
        security = container.setdefault("securityContext", {})
        for key, value in HARDENED.items():
            security.setdefault(key, value)
        caps = security.setdefault("capabilities", {})
        caps["drop"] = ["ALL"]
    return pod


def hardening_errors(pod: Pod) -> list[str]:
    errors = []
    for container in containers(pod):
        security = container.get("securityContext") or {}
        for key, value in HARDENED.items():
            if security.get(key) != value:
                errors.append(f"{container.get('name')}: securityContext.{key} is not {value}")
        if (security.get("capabilities") or {}).get("drop") != ["ALL"]:
            errors.append(f"{container.get('name')}: capabilities not dropped")
    return errors


# Istio's sidecar injector, CNI mode (no istio-init) ----------------------------------------------


def istio(pod: Pod) -> Pod:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(ISTIO_LABEL) != "true":
        return pod
    spec = pod["spec"]
    if any(c.get("name") == ISTIO_PROXY for c in spec.get("containers") or []):
        return pod
    spec["containers"].append(
        {
            "name": ISTIO_PROXY,
            "image": "docker.io/istio/proxyv2:1.24.0",
            "args": ["proxy", "sidecar"],
            "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
        }
    )
    annotations = pod["metadata"].setdefault("annotations", {})
    annotations[kserve.ISTIO_INTERCEPTION] = "REDIRECT"
    annotations[kserve.ISTIO_STATUS] = json.dumps(
        {"containers": [ISTIO_PROXY], "initContainers": None, "volumes": []}
    )
    return pod


def istio_errors(pod: Pod) -> list[str]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(ISTIO_LABEL) != "true":
        return []
    errors = []
    if not any(c.get("name") == ISTIO_PROXY for c in pod["spec"]["containers"]):
        errors.append("no istio-proxy")
    init = pod["spec"].get("initContainers") or []
    if any(c["name"] == kserve.ISTIO_INIT for c in init):
        return errors  # not CNI mode: istio-init redirects, no uid needed
    for container in init:
        if container["name"] == names.STORAGE_INITIALIZER:
            uid = (container.get("securityContext") or {}).get("runAsUser")
            if uid != 1337:
                errors.append(f"storage-initializer runs as {uid}, not the proxy's 1337")
    return errors


# ours --------------------------------------------------------------------------------------


def ours(config: ClusterConfig, view: NamespaceView | None, namespace: str) -> Any:
    def mutate(pod: Pod) -> Pod:
        body = make_review(pod, namespace=namespace, uid="chain")
        response = review_body(body, config=config, namespace=view).response["response"]
        assert response["allowed"] is True
        if "patch" not in response:
            return pod
        ops = json.loads(base64.b64decode(response["patch"]))
        patched: Pod = jsonpatch.apply_patch(pod, ops)
        return patched

    return mutate


OURS = "kserve-cache"
KSERVE = "inferenceservice.serving.kserve.io"
POLICY = "hardening.policy-engine.example.com"  # sorts before KServe's
ISTIO = "istio-sidecar-injector.istio.io"  # sorts after KServe's, before ours


def chain(
    config: ClusterConfig, view: NamespaceView | None, namespace: str, *, ours_first: bool
) -> tuple[list[Mutator], list[Mutator], list[Validator]]:
    in_tree = [Mutator("AlwaysPullImages", always_pull), Mutator("LimitRanger", limit_ranger)]
    webhooks = [
        Mutator(POLICY, harden, reinvoke=True),
        Mutator(KSERVE, kserve.pod_mutator, reinvoke=True),
        Mutator(ISTIO, istio),
        # "0-...": a name that sorts before every other webhook
        Mutator(("0-" if ours_first else "") + OURS, ours(config, view, namespace), reinvoke=True),
    ]
    validators = [
        Validator("AlwaysPullImages", always_pull_errors),
        Validator("LimitRanger", limit_ranger_errors),
        Validator("policy-engine", hardening_errors),
        Validator("istio", istio_errors),
    ]
    return in_tree, webhooks, validators
