"""The annotations of this wave, webhook side: refresh, digest, prefetch, read-only, on-miss.
Validated at their layer (a bad value is a warning, never a broken pod), layered like the
others, shown by `preview --explain`, and sent to `fetch` only as flags its parser has."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.podrules import pod_rule_errors, schema_errors
from webhook import names, template
from webhook.clusterconfig import ClusterConfig, ServingMode, parse_config
from webhook.policy import Layer, Policy, resolve_policy
from webhook.review import decide

BASE: dict[str, Any] = json.loads(
    (Path(__file__).parent / "golden" / "02-kserve-after-gs" / "input.json").read_text()
)
DIGEST = "sha256:" + "ab" * 32


def resolve(
    ns: dict[str, str] | None = None, pod: dict[str, str] | None = None, config: str = ""
) -> Policy:
    return resolve_policy(
        cluster=parse_config(config),
        namespace_annotations=ns,
        pod_annotations=pod or {},
        namespace="team",
    )


@pytest.mark.parametrize(
    ("key", "value", "attr", "expected"),
    [
        pytest.param(names.REFRESH, "on-start", "refresh", "on-start", id="refresh-on-start"),
        pytest.param(names.REFRESH, "interval=6h", "refresh", "interval=6h", id="refresh-6h"),
        pytest.param(names.DIGEST, DIGEST, "digest", DIGEST, id="digest"),
        pytest.param(names.PREFETCH, "true", "prefetch", True, id="prefetch"),
        pytest.param(names.READ_ONLY, "true", "read_only", True, id="read-only"),
    ],
)
def test_pod_values(key: str, value: str, attr: str, expected: object) -> None:
    policy = resolve(pod={key: value})
    assert getattr(policy, attr) == expected
    assert policy.sources[key.removeprefix(names.PREFIX)] is Layer.POD
    assert policy.warnings == ()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param(names.REFRESH, "sometimes", id="refresh-word"),
        pytest.param(names.REFRESH, "interval=0s", id="refresh-zero"),
        pytest.param(names.REFRESH, "interval=6 h", id="refresh-space"),
        pytest.param(names.DIGEST, "sha256:XYZ", id="digest-short"),
        pytest.param(names.DIGEST, "md5:" + "a" * 32, id="digest-algo"),
        pytest.param(names.PREFETCH, "yes", id="prefetch"),
        pytest.param(names.READ_ONLY, "1", id="read-only"),
    ],
)
def test_bad_pod_values_are_warnings_and_the_pod_is_still_cached(key: str, value: str) -> None:
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][key] = value
    decision = decide(pod, namespace="team", config=ClusterConfig(), namespace_annotations=None)
    assert decision.kind == "mutated"
    assert any(w.startswith(key) for w in decision.warnings), decision.warnings
    args = decision.after["spec"]["initContainers"][0]["args"]
    assert not any(a.startswith("--" + key.removeprefix(names.PREFIX)) for a in args)


def test_layers_cluster_namespace_pod() -> None:
    config = "refresh: interval=1d\nprefetch: true\nreadOnly: false\nonMiss: wait\n"
    policy = resolve(config=config)
    assert (policy.refresh, policy.prefetch, policy.read_only, policy.on_miss) == (
        "interval=1d",
        True,
        False,
        "wait",
    )
    assert policy.sources["refresh"] is Layer.CLUSTER
    ns = {names.REFRESH: "on-start", names.PREFETCH: "false", names.READ_ONLY: "true",
          names.ON_MISS: "private"}  # fmt: skip
    policy = resolve(ns=ns, config=config)
    assert (policy.refresh, policy.prefetch, policy.read_only, policy.on_miss) == (
        "on-start",
        False,
        True,
        "private",
    )
    assert policy.sources["on-miss"] is Layer.NAMESPACE
    policy = resolve(ns=ns, pod={names.REFRESH: "never", names.PREFETCH: "true"}, config=config)
    assert (policy.refresh, policy.prefetch) == ("never", True)
    assert policy.sources["prefetch"] is Layer.POD


def test_a_pod_cannot_turn_read_only_off_or_choose_on_miss() -> None:
    policy = resolve(
        ns={names.READ_ONLY: "true", names.ON_MISS: "private"},
        pod={names.READ_ONLY: "false", names.ON_MISS: "wait"},
    )
    assert policy.read_only is True
    assert policy.on_miss == "private"
    assert policy.sources["read-only"] is Layer.NAMESPACE
    text = "\n".join(policy.warnings)
    assert "read-only: ignored the pod value 'false'" in text
    assert "on-miss: ignored the pod value" in text
    # where nobody set it, a pod's 'false' is simply the default
    assert resolve(pod={names.READ_ONLY: "false"}).warnings == ()


@pytest.mark.parametrize(
    "value",
    ["never", "on-start", "interval=6h", "interval=1h30m", "interval=1.5d", "interval=2w",
     "interval=0s", "interval=0.5s", "interval=", "interval=6 h", "sometimes", "interval=-1m"],
)  # fmt: skip
def test_refresh_grammar_is_fetchs(value: str) -> None:
    from webhook.cache.versions import PolicyError, parse_refresh
    from webhook.clusterconfig import is_refresh

    try:
        parse_refresh(value)
        fetch_accepts = True
    except PolicyError:
        fetch_accepts = False
    assert is_refresh(value) is fetch_accepts


def test_bad_namespace_values_fall_back_with_warnings() -> None:
    policy = resolve(ns={names.ON_MISS: "later", names.READ_ONLY: "maybe"})
    assert (policy.read_only, policy.on_miss) == (False, "wait")
    assert len(policy.warnings) == 2
    assert "later" not in "\n".join(policy.warnings)  # a Namespace value is never echoed


@pytest.mark.parametrize(
    "text",
    ["refresh: sometimes", "onMiss: later", "readOnly: maybe", "prefetch: 3"],
)
def test_bad_cluster_values_are_config_errors(text: str) -> None:
    from webhook.clusterconfig import ConfigError

    with pytest.raises(ConfigError, match=text.split(":")[0]):
        parse_config(text)


def all_set(mode: ServingMode = ServingMode.MOUNT) -> template.FetchSpec:
    return template.FetchSpec(
        uri="s3://b/m",
        key="m-0123456789abcdef",
        revision="",
        mode=mode,
        pvc="c",
        secret=None,
        cache_mount_path="/cache",
        isvc="m",
        namespace="team",
        refresh="interval=6h",
        digest=DIGEST,
        prefetch=True,
        read_only=True,
        on_miss="private",
    )


def parser_options() -> set[str]:
    from webhook.cli import build_parser

    parser = build_parser("fetch")
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    fetch = sub.choices["fetch"]  # type: ignore[attr-defined]
    return {o.lstrip("-") for a in fetch._actions for o in a.option_strings}


def test_the_webhook_only_emits_flags_fetch_has() -> None:
    options = parser_options()
    assert options >= template.FETCH_SUPPORTS
    for mode in ServingMode:
        args = template.fetch_args(all_set(mode), ClusterConfig().initContainer)
        flags = {a.split("=", 1)[0].lstrip("-") for a in args[1:]}
        assert flags <= options, flags - options


def test_with_every_flag_supported_each_setting_is_one_argument() -> None:
    every = frozenset(template.FLAG_OF.values()) | template.FETCH_SUPPORTS
    args = template.fetch_args(all_set(), ClusterConfig().initContainer, supports=every)
    assert {"--refresh=interval=6h", f"--digest={DIGEST}", "--prefetch=true",
            "--read-only", "--on-miss=private"} <= set(args)  # fmt: skip
    copy_args = template.fetch_args(
        all_set(ServingMode.COPY), ClusterConfig().initContainer, supports=every
    )
    assert "--prefetch=true" not in copy_args  # prefetch is for mount mode


def test_a_setting_fetch_cannot_do_yet_is_reported_not_sent() -> None:
    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.DIGEST] = DIGEST
    decision = decide(pod, namespace="team", config=ClusterConfig(), namespace_annotations=None)
    assert decision.kind == "mutated"
    args = decision.after["spec"]["initContainers"][0]["args"]
    if "digest" in template.FETCH_SUPPORTS:
        assert f"--digest={DIGEST}" in args
    else:
        assert not any(a.startswith("--digest") for a in args)
        assert any("cache.kserve.io/digest is not applied" in w for w in decision.warnings)


def test_read_only_private_is_copy_mode_and_wait_mounts_the_cache_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = frozenset(template.FLAG_OF.values()) | template.FETCH_SUPPORTS
    monkeypatch.setattr(template, "FETCH_SUPPORTS", every)
    ns = {names.READ_ONLY: "true", names.ON_MISS: "private"}
    decision = decide(BASE, namespace="team", config=ClusterConfig(), namespace_annotations=ns)
    after = dict(decision.after)
    init = after["spec"]["initContainers"][0]
    assert "--copy-to=/mnt/models" in init["args"]
    assert {"--read-only", "--on-miss=private"} <= set(init["args"])
    assert decision.policy is not None
    assert decision.policy.serving_mode is ServingMode.COPY
    assert decision.policy.sources["serving-mode"] is Layer.NAMESPACE
    cache = next(m for m in init["volumeMounts"] if m["name"] == names.CACHE_VOLUME)
    assert cache["readOnly"] is True
    volume = next(v for v in after["spec"]["volumes"] if v["name"] == names.CACHE_VOLUME)
    assert volume["persistentVolumeClaim"]["readOnly"] is True  # the kubelet publishes it so
    assert pod_rule_errors(after) == []
    assert schema_errors(after) is None

    ns = {names.READ_ONLY: "true", names.ON_MISS: "wait"}
    decision = decide(BASE, namespace="team", config=ClusterConfig(), namespace_annotations=ns)
    init = decision.after["spec"]["initContainers"][0]
    assert not any(a.startswith("--copy-to") for a in init["args"])
    assert "--on-miss=wait" in init["args"]
    cache = next(m for m in init["volumeMounts"] if m["name"] == names.CACHE_VOLUME)
    assert cache["readOnly"] is True


def test_explain_shows_the_new_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.cli import main

    pod = copy.deepcopy(BASE)
    pod["metadata"]["annotations"][names.REFRESH] = "on-start"
    pod["metadata"]["annotations"][names.PREFETCH] = "true"
    source = tmp_path / "pod.json"
    source.write_text(json.dumps(pod))
    code = main(["preview", "-f", str(source), "--explain",
                 "--namespace-annotation", f"{names.READ_ONLY}=true"])  # fmt: skip
    assert code == 0
    rows = [line.split() for line in capsys.readouterr().err.splitlines()]
    assert ["refresh", "on-start", "pod"] in rows
    assert ["prefetch", "true", "pod"] in rows
    assert ["read-only", "true", "namespace"] in rows
    assert ["on-miss", "wait", "built-in"] in rows


def test_a_flag_fetch_gained_is_emitted() -> None:
    """When fetch's parser gains one of these flags, add it to `template.FETCH_SUPPORTS`
    (the webhook then sends the setting instead of warning that it is not applied); every
    emitted form must then parse."""
    from webhook.cli import build_parser

    options = parser_options()
    gained = {flag for flag in template.FLAG_OF.values() if flag in options}
    assert gained <= template.FETCH_SUPPORTS, (
        f"fetch now has {sorted(gained - template.FETCH_SUPPORTS)}: add them to "
        "webhook.template.FETCH_SUPPORTS"
    )
    for mode in ServingMode:
        args = template.fetch_args(all_set(mode), ClusterConfig().initContainer)
        build_parser("fetch").parse_args(args)  # SystemExit on a form fetch refuses
