"""`review()`: one AdmissionReview in, one AdmissionReview out. The HTTP server, `preview` and
the tests all go through it. Pure: the namespace's annotations are passed in as data.

Two error channels: a malformed review raises `BadReview` (the edge answers HTTP 400); a pod
the cache cannot be applied to is admitted unchanged with a named skip reason.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from webhook import names, template
from webhook.clusterconfig import ClusterConfig, ServingMode
from webhook.mutate import copy_mode_reason, fetch_spec, mutate
from webhook.namespaces import ClaimInfo, NamespaceView
from webhook.patch import encode_patch
from webhook.policy import Layer, Policy, resolve_policy
from webhook.selection import (
    Origin,
    check_initializer_shape,
    check_os,
    check_pod,
    check_source,
    find_init_container,
    find_model_source,
    is_placeholder_uri,
    metadata,
)
from webhook.skips import Skip, SkipReason
from webhook.template import FLAG_OF, unsupported

logger = logging.getLogger(__name__)

API_VERSIONS: Final = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
WARNING_MAX: Final = 512

OutcomeKind = Literal["mutated", "unchanged", "skipped", "error"]


class BadReview(ValueError):
    """The body is not an AdmissionReview we can answer; the message says what is wrong."""


@dataclass(frozen=True)
class AdmissionRequest:
    api_version: str
    uid: str
    operation: str
    kind: str
    namespace: str
    object: dict[str, Any]
    dry_run: bool = False


@dataclass(frozen=True)
class Decision:
    """What the core decided for one pod (everything `preview --explain` shows)."""

    kind: OutcomeKind
    reason: SkipReason | None = None
    detail: str = ""
    key: str | None = None
    policy: Policy | None = None
    before: Mapping[str, Any] = field(default_factory=dict)
    after: Mapping[str, Any] = field(default_factory=dict)
    patch: list[dict[str, Any]] = field(default_factory=list)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Review:
    response: dict[str, Any]
    decision: Decision


def parse_review(body: Any) -> AdmissionRequest:
    """Validate the AdmissionReview envelope (never the pod: it stays a raw dict)."""
    if not isinstance(body, Mapping):
        raise BadReview("expected a JSON object (an AdmissionReview)")
    api_version = body.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise BadReview(f"apiVersion must be one of {list(API_VERSIONS)}, got {api_version!r}")
    if body.get("kind") != "AdmissionReview":
        raise BadReview(f"kind must be 'AdmissionReview', got {body.get('kind')!r}")
    request = body.get("request")
    if not isinstance(request, Mapping):
        raise BadReview("request: missing or not an object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise BadReview("request.uid: missing or not a string")
    kind = request.get("kind")
    kind_name = kind.get("kind") if isinstance(kind, Mapping) else None
    if not isinstance(kind_name, str):
        raise BadReview("request.kind.kind: missing or not a string")
    operation = request.get("operation")
    if not isinstance(operation, str):
        raise BadReview("request.operation: missing or not a string")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise BadReview("request.object: not an object")
    # Only the request's namespace, which the API server sets from the URL it authorised:
    # never the object's own metadata.namespace, which a caller can write freely (taking it
    # would answer with another namespace's policy and claims).
    namespace = request.get("namespace") or ""
    if not isinstance(namespace, str):
        raise BadReview("request.namespace: not a string")
    return AdmissionRequest(
        api_version=str(api_version),
        uid=uid,
        operation=operation,
        kind=kind_name,
        namespace=namespace,
        object=obj or {},
        dry_run=bool(request.get("dryRun", False)),
    )


def unsupported_settings(policy: Policy) -> list[str]:
    """What of `policy`'s read-only/on-miss settings fetch cannot do yet (see FETCH_SUPPORTS)."""
    needed = ("read-only", "on-miss") if policy.read_only else ()
    return [s for s in needed if FLAG_OF[s] not in template.FETCH_SUPPORTS]


def _truncate(text: str) -> str:
    return text if len(text) <= WARNING_MAX else text[: WARNING_MAX - 3] + "..."


def decide(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    config: ClusterConfig,
    namespace_annotations: Mapping[str, str] | None,
    claims: Mapping[str, ClaimInfo] | None = None,
) -> Decision:
    """Decide and mutate one pod. Never raises Skip: a skip is a Decision.

    `claims`, when known, are the namespace's PersistentVolumeClaims: a missing cache claim
    would leave the pod Pending forever, so the pod is admitted without the cache instead.
    """
    policy: Policy | None = None
    notes: tuple[str, ...] = ()
    try:
        check_pod(pod, namespace=namespace, excluded=config.excludedNamespaces)
        _, annotations = metadata(pod)
        policy = resolve_policy(
            cluster=config,
            namespace_annotations=namespace_annotations,
            pod_annotations=annotations,
            namespace=namespace,
        )
        if policy.skip is not None:
            raise Skip(policy.skip)
        check_os(pod)
        source = find_model_source(pod)
        kserve_pending = (
            source is not None
            and source.origin is Origin.KSERVE
            and find_init_container(pod, names.STORAGE_INITIALIZER) is None
        )
        awaiting = kserve_pending and not config.injectWithoutKServe
        if awaiting and source is not None and is_placeholder_uri(source.uri):
            raise Skip(SkipReason.AWAITING_KSERVE, "KServe resolves the storage: spec")
        source = check_source(source)
        if awaiting:
            raise Skip(SkipReason.AWAITING_KSERVE, "KServe's pod mutator has not run yet")
        check_initializer_shape(pod)
        if claims is not None:
            claim = claims.get(policy.pvc)
            if claim is None:
                raise Skip(
                    SkipReason.PVC_MISSING,
                    f"PersistentVolumeClaim {policy.pvc!r} not found in namespace {namespace!r}",
                )
            if "ReadWriteMany" not in claim.access_modes:
                notes = (
                    f"kserve-cache: PersistentVolumeClaim {policy.pvc!r} in namespace "
                    f"{namespace!r} is not ReadWriteMany ({', '.join(claim.access_modes)}): "
                    "pods on other nodes cannot mount it",
                )
        if policy.serving_mode is ServingMode.MOUNT:
            why = copy_mode_reason(pod)
            if why is not None:
                policy = dataclasses.replace(
                    policy,
                    serving_mode=ServingMode.COPY,
                    sources={**policy.sources, "serving-mode": Layer.SHAPE},
                    warnings=(
                        *policy.warnings,
                        f"kserve-cache: serving mode copy instead of mount: {why}",
                    ),
                )
        if (
            policy.read_only
            and policy.on_miss == "private"
            and policy.serving_mode is ServingMode.MOUNT
            and not unsupported_settings(policy)
        ):
            # a read-only consumer downloads a miss into its own emptyDir: copy mode
            policy = dataclasses.replace(
                policy,
                serving_mode=ServingMode.COPY,
                sources={
                    **policy.sources,
                    "serving-mode": policy.sources.get("on-miss", Layer.CLUSTER),
                },
            )
        spec = fetch_spec(pod, policy, source=source, config=config, namespace=namespace)
        missing = unsupported(spec)
        if missing:
            policy = dataclasses.replace(
                policy,
                warnings=(
                    *policy.warnings,
                    *(
                        f"kserve-cache: {names.PREFIX}{setting} is not applied: this "
                        f"release's fetch has no --{FLAG_OF[setting]} yet"
                        for setting in missing
                    ),
                ),
            )
        after, patch = mutate(
            pod, policy, source=source, config=config, namespace=namespace, spec=spec
        )
    except Skip as skip:
        warnings = policy.warnings if policy else ()
        if skip.reason in (
            SkipReason.INVALID_ANNOTATION,
            SkipReason.VOLUME_CONFLICT,
            SkipReason.NAME_CONFLICT,
            SkipReason.FOREIGN_MODEL_MOUNT,
            SkipReason.PVC_MISSING,
            SkipReason.WINDOWS_POD,
            SkipReason.MULTIPLE_STORAGE_URIS,
            SkipReason.CUSTOM_MODEL_PATH,
        ):
            warnings = (*warnings, f"kserve-cache: pod admitted without the cache: {skip}")
        return Decision(
            kind="skipped",
            reason=skip.reason,
            detail=skip.detail,
            policy=policy,
            before=pod,
            after=pod,
            warnings=tuple(_truncate(w) for w in warnings),
        )
    key = spec.key
    return Decision(
        kind="mutated" if patch else "unchanged",
        key=key,
        policy=policy,
        before=pod,
        after=after,
        patch=patch,
        warnings=tuple(_truncate(w) for w in (*policy.warnings, *notes)),
    )


def _response(request: AdmissionRequest, decision: Decision, *, allowed: bool) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": request.uid, "allowed": allowed}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = encode_patch(decision.patch)
    if decision.warnings:
        response["warnings"] = list(decision.warnings)
    audit: dict[str, str] = {}
    if decision.key:
        audit["cache-key"] = decision.key
    if decision.reason:
        audit["skip-reason"] = decision.reason.value
    if audit:
        response["auditAnnotations"] = audit
    if not allowed:
        response["status"] = {
            "code": 500,
            "message": "kserve-cache could not apply the model cache and is set to refuse pods "
            "(onError: refuse)",
        }
    return {"apiVersion": request.api_version, "kind": "AdmissionReview", "response": response}


def review(
    request: AdmissionRequest,
    *,
    config: ClusterConfig,
    namespace: NamespaceView | None = None,
) -> Review:
    """Answer one admission request."""
    if request.kind != "Pod" or request.operation != "CREATE":
        decision = Decision(
            kind="skipped",
            reason=SkipReason.NOT_POD_CREATE,
            detail=f"{request.operation} {request.kind}",
        )
        return Review(_response(request, decision, allowed=True), decision)
    annotations = namespace.annotations if namespace else None
    extra = (namespace.warning,) if namespace and namespace.warning else ()
    try:
        decision = decide(
            request.object,
            namespace=request.namespace,
            config=config,
            namespace_annotations=annotations,
            claims=namespace.claims if namespace else None,
        )
    except Exception as exc:  # the cache is an optimisation: fail open, loudly
        logger.exception("internal error reviewing pod in namespace %s", request.namespace)
        message = f"kserve-cache: internal error, pod admitted without the cache: {exc}"
        decision = Decision(kind="error", detail=str(exc), warnings=(_truncate(message),))
        allowed = config.onError == "admit"
        return Review(_response(request, decision, allowed=allowed), decision)
    if extra and decision.kind != "skipped":
        decision = Decision(**{**decision.__dict__, "warnings": (*extra, *decision.warnings)})
    return Review(_response(request, decision, allowed=True), decision)


def review_body(
    body: Any,
    *,
    config: ClusterConfig,
    namespace: NamespaceView | None = None,
) -> Review:
    """`parse_review` then `review`: raises BadReview for a malformed envelope."""
    return review(parse_review(body), config=config, namespace=namespace)
