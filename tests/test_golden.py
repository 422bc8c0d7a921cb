"""Golden cases through `review()`: expected result, idempotency, schema and pod rules."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest

from tests.golden_cases import Case, load_cases, make_review
from tests.podrules import pod_rule_errors, schema_errors
from webhook.review import review_body

CASES = load_cases()


def run_case(case: Case) -> tuple[dict[str, Any], Any]:
    body = make_review(case.pod, namespace=case.namespace, uid="golden")
    result = review_body(body, config=case.config, namespace=case.view)
    return result.response, result.decision


def summary(case: Case) -> dict[str, Any]:
    _, decision = run_case(case)
    return {
        "outcome": decision.kind,
        "reason": decision.reason.value if decision.reason else None,
        "key": decision.key,
        "warnings": list(decision.warnings),
        "pod": decision.after,
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Case, update_golden: bool) -> None:
    got = summary(case)
    if update_golden:
        case.expected_file.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    assert case.expected_file.exists(), (
        f"no expected.json: run pytest --update-golden ({case.note})"
    )
    expected = json.loads(case.expected_file.read_text())
    assert got == expected, case.note


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_input_untouched_and_patch_reapplies(case: Case) -> None:
    pristine = copy.deepcopy(case.pod)
    response, decision = run_case(case)
    assert case.pod == pristine
    patch = response["response"].get("patch")
    if decision.kind == "mutated":
        assert response["response"]["patchType"] == "JSONPatch"
        ops = json.loads(base64.b64decode(patch))
        assert all(op["op"] in ("add", "remove", "replace") for op in ops)
        assert jsonpatch.apply_patch(case.pod, ops) == decision.after
        assert response["response"]["auditAnnotations"]["cache-key"] == decision.key
    else:
        assert patch is None
        assert decision.after == case.pod
    assert response["response"]["uid"] == "golden"
    assert response["response"]["allowed"] is True


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_second_pass_is_a_no_op(case: Case) -> None:
    _, first = run_case(case)
    again = make_review(dict(first.after), namespace=case.namespace)
    second = review_body(again, config=case.config, namespace=case.view).decision
    assert second.patch == []
    assert second.after == first.after


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_result_is_a_valid_pod(case: Case) -> None:
    _, decision = run_case(case)
    pod = dict(decision.after)
    assert pod_rule_errors(pod) == []
    if case.schema_valid:
        assert schema_errors(pod) is None
    else:
        assert schema_errors(pod) is not None, "case marked schema-invalid validates"


def test_every_golden_folder_is_complete() -> None:
    assert len(CASES) >= 20
    for case in CASES:
        assert (case.folder / "expected.json").exists(), case.name
        assert case.note, case.name


def test_golden_cases_cover_every_outcome() -> None:
    outcomes = {json.loads(c.expected_file.read_text())["outcome"] for c in CASES}
    reasons = {json.loads(c.expected_file.read_text())["reason"] for c in CASES}
    assert {"mutated", "skipped", "unchanged"} <= outcomes
    assert {
        "awaiting-kserve",
        "pvc-uri",
        "local-model-cache",
        "not-kserve",
        "not-predictor",
        "modelcar-uri",
        "volume-conflict",
        "foreign-model-mount",
        "not-opted-in",
        "windows-pod",
        "multiple-storage-uris",
        "custom-model-path",
        "name-conflict",
    } <= reasons
