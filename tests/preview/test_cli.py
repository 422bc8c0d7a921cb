"""`kserve-cache preview` in-process: every kind, every output, explain, exit codes, bad input."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.podrules import pod_rule_errors, schema_errors
from tests.preview.conftest import DATA, load, write
from webhook import names

ENABLED = {names.ENABLED: "true"}


def opted_in(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    """A copy of obj with cache.kserve.io/enabled=true in the metadata at path."""
    out = copy.deepcopy(obj)
    holder = out
    for key in path:
        holder = holder[key]
    holder.setdefault("metadata", {}).setdefault("annotations", {}).update(ENABLED)
    return out


def kserve_pod() -> dict[str, Any]:
    pod = load("kserve-01-before-gs.json")
    pod["metadata"]["name"] = "iris-predictor-abc"
    pod["metadata"]["labels"] = {names.ISVC_LABEL: "iris", names.COMPONENT_LABEL: "predictor"}
    return opted_in(pod)


def isvc(mode: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((DATA / "sklearn-iris.yaml").read_text())
    if mode:
        obj["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = mode
    return obj


def valid(obj: dict[str, Any]) -> None:
    assert schema_errors(obj) is None, schema_errors(obj)
    if obj.get("kind") == "Pod":
        assert pod_rule_errors(obj) == []


def status(pod: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(pod["metadata"]["annotations"][names.STATUS])
    return data


# kinds -------------------------------------------------------------------------------------


def test_multi_document_mixed_kinds(preview: Any, tmp_path: Path) -> None:
    docs = [
        kserve_pod(),
        opted_in(load("kserve-06-raw-deployment.json"), "spec", "template"),
        opted_in(load("kserve-07-knative-service.json"), "spec", "template"),
        isvc(),
        load("review-08-not-kserve.json"),
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
         "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
             "metadata": kserve_pod()["metadata"],
             "spec": {"restartPolicy": "Never", "containers": [{"name": "kserve-container"}]},
         }}}}},
    ]  # fmt: skip
    source = write(tmp_path / "mixed.yaml", *docs)

    patches = preview("-f", str(source))
    assert patches.code == 0, patches.err
    rows = patches.json()
    assert [(r["document"], r["kind"], r["outcome"]) for r in rows] == [
        ("1", "Pod", "mutated"),
        ("2", "Deployment", "mutated"),
        ("3", "Service", "mutated"),
        ("4", "InferenceService", "mutated"),
        ("5", "AdmissionReview", "skipped"),
        ("6", "CronJob", "mutated"),
    ]
    assert all(r["patch"] for r in rows[:4])
    assert "document 5 (AdmissionReview keymaker/keymaker-keymaker-769579fd65-): skipped: " \
        "not-kserve" in patches.err  # fmt: skip

    objects = preview("-f", str(source), "-o", "json").json()
    assert objects["kind"] == "List"
    items = objects["items"]
    assert [i["kind"] for i in items] == [
        "Pod", "Deployment", "Service", "Pod", "Pod", "CronJob",
    ]  # fmt: skip
    pods = [
        items[0],
        {"apiVersion": "v1", "kind": "Pod", **items[1]["spec"]["template"]},
        items[3],
        {"apiVersion": "v1", "kind": "Pod",
         **items[5]["spec"]["jobTemplate"]["spec"]["template"]},
    ]  # fmt: skip
    for pod in pods:
        valid(pod)
        assert pod["spec"]["initContainers"][-1]["command"] == ["kserve-cache"]
        assert status(pod)["pvc"] == "kserve-model-cache"
    valid(items[1])
    valid(items[5])
    assert items[4] == load("review-08-not-kserve.json")["request"]["object"]


@pytest.mark.parametrize(
    ("mode", "label", "value"),
    [
        pytest.param(None, "serving.knative.dev/revision", "sklearn-iris-predictor-00001",
                     id="serverless-default"),
        pytest.param("Serverless", "serving.knative.dev/revision",
                     "sklearn-iris-predictor-00001", id="serverless"),
        pytest.param("RawDeployment", "app", "isvc.sklearn-iris-predictor", id="raw"),
        pytest.param("Standard", "app", "isvc.sklearn-iris-predictor", id="standard"),
    ],
)  # fmt: skip
def test_inference_service_in_both_deployment_modes(
    preview: Any, tmp_path: Path, mode: str | None, label: str, value: str
) -> None:
    source = write(tmp_path / "isvc.yaml", isvc(mode))
    run = preview("-f", str(source), "-o", "yaml")
    assert run.code == 0, run.err
    (pod,) = run.yaml()
    valid(pod)
    meta = pod["metadata"]
    assert meta["namespace"] == "models"
    assert meta["labels"][label] == value
    assert meta["labels"][names.ISVC_LABEL] == "sklearn-iris"
    assert meta["labels"][names.COMPONENT_LABEL] == "predictor"
    uri = "gs://kfserving-examples/models/sklearn/1.0/model"
    assert meta["annotations"][names.KSERVE_SOURCE_URI] == uri
    assert status(pod)["uri"] == uri
    assert status(pod)["revision"] == "v1"
    # KServe's downloader was there first; ours took its place and its name
    (init,) = pod["spec"]["initContainers"]
    assert init["name"] == "storage-initializer"
    assert init["args"][:2] == ["fetch", f"--uri={uri}"]
    # mount mode: the emptyDir KServe added is gone, the model is the read-only cache subPath
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["kserve-cache"]
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert mount == {
        "name": "kserve-cache",
        "mountPath": "/mnt/models",
        "subPath": f"models/{status(pod)['key']}",
        "readOnly": True,
    }


def test_no_kserve_shows_the_first_call(preview: Any, tmp_path: Path) -> None:
    source = write(tmp_path / "isvc.yaml", isvc())
    run = preview("-f", str(source), "--no-kserve")
    assert run.code == 0
    assert run.json() == []
    assert "skipped: awaiting-kserve" in run.err
    pod = preview("-f", str(source), "--no-kserve", "-o", "json").json()
    assert "initContainers" not in pod["spec"], "KServe's mutator was not emulated"
    assert pod["metadata"]["annotations"][names.KSERVE_SOURCE_URI].startswith("gs://")
    assert preview("-f", str(source), "--no-kserve", "--fail-on-skip").code == 3


def test_admission_review_is_taken_as_sent(preview: Any, tmp_path: Path) -> None:
    """No KServe emulation for a review: it is the literal request our webhook gets."""
    body = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": "models",
            "object": kserve_pod(),
        },
    }
    source = tmp_path / "review.json"
    source.write_text(json.dumps(body))
    run = preview("-f", str(source), "--explain")
    assert run.code == 0
    assert run.json() == []
    assert "reason     awaiting-kserve" in run.err


def test_workload_yaml_round_trips(preview: Any, tmp_path: Path) -> None:
    deployment = opted_in(load("kserve-06-raw-deployment.json"), "spec", "template")
    source = write(tmp_path / "deploy.yaml", deployment)
    run = preview("-f", str(source), "-o", "yaml")
    assert run.code == 0, run.err
    (out,) = run.yaml()
    valid(out)
    # everything but the template is the input's
    assert {k: v for k, v in out["spec"].items() if k != "template"} == {
        k: v for k, v in deployment["spec"].items() if k != "template"
    }
    assert out["metadata"] == deployment["metadata"]
    template = out["spec"]["template"]
    assert template["metadata"]["labels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert names.STATUS in template["metadata"]["annotations"]
    assert template["spec"]["initContainers"][0]["command"] == ["kserve-cache"]
    assert template["spec"]["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"

    # the output is a finished template: previewing it again changes nothing
    again = write(tmp_path / "again.yaml", out)
    second = preview("-f", str(again))
    assert second.code == 0
    assert second.json() == []
    assert "unchanged (already cached" in second.err


def test_knative_revision_fields_stay_in_the_template(preview: Any, tmp_path: Path) -> None:
    ksvc = opted_in(load("kserve-07-knative-service.json"), "spec", "template")
    ksvc["spec"]["template"]["spec"]["containerConcurrency"] = 4
    ksvc["spec"]["template"]["spec"]["timeoutSeconds"] = 300
    run = preview("-f", str(write(tmp_path / "ksvc.yaml", ksvc)), "-o", "json")
    assert run.code == 0, run.err
    spec = run.json()["spec"]["template"]["spec"]
    assert spec["containerConcurrency"] == 4
    assert spec["timeoutSeconds"] == 300
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        k: v for k, v in spec.items() if k not in ("containerConcurrency", "timeoutSeconds")
    }}  # fmt: skip
    valid(pod)


def test_stdin(preview: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(kserve_pod())))
    run = preview("-f", "-", "-o", "json")
    assert run.code == 0
    assert status(run.json())["key"].startswith("foo-")


# outputs -----------------------------------------------------------------------------------


def test_patch_applies_to_the_document_given(preview: Any, tmp_path: Path) -> None:
    """A pod KServe has not mutated yet: the patch is of the document as written (KServe's
    emulated injection included), never of the pod the webhook receives after it."""
    import jsonpatch

    pod = kserve_pod()
    source = write(tmp_path / "pod.yaml", pod)
    patch = preview("-f", str(source)).json()
    patched = preview("-f", str(source), "-o", "json").json()
    assert jsonpatch.apply_patch(pod, patch) == patched
    assert not any(op["op"] in ("move", "copy") for op in patch)
    # the first call, KServe not emulated: the webhook waits, and the patch is empty
    assert preview("-f", str(source), "--no-kserve").json() == []


def test_patch_of_a_workload_applies_to_the_workload(preview: Any, tmp_path: Path) -> None:
    import jsonpatch

    deployment = opted_in(load("kserve-06-raw-deployment.json"), "spec", "template")
    source = write(tmp_path / "deploy.yaml", deployment)
    patch = preview("-f", str(source)).json()
    patched = preview("-f", str(source), "-o", "json").json()
    assert patched["kind"] == "Deployment"
    assert jsonpatch.apply_patch(deployment, patch) == patched
    assert all(op["path"].startswith("/spec/template/") for op in patch)


def test_patch_of_an_inference_service_is_of_its_predictor_pod(
    preview: Any, tmp_path: Path
) -> None:
    import jsonpatch

    from webhook.kserve import predictor_pod

    obj = isvc()
    source = write(tmp_path / "isvc.yaml", obj)
    patch = preview("-f", str(source)).json()
    patched = preview("-f", str(source), "-o", "json").json()
    made = predictor_pod(obj, namespace="default").pod
    assert jsonpatch.apply_patch(made, patch) == patched


def test_diff(preview: Any, tmp_path: Path) -> None:
    source = write(tmp_path / "pod.yaml", kserve_pod())
    plain = preview("-f", str(source), "-o", "diff", "--color", "never")
    assert plain.code == 0
    assert plain.out.startswith("--- a/Pod/default/iris-predictor-abc (received)\n+++ b/")
    assert "\n+      subPath: models/foo-" in plain.out
    assert "\n-      name: kserve-provision-location\n" in plain.out
    assert "\x1b[" not in plain.out
    coloured = preview("-f", str(source), "-o", "diff", "--color", "always")
    assert "\x1b[32m+      subPath: models/foo-" in coloured.out
    assert "\x1b[31m-      name: kserve-provision-location\x1b[0m" in coloured.out
    # auto: capsys is no terminal
    assert "\x1b[" not in preview("-f", str(source), "-o", "diff").out


def test_explain_names_the_layers(preview: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("pvc: cluster-cache\nfsGroup: 4000\n")
    pod = kserve_pod()
    pod["metadata"]["annotations"][names.REVISION] = "r7"
    source = write(tmp_path / "pod.yaml", pod)
    run = preview(
        "-f", str(source), "--explain", "--config", str(config),
        "--namespace-annotation", "cache.kserve.io/serving-mode=copy",
    )  # fmt: skip
    assert run.code == 0, run.err
    rows = {
        line.split()[0]: line.split()[1:]
        for line in run.err.splitlines()
        if line.startswith("  ") and len(line.split()) == 3
    }
    assert rows["policy"] == ["opt-in", "built-in"]
    assert rows["pvc"] == ["cluster-cache", "cluster"]
    assert rows["fs-group"] == ["4000", "cluster"]
    assert rows["serving-mode"] == ["copy", "namespace"]
    assert rows["enabled"] == ["true", "pod"]
    assert rows["revision"] == ["r7", "pod"]
    assert "outcome    mutated" in run.err
    assert "model      gs://foo (from KServe's storage-initializer-sourceuri" in run.err


def test_explain_gives_the_skip_reason_and_a_hint(preview: Any, tmp_path: Path) -> None:
    pod = kserve_pod()
    del pod["metadata"]["annotations"][names.ENABLED]
    run = preview("-f", str(write(tmp_path / "pod.yaml", pod)), "--explain")
    assert run.code == 0
    assert "outcome    skipped" in run.err
    assert "reason     not-opted-in" in run.err
    assert 'hint       opt in with the annotation cache.kserve.io/enabled: "true"' in run.err


# namespaces --------------------------------------------------------------------------------


def test_namespace_file(preview: Any, tmp_path: Path) -> None:
    pod = kserve_pod()
    del pod["metadata"]["annotations"][names.ENABLED]
    source = write(tmp_path / "pod.yaml", pod)
    ns = write(
        tmp_path / "ns.yaml",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a", "annotations": {
            names.POLICY: "default-on", names.PVC: "team-a-cache"}}},
    )  # fmt: skip
    run = preview("-f", str(source), "--namespace-file", str(ns), "-o", "json")
    assert run.code == 0, run.err
    assert "document 1 (Pod team-a/iris-predictor-abc): mutated" in run.err
    assert status(run.json())["pvc"] == "team-a-cache"
    # another namespace: the file does not apply
    other = preview("-f", str(source), "--namespace-file", str(ns), "-n", "team-b")
    assert "skipped: not-opted-in" in other.err
    assert "--namespace-file has no Namespace team-b" in other.err


def test_namespace_flag_and_object_must_agree(preview: Any, tmp_path: Path) -> None:
    pod = kserve_pod()
    pod["metadata"]["namespace"] = "a"
    run = preview("-f", str(write(tmp_path / "pod.yaml", pod)), "-n", "b")
    assert run.code == 2
    assert "namespace 'a' does not match --namespace 'b'" in run.err
    assert run.out == ""


# exit codes and bad input ------------------------------------------------------------------


def test_fail_on_skip(preview: Any, tmp_path: Path) -> None:
    skipped = load("review-08-not-kserve.json")
    source = write(tmp_path / "two.yaml", kserve_pod(), skipped)
    assert preview("-f", str(source)).code == 0
    failed = preview("-f", str(source), "--fail-on-skip")
    assert failed.code == 3
    assert len(failed.json()) == 2, "the output is printed all the same"
    cached = write(tmp_path / "one.yaml", kserve_pod())
    assert preview("-f", str(cached), "--fail-on-skip").code == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("kind: Pod\n  bad: [indent\n", "not valid YAML or JSON", id="bad-yaml"),
        pytest.param("", "no documents", id="empty"),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: ok}\nspec:\n  containers: [{name: a}]\n"
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\n",
            "document 2 (ConfigMap settings): ConfigMap (v1) is not a kind preview understands",
            id="unknown-kind",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\n",
            "Service (v1) is not a kind",
            id="core-service-is-not-knative",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: empty}\nspec: {containers: []}\n",
            "document 1 (Pod empty): spec.containers: a pod needs at least one container",
            id="pod-without-containers",
        ),
        pytest.param(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
            "spec: {template: {spec: {}}}\n",
            "document 1 (Deployment d): spec.template.spec.containers",
            id="template-without-containers",
        ),
        pytest.param(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: "
            "{cache.kserve.io/enabled: true}}\nspec: {containers: [{name: a}]}\n",
            "metadata.annotations[cache.kserve.io/enabled]: must be a string",
            id="unquoted-annotation",
        ),
        pytest.param(
            "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n"
            "metadata: {name: m}\nspec: {}\n",
            "document 1 (InferenceService m): spec.predictor: missing",
            id="isvc-without-predictor",
        ),
        pytest.param(
            '{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            "request: missing",
            id="review-without-request",
        ),
        pytest.param("- 1\n- 2\n", "document 1.1: expected a mapping", id="not-objects"),
    ],
)
def test_bad_input(preview: Any, tmp_path: Path, text: str, message: str) -> None:
    source = tmp_path / "bad.yaml"
    source.write_text(text)
    run = preview("-f", str(source))
    assert run.code == 2
    assert message in run.err
    assert str(source) in run.err
    assert run.out == "", "nothing is printed for bad input"


def test_ignore_unknown(preview: Any, tmp_path: Path) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
    source = write(tmp_path / "mixed.yaml", cm, kserve_pod())
    run = preview("-f", str(source), "--ignore-unknown", "-o", "yaml")
    assert run.code == 0
    assert [d["kind"] for d in run.yaml()] == ["Pod"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--webhook-url", "https://x", "--config", "c.yaml"], "--webhook-url asks",
                     id="webhook-with-config"),
        pytest.param(["--cacert", "ca.crt"], "--cacert goes with --webhook-url", id="cacert"),
        pytest.param(["--namespace-annotation", "novalue"], "expected KEY=VALUE", id="ns-flag"),
        pytest.param(["--webhook-url", "ftp://x"], "expected https://", id="bad-url"),
    ],
)  # fmt: skip
def test_bad_flags(preview: Any, tmp_path: Path, argv: list[str], message: str) -> None:
    source = write(tmp_path / "pod.yaml", kserve_pod())
    run = preview("-f", str(source), *argv)
    assert run.code == 2
    assert message in run.err


def test_bad_config_and_missing_file(preview: Any, tmp_path: Path) -> None:
    source = write(tmp_path / "pod.yaml", kserve_pod())
    config = tmp_path / "config.yaml"
    config.write_text("pvc: Not_A_Name\n")
    run = preview("-f", str(source), "--config", str(config))
    assert run.code == 2
    assert "pvc" in run.err
    missing = preview("-f", str(tmp_path / "nope.yaml"))
    assert missing.code == 2
    assert "cannot read" in missing.err


def test_several_files(preview: Any, tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", kserve_pod())
    second = write(tmp_path / "b.yaml", load("review-08-not-kserve.json"))
    run = preview("-f", str(first), "-f", str(second), "-o", "yaml")
    assert run.code == 0
    assert [d["metadata"].get("name", "") for d in run.yaml()] == ["iris-predictor-abc", ""]
    bad = tmp_path / "c.yaml"
    bad.write_text("kind: Nothing\n")
    failed = preview("-f", str(first), "-f", str(bad))
    assert failed.code == 2
    assert f"{bad}: document 1 (Nothing)" in failed.err


@pytest.mark.parametrize(
    ("uris", "reason"),
    [
        pytest.param(
            [
                {"uri": "s3://models/llama", "mountPath": "/mnt/models/base"},
                {"uri": "s3://models/lora", "mountPath": "/mnt/models/lora"},
            ],
            "multiple-storage-uris",
            id="two",
        ),
        pytest.param(
            [{"uri": "s3://models/llama", "mountPath": "/mnt/models/base"}],
            "custom-model-path",
            id="own-path",
        ),
    ],
)
def test_storage_uris_say_what_the_webhook_says(
    preview: Any, tmp_path: Path, uris: list[dict[str, str]], reason: str
) -> None:
    from tests.golden_cases import make_review
    from webhook.clusterconfig import ClusterConfig
    from webhook.kserve import predictor_pod
    from webhook.review import review_body

    obj = isvc()
    predictor = obj["spec"]["predictor"]
    for framework in ("model", "sklearn"):
        if framework in predictor:
            predictor[framework].pop("storageUri", None)
    predictor["storageUris"] = uris
    source = write(tmp_path / "isvc.yaml", obj)
    run = preview("-f", str(source), "--explain")
    assert run.code == 0, run.err
    assert f"reason     {reason}" in run.err
    assert run.json() == []
    # the pod KServe's controller makes, sent to the webhook itself
    pod = predictor_pod(obj, namespace="default").pod
    answer = review_body(make_review(pod, namespace="default"), config=ClusterConfig())
    assert answer.decision.reason is not None
    assert answer.decision.reason.value == reason
    valid(pod)


def test_explain_says_the_pod_shape_chose_copy_mode(preview: Any, tmp_path: Path) -> None:
    obj = isvc()
    obj["metadata"]["annotations"][names.KSERVE_READONLY] = "false"
    source = write(tmp_path / "isvc.yaml", obj)
    run = preview("-f", str(source), "--explain", "-o", "yaml")
    assert run.code == 0, run.err
    rows = [line.split() for line in run.err.splitlines()]
    assert ["serving-mode", "copy", "pod", "shape"] in rows
    assert "serving mode copy instead of mount" in run.err
    (pod,) = run.yaml()
    mounts = pod["spec"]["containers"][0]["volumeMounts"]
    assert {"name": names.PROVISION_VOLUME, "mountPath": "/mnt/models", "readOnly": False} in mounts
