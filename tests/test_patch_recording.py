"""The patch `mutate()` records as it changes the pod (no diff afterwards): for every shape the
input's members can take where the webhook writes (missing, null, empty, taken, other types),
the `jsonpatch` library applied to the input gives exactly the mutated pod, no operation is a
no-op, and the recorded patch does what the reference diff (`make_patch`) does."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import jsonpatch
import jsonpointer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.golden_cases import load_cases, make_review
from webhook import __version__, names
from webhook.clusterconfig import ClusterConfig, ServingMode, parse_config
from webhook.mutate import status_annotation
from webhook.patch import make_patch
from webhook.review import Decision, parse_review, review, review_body
from webhook.template import FetchSpec

CASES = {c.name: c for c in load_cases()}
BASE = CASES["02-kserve-after-gs"].pod
MOUNT_MODE = parse_config("policy: default-on\n", source="test")  # null annotations opt in too
COPY_MODE = parse_config("policy: default-on\nservingMode: copy\n", source="test")

Edit = Callable[[dict[str, Any]], None]


def _parent(pod: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    node: Any = pod
    for part in path[:-1]:
        node = node[part]
    return node


def _set(*path: str | int, value: Any) -> Edit:
    """Set the member (or list item: one past the end appends) at `path`."""

    def edit(pod: dict[str, Any]) -> None:
        node = _parent(pod, path)
        if isinstance(node, list) and path[-1] == len(node):
            node.append(value)
        else:
            node[path[-1]] = value

    return edit


def _drop(*path: str | int) -> Edit:
    def edit(pod: dict[str, Any]) -> None:
        del _parent(pod, path)[path[-1]]

    return edit


EMPTY_DIR = {"name": names.PROVISION_VOLUME, "emptyDir": {}}
OTHER_VOLUME = {"name": "data", "emptyDir": {}}
SHAPES: dict[str, list[Edit]] = {
    "as-given": [],
    "annotations-null-source-in-args": [_set("metadata", "annotations", value=None)],
    "status-annotation-stale": [
        _set("metadata", "annotations", names.STATUS, value='{"key":"old"}')
    ],
    "status-annotation-not-a-string": [_set("metadata", "annotations", names.STATUS, value=7)],
    "volumes-missing": [_drop("spec", "volumes")],
    "volumes-null": [_set("spec", "volumes", value=None)],
    "volumes-empty": [_set("spec", "volumes", value=[])],
    "emptydir-between-others": [
        _set("spec", "volumes", value=[OTHER_VOLUME, EMPTY_DIR, OTHER_VOLUME])
    ],
    "emptydir-twice": [_set("spec", "volumes", value=[EMPTY_DIR, OTHER_VOLUME, EMPTY_DIR])],
    "emptydir-still-mounted": [
        _set(
            "spec",
            "containers",
            0,
            "volumeMounts",
            1,
            value={"name": names.PROVISION_VOLUME, "mountPath": "/x"},
        )
    ],
    "security-null": [_set("spec", "securityContext", value=None)],
    "security-empty": [_set("spec", "securityContext", value={})],
    "security-fsgroup-set": [_set("spec", "securityContext", value={"fsGroup": 5})],
    "security-both-set": [
        _set("spec", "securityContext", value={"fsGroup": 5, "fsGroupChangePolicy": "Always"})
    ],
    "security-not-an-object": [_set("spec", "securityContext", value=[])],
    "model-mount-missing": [_drop("spec", "containers", 0, "volumeMounts")],
    "model-mount-null": [_set("spec", "containers", 0, "volumeMounts", value=None)],
    "model-mount-elsewhere": [
        _set("spec", "containers", 0, "volumeMounts", value=[{"name": "x", "mountPath": "/x"}])
    ],
    "model-mount-trailing-slash": [
        _set("spec", "containers", 0, "volumeMounts", 0, "mountPath", value="/mnt/models/")
    ],
    "second-container-reads-models": [
        _set(
            "spec",
            "containers",
            1,
            value={
                "name": "agent",
                "volumeMounts": [
                    {"name": "x", "mountPath": "/x"},
                    {"name": names.PROVISION_VOLUME, "mountPath": "/mnt/models", "readOnly": True},
                ],
            },
        )
    ],
    "init-container-after-ours": [
        _set(
            "spec",
            "initContainers",
            1,
            value={
                "name": "warm",
                "volumeMounts": [
                    {"name": names.PROVISION_VOLUME, "mountPath": "/mnt/models", "readOnly": True}
                ],
            },
        )
    ],
    "cache-volume-there-already": [
        _set(
            "spec",
            "volumes",
            1,
            value={
                "name": names.CACHE_VOLUME,
                "persistentVolumeClaim": {"claimName": "kserve-model-cache"},
            },
        )
    ],
    "odd-names-in-annotations": [_set("metadata", "annotations", "a~b/c", value="x")],
}


def _pod(edits: list[Edit]) -> dict[str, Any]:
    pod = copy.deepcopy(BASE)
    for edit in edits:
        edit(pod)
    return pod


def _decide(pod: dict[str, Any], config: ClusterConfig | None = None) -> Decision:
    body = make_review(pod, namespace="default", uid="u")
    return review_body(body, config=config or MOUNT_MODE).decision


def _check(pod: dict[str, Any], decision: Decision) -> None:
    assert decision.kind in ("mutated", "unchanged", "skipped"), decision
    if decision.kind == "skipped":
        assert decision.patch == []
        return
    pristine = copy.deepcopy(pod)
    assert jsonpatch.apply_patch(pod, decision.patch) == decision.after
    assert pod == pristine  # the input is never written
    for op in decision.patch:
        assert op["op"] in ("add", "remove", "replace")
        if op["op"] == "replace":
            old = jsonpointer.resolve_pointer(pod, op["path"])
            assert json.dumps(old, sort_keys=True) != json.dumps(op["value"], sort_keys=True), op
    # the reference diff reaches the same pod, and agrees on what is a change at all
    reference = make_patch(copy.deepcopy(pod), copy.deepcopy(dict(decision.after)))
    assert jsonpatch.apply_patch(pod, reference) == decision.after
    assert bool(reference) == bool(decision.patch)


@pytest.mark.parametrize("mode", ["mount", "copy"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_recorded_patch_reproduces_the_pod(shape: str, mode: str) -> None:
    pod = _pod(SHAPES[shape])
    config = COPY_MODE if mode == "copy" else MOUNT_MODE
    decision = _decide(pod, config)
    if shape == "security-not-an-object":
        assert decision.kind in ("mutated", "error")  # the API server refuses such a pod anyway
        if decision.kind == "error":
            return
    assert decision.kind == "mutated", (shape, decision.reason, decision.detail)
    _check(pod, decision)
    again = _decide(copy.deepcopy(dict(decision.after)), config)
    assert again.kind == "unchanged"
    assert again.patch == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_golden_case(case: str) -> None:
    c = CASES[case]
    pod = copy.deepcopy(c.pod)
    body = make_review(pod, namespace=c.namespace, uid="u")
    decision = review_body(body, config=c.config, namespace=c.view).decision
    if decision.kind == "mutated":
        assert jsonpatch.apply_patch(pod, decision.patch) == decision.after
        reference = make_patch(copy.deepcopy(pod), copy.deepcopy(dict(decision.after)))
        assert jsonpatch.apply_patch(pod, reference) == decision.after
    else:
        assert decision.patch == []


def test_the_shapes_reach_different_operations() -> None:
    """The table above covers add of a member, add of an item, replace and remove."""
    seen: set[str] = set()
    for shape, edits in SHAPES.items():
        decision = _decide(_pod(edits))
        if shape == "security-not-an-object" and decision.kind == "error":
            continue
        seen |= {op["op"] for op in decision.patch}
    assert seen == {"add", "replace", "remove"}


@settings(max_examples=300, deadline=None)
@given(uri=st.text(max_size=30), pvc=st.text(max_size=10), revision=st.text(max_size=10))
def test_the_status_annotation_is_the_text_json_dumps_writes(
    uri: str, pvc: str, revision: str
) -> None:
    """orjson writes it fast; a re-invocation compares it with the text of earlier releases
    (`json.dumps`, sorted, compact, ASCII), so it must be that text for any value."""
    request = parse_review(make_review(copy.deepcopy(BASE), namespace="default", uid="u"))
    decision = review(request, config=MOUNT_MODE).decision
    assert decision.policy is not None
    spec = FetchSpec(
        uri=uri,
        key="k-0123456789abcdef",
        revision=revision,
        mode=ServingMode.MOUNT,
        pvc=pvc,
        secret=None,
        cache_mount_path="/cache",
        isvc="i",
        namespace="n",
        endpoint=uri[:5],
    )
    expected = {
        "key": spec.key,
        "pvc": pvc,
        "uri": uri,
        "mode": "mount",
        "version": __version__,
        "by": decision.policy.status_sources(),
    }
    if revision:
        expected["revision"] = revision
    if spec.endpoint:
        expected["endpoint"] = spec.endpoint
    text = json.dumps(expected, sort_keys=True, separators=(",", ":"))
    assert status_annotation(spec, decision.policy) == text
