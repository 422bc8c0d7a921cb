"""The review memo of the HTTP edge: identical pods (a ReplicaSet scaling up) get exactly the
answer `review()` gives them, with their own uid; anything that changes the answer (the pod, the
namespace's view, the config) misses; errors and pvc-missing skips are never remembered; the
memo stays within its size."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import orjson
import pytest

from tests.golden_cases import load_cases, make_review
from webhook.app import create_app
from webhook.clusterconfig import ClusterConfig
from webhook.config import ConfigStore
from webhook.memo import ReviewMemo
from webhook.namespaces import NamespaceView, StaticNamespaces
from webhook.review import parse_review, review, review_body

CASES = {case.name: case for case in load_cases()}
CREDENTIALS = CASES["03-kserve-after-s3-credentials"]


def post(app: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST /mutate straight through the ASGI app."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/mutate",
        "headers": [(b"content-type", b"application/json")],
    }
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], orjson.loads(sent[1]["body"])


def body_of(pod: dict[str, Any], uid: str, namespace: str = "models") -> bytes:
    return json.dumps(make_review(pod, namespace=namespace, uid=uid)).encode()


def expected(pod: dict[str, Any], uid: str, namespace: str = "models") -> dict[str, Any]:
    answer = review_body(make_review(pod, namespace=namespace, uid=uid), config=ClusterConfig())
    return json.loads(json.dumps(answer.response))


def test_identical_pods_get_the_core_answer_with_their_own_uid() -> None:
    app = create_app()
    memo = app.state.kc.memo
    pod = CREDENTIALS.pod
    answers = [post(app, body_of(pod, f"uid-{i}")) for i in range(5)]
    for i, (status, answer) in enumerate(answers):
        assert status == 200
        assert answer == expected(pod, f"uid-{i}")
        assert answer["response"]["uid"] == f"uid-{i}"
    assert "patch" in answers[0][1]["response"]
    assert (memo.hits, memo.misses, len(memo)) == (4, 1, 1)


def test_a_changed_pod_or_api_version_misses() -> None:
    app = create_app()
    pod = CREDENTIALS.pod
    post(app, body_of(pod, "a"))
    changed = copy.deepcopy(pod)
    changed["metadata"].setdefault("annotations", {})["cache.kserve.io/serving-mode"] = "copy"
    status, answer = post(app, body_of(changed, "b"))
    assert status == 200
    assert answer == expected(changed, "b")
    assert answer["response"]["patch"] != expected(pod, "b")["response"]["patch"]
    old = make_review(pod, namespace="models", uid="c")
    old["apiVersion"] = "admission.k8s.io/v1beta1"
    status, answer = post(app, json.dumps(old).encode())
    assert answer["apiVersion"] == "admission.k8s.io/v1beta1"
    assert app.state.kc.memo.misses == 3


def test_the_namespace_view_is_part_of_the_key() -> None:
    """Same pod, other namespace annotations: another answer, never the remembered one."""
    pod = CASES["22-not-opted-in"].pod
    namespaces = StaticNamespaces({"models": {}})
    app = create_app(namespaces=namespaces)
    _, off = post(app, body_of(pod, "a"))
    namespaces._annotations["models"] = {"cache.kserve.io/policy": "default-on"}
    _, on = post(app, body_of(pod, "b"))
    assert "patch" not in off["response"]
    assert "patch" in on["response"]
    assert app.state.kc.memo.hits == 0


def test_a_config_reload_empties_the_memo() -> None:
    store = ConfigStore(None)
    app = create_app(store=store)
    post(app, body_of(CREDENTIALS.pod, "a"))
    assert len(app.state.kc.memo) == 1
    store._config = ClusterConfig(servingMode="copy")  # what a reload does: a new object
    _, answer = post(app, body_of(CREDENTIALS.pod, "b"))
    assert app.state.kc.memo.hits == 0
    wanted = review_body(
        make_review(CREDENTIALS.pod, namespace="models", uid="b"), config=store.config
    ).response
    assert answer == json.loads(json.dumps(wanted))


def test_a_body_only_the_stdlib_parses_is_not_remembered() -> None:
    """NaN (stdlib only) would dump back as null: such a pod must not share a key."""
    app = create_app()
    raw = body_of(CREDENTIALS.pod, "a").replace(b'"spec": {', b'"spec": {"x": NaN, ', 1)
    assert b"NaN" in raw
    status, _ = post(app, raw)
    assert status == 200
    assert len(app.state.kc.memo) == 0


def test_pvc_missing_skips_and_errors_are_not_remembered() -> None:
    memo = ReviewMemo()
    config = ClusterConfig()
    request = parse_review(make_review(CREDENTIALS.pod, namespace="models", uid="a"))
    view = NamespaceView(name="models", annotations={}, claims={})
    key = memo.key(request, view=view, config=config)
    assert key is not None
    result = review(request, config=config, namespace=view)
    assert result.decision.reason is not None
    assert result.decision.reason.value == "pvc-missing"
    memo.put(key, result)
    assert len(memo) == 0
    broken = ClusterConfig.model_construct(**{**config.__dict__, "initContainer": None})
    failed = review(request, config=broken, namespace=None)
    assert failed.decision.kind == "error"
    memo.put(("k",), failed)
    assert len(memo) == 0


@pytest.mark.parametrize("size", [0, 3])
def test_the_memo_stays_within_its_size(size: int) -> None:
    app = create_app(memo_size=size)
    for i in range(size + 5):
        pod = copy.deepcopy(CREDENTIALS.pod)
        pod["metadata"]["generateName"] = f"pod-{i}-"
        status, answer = post(app, body_of(pod, f"u{i}"))
        assert status == 200
        assert answer == expected(pod, f"u{i}")
    memo = app.state.kc.memo
    assert len(memo) == size
    assert memo.hits == 0


def test_a_remembered_decision_keeps_every_field_but_the_pods_patch_and_policy() -> None:
    """What the edge reads of a remembered decision (outcome, reason, key, warnings: metrics
    and log lines) is the core's; a field added to Decision later must be kept here too."""
    from dataclasses import fields

    dropped = {"before", "after", "patch", "policy"}
    for case in (CREDENTIALS, CASES["11-volume-name-conflict"], CASES["25-pod-runs-as-root"]):
        request = parse_review(make_review(case.pod, namespace=case.namespace, uid="u"))
        result = review(request, config=case.config, namespace=case.view)
        memo = ReviewMemo()
        key = memo.key(request, view=case.view, config=case.config)
        assert key is not None
        memo.put(key, result)
        found = memo.get(key, request)
        assert found is not None
        _, decision = found
        for f in fields(decision):
            if f.name not in dropped:
                assert getattr(decision, f.name) == getattr(result.decision, f.name), f.name
        assert decision.patch == []
