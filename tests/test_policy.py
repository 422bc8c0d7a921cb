"""Policy precedence: built-in < cluster config < namespace < pod, within what admins allow."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook import names
from webhook.clusterconfig import ClusterConfig, PolicyMode, ServingMode
from webhook.policy import Layer, Policy, resolve_policy
from webhook.skips import SkipReason

NS = "team"
B, C, N, P = Layer.BUILTIN, Layer.CLUSTER, Layer.NAMESPACE, Layer.POD
ON = {names.ENABLED: "true"}
OFF = {names.ENABLED: "false"}


@dataclass(frozen=True)
class Want:
    """What a row expects. `decided`: layer per setting (unlisted settings are not checked).

    `warnings`: one tuple of fragments per expected warning, in order; every fragment must be
    in that warning. Every warning must also name the key and the namespace.
    """

    skip: SkipReason | None = None
    values: Mapping[str, Any] = field(default_factory=dict)
    decided: Mapping[str, Layer] = field(default_factory=dict)
    warnings: tuple[tuple[str, ...], ...] = ()


def row(
    row_id: str,
    *,
    want: Want,
    cluster: Mapping[str, Any] | None = None,
    ns: Mapping[str, str] | None = None,
    pod: Mapping[str, str] | None = None,
) -> Any:
    return pytest.param(dict(cluster or {}), ns, dict(pod or {}), want, id=row_id)


TABLE = [
    # --- who decides `policy` and `enabled` ---------------------------------------------------
    row(
        "built-in-opt-in-pod-silent",
        want=Want(skip=SkipReason.NOT_OPTED_IN, decided={"policy": B, "enabled": B}),
    ),
    row(
        "built-in-opt-in-pod-enabled",
        pod=ON,
        want=Want(values={"enabled": True}, decided={"policy": B, "enabled": P}),
    ),
    row(
        "cluster-default-on-pod-silent",
        cluster={"policy": "default-on"},
        want=Want(decided={"policy": C, "enabled": B}),
    ),
    row(
        "cluster-default-on-pod-opts-out",
        cluster={"policy": "default-on"},
        pod=OFF,
        want=Want(skip=SkipReason.OPTED_OUT, decided={"policy": C, "enabled": P}),
    ),
    row(
        "cluster-repeats-the-default-still-cluster",
        cluster={"policy": "opt-in", "pvc": "kserve-model-cache"},
        want=Want(skip=SkipReason.NOT_OPTED_IN, decided={"policy": C, "pvc": C}),
    ),
    row(
        "namespace-default-on-over-cluster-opt-in",
        cluster={"policy": "opt-in"},
        ns={names.POLICY: "default-on"},
        want=Want(values={"mode": PolicyMode.DEFAULT_ON}, decided={"policy": N}),
    ),
    row(
        "namespace-default-on-one-pod-opts-out",
        ns={names.POLICY: "default-on"},
        pod=OFF,
        want=Want(skip=SkipReason.OPTED_OUT, decided={"policy": N, "enabled": P}),
    ),
    row(
        "namespace-enabled-is-the-default-for-its-pods",
        ns={names.ENABLED: "true"},
        want=Want(values={"enabled": True}, decided={"policy": B, "enabled": N}),
    ),
    row(
        "namespace-enabled-pod-opts-out",
        ns={names.ENABLED: "true"},
        pod=OFF,
        want=Want(skip=SkipReason.OPTED_OUT, decided={"enabled": P}),
    ),
    row(
        "namespace-enabled-false-pod-opts-in",
        ns={names.POLICY: "default-on", names.ENABLED: "false"},
        pod=ON,
        want=Want(values={"enabled": True}, decided={"policy": N, "enabled": P}),
    ),
    row(
        "namespace-enabled-false-pod-silent",
        ns={names.POLICY: "default-on", names.ENABLED: "false"},
        want=Want(skip=SkipReason.OPTED_OUT, decided={"enabled": N}),
    ),
    # --- forced and disabled -------------------------------------------------------------------
    row(
        "forced-vs-pod-enabled-false",
        ns={names.POLICY: "forced"},
        pod=OFF,
        want=Want(
            decided={"policy": N, "enabled": P},
            warnings=(("ignored 'false'", "caching is forced"),),
        ),
    ),
    row(
        "cluster-forced-pod-silent",
        cluster={"policy": "forced"},
        want=Want(decided={"policy": C}),
    ),
    row(
        "disabled-vs-pod-enabled-true",
        ns={names.POLICY: "disabled"},
        pod=ON,
        want=Want(
            skip=SkipReason.POLICY_DISABLED,
            decided={"policy": N, "enabled": P},
            warnings=(("caching is disabled",),),
        ),
    ),
    row(
        "cluster-disabled-namespace-forced",
        cluster={"policy": "disabled"},
        ns={names.POLICY: "forced"},
        want=Want(values={"mode": PolicyMode.FORCED}, decided={"policy": N}),
    ),
    row(
        "cluster-forced-namespace-disabled",
        cluster={"policy": "forced"},
        ns={names.POLICY: "disabled"},
        want=Want(skip=SkipReason.POLICY_DISABLED, decided={"policy": N}),
    ),
    row(
        "forced-with-a-locked-pvc",
        ns={names.POLICY: "forced", names.PVC: "locked-cache", names.POD_OVERRIDES: ""},
        pod={**OFF, names.PVC: "my-own"},
        want=Want(
            values={"pvc": "locked-cache", "pod_overrides": frozenset()},
            decided={"pvc": N, "pod-overrides": N},
            warnings=(
                (names.PVC, "does not allow pods to set it", "pod-overrides: none"),
                ("caching is forced",),
            ),
        ),
    ),
    # --- pvc, serving-mode, secret and pod-overrides -------------------------------------------
    row(
        "pod-sets-pvc-namespace-does-not-allow-it",
        ns={names.POD_OVERRIDES: "serving-mode"},
        pod={**ON, names.PVC: "my-own"},
        want=Want(
            values={"pvc": "kserve-model-cache"},
            decided={"pvc": B, "pod-overrides": N},
            warnings=((names.PVC, "does not allow", "pod-overrides: serving-mode"),),
        ),
    ),
    row(
        "pod-sets-pvc-cluster-does-not-allow-it",
        cluster={"podOverrides": ["secret"]},
        pod={**ON, names.PVC: "my-own"},
        want=Want(
            values={"pvc": "kserve-model-cache"},
            decided={"pvc": B, "pod-overrides": C},
            warnings=((names.PVC, "pod-overrides: secret"),),
        ),
    ),
    row(
        "pod-sets-pvc-allowed-by-default",
        cluster={"pvc": "cluster-cache"},
        ns={names.PVC: "team-cache"},
        pod={**ON, names.PVC: "my-own"},
        want=Want(values={"pvc": "my-own"}, decided={"pvc": P}),
    ),
    row(
        "namespace-sets-pvc-pod-sets-nothing",
        cluster={"pvc": "cluster-cache"},
        ns={names.PVC: "team-cache"},
        pod=ON,
        want=Want(values={"pvc": "team-cache"}, decided={"pvc": N}),
    ),
    row(
        "cluster-copy-mode-pod-mount-allowed",
        cluster={"servingMode": "copy"},
        pod={**ON, names.SERVING_MODE: "mount"},
        want=Want(values={"serving_mode": ServingMode.MOUNT}, decided={"serving-mode": P}),
    ),
    row(
        "namespace-secret-pod-secret-not-allowed",
        ns={names.SECRET: "team-s3", names.POD_OVERRIDES: "pvc"},
        pod={**ON, names.SECRET: "stolen"},
        want=Want(
            values={"secret": "team-s3"},
            decided={"secret": N},
            warnings=((names.SECRET, "does not allow", "pod-overrides: pvc"),),
        ),
    ),
    row(
        "pod-overrides-none-keyword",
        ns={names.POD_OVERRIDES: "none"},
        pod={**ON, names.SERVING_MODE: "copy"},
        want=Want(
            values={"serving_mode": ServingMode.MOUNT, "pod_overrides": frozenset()},
            warnings=((names.SERVING_MODE, "pod-overrides: none"),),
        ),
    ),
    # --- invalid values ------------------------------------------------------------------------
    row(
        "invalid-namespace-policy-falls-back-to-cluster",
        cluster={"policy": "default-on"},
        ns={names.POLICY: "always"},
        want=Want(
            values={"mode": PolicyMode.DEFAULT_ON},
            decided={"policy": C},
            warnings=((names.POLICY, "ignored the namespace value in", "expected one of opt-in"),),
        ),
    ),
    row(
        "invalid-namespace-pvc",
        cluster={"pvc": "cluster-cache"},
        ns={names.PVC: "Team_Cache"},
        pod=ON,
        want=Want(
            values={"pvc": "cluster-cache"},
            decided={"pvc": C},
            warnings=((names.PVC, "namespace 'team'", "DNS-1123"),),
        ),
    ),
    row(
        "invalid-namespace-fs-group",
        ns={names.FS_GROUP: "0x10"},
        pod=ON,
        want=Want(
            values={"fs_group": 1000},
            decided={"fs-group": B},
            warnings=((names.FS_GROUP, "positive integer"),),
        ),
    ),
    row(
        "invalid-namespace-pod-overrides-fails-closed",
        ns={names.POD_OVERRIDES: "pvc,image"},
        pod={**ON, names.PVC: "my-own"},
        want=Want(
            values={"pvc": "kserve-model-cache", "pod_overrides": frozenset()},
            decided={"pod-overrides": N},
            warnings=(
                (names.POD_OVERRIDES, "'image'", "pods may set none"),
                (names.PVC, "does not allow", "pod-overrides: none"),
            ),
        ),
    ),
    row(
        "namespace-value-too-long",
        ns={names.PVC: "a" * 300},
        pod=ON,
        want=Want(
            values={"pvc": "kserve-model-cache"},
            warnings=((names.PVC, "longer than 253"),),
        ),
    ),
    row(
        "invalid-pod-enabled-default-on-still-caches",
        ns={names.POLICY: "default-on"},
        pod={names.ENABLED: "yes"},
        want=Want(
            values={"enabled": None},
            decided={"enabled": B},
            warnings=((names.ENABLED, "pod value 'yes'", "expected true or false"),),
        ),
    ),
    row(
        "invalid-pod-serving-mode",
        pod={**ON, names.SERVING_MODE: "fast"},
        want=Want(
            values={"serving_mode": ServingMode.MOUNT},
            decided={"serving-mode": B},
            warnings=((names.SERVING_MODE, "'fast'", "expected one of mount, copy"),),
        ),
    ),
    row(
        "invalid-pod-revision-skips-the-cache",
        pod={**ON, names.REVISION: "v1 with spaces"},
        want=Want(
            skip=SkipReason.INVALID_ANNOTATION,
            values={"revision": ""},
            warnings=((names.REVISION, "1-63 characters"),),
        ),
    ),
    row(
        "pod-revision",
        pod={**ON, names.REVISION: "2024-06-01"},
        want=Want(values={"revision": "2024-06-01"}, decided={"revision": P}),
    ),
    row(
        "pod-cannot-set-admin-only-keys",
        ns={names.POLICY: "disabled"},
        pod={names.POLICY: "forced", names.FS_GROUP: "0", names.POD_OVERRIDES: "pvc"},
        want=Want(
            skip=SkipReason.POLICY_DISABLED,
            values={"fs_group": 1000},
            decided={"policy": N},
            warnings=(
                (names.POLICY, "only the Namespace or the cluster config"),
                (names.FS_GROUP, "only the Namespace"),
                (names.POD_OVERRIDES, "only the Namespace"),
            ),
        ),
    ),
    row(
        "namespace-unknown-uses-the-cluster-config",
        cluster={"policy": "default-on", "servingMode": "copy", "fsGroup": 2000},
        ns=None,
        want=Want(
            values={"serving_mode": ServingMode.COPY, "fs_group": 2000},
            decided={"policy": C, "serving-mode": C, "fs-group": C},
        ),
    ),
]


@pytest.mark.parametrize(("cluster", "ns", "pod", "want"), TABLE)
def test_precedence(
    cluster: dict[str, Any], ns: Mapping[str, str] | None, pod: dict[str, str], want: Want
) -> None:
    config = ClusterConfig.model_validate(cluster)
    policy = resolve_policy(
        cluster=config, namespace_annotations=ns, pod_annotations=pod, namespace=NS
    )

    assert policy.skip is want.skip
    assert policy.cache is (want.skip is None)
    for attr, value in want.values.items():
        assert getattr(policy, attr) == value, attr
    for setting, layer in want.decided.items():
        assert policy.sources.get(setting, Layer.BUILTIN) is layer, setting

    assert len(policy.warnings) == len(want.warnings), policy.warnings
    for warning, fragments in zip(policy.warnings, want.warnings, strict=True):
        assert warning.startswith(names.PREFIX), warning  # names the key
        assert f"{NS!r}" in warning, warning  # names the namespace
        for fragment in fragments:
            assert fragment in warning, (fragment, warning)


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 20


def test_explain_names_the_deciding_layer() -> None:
    policy = resolve_policy(
        cluster=ClusterConfig.model_validate({"servingMode": "copy"}),
        namespace_annotations={names.POLICY: "default-on", names.PVC: "team-cache"},
        pod_annotations={names.REVISION: "r2"},
        namespace=NS,
    )
    rows = {setting: (value, layer) for setting, value, layer in policy.explain()}
    assert rows["policy"] == ("default-on", "namespace")
    assert rows["pvc"] == ("team-cache", "namespace")
    assert rows["serving-mode"] == ("copy", "cluster")
    assert rows["revision"] == ("r2", "pod")
    assert rows["fs-group"] == ("1000", "built-in")
    assert rows["enabled"] == ("", "built-in")


def test_status_sources_is_compact() -> None:
    policy = resolve_policy(
        cluster=ClusterConfig.model_validate({"servingMode": "copy"}),
        namespace_annotations={names.PVC: "team-cache"},
        pod_annotations=ON,
        namespace=NS,
    )
    assert policy.status_sources() == {
        "policy": "default",
        "enabled": "pod",
        "pvc": "ns",
        "mode": "cluster",
    }


def test_non_string_namespace_value_is_reported() -> None:
    # StaticNamespaces built from JSON can carry numbers; they are reported, never crash.
    annotations: dict[str, Any] = {names.FS_GROUP: 2000}
    policy = resolve_policy(
        cluster=ClusterConfig(),
        namespace_annotations=annotations,
        pod_annotations=ON,
        namespace=NS,
    )
    assert policy.fs_group == 1000
    assert policy.warnings == (
        f"{names.FS_GROUP}: ignored the namespace value in namespace 'team': not a string",
    )


KEYS = [names.PREFIX + k for k in ("enabled", "policy", "pvc", "serving-mode", "secret")] + [
    names.FS_GROUP,
    names.POD_OVERRIDES,
    names.REVISION,
]
VALUES = st.one_of(
    st.sampled_from(["true", "false", "opt-in", "forced", "disabled", "default-on", "copy"]),
    st.sampled_from(["mount", "pvc", "pvc,secret", "none", "", "1000", "a-b", "x" * 300]),
    st.text(max_size=40),
)
ANNOTATIONS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)


# the machine is shared: generation speed is not what this test is about
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ns=st.one_of(st.none(), ANNOTATIONS), pod=ANNOTATIONS)
def test_resolution_is_total_and_respects_the_admins(
    ns: dict[str, str] | None, pod: dict[str, str]
) -> None:
    before = (copy.deepcopy(ns), copy.deepcopy(pod))
    policy: Policy = resolve_policy(
        cluster=ClusterConfig(), namespace_annotations=ns, pod_annotations=pod, namespace=NS
    )
    assert (ns, pod) == before  # inputs untouched
    assert all(w.startswith(names.PREFIX) and "'team'" in w for w in policy.warnings)
    # a pod value only counts for a key the admins let pods set
    for setting in ("pvc", "serving-mode", "secret"):
        if policy.sources.get(setting) is Layer.POD:
            assert setting in policy.pod_overrides
    # admin-only settings never come from the pod
    for setting in ("policy", "fs-group", "pod-overrides"):
        assert policy.sources.get(setting) is not Layer.POD
    if policy.mode is PolicyMode.FORCED and policy.skip is None:
        assert policy.cache
    if policy.mode is PolicyMode.DISABLED:
        assert not policy.cache


# the init-container template, validated as a corev1.Container ----------------------------------

# (config text, the field the error must name, the fragment's path in the patched pod and the
# fragment, for the schema cross-check: None when the schema cannot see the problem)
BROKEN_TEMPLATES = [
    pytest.param(
        "initContainer: {securityContext: {runAsNonroot: true}}",
        "initContainer.securityContext.runAsNonroot",
        ("securityContext", {"runAsNonroot": True}),
        id="security-typo",
    ),
    pytest.param(
        "initContainer: {securityContext: {runAsUser: '1000'}}",
        "initContainer.securityContext.runAsUser",
        ("securityContext", {"runAsUser": "1000"}),
        id="security-type",
    ),
    pytest.param(
        "initContainer: {securityContext: {seccompProfile: {type: Default}}}",
        "initContainer.securityContext.seccompProfile.type",
        None,
        id="seccomp-enum",
    ),
    pytest.param(
        "initContainer: {securityContext: {procMount: Masked}}",
        "initContainer.securityContext.procMount",
        None,
        id="procmount-enum",
    ),
    pytest.param(
        "initContainer: {securityContext: {seccompProfile: {type: Localhost}}}",
        "initContainer.securityContext.seccompProfile",
        None,
        id="localhost-without-profile",
    ),
    pytest.param(
        "initContainer: {securityContext: {capabilities: {drop: all}}}",
        "initContainer.securityContext.capabilities.drop",
        ("securityContext", {"capabilities": {"drop": "all"}}),
        id="caps-not-a-list",
    ),
    pytest.param(
        "initContainer: {securityContext: {runAsNonRoot: true, runAsUser: 0}}",
        "initContainer.securityContext",
        None,
        id="nonroot-uid-0",
    ),
    pytest.param(
        "initContainer: {securityContext: {windowsOptions: {runAsUserName: x}}}",
        "initContainer.securityContext.windowsOptions",
        None,
        id="windows-field",
    ),
    pytest.param(
        "initContainer: {resources: {requests: {cpu: 1x}}}",
        "initContainer.resources.requests.cpu",
        None,
        id="bad-quantity",
    ),
    pytest.param(
        "initContainer: {resources: {request: {cpu: 1}}}",
        "initContainer.resources.request",
        ("resources", {"request": {"cpu": "1"}}),
        id="resources-typo",
    ),
    pytest.param(
        "initContainer: {resources: {requests: {memory: 2Gi}, limits: {memory: 1Gi}}}",
        "initContainer.resources",
        None,
        id="request-above-limit",
    ),
    pytest.param(
        "initContainer: {resources: {limits: {'bad name!': 1}}}",
        "initContainer.resources.limits",
        None,
        id="resource-name",
    ),
    pytest.param(
        "initContainer: {image: 'repo/image:1 --privileged'}",
        "initContainer.image",
        None,
        id="image-whitespace",
    ),
    pytest.param(
        "initContainer: {imagePullPolicy: Sometimes}",
        "initContainer.imagePullPolicy",
        None,
        id="pull-policy",
    ),
    pytest.param(
        "initContainer: {env: [{name: '1 BAD', value: x}]}",
        "initContainer.env.0.name",
        None,
        id="env-name",
    ),
    pytest.param(
        "initContainer: {env: [{name: A, valueFrom: {secretKeyRef: {name: s, key: k}, "
        "fieldRef: {fieldPath: x}}}]}",
        "initContainer.env.0",
        None,
        id="env-two-sources",
    ),
    pytest.param(
        "initContainer: {envFrom: [{secretRef: {name: s}, extra: 1}]}",
        "initContainer.envFrom",
        ("envFrom", [{"secretRef": {"name": "s"}, "extra": 1}]),
        id="envfrom-typo",
    ),
    pytest.param(
        "initContainer: {terminationMessagePath: 'relative/path'}",
        "initContainer.terminationMessagePath",
        None,
        id="termination-path",
    ),
    pytest.param(
        "cacheMountPath: /mnt/models",
        "cacheMountPath",
        None,
        id="cache-at-model-path",
    ),
]


@pytest.mark.parametrize(("text", "field", "fragment"), BROKEN_TEMPLATES)
def test_a_broken_template_is_refused_naming_its_field(
    text: str, field: str, fragment: tuple[str, Any] | None
) -> None:
    from tests.golden_cases import load_cases
    from tests.podrules import schema_errors
    from webhook.clusterconfig import ConfigError, parse_config
    from webhook.review import decide

    with pytest.raises(ConfigError) as refused:
        parse_config(text, source="config.yaml")
    message = str(refused.value)
    assert message.startswith("config.yaml: ")
    assert field in message, message
    if fragment is None:
        return
    # the problem is real: the same fragment in a patched pod fails the Kubernetes schema
    case = next(c for c in load_cases() if c.name == "02-kserve-after-gs")
    pod = copy.deepcopy(
        dict(
            decide(
                case.pod, namespace="default", config=ClusterConfig(), namespace_annotations=None
            ).after
        )
    )
    key, value = fragment
    pod["spec"]["initContainers"][0][key] = value
    assert schema_errors(pod) is not None


def test_the_sample_pods_are_valid_for_the_shipped_config() -> None:
    from pathlib import Path

    from tests.podrules import pod_rule_errors, schema_errors
    from webhook.clusterconfig import parse_config
    from webhook.configcheck import sample_pods
    from webhook.review import decide

    shipped = Path(__file__).resolve().parents[1] / "manifests" / "base" / "config.yaml"
    for text in ("", shipped.read_text()):
        config = parse_config(text)
        for mode in (ServingMode.MOUNT, ServingMode.COPY):
            forced = config.model_copy(
                update={
                    "policy": PolicyMode.FORCED,
                    "servingMode": mode,
                    "injectWithoutKServe": True,
                }
            )
            for _, pod in sample_pods():
                after = dict(
                    decide(pod, namespace="x", config=forced, namespace_annotations=None).after
                )
                assert pod_rule_errors(after) == []
                assert schema_errors(after) is None


def test_serve_stops_at_start_on_a_broken_template(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from webhook.cli import main

    bad = tmp_path / "config.yaml"
    bad.write_text("initContainer:\n  securityContext:\n    runAsNonroot: true\n")
    code = main(
        ["serve", "--self-signed", "--cert-dir", str(tmp_path / "certs"), "--config", str(bad)]
    )
    assert code == 2
    assert "initContainer.securityContext.runAsNonroot" in capsys.readouterr().err


def test_a_broken_template_on_reload_keeps_the_last_good_config(tmp_path: Any) -> None:
    import os

    from webhook.config import ConfigStore

    path = tmp_path / "config.yaml"
    path.write_text("pvc: good-cache\n")
    store = ConfigStore(path)
    path.write_text("pvc: other\ninitContainer: {resources: {limits: {cpu: lots}}}\n")
    os.utime(path, ns=(1, 1))  # a new identity even within one mtime tick
    assert store.refresh() is False
    assert store.config.pvc == "good-cache"
    assert store.last_error is not None
    assert "initContainer.resources.limits.cpu" in store.last_error


def test_a_namespace_value_is_never_echoed_to_the_pod_creator() -> None:
    policy = resolve_policy(
        cluster=ClusterConfig(),
        namespace_annotations={names.PVC: "Secret_Claim_Name", names.POLICY: "sometimes-x"},
        pod_annotations={names.ENABLED: "yes-please"},
        namespace="team",
    )
    text = "\n".join(policy.warnings)
    assert "Secret_Claim_Name" not in text
    assert "sometimes-x" not in text
    assert "'yes-please'" in text  # the pod's own value is shown back to it
