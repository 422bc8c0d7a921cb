"""Properties of `review()` on generated pods, annotations and configs: it never raises; a
well-typed pod comes back valid (pod rules, patch re-applied by the `jsonpatch` library) or
with a named skip; a second pass changes nothing; the input is never modified."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.fuzz.strategies import JSON, NAMESPACE_ANNOTATIONS, TEXT, configs, pods
from tests.golden_cases import make_review
from tests.podrules import pod_rule_errors
from webhook.clusterconfig import ClusterConfig, ConfigError, parse_config
from webhook.namespaces import NamespaceView
from webhook.review import BadReview, parse_review, review, review_body
from webhook.skips import SkipReason

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def answer(
    pod: dict[str, Any], config: ClusterConfig, annotations: dict[str, str] | None
) -> tuple[dict[str, Any], Any]:
    body = make_review(pod, namespace="team", uid="fuzz")
    result = review_body(
        body, config=config, namespace=NamespaceView(name="team", annotations=annotations)
    )
    return result.response["response"], result.decision


@FUZZ
@given(pod=pods(), config=configs(), annotations=NAMESPACE_ANNOTATIONS)
def test_well_typed_pods_come_back_valid_or_skipped(
    pod: dict[str, Any], config: ClusterConfig, annotations: dict[str, str] | None
) -> None:
    pristine = copy.deepcopy(pod)
    response, decision = answer(pod, config, annotations)
    assert pod == pristine, "the input pod was modified"
    assert response["uid"] == "fuzz"
    assert response["allowed"] is True
    assert decision.kind in ("mutated", "unchanged", "skipped"), decision
    event(decision.kind if decision.reason is None else f"skipped: {decision.reason.value}")
    if decision.kind == "skipped":
        assert isinstance(decision.reason, SkipReason)
        assert "patch" not in response
        return
    if decision.kind == "mutated":
        ops = json.loads(base64.b64decode(response["patch"]))
        assert all(op["op"] in ("add", "remove", "replace") for op in ops)
        assert jsonpatch.apply_patch(pod, ops) == decision.after
    after = json.loads(json.dumps(decision.after))
    if not pod_rule_errors(pod):  # what was valid stays valid
        assert pod_rule_errors(after) == []
    # idempotent: the webhook re-invoked on its own output changes nothing
    again_response, again = answer(after, config, annotations)
    assert again.kind in ("unchanged", "skipped"), again
    assert "patch" not in again_response
    assert again.after == after


@FUZZ
@given(obj=st.dictionaries(TEXT, JSON, max_size=6) | pods().map(lambda p: _scramble(p)))
def test_arbitrary_objects_never_raise(obj: dict[str, Any]) -> None:
    """Ill-typed pods (only a direct caller can send them): an answer, never an exception;
    with onError=admit the pod is always allowed."""
    for config in (ClusterConfig(), ClusterConfig.model_validate({"policy": "forced"})):
        response, decision = answer(obj, config, {"cache.kserve.io/policy": "forced"})
        assert response["allowed"] is True
        assert decision.kind in ("mutated", "unchanged", "skipped", "error")
        if decision.kind == "error":
            assert decision.warnings, "an internal error must be reported in a warning"


def _scramble(pod: dict[str, Any]) -> dict[str, Any]:
    """Swap the types of the fields the webhook reads (lists for maps, strings for lists)."""
    pod = copy.deepcopy(pod)
    spec = pod.get("spec", {})
    for key, wrong in (("volumes", {"a": 1}), ("initContainers", "x"), ("securityContext", [])):
        if key in spec:
            spec[key] = wrong
    pod.setdefault("metadata", {})["annotations"] = ["not", "a", "map"]
    return pod


ENVELOPES = st.one_of(
    JSON,
    st.builds(
        lambda api, kind, request: {"apiVersion": api, "kind": kind, "request": request},
        st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "v1"]),
        st.sampled_from(["AdmissionReview", "Pod"]),
        st.fixed_dictionaries(
            {},
            optional={
                "uid": st.one_of(TEXT, st.integers()),
                "kind": st.one_of(JSON, st.just({"kind": "Pod"})),
                "operation": st.sampled_from(["CREATE", "UPDATE", "DELETE", 1]),
                "namespace": st.one_of(TEXT, st.none(), st.integers()),
                "object": st.one_of(JSON, pods()),
                "dryRun": JSON,
            },
        ),
    ),
)


@FUZZ
@given(body=ENVELOPES)
def test_arbitrary_envelopes_are_answered_or_refused_clearly(body: Any) -> None:
    try:
        request = parse_review(body)
    except BadReview as exc:
        problem = str(exc)
    else:
        problem = ""
        result = review(request, config=ClusterConfig())
        assert result.response["kind"] == "AdmissionReview"
    event("refused" if problem else "answered")


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=200),
        st.dictionaries(TEXT, JSON, max_size=5).map(json.dumps),
        st.builds(
            lambda key, value: f"{key}: {value}\n",
            st.sampled_from(
                ["policy", "pvc", "servingMode", "fsGroup", "podOverrides", "initContainer"]
            ),
            st.one_of(TEXT, st.integers().map(str)),
        ),
    )
)
def test_broken_config_text_is_a_config_error(text: str) -> None:
    """Whatever is in the config file: a valid config or a ConfigError, never anything else."""
    try:
        config: ClusterConfig | None = parse_config(text, source="fuzz.yaml")
    except ConfigError as exc:
        config, problem = None, str(exc)
    else:
        problem = ""
    assert (config is None) == bool(problem)
    assert config is not None or problem.startswith("fuzz.yaml: ")
