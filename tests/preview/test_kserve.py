"""KServe's side, emulated: the predictor pod of an InferenceService and KServe's pod mutator,
checked against the KServe shapes transcribed from its own tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.podrules import pod_rule_errors, schema_errors
from webhook import kserve, names
from webhook.kserve import DeploymentMode, InferenceServiceError

DATA = Path(__file__).resolve().parent / "data"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def with_isvc_label(pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["metadata"].setdefault("labels", {})[names.ISVC_LABEL] = "foo"
    return out


def isvc(**predictor: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "iris", "namespace": "models"},
        "spec": {"predictor": predictor or {"model": {"storageUri": "s3://b/iris"}}},
    }


def test_injection_matches_kserve_fixture_02() -> None:
    before = with_isvc_label(load("kserve-01-before-gs.json"))
    expected = with_isvc_label(load("kserve-02-after-gs.json"))
    # fixture 02 comes from KServe's test config; the shipped default requests 100Mi
    expected["spec"]["initContainers"][0]["resources"]["requests"]["memory"] = "100Mi"
    original = copy.deepcopy(before)
    after = kserve.inject_storage_initializer(before)
    assert after == expected
    assert before == original, "the input must not be modified"
    assert kserve.inject_storage_initializer(after) == after, "a second pass adds nothing"


def test_pvc_uri_is_mounted_directly_like_fixture_04() -> None:
    before = with_isvc_label(load("kserve-04-before-pvc.json"))
    expected = with_isvc_label(load("kserve-04-after-pvc.json"))
    after = kserve.inject_storage_initializer(before)
    assert after == expected
    assert "initContainers" not in after["spec"]
    assert kserve.inject_storage_initializer(after) == after


@pytest.mark.parametrize(
    ("change", "mutates"),
    [
        pytest.param(lambda _: None, True, id="kserve-pod"),
        pytest.param(lambda p: p["metadata"]["labels"].clear(), False, id="no-isvc-label"),
        pytest.param(
            lambda p: p["metadata"]["annotations"].clear(), False, id="no-sourceuri-annotation"
        ),
        pytest.param(
            lambda p: p["metadata"]["annotations"].update(
                {names.KSERVE_SOURCE_URI: "oci://registry/model:1"}
            ),
            False,
            id="oci-modelcar",
        ),
        pytest.param(
            lambda p: p["spec"].update(
                {"initContainers": [{"name": "storage-initializer", "image": "x"}]}
            ),
            False,
            id="initializer-present",
        ),
    ],
)
def test_would_mutate(change: Any, mutates: bool) -> None:
    pod = with_isvc_label(load("kserve-01-before-gs.json"))
    change(pod)
    assert kserve.would_mutate(pod) is mutates
    assert (kserve.inject_storage_initializer(pod) != pod) is mutates


def test_predictor_pod_propagates_like_fixture_07() -> None:
    """Labels/annotations of the Knative revision template in KServe's controller test."""
    made = kserve.predictor_pod(load("kserve-07-isvc.json"), namespace="ignored")
    template = load("kserve-07-knative-service.json")["spec"]["template"]
    # the ServingRuntime's labels/annotations (key1) are not known offline
    want_labels = {k: v for k, v in template["metadata"]["labels"].items() if k != "key1"}
    want_annotations = {k: v for k, v in template["metadata"]["annotations"].items() if k != "key1"}
    meta = made.pod["metadata"]
    assert made.mode is DeploymentMode.SERVERLESS
    assert made.storage_uri == "s3://test/mnist/export"
    assert meta["namespace"] == "default"
    assert {k: meta["labels"][k] for k in want_labels} == want_labels
    assert {k: meta["annotations"][k] for k in want_annotations} == want_annotations
    assert [c["name"] for c in made.pod["spec"]["containers"]] == [names.KSERVE_CONTAINER]


def test_predictor_pod_drops_kserve_disallowed_annotations() -> None:
    obj = isvc(
        minReplicas=2,
        annotations={"team": "a", kserve.MIN_SCALE: "7"},
        model={"storageUri": "gs://b/m", "modelFormat": {"name": "sklearn"}},
    )
    obj["metadata"]["annotations"] = {
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        kserve.MAX_SCALE: "9",
        names.KSERVE_SOURCE_URI: "gs://stale",
        names.ENABLED: "true",
    }
    annotations = kserve.predictor_pod(obj, namespace="x").pod["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/last-applied-configuration" not in annotations
    assert kserve.MAX_SCALE not in annotations
    assert annotations[kserve.MIN_SCALE] == "2"  # from minReplicas, not the annotation
    assert annotations[names.KSERVE_SOURCE_URI] == "gs://b/m"  # from storageUri
    assert annotations[names.ENABLED] == "true"
    assert annotations["team"] == "a"


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        pytest.param(None, DeploymentMode.SERVERLESS, id="default"),
        pytest.param("Serverless", DeploymentMode.SERVERLESS, id="serverless"),
        pytest.param("Knative", DeploymentMode.SERVERLESS, id="knative"),
        pytest.param("RawDeployment", DeploymentMode.RAW, id="raw"),
        pytest.param("Standard", DeploymentMode.RAW, id="standard"),
    ],
)
def test_deployment_modes(value: str | None, mode: DeploymentMode) -> None:
    obj = isvc()
    if value:
        obj["metadata"]["annotations"] = {kserve.DEPLOYMENT_MODE: value}
    made = kserve.predictor_pod(obj, namespace="x")
    labels = made.pod["metadata"]["labels"]
    assert made.mode is mode
    assert labels[names.COMPONENT_LABEL] == names.PREDICTOR
    assert labels[names.ISVC_LABEL] == "iris"
    if mode is DeploymentMode.RAW:
        assert labels["app"] == "isvc.iris-predictor"
        assert kserve.MIN_SCALE not in made.pod["metadata"]["annotations"]
    else:
        assert labels["serving.knative.dev/revision"] == "iris-predictor-00001"
        assert made.pod["metadata"]["annotations"][kserve.MIN_SCALE] == "1"
    injected = kserve.inject_storage_initializer(made.pod)
    assert schema_errors(injected) is None
    assert pod_rule_errors(injected) == []


def test_custom_container_predictor_takes_storage_uri_env() -> None:
    made = kserve.predictor_pod(
        isvc(
            serviceAccountName="sa",
            containers=[
                {
                    "name": "server",
                    "image": "me/server:1",
                    "env": [
                        {"name": "STORAGE_URI", "value": "hf://org/model"},
                    ],
                },
                {"name": "sidecar", "image": "me/side:1"},
            ],
        ),
        namespace="x",
    )
    spec = made.pod["spec"]
    assert made.storage_uri == "hf://org/model"
    assert [c["name"] for c in spec["containers"]] == [names.KSERVE_CONTAINER, "sidecar"]
    assert spec["serviceAccountName"] == "sa"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param({"metadata": {}, "spec": {"predictor": {}}}, "metadata.name", id="no-name"),
        pytest.param({"metadata": {"name": "a"}, "spec": {}}, "spec.predictor", id="no-predictor"),
        pytest.param(
            {"metadata": {"name": "a"}, "spec": {"predictor": {"minReplicas": 1}}},
            "no model",
            id="no-model",
        ),
        pytest.param(
            {
                "metadata": {"name": "a", "annotations": {kserve.DEPLOYMENT_MODE: "ModelMesh"}},
                "spec": {"predictor": {"model": {}}},
            },
            "ModelMesh",
            id="modelmesh",
        ),
        pytest.param(
            {
                "metadata": {"name": "a", "annotations": {names.ENABLED: True}},
                "spec": {"predictor": {"model": {}}},
            },
            "must be a string",
            id="unquoted-bool",
        ),
    ],
)
def test_bad_inference_services(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(InferenceServiceError, match=message):
        kserve.predictor_pod(obj, namespace="x")
