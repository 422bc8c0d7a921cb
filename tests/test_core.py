"""The pure core: cache keys, order convergence beside KServe's pod mutator, hostile values,
invariants."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tests.golden_cases import make_review
from tests.podrules import pod_rule_errors, schema_errors
from webhook import names
from webhook.clusterconfig import ClusterConfig, parse_config
from webhook.keys import cache_key, is_valid_key, normalize_uri
from webhook.namespaces import NamespaceView
from webhook.review import decide, review_body

GOLDEN = Path(__file__).parent / "golden"


def golden_input(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / name / "input.json").read_text())
    return data


BEFORE = golden_input("01-kserve-before-gs")  # what KServe's pod mutator receives
AFTER_KSERVE = golden_input("02-kserve-after-gs")  # what it makes of it


def kserve_mutator(pod: dict[str, Any]) -> dict[str, Any]:
    """KServe's pod mutator as the fixtures show it: inject unless a storage-initializer exists."""
    spec = pod.get("spec", {})
    if any(c.get("name") == "storage-initializer" for c in spec.get("initContainers") or []):
        return pod
    out = copy.deepcopy(pod)
    uri = out["metadata"]["annotations"][names.KSERVE_SOURCE_URI]
    injected = copy.deepcopy(AFTER_KSERVE["spec"]["initContainers"][0])
    injected["args"] = [uri, "/mnt/models"]
    out["spec"].setdefault("initContainers", []).append(injected)
    out["spec"].setdefault("volumes", []).append({"name": names.PROVISION_VOLUME, "emptyDir": {}})
    for container in out["spec"]["containers"]:
        if container["name"] == "kserve-container":
            container.setdefault("volumeMounts", []).append(
                {"name": names.PROVISION_VOLUME, "mountPath": "/mnt/models", "readOnly": True}
            )
    return out


def ours(pod: dict[str, Any], config: ClusterConfig | None = None) -> dict[str, Any]:
    decision = decide(
        pod, namespace="default", config=config or ClusterConfig(), namespace_annotations=None
    )
    return dict(decision.after)


def run_chain(pod: dict[str, Any], order: list[str], config: ClusterConfig | None = None) -> Any:
    """Apply webhooks in `order`, re-invoking until nothing changes (reinvocationPolicy)."""
    steps = {"kserve": kserve_mutator, "ours": lambda p: ours(p, config)}
    for _ in range(3):
        before = pod
        for name in order:
            pod = steps[name](pod)
        if pod == before:
            return pod
    raise AssertionError("webhooks did not converge")


def test_kserve_fixture_emulation_matches_fixture() -> None:
    assert kserve_mutator(BEFORE) == AFTER_KSERVE


def test_order_b_kserve_first_then_us() -> None:
    result = run_chain(BEFORE, ["kserve", "ours"])
    assert result == ours(AFTER_KSERVE)
    init = result["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["storage-initializer"]
    assert init[0]["command"] == ["kserve-cache"]
    # KServe's env vars are kept on the taken-over init container
    assert {e["name"] for e in AFTER_KSERVE["spec"]["initContainers"][0]["env"]} <= {
        e["name"] for e in init[0]["env"]
    }


def test_order_a_we_are_called_first_and_converge_on_reinvocation() -> None:
    first = ours(BEFORE)
    assert first == BEFORE  # awaiting-kserve: untouched
    decision = decide(
        BEFORE, namespace="default", config=ClusterConfig(), namespace_annotations=None
    )
    assert decision.reason is not None
    assert decision.reason.value == "awaiting-kserve"
    assert run_chain(BEFORE, ["ours", "kserve"]) == run_chain(BEFORE, ["kserve", "ours"])


def test_order_c_kserve_reinvoked_after_us_does_nothing() -> None:
    mutated = ours(AFTER_KSERVE)
    assert kserve_mutator(mutated) == mutated
    assert ours(kserve_mutator(mutated)) == mutated


def test_inject_without_kserve_injects_at_once_and_kserve_then_skips() -> None:
    config = parse_config("injectWithoutKServe: true")
    first = ours(BEFORE, config)
    assert first != BEFORE
    assert kserve_mutator(first) == first
    assert run_chain(BEFORE, ["ours", "kserve"], config) == first


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://bucket/model", "s3://bucket/model/"),
        ("S3://bucket/model", "s3://bucket/model"),
        ("https://Example.COM/m.tar.gz", "https://example.com/m.tar.gz"),
        ("  gs://b/m  ", "gs://b/m"),
    ],
)
def test_cache_key_normalizes_equivalent_uris(a: str, b: str) -> None:
    assert cache_key(a) == cache_key(b)


def test_cache_key_shape_and_sensitivity() -> None:
    key = cache_key("s3://bucket/Models/BERT_base.v2/", "r1")
    assert key.startswith("bert-base-v2-")
    assert is_valid_key(key)
    assert len(key.rsplit("-", 1)[1]) == 16
    assert cache_key("s3://bucket/m", "r1") != cache_key("s3://bucket/m", "r2")
    assert cache_key("s3://bucket/m") != cache_key(
        "s3://bucket/M"
    )  # object stores are case-sensitive
    assert len(cache_key("s3://b/" + "x" * 200)) == 40 + 1 + 16
    assert is_valid_key(cache_key("s3://b/___"))  # nothing readable left: the hash alone
    assert normalize_uri("hf://Org/Model") == "hf://Org/Model"
    for bad in ("../x", "a/b", "A-0123456789abcdef", "", "x-0123"):
        assert not is_valid_key(bad)


HOSTILE = [
    "a\nb: c",
    "x\r\ninjected: true",
    "{{ .Values.evil }}",
    "${CACHE_KEY}",
    "'\"`$(rm -rf /)`",
    "../../../etc/passwd",
    "x" * 10_000,
    "\u202etxt.exe",
    "名前",
    "- item\n- item2",
    "key: [1, {a: b}]",
    "\x00nul",
]
SETTABLE = [
    "pvc",
    "secret",
    "revision",
    "serving-mode",
    "storage-uri",
    "enabled",
    "fs-group",
    "policy",
]


def shape(value: Any) -> Any:
    """The structure of a value: mappings and lists kept, every leaf replaced by its type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def strip_status(pod: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(pod)
    out["metadata"]["annotations"] = {
        k: v for k, v in out["metadata"]["annotations"].items() if not k.startswith(names.PREFIX)
    }
    return out


BASE = golden_input("02-kserve-after-gs")


@pytest.mark.parametrize("setting", SETTABLE)
@pytest.mark.parametrize("value", HOSTILE, ids=lambda v: repr(v[:12]))
def test_hostile_annotation_values_never_change_structure(setting: str, value: str) -> None:
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.PREFIX + setting] = value
    body = make_review(pod, namespace="default")
    result = review_body(body, config=ClusterConfig(), namespace=None)
    decision = result.decision
    benign = dict(
        decide(BASE, namespace="default", config=ClusterConfig(), namespace_annotations=None).after
    )
    if decision.kind == "mutated":
        assert shape(strip_status(dict(decision.after))) == shape(strip_status(benign))
        dumped = json.dumps(decision.after)
        # a rejected value appears nowhere in the injected pod but in its own annotation
        assert dumped.count(json.dumps(value)[1:-1]) <= 1 + (
            setting in ("secret", "revision")
            and decision.policy is not None
            and value in (decision.policy.secret, decision.policy.revision)
        )
        assert pod_rule_errors(dict(decision.after)) == []
        assert schema_errors(dict(decision.after)) is None
    else:
        assert decision.after == pod
        assert result.response["response"]["allowed"] is True
    assert decision.warnings, "a hostile value must be reported"
    assert all(len(w) <= 512 for w in decision.warnings)


def test_hostile_namespace_values_are_reported_and_ignored() -> None:
    view = NamespaceView(
        name="team",
        annotations={
            names.POLICY: "forced\nextra: 1",
            names.PVC: "{{ x }}",
            names.FS_GROUP: "0x10",
            names.POD_OVERRIDES: "pvc,image",
        },
    )
    body = make_review(BASE, namespace="team")
    decision = review_body(body, config=ClusterConfig(), namespace=view).decision
    assert decision.kind == "mutated"  # the pod opted in; namespace values fell back
    assert decision.policy is not None
    assert decision.policy.pvc == "kserve-model-cache"
    assert decision.policy.fs_group == 1000
    assert len(decision.warnings) == 4
    assert all("'team'" in w for w in decision.warnings)


def test_unknown_fields_survive() -> None:
    pod = copy.deepcopy(BASE)
    pod["spec"]["futureField"] = {"nested": [1, 2]}
    pod["spec"]["containers"][0]["futureContainerField"] = "x"
    pod["spec"]["initContainers"][0]["futureInitField"] = True
    pod["metadata"]["futureMeta"] = "y"
    after = ours(pod)
    assert after["spec"]["futureField"] == {"nested": [1, 2]}
    assert after["spec"]["containers"][0]["futureContainerField"] == "x"
    assert after["spec"]["initContainers"][0]["futureInitField"] is True
    assert after["metadata"]["futureMeta"] == "y"


def test_template_placeholders_are_filled_once() -> None:
    config = parse_config(
        "initContainer:\n"
        "  env:\n"
        "  - {name: CACHE_KEY, value: '${CACHE_KEY}'}\n"
        "  - {name: WHO, value: '${INFERENCE_SERVICE}/${NAMESPACE}/${UNKNOWN}'}\n"
        "  extraArgs: ['--log-level=debug', '--tag=${REVISION}']\n"
    )
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.REVISION] = "v1"
    pod["metadata"]["labels"][names.ISVC_LABEL] = "${CACHE_KEY}"
    after = ours(pod, config)
    init = after["spec"]["initContainers"][0]
    env = {e["name"]: e.get("value") for e in init["env"]}
    status = json.loads(after["metadata"]["annotations"][names.STATUS])
    assert env["CACHE_KEY"] == status["key"]
    # a label value is not expanded again, and its `$` is doubled for the kubelet
    assert env["WHO"] == "$${CACHE_KEY}/default/${UNKNOWN}"
    assert init["args"][-2:] == ["--log-level=debug", "--tag=v1"]


def test_existing_fsgroup_change_policy_is_kept() -> None:
    pod = copy.deepcopy(BASE)
    pod["spec"]["securityContext"] = {"fsGroup": 7, "fsGroupChangePolicy": "Always"}
    after = ours(pod)
    assert after["spec"]["securityContext"] == {"fsGroup": 7, "fsGroupChangePolicy": "Always"}


def test_non_pod_and_non_create_requests_pass_through() -> None:
    body = make_review(BASE, namespace="default")
    body["request"]["operation"] = "UPDATE"
    result = review_body(body, config=ClusterConfig())
    assert result.response["response"] == {
        "uid": body["request"]["uid"],
        "allowed": True,
        "auditAnnotations": {"skip-reason": "not-pod-create"},
    }


def test_v1beta1_is_answered_in_kind() -> None:
    body = make_review(BASE, namespace="default")
    body["apiVersion"] = "admission.k8s.io/v1beta1"
    result = review_body(body, config=ClusterConfig())
    assert result.response["apiVersion"] == "admission.k8s.io/v1beta1"
    assert result.response["response"]["patchType"] == "JSONPatch"


def test_excluded_namespace() -> None:
    body = make_review(BASE, namespace="kube-system")
    decision = review_body(body, config=ClusterConfig()).decision
    assert decision.reason is not None
    assert decision.reason.value == "excluded-namespace"


def test_internal_error_admits_unchanged_or_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    import webhook.review as review_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    refusing = parse_config("onError: refuse")  # before: loading patches sample pods
    monkeypatch.setattr(review_module, "mutate", broken)
    body = make_review(BASE, namespace="default")
    admitted = review_body(body, config=ClusterConfig()).response["response"]
    assert admitted["allowed"] is True
    assert "patch" not in admitted
    assert "boom" in admitted["warnings"][0]
    refused = review_body(body, config=refusing).response["response"]
    assert refused["allowed"] is False
    assert refused["status"]["code"] == 500


def test_missing_cache_claim_admits_without_the_cache() -> None:
    from webhook.namespaces import ClaimInfo

    body = make_review(BASE, namespace="team")
    view = NamespaceView(
        name="team", annotations={}, claims={"other": ClaimInfo(("ReadWriteMany",))}
    )
    result = review_body(body, config=ClusterConfig(), namespace=view)
    assert result.decision.kind == "skipped"
    assert result.decision.reason is not None
    assert result.decision.reason.value == "pvc-missing"
    assert "patch" not in result.response["response"]
    assert (
        "'kserve-model-cache' not found in namespace 'team'"
        in result.response["response"]["warnings"][0]
    )


@pytest.mark.parametrize(
    ("modes", "warned"),
    [
        (("ReadWriteMany",), False),
        (("ReadWriteOnce",), True),
        (("ReadWriteOnce", "ReadWriteMany"), False),
    ],
)
def test_existing_cache_claim_is_used_and_non_rwx_is_reported(
    modes: tuple[str, ...], warned: bool
) -> None:
    from webhook.namespaces import ClaimInfo

    body = make_review(BASE, namespace="team")
    view = NamespaceView(
        name="team", annotations={}, claims={"kserve-model-cache": ClaimInfo(modes, "Bound")}
    )
    result = review_body(body, config=ClusterConfig(), namespace=view)
    assert result.decision.kind == "mutated"
    warnings = result.response["response"].get("warnings", [])
    assert any("not ReadWriteMany" in w for w in warnings) is warned


# values on the command line ------------------------------------------------------------------


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """What the kubelet makes of a command/args/env value: `$$` is `$`, `$(NAME)` a defined
    variable's value (an undefined one stays as written)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def fetch_namespace(args: list[str], env: dict[str, str]) -> Any:
    """The injected args as the real `kserve-cache fetch` parser reads them, after the
    kubelet's expansion."""
    from webhook.cli import build_parser

    expanded = [kubelet_expand(a, env) for a in args]
    assert expanded[0] == "fetch"
    return build_parser().parse_args(expanded)


@pytest.mark.parametrize(
    ("uri", "revision"),
    [
        pytest.param("s3://bucket/$(HOME)/model", "v1", id="uri-var"),
        pytest.param("s3://bucket/a$$b/model", "v1", id="uri-double-dollar"),
        pytest.param("s3://bucket/model", "-rc1", id="revision-dash"),
        pytest.param("s3://bucket/model", "--help", id="revision-option"),
        pytest.param("s3://bucket/$(AWS_SECRET_ACCESS_KEY)", "-x", id="secret-ref"),
        pytest.param("hf://org/model$", "-", id="trailing-dollar"),
    ],
)
def test_hostile_values_reach_fetch_verbatim(uri: str, revision: str) -> None:
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.KSERVE_SOURCE_URI] = uri
    pod["spec"]["initContainers"][0]["args"][0] = uri
    pod["metadata"]["annotations"][names.REVISION] = revision
    decision = decide(pod, namespace="default", config=ClusterConfig(), namespace_annotations=None)
    assert decision.kind == "mutated", decision.detail
    init = decision.after["spec"]["initContainers"][0]
    env = {"HOME": "/root", "AWS_SECRET_ACCESS_KEY": "s3cr3t"}
    parsed = fetch_namespace(init["args"], env)
    assert parsed.uri == uri
    assert parsed.revision == revision
    assert parsed.key == cache_key(uri, revision)
    assert str(parsed.cache_root) == "/cache"
    assert init["command"] == ["kserve-cache"]


def test_template_placeholder_values_are_inert_in_env() -> None:
    config = parse_config("initContainer:\n  env:\n  - {name: WHERE, value: 'x-${NAMESPACE}'}\n")
    pod = copy.deepcopy(BASE)
    pod["metadata"]["labels"][names.ISVC_LABEL] = "$(HOME)"
    after = ours(pod, config)
    init = after["spec"]["initContainers"][0]
    assert "--uri=gs://foo" in init["args"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert kubelet_expand(env["WHERE"], {"HOME": "/root"}) == "x-default"


# the endpoint in the key -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "env", "endpoint"),
    [
        pytest.param("s3://b/m", {}, "", id="s3-none"),
        pytest.param("s3://b/m", {"S3_ENDPOINT": "minio:9000"}, "https://minio:9000", id="s3"),
        pytest.param(
            "s3://b/m",
            {"S3_ENDPOINT": "MinIO:9000", "S3_USE_HTTPS": "0"},
            "http://minio:9000",
            id="s3-http",
        ),
        pytest.param(
            "s3://b/m",
            {"AWS_ENDPOINT_URL": "https://s3.eu.example/", "S3_ENDPOINT": "minio:9000"},
            "https://s3.eu.example",
            id="aws-url-first",
        ),
        pytest.param("s3://b/m", {"S3_ENDPOINT": "  "}, "", id="blank"),
        pytest.param(
            "hf://org/m",
            {"HF_ENDPOINT": "https://HF-Mirror.example/x/"},
            "https://hf-mirror.example",
            id="hf",
        ),
        pytest.param("gs://b/m", {"S3_ENDPOINT": "minio:9000"}, "", id="gs-ignores-s3"),
    ],
)
def test_source_endpoint(uri: str, env: dict[str, str], endpoint: str) -> None:
    from webhook.keys import source_endpoint

    assert source_endpoint(uri, env) == endpoint


def test_normalize_endpoint() -> None:
    from webhook.keys import normalize_endpoint

    assert normalize_endpoint("") == ""
    assert normalize_endpoint("Minio.Svc:9000") == "https://minio.svc:9000"
    assert normalize_endpoint("minio:9000", default_scheme="http") == "http://minio:9000"
    assert normalize_endpoint("HTTP://X.example/path/") == "http://x.example"
    assert normalize_endpoint("http://") == ""


def test_endpoint_changes_the_key_only_when_set() -> None:
    assert cache_key("s3://b/m", "v1", "") == cache_key("s3://b/m", "v1")
    staging = cache_key("s3://b/m", "", "http://minio:9000")
    production = cache_key("s3://b/m", "", "https://s3.amazonaws.com")
    assert len({staging, production, cache_key("s3://b/m")}) == 3
    assert all(is_valid_key(k) for k in (staging, production))


def test_two_endpoints_two_entries_and_fetch_is_told() -> None:
    keys = set()
    for endpoint in ("minio.staging:9000", "s3.eu-west-1.amazonaws.com"):
        pod = copy.deepcopy(BASE)
        pod["metadata"]["annotations"][names.KSERVE_SOURCE_URI] = "s3://models/bert"
        init = pod["spec"]["initContainers"][0]
        init["args"][0] = "s3://models/bert"
        init["env"].append({"name": "S3_ENDPOINT", "value": endpoint})
        after = ours(pod)
        args = after["spec"]["initContainers"][0]["args"]
        parsed = fetch_namespace(args, {})
        assert parsed.endpoint == f"https://{endpoint}"
        assert parsed.key == cache_key("s3://models/bert", "", parsed.endpoint)
        keys.add(parsed.key)
        # a second pass computes the same endpoint from our own container
        assert ours(after) == after
    assert len(keys) == 2


def test_endpoint_from_a_secret_does_not_change_the_key() -> None:
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.KSERVE_SOURCE_URI] = "s3://models/bert"
    init = pod["spec"]["initContainers"][0]
    init["args"][0] = "s3://models/bert"
    init["env"].append(
        {"name": "S3_ENDPOINT", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "endpoint"}}}
    )
    args = ours(pod)["spec"]["initContainers"][0]["args"]
    assert not any(a.startswith("--endpoint") for a in args)
    assert f"--key={cache_key('s3://models/bert')}" in args


# the patch builder -----------------------------------------------------------------------------


ITEMS = [{"name": n, "emptyDir": {}} for n in "abcde"]


@pytest.mark.parametrize(
    "kept",
    [
        pytest.param(
            mask, id="".join(item["name"] for item, keep in zip(ITEMS, mask, strict=True) if keep)
        )
        for mask in itertools.product([True, False], repeat=len(ITEMS))
    ],
)
def test_patch_removes_several_items_of_one_list(kept: tuple[bool, ...]) -> None:
    """Every subset of a list of five volumes (up to five removals from one list, at the head,
    middle and tail): each removal shifts the items after it, so a builder that removes at
    increasing indexes produces a patch that fails or removes the wrong items."""
    import jsonpatch

    from webhook.patch import apply_ops, make_patch

    after_items = [copy.deepcopy(i) for i, keep in zip(ITEMS, kept, strict=True) if keep]
    before = {"spec": {"volumes": copy.deepcopy(ITEMS), "other": [1]}}
    after = {"spec": {"volumes": after_items, "other": [1]}}
    ops = make_patch(before, after)
    assert jsonpatch.apply_patch(before, ops) == after
    assert apply_ops(before, ops) == after
    if after_items:  # item by item, not the whole list
        assert not any(op["path"] == "/spec/volumes" for op in ops)


FOREIGN_WRITER = golden_input("39-foreign-writer-on-cache-volume")


def _with_foreign_cache_mount(*, volume: bool, read_only: bool) -> dict[str, Any]:
    pod = copy.deepcopy(FOREIGN_WRITER)
    mount = pod["spec"]["initContainers"][1]["volumeMounts"][0]
    if read_only:
        mount["readOnly"] = True
    if not volume:
        pod["spec"]["volumes"] = [v for v in pod["spec"]["volumes"] if v["name"] != "kserve-cache"]
    return pod


@pytest.mark.parametrize("serving_mode", ["mount", "copy"])
@pytest.mark.parametrize(
    ("volume", "read_only", "reason"),
    [
        # the fuzz find: no such volume, a foreign container already mounts our volume name
        (False, False, "volume-conflict"),
        (False, True, "volume-conflict"),
        # the volume is the cache, but this container writes into it at /mnt/models
        (True, False, "foreign-model-mount"),
    ],
)
def test_foreign_container_on_our_volume_name_is_skipped(
    serving_mode: str, volume: bool, read_only: bool, reason: str
) -> None:
    """A foreign container mounting a volume named `kserve-cache` used to get our claim handed
    to it; a writable one made the first pass pick copy mode and rewrite its mount read-only,
    so the second pass picked mount mode and changed the pod again (never converged)."""
    pod = _with_foreign_cache_mount(volume=volume, read_only=read_only)
    config = parse_config(f"servingMode: {serving_mode}\n", source="test")
    decision = decide(pod, namespace="default", config=config, namespace_annotations=None)
    assert decision.kind == "skipped"
    assert decision.reason is not None
    assert decision.reason.value == reason
    assert "kserve-cache" in decision.detail
    assert decision.after == pod


@pytest.mark.parametrize("serving_mode", ["mount", "copy"])
def test_read_only_mount_of_the_cache_volume_is_retargeted_once(serving_mode: str) -> None:
    """A read-only /mnt/models mount of the cache volume (an earlier pass under another key) is
    ours to retarget: it is pointed at the current entry (or the emptyDir in copy mode), and the
    second pass changes nothing."""
    pod = _with_foreign_cache_mount(volume=True, read_only=True)
    config = parse_config(f"servingMode: {serving_mode}\n", source="test")
    first = decide(pod, namespace="default", config=config, namespace_annotations=None)
    assert first.kind == "mutated"
    mount = first.after["spec"]["initContainers"][1]["volumeMounts"][0]
    if serving_mode == "mount":
        assert mount["subPath"] == f"models/{first.key}"
    else:
        assert mount["name"] == names.PROVISION_VOLUME
    assert mount["readOnly"] is True
    assert pod_rule_errors(dict(first.after)) == []
    again = decide(
        json.loads(json.dumps(first.after)),
        namespace="default",
        config=config,
        namespace_annotations=None,
    )
    assert again.patch == []


@pytest.mark.parametrize("where", ["containers", "ephemeralContainers"])
def test_a_container_already_named_storage_initializer_is_a_name_conflict(where: str) -> None:
    """The fuzz find: with injectWithoutKServe, a regular container named storage-initializer
    got an init container of the same name beside it (names are unique across a pod's lists,
    so the API server refuses the pod)."""
    pod = copy.deepcopy(golden_input("18-inject-without-kserve"))
    pod["spec"][where] = [
        *pod["spec"].get(where, []),
        {"name": names.STORAGE_INITIALIZER, "image": "example/image:1"},
    ]
    config = parse_config("injectWithoutKServe: true\n", source="test")
    decision = decide(pod, namespace="default", config=config, namespace_annotations=None)
    assert decision.kind == "skipped"
    assert decision.reason is not None
    assert decision.reason.value == "name-conflict"
    assert any("name-conflict" in w for w in decision.warnings)
    assert decision.after == pod
