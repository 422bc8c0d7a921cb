"""`preview` core: documents in, what the webhook does to each of their pods out. Pure: the
cluster config and Namespace annotations come in as data, and every pod goes through
`review.review()`, the function `/mutate` calls, inside an AdmissionReview built here.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import jsonpatch
import yaml

from webhook import kserve, names
from webhook.clusterconfig import ClusterConfig
from webhook.kserve import DeploymentMode, InferenceServiceError
from webhook.namespaces import NamespaceView
from webhook.patch import make_patch
from webhook.policy import Policy
from webhook.review import BadReview, OutcomeKind, parse_review, review
from webhook.selection import ModelSource, find_model_source
from webhook.skips import SkipReason

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE: Final = "default"

# Where each workload keeps its pod template.
WORKLOADS: Final[Mapping[tuple[str, str], tuple[str, ...]]] = {
    ("apps", "Deployment"): ("spec", "template"),
    ("apps", "ReplicaSet"): ("spec", "template"),
    ("apps", "StatefulSet"): ("spec", "template"),
    ("apps", "DaemonSet"): ("spec", "template"),
    ("batch", "Job"): ("spec", "template"),
    ("batch", "CronJob"): ("spec", "jobTemplate", "spec", "template"),
    ("serving.knative.dev", "Service"): ("spec", "template"),
    ("serving.knative.dev", "Configuration"): ("spec", "template"),
}
# Fields of a Knative revision template's spec that are not PodSpec fields.
KNATIVE_REVISION_FIELDS: Final = frozenset(
    {"containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"}
)
KINDS_HELP: Final = (
    "Pod, Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, Knative Service or "
    "Configuration, InferenceService, AdmissionReview, List"
)

HINTS: Final[Mapping[SkipReason, str]] = {
    SkipReason.NOT_OPTED_IN: (
        'opt in with the annotation cache.kserve.io/enabled: "true" on the InferenceService, '
        "or ask an admin for cache.kserve.io/policy: default-on on the Namespace"
    ),
    SkipReason.AWAITING_KSERVE: (
        "the webhook waits for KServe's storage-initializer and is called again after it "
        "(drop --no-kserve to see that second call)"
    ),
    SkipReason.NOT_KSERVE: "only pods labelled serving.kserve.io/inferenceservice are cached",
    SkipReason.NOT_PREDICTOR: "only pods labelled component=predictor are cached",
    SkipReason.NO_STORAGE_URI: (
        "give the InferenceService a storageUri, or the annotation cache.kserve.io/storage-uri"
    ),
    SkipReason.PVC_URI: "the model is already on a volume; nothing to cache",
    SkipReason.POLICY_DISABLED: "the namespace or cluster policy is disabled",
    SkipReason.PVC_MISSING: (
        "create the ReadWriteMany claim in this namespace, or name another one with "
        "cache.kserve.io/pvc"
    ),
}


class Shape(StrEnum):
    POD = "pod"
    WORKLOAD = "workload"
    INFERENCE_SERVICE = "inferenceservice"
    REVIEW = "admissionreview"


class PreviewError(ValueError):
    """Bad input; the message names the document and the problem."""


@dataclass(frozen=True)
class Target:
    """One document, and the pod the webhook is asked about."""

    label: str  # "document 2 (Deployment default/web)"
    index: str
    kind: str
    name: str
    namespace: str
    shape: Shape
    document: Mapping[str, Any]
    pod: dict[str, Any]  # as the webhook receives it
    body: dict[str, Any]  # the AdmissionReview sent to review() or to a webhook
    template_path: tuple[str, ...] = ()
    revision_fields: Mapping[str, Any] = field(default_factory=dict)
    kserve_note: str = ""
    mode: DeploymentMode | None = None
    given: Mapping[str, Any] | None = None  # the pod before KServe's pod mutator (emulated)

    def put_back(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        """The document with `pod` in it: the workload with this template, else the pod."""
        if self.shape is not Shape.WORKLOAD:
            return copy.deepcopy(dict(pod))
        out = copy.deepcopy(dict(self.document))
        holder: dict[str, Any] = out
        for key in self.template_path[:-1]:
            holder = holder[key]
        template: dict[str, Any] = dict(holder.get(self.template_path[-1]) or {})
        template["metadata"] = copy.deepcopy(pod.get("metadata") or {})
        if not template["metadata"]:
            del template["metadata"]
        template["spec"] = {**copy.deepcopy(pod.get("spec") or {}), **self.revision_fields}
        holder[self.template_path[-1]] = template
        return out


@dataclass(frozen=True)
class Result:
    """What the webhook (local or remote) answered for one target."""

    target: Target
    outcome: OutcomeKind
    reason: SkipReason | None
    detail: str
    key: str | None
    patch: list[dict[str, Any]]
    after: dict[str, Any]
    warnings: tuple[str, ...]
    allowed: bool
    policy: Policy | None = None
    source: ModelSource | None = None
    remote: str | None = None

    @property
    def skipped(self) -> bool:
        return self.outcome in ("skipped", "error")

    @property
    def before_object(self) -> dict[str, Any]:
        return self.target.put_back(self.target.pod)

    @property
    def patched_object(self) -> dict[str, Any]:
        return self.target.put_back(self.after)

    @property
    def output_patch(self) -> list[dict[str, Any]]:
        """The JSON patch of the document given: it turns a Pod or workload as written into
        the object `-o yaml` prints (KServe's emulated injection included), an
        AdmissionReview's pod as the webhook answered; for an InferenceService, the predictor
        pod KServe's controller creates (before any webhook)."""
        t = self.target
        if t.shape is Shape.REVIEW:
            return list(self.patch)
        if t.shape is Shape.INFERENCE_SERVICE:
            return make_patch(copy.deepcopy(dict(t.given or t.pod)), copy.deepcopy(self.after))
        if t.given is None:  # the webhook received the document's pod as written
            prefix = "".join("/" + part for part in t.template_path)
            return [{**op, "path": prefix + op["path"]} for op in self.patch]
        return make_patch(copy.deepcopy(dict(t.document)), self.patched_object)


# documents -----------------------------------------------------------------------------------


def parse_documents(text: str, *, source: str) -> list[tuple[str, Any]]:
    """(index, object) for every document of a YAML or JSON stream; `List`s are expanded."""
    try:
        loaded = [json.loads(text)] if text.lstrip().startswith(("{", "[")) else None
    except ValueError:
        loaded = None
    if loaded is None:
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise PreviewError(f"{source}: not valid YAML or JSON: {exc}") from exc
    out: list[tuple[str, Any]] = []
    position = 0
    for doc in loaded:
        if doc is None:
            continue
        position += 1
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and "items" in doc:
            items = doc.get("items")
            if not isinstance(items, list):
                raise PreviewError(f"document {position} (List): items is not a list")
            out.extend((f"{position}.{n}", item) for n, item in enumerate(items, 1))
        elif isinstance(doc, list):
            out.extend((f"{position}.{n}", item) for n, item in enumerate(doc, 1))
        else:
            out.append((str(position), doc))
    if not out:
        raise PreviewError(f"{source}: no documents")
    return out


def _group(api_version: object) -> str:
    text = str(api_version or "")
    return text.rsplit("/", 1)[0] if "/" in text else ""


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _check_strings(meta: Mapping[str, Any], where: str) -> None:
    for section in ("labels", "annotations"):
        values = meta.get(section)
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}metadata.{section}: expected a mapping")
        for key, value in values.items():
            if not isinstance(value, str):
                raise ValueError(
                    f"{where}metadata.{section}[{key}]: must be a string, got "
                    f"{type(value).__name__} {value!r} (quote it in YAML)"
                )


def check_pod(pod: Mapping[str, Any], *, where: str = "") -> None:
    """Raise ValueError for a pod the API server would refuse before any webhook sees it."""
    if "metadata" in pod and not isinstance(pod["metadata"], Mapping):
        raise ValueError(f"{where}metadata: expected a mapping")
    _check_strings(_meta(pod), where)
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}spec: missing or not a mapping")
    for key in ("containers", "initContainers", "volumes"):
        items = spec.get(key)
        if key == "containers" and not items:
            raise ValueError(f"{where}spec.containers: a pod needs at least one container")
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise ValueError(f"{where}spec.{key}: expected a list of mappings")
        for position, item in enumerate(items):
            if not isinstance(item.get("name"), str) or not item["name"]:
                raise ValueError(f"{where}spec.{key}[{position}].name: missing")


def make_review(pod: Mapping[str, Any], *, namespace: str, uid: str) -> dict[str, Any]:
    """An AdmissionReview v1 for a Pod CREATE, as the API server sends it."""
    kind = {"group": "", "version": "v1", "kind": "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "kserve-cache-preview"},
            "object": pod,
            "oldObject": None,
            "dryRun": True,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def _namespace_of(meta: Mapping[str, Any], given: str | None, fallback: str) -> str:
    own = meta.get("namespace")
    if own is not None and not isinstance(own, str):
        raise ValueError("metadata.namespace: not a string")
    if own and given and own != given:
        # kubectl refuses the same mismatch
        raise ValueError(f"the object's namespace {own!r} does not match --namespace {given!r}")
    return own or given or fallback


def plan(
    documents: Sequence[tuple[str, Any]],
    *,
    namespace: str | None = None,
    fallback_namespace: str = DEFAULT_NAMESPACE,
    kserve_first: bool = True,
    ignore_unknown: bool = False,
) -> list[Target]:
    """One Target per document. Raises PreviewError naming the first bad document.

    The namespace of a pod: the object's, else `namespace` (which must not contradict the
    object's, as with kubectl), else `fallback_namespace`.

    `kserve_first`: apply KServe's pod mutator (emulated) before ours, as the API server
    does in the normal order; False shows the first call, where our webhook waits for it.
    An AdmissionReview is taken as it is: it is the literal request.
    """
    targets: list[Target] = []
    for index, doc in documents:
        label = f"document {index}"
        if not isinstance(doc, Mapping):
            raise PreviewError(f"{label}: expected a mapping, got {type(doc).__name__}")
        kind = str(doc.get("kind") or "")
        meta = _meta(doc)
        name = str(meta.get("name") or meta.get("generateName") or "")
        label = f"document {index} ({kind or 'no kind'}{' ' + name if name else ''})"
        try:
            target = _target(
                doc,
                index=index,
                kind=kind,
                name=name,
                namespace=namespace,
                fallback=fallback_namespace,
                kserve_first=kserve_first,
            )
        except _Unknown as exc:
            if ignore_unknown:
                logger.info("%s: not previewed: %s", label, exc)
                continue
            raise PreviewError(f"{label}: {exc}") from None
        except (ValueError, BadReview) as exc:
            raise PreviewError(f"{label}: {exc}") from exc
        targets.append(target)
    return targets


class _Unknown(ValueError):
    pass


def _target(
    doc: Mapping[str, Any],
    *,
    index: str,
    kind: str,
    name: str,
    namespace: str | None,
    fallback: str,
    kserve_first: bool,
) -> Target:
    group = _group(doc.get("apiVersion"))
    uid = f"kserve-cache-preview-{index}"
    meta = _meta(doc)
    if "metadata" in doc and not isinstance(doc["metadata"], Mapping):
        raise ValueError("metadata: expected a mapping")

    if group == "admission.k8s.io" and kind == "AdmissionReview":
        request = parse_review(doc)
        if request.kind == "Pod":
            check_pod(request.object, where="request.object.")
        pod_meta = _meta(request.object)
        shown = str(pod_meta.get("name") or pod_meta.get("generateName") or request.uid)
        return _finish(
            index,
            kind,
            shown,
            request.namespace,
            Shape.REVIEW,
            doc,
            request.object,
            dict(doc),
            kserve_note="as sent in the AdmissionReview",
        )

    if group == "" and kind == "Pod":
        ns = _namespace_of(meta, namespace, fallback)
        check_pod(doc)
        as_given = dict(doc)
        pod, note = _kserve(as_given, kserve_first)
        return _finish(
            index,
            kind,
            name,
            ns,
            Shape.POD,
            doc,
            pod,
            make_review(pod, namespace=ns, uid=uid),
            kserve_note=note,
            given=as_given if pod is not as_given else None,
        )

    path = WORKLOADS.get((group, kind))
    if path is not None:
        ns = _namespace_of(meta, namespace, fallback)
        template: Any = doc
        for key in path:
            template = template.get(key) if isinstance(template, Mapping) else None
        where = ".".join(path) + "."
        if not isinstance(template, Mapping):
            raise ValueError(f"{where[:-1]}: missing or not a mapping")
        spec = template.get("spec")
        spec = dict(spec) if isinstance(spec, Mapping) else spec
        revision_fields: dict[str, Any] = {}
        if group == "serving.knative.dev" and isinstance(spec, dict):
            revision_fields = {k: spec.pop(k) for k in list(spec) if k in KNATIVE_REVISION_FIELDS}
        as_pod: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod"}
        if template.get("metadata") is not None:
            as_pod["metadata"] = copy.deepcopy(template["metadata"])
        as_pod["spec"] = copy.deepcopy(spec)
        check_pod(as_pod, where=where)
        pod, note = _kserve(as_pod, kserve_first)
        return _finish(
            index,
            kind,
            name,
            ns,
            Shape.WORKLOAD,
            doc,
            pod,
            make_review(pod, namespace=ns, uid=uid),
            template_path=path,
            revision_fields=revision_fields,
            kserve_note=note,
            given=as_pod if pod is not as_pod else None,
        )

    if group == "serving.kserve.io" and kind == "InferenceService":
        ns = _namespace_of(meta, namespace, fallback)
        try:
            made = kserve.predictor_pod(doc, namespace=ns)
        except InferenceServiceError as exc:
            raise ValueError(str(exc)) from exc
        check_pod(made.pod, where="predictor pod ")
        pod, note = _kserve(made.pod, kserve_first)
        note = f"predictor pod ({made.mode.value}); {note}"
        return _finish(
            index,
            kind,
            name,
            ns,
            Shape.INFERENCE_SERVICE,
            doc,
            pod,
            make_review(pod, namespace=ns, uid=uid),
            kserve_note=note,
            mode=made.mode,
            given=made.pod,
        )

    shown = f"{kind} ({doc.get('apiVersion')})" if kind else "an object without kind"
    raise _Unknown(f"{shown} is not a kind preview understands; expected {KINDS_HELP}")


def _kserve(pod: dict[str, Any], enabled: bool) -> tuple[dict[str, Any], str]:
    if not kserve.would_mutate(pod):
        return pod, "as given (KServe's pod mutator adds nothing)"
    if not enabled:
        return pod, "before KServe's pod mutator (--no-kserve)"
    return (
        kserve.pod_mutator(pod),
        "after KServe's pod mutator (emulated)",
    )


def _finish(
    index: str,
    kind: str,
    name: str,
    namespace: str,
    shape: Shape,
    doc: Mapping[str, Any],
    pod: dict[str, Any],
    body: dict[str, Any],
    *,
    template_path: tuple[str, ...] = (),
    revision_fields: Mapping[str, Any] | None = None,
    kserve_note: str = "",
    mode: DeploymentMode | None = None,
    given: Mapping[str, Any] | None = None,
) -> Target:
    shown = f"{namespace}/{name}" if name else namespace
    return Target(
        label=f"document {index} ({kind} {shown})",
        index=index,
        kind=kind,
        name=name,
        namespace=namespace,
        shape=shape,
        document=doc,
        pod=pod,
        body=body,
        template_path=template_path,
        revision_fields=dict(revision_fields or {}),
        kserve_note=kserve_note,
        mode=mode,
        given=given,
    )


# evaluation ----------------------------------------------------------------------------------


def evaluate(
    target: Target,
    *,
    config: ClusterConfig,
    namespace: NamespaceView | None,
) -> Result:
    """Ask the local core: `review()` on the target's AdmissionReview."""
    answer = review(parse_review(target.body), config=config, namespace=namespace)
    decision = answer.decision
    response = answer.response["response"]
    after = dict(decision.after) if decision.patch else copy.deepcopy(target.pod)
    return Result(
        target=target,
        outcome=decision.kind,
        reason=decision.reason,
        detail=decision.detail,
        key=decision.key,
        patch=list(decision.patch),
        after=after,
        warnings=tuple(response.get("warnings") or ()),
        allowed=bool(response.get("allowed")),
        policy=decision.policy,
        source=find_model_source(target.pod),
    )


class ResponseError(ValueError):
    """A webhook's answer is not a usable AdmissionReview response."""


def from_response(target: Target, body: Any, *, url: str) -> Result:
    """The Result of a webhook's AdmissionReview answer: its patch applied to the pod."""
    response = body.get("response") if isinstance(body, Mapping) else None
    if not isinstance(response, Mapping):
        raise ResponseError("the answer has no response object")
    expected_uid = target.body["request"]["uid"]
    if response.get("uid") != expected_uid:
        raise ResponseError(f"response.uid {response.get('uid')!r} != {expected_uid!r}")
    patch: list[dict[str, Any]] = []
    if response.get("patch"):
        if response.get("patchType") != "JSONPatch":
            raise ResponseError(f"patchType {response.get('patchType')!r} is not JSONPatch")
        try:
            patch = json.loads(base64.b64decode(response["patch"], validate=True))
            after = jsonpatch.apply_patch(target.pod, patch)
        except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise ResponseError(f"the patch cannot be applied: {exc}") from exc
    else:
        after = copy.deepcopy(target.pod)
    audit = response.get("auditAnnotations")
    audit = audit if isinstance(audit, Mapping) else {}
    raw_reason = audit.get("skip-reason")
    try:
        reason = SkipReason(raw_reason) if raw_reason else None
    except ValueError:
        reason = None
    allowed = bool(response.get("allowed"))
    outcome: OutcomeKind
    if not allowed:
        outcome = "error"
    elif patch:
        outcome = "mutated"
    elif raw_reason:
        outcome = "skipped"
    else:
        outcome = "unchanged"
    status = response.get("status")
    detail = str(status.get("message", "")) if isinstance(status, Mapping) else ""
    return Result(
        target=target,
        outcome=outcome,
        reason=reason,
        detail=detail or (str(raw_reason) if raw_reason and reason is None else ""),
        key=audit.get("cache-key"),
        patch=patch,
        after=after,
        warnings=tuple(str(w) for w in response.get("warnings") or ()),
        allowed=allowed,
        source=find_model_source(target.pod),
        remote=url,
    )


# rendering -----------------------------------------------------------------------------------


def render_patches(results: Sequence[Result]) -> str:
    """One document: its JSON patch. Several: a list of {document, kind, name, ..., patch}."""
    if len(results) == 1:
        return json.dumps(results[0].output_patch, indent=2) + "\n"
    rows = [
        {
            "document": r.target.index,
            "kind": r.target.kind,
            "name": r.target.name,
            "namespace": r.target.namespace,
            "outcome": r.outcome,
            "patch": r.output_patch,
        }
        for r in results
    ]
    return json.dumps(rows, indent=2) + "\n"


def render_objects(results: Sequence[Result], *, fmt: str) -> str:
    """The patched objects as YAML documents, or JSON (a `List` when there are several)."""
    objects = [r.patched_object for r in results]
    if fmt == "json":
        if len(objects) == 1:
            return json.dumps(objects[0], indent=2) + "\n"
        return json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2) + "\n"
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def _yaml(obj: Any) -> list[str]:
    # sorted keys: a field the webhook rewrote in another order is not shown as changed
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False).splitlines(keepends=True)


def render_diff(results: Sequence[Result], *, color: bool = False) -> str:
    """Unified diffs of each object as the webhook receives it and as it returns it."""
    chunks: list[str] = []
    for r in results:
        where = f"{r.target.kind}/{r.target.namespace}/{r.target.name or r.target.index}"
        lines = difflib.unified_diff(
            _yaml(r.before_object),
            _yaml(r.patched_object),
            fromfile=f"a/{where} (received)",
            tofile=f"b/{where} (patched)",
        )
        for line in lines:
            text = line if line.endswith("\n") else line + "\n"
            chunks.append(_colour(text) if color else text)
    return "".join(chunks)


_COLOURS: Final = (("+++", "1"), ("---", "1"), ("@@", "36"), ("+", "32"), ("-", "31"))


def _colour(line: str) -> str:
    for prefix, code in _COLOURS:
        if line.startswith(prefix):
            return f"\x1b[{code}m{line.rstrip(chr(10))}\x1b[0m\n"
    return line


def summary(result: Result) -> str:
    """One line: what happened to this document (printed to stderr)."""
    t = result.target
    if result.outcome == "mutated":
        return f"{t.label}: mutated (cache key {result.key})"
    if result.outcome == "unchanged":
        return f"{t.label}: unchanged (already cached: {result.key})"
    if result.outcome == "error":
        return f"{t.label}: error: {result.detail or 'the webhook could not apply the cache'}"
    reason = result.reason.value if result.reason else "skipped"
    detail = f" ({result.detail})" if result.detail else ""
    return f"{t.label}: skipped: {reason}{detail}"


def explain(result: Result) -> str:
    """Each setting, its value and the layer that decided it; the skip reason and a hint."""
    t = result.target
    lines = [f"{t.label}", f"  pod        {t.kserve_note}"]
    if result.remote:
        lines.append(f"  answered   by {result.remote}")
    lines.append(f"  outcome    {result.outcome}")
    if result.reason:
        lines.append(
            f"  reason     {result.reason.value}" + (f": {result.detail}" if result.detail else "")
        )
        hint = HINTS.get(result.reason)
        if hint:
            lines.append(f"  hint       {hint}")
    if result.source:
        lines.append(f"  model      {result.source.uri} (from {_origin(result.source)})")
    if result.key:
        lines.append(f"  cache key  {result.key}")
    rows = _rows(result)
    if rows:
        width = max(len(r[0]) for r in rows) + 2
        value_width = max(len(r[1] or "-") for r in rows) + 2
        lines.append(f"  {'setting':<{width}}{'value':<{value_width}}layer")
        lines.extend(f"  {s:<{width}}{(v or '-'):<{value_width}}{layer}" for s, v, layer in rows)
    lines.extend(f"  warning    {w}" for w in result.warnings)
    return "\n".join(lines) + "\n"


def _origin(source: ModelSource) -> str:
    return {
        "annotation": f"the {names.STORAGE_URI} annotation",
        "kserve": "KServe's storage-initializer-sourceuri annotation",
        "kserve-args": "the args of KServe's storage-initializer",
        "status": f"the {names.STATUS} annotation of an earlier pass",
    }.get(source.origin.value, source.origin.value)


def _rows(result: Result) -> list[tuple[str, str, str]]:
    if result.policy is not None:
        return result.policy.explain()
    # a remote answer: what its status annotation says was decided
    annotations = result.after.get("metadata", {}).get("annotations") or {}
    try:
        status = json.loads(annotations.get(names.STATUS, ""))
    except ValueError:
        return []
    if not isinstance(status, dict):
        return []
    by_raw = status.get("by")
    by: dict[str, Any] = by_raw if isinstance(by_raw, dict) else {}
    layers = {"default": "built-in", "ns": "namespace", "shape": "pod shape"}
    values = _remote_values(result, status)
    settings = {"mode": "serving-mode", "fsGroup": "fs-group"}
    return [
        (
            settings.get(short, short),
            values.get(short) or "(not in the answer)",
            layers.get(str(layer), str(layer)),
        )
        for short, layer in by.items()
    ]


def _remote_values(result: Result, status: Mapping[str, Any]) -> dict[str, str]:
    """What a remote answer shows of each setting: the status annotation, and the patched
    pod itself (its fsGroup, our init container's secret, the pod's own annotations)."""
    after = result.after
    annotations = (after.get("metadata") or {}).get("annotations") or {}
    spec = after.get("spec") or {}
    values = {k: str(status.get(k) or "") for k in ("pvc", "mode", "revision")}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    values["fsGroup"] = "" if fs_group is None else str(fs_group)
    enabled = annotations.get(names.ENABLED)
    values["enabled"] = str(enabled).strip().lower() if enabled is not None else ""
    # a secret the webhook added is the last secretRef of our init container's envFrom
    initializer = next(
        (
            c
            for c in spec.get("initContainers") or ()
            if isinstance(c, Mapping) and c.get("name") == names.STORAGE_INITIALIZER
        ),
        {},
    )
    refs = [
        str(item["secretRef"].get("name"))
        for item in initializer.get("envFrom") or ()
        if isinstance(item, Mapping) and isinstance(item.get("secretRef"), Mapping)
    ]
    values["secret"] = refs[-1] if refs else ""
    # the policy let it through: opt-in needs enabled=true, so a cached pod without it was
    # decided by another mode, which the answer does not name
    if status.get("key") and (status.get("by") or {}).get("policy") == "default":
        values["policy"] = "opt-in"
    return values


NamespaceLookup = Callable[[str], NamespaceView | None]


def run_all(
    targets: Sequence[Target],
    *,
    config: ClusterConfig,
    namespaces: NamespaceLookup,
) -> list[Result]:
    """`evaluate` every target with its namespace's view."""
    return [evaluate(t, config=config, namespace=namespaces(t.namespace)) for t in targets]
