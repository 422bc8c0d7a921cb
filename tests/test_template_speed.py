"""What makes a review cheap must not change what it returns: the parts cached per template
or per config never leak into a container or a dump, and the faster key is the same key."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook import names
from webhook.clusterconfig import ClusterConfig, InitContainerTemplate, PolicyMode, ServingMode
from webhook.keys import SLUG_MAX, cache_key, normalize_uri, slug_of
from webhook.template import (
    KSERVE_DEFAULT_RESOURCES,
    Copies,
    FetchSpec,
    build_init_container,
    json_copy,
    merge_resources,
)

TEMPLATE: dict[str, Any] = {
    "env": [
        {"name": "PLAIN", "value": "1"},
        {"name": "RENDERED", "value": "key=${CACHE_KEY} uri=${STORAGE_URI}"},
        {"name": "FROM", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ],
    "envFrom": [{"configMapRef": {"name": "proxy"}}],
    "extraArgs": ["--note=${NAMESPACE}"],
    "resources": {"requests": {"cpu": "200m"}, "limits": {"cpu": "2", "memory": "2Gi"}},
}


def spec(uri: str = "s3://bucket/model", **changes: Any) -> FetchSpec:
    fields: dict[str, Any] = {
        "uri": uri,
        "key": cache_key(uri),
        "revision": "",
        "mode": ServingMode.MOUNT,
        "pvc": "kserve-model-cache",
        "secret": "creds",
        "cache_mount_path": names.CACHE_MOUNT_PATH,
        "isvc": "isvc",
        "namespace": "team",
    }
    return FetchSpec(**(fields | changes))


def kserve_initializer() -> dict[str, Any]:
    """KServe's storage-initializer, as its mutator leaves it."""
    return {
        "name": names.STORAGE_INITIALIZER,
        "image": "kserve/storage-initializer:latest",
        "args": ["s3://bucket/model", names.MODEL_MOUNT_PATH],
        "resources": {
            "requests": {"cpu": "100m", "memory": "300Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "env": [{"name": "S3_ENDPOINT", "value": "s3.example.com"}],
        "envFrom": [{"secretRef": {"name": "other"}}],
        "securityContext": {"runAsUser": 1337},
        "volumeMounts": [{"name": "kserve-provision-location", "mountPath": "/mnt/models"}],
    }


def scribble(value: Any) -> None:
    """Change every dict and list inside `value`, as a caller owning it may."""
    if isinstance(value, dict):
        for item in list(value.values()):
            scribble(item)
        value["scribbled"] = True
    elif isinstance(value, list):
        for item in value:
            scribble(item)
        value.append("scribbled")


@pytest.mark.parametrize("existing", [None, "kserve"])
def test_containers_of_one_template_share_nothing_with_it(existing: str | None) -> None:
    template = InitContainerTemplate.model_validate(TEMPLATE)
    dumped = template.model_dump()

    def build() -> dict[str, Any]:
        given = kserve_initializer() if existing else None
        return build_init_container(given, spec=spec(), template=template, pod_security=None)

    first = build()
    expected = copy.deepcopy(first)
    assert [v["name"] for v in first["env"]][:3] == ["PLAIN", "RENDERED", "FROM"]
    assert first["env"][1]["value"] == f"key={spec().key} uri=s3://bucket/model"
    assert first["args"][-1] == "--note=team"
    for field in ("env", "envFrom", "securityContext", "resources"):
        scribble(first[field])

    assert build() == expected
    assert template.model_dump() == dumped
    # a fresh template of the same data (no cached parts) builds the same container
    fresh = InitContainerTemplate.model_validate(TEMPLATE)
    assert (
        build_init_container(
            kserve_initializer() if existing else None, spec=spec(), template=fresh
        )
        == expected
    )


def test_the_default_template_parts_are_copied_too() -> None:
    template = ClusterConfig().initContainer
    first = build_init_container(None, spec=spec(), template=template)
    security = copy.deepcopy(first["securityContext"])
    scribble(first["securityContext"])
    scribble(first["resources"])
    second = build_init_container(None, spec=spec(), template=template)
    assert second["securityContext"] == security == template.securityContext
    assert second["resources"] == template.resources


@pytest.mark.parametrize(
    ("value", "how"),
    [
        ({"a": 1, "b": "x", "c": None, "d": 1.5, "e": True}, "flat"),
        ({"a": {"b": [1, "x", {"c": False}]}, "d": -0.0}, "orjson"),
        ({"a": (1, 2)}, "orjson"),  # a tuple comes back a list, as from json_copy
        ({"a": {"b": 2**70}}, "walk"),  # beyond orjson's integers
        ({"a": [math.inf]}, "walk"),  # orjson writes null for it
        ({"a": [PolicyMode.FORCED]}, "walk"),  # a str subclass comes back a str
        ({"a": ["\ud800"]}, "walk"),  # a lone surrogate: no UTF-8 for orjson
    ],
)
def test_copies_are_equal_and_independent(value: Any, how: str) -> None:
    copies = Copies.of(value)
    assert copies.how == how
    before = repr(value)
    first, second = copies.new(), copies.new()
    assert first == second
    assert [type(v) for v in _leaves(first)] == [type(v) for v in _leaves(value)]
    scribble(first)
    assert repr(value) == before
    assert copies.new() == second


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_cached_properties_leave_the_config_as_it_was() -> None:
    text = {"pvc": "models", "servingMode": "copy", "initContainer": TEMPLATE}
    config = ClusterConfig.model_validate(text)
    twin = ClusterConfig.model_validate(text)
    dumped, shown = config.model_dump(), repr(config)

    assert config.customized == {"pvc", "servingMode", "initContainer"}
    assert config.initContainer.parts.placeholders
    assert config == twin
    assert twin == config
    assert config.model_dump() == dumped == twin.model_dump()
    assert repr(config) == shown
    assert json.loads(config.model_dump_json()) == json.loads(twin.model_dump_json())
    assert config.model_fields_set == {"pvc", "servingMode", "initContainer"}
    with pytest.raises(ValueError, match="frozen"):
        config.pvc = "other"  # type: ignore[misc]
    assert ClusterConfig().customized == frozenset()
    # a default repeated in the file is the cluster's all the same
    assert ClusterConfig.model_validate({"pvc": "kserve-model-cache"}).customized == {"pvc"}


def test_copies_compute_their_cached_properties_again() -> None:
    config = ClusterConfig.model_validate({"initContainer": TEMPLATE})
    assert config.customized == {"initContainer"}
    parts = config.initContainer.parts

    changed = config.model_copy(update={"policy": PolicyMode.FORCED})
    assert changed.customized == {"initContainer", "policy"}
    assert config.customized == {"initContainer"}
    template = config.initContainer.model_copy(update={"env": (), "extraArgs": ()})
    assert not template.parts.placeholders
    assert template.parts.env == ()
    assert config.initContainer.parts is parts
    assert copy.deepcopy(config).customized == config.customized
    assert copy.deepcopy(config.initContainer).parts == parts


def _reference_merge(template: dict[str, Any], kserve: object) -> dict[str, Any]:
    """`merge_resources` as it was before its plain loops."""
    out: dict[str, Any] = json_copy(dict(template))
    if not isinstance(kserve, dict):
        return out
    sections = [s for s in ("requests", "limits") if isinstance(kserve.get(s), dict)]
    for name in sorted({name for s in sections for name in kserve[s]}):
        theirs = {s: kserve[s][name] for s in sections if name in kserve[s]}
        defaults = KSERVE_DEFAULT_RESOURCES
        if not any(str(v) != defaults.get(s, {}).get(name) for s, v in theirs.items()):
            continue
        for section in ("requests", "limits"):
            part = dict(out.get(section) or {})
            part.pop(name, None)
            if section in theirs:
                part[name] = theirs[section]
            if part:
                out[section] = part
            else:
                out.pop(section, None)
    return out


QUANTITIES = st.sampled_from(["100m", "1", "100Mi", "1Gi", "200Mi", 1, 2, "2"])
SECTION = st.dictionaries(st.sampled_from(["cpu", "memory", "nvidia.com/gpu"]), QUANTITIES)
RESOURCES = st.dictionaries(st.sampled_from(["requests", "limits"]), SECTION)


@settings(max_examples=500, deadline=None)
@given(RESOURCES, st.one_of(RESOURCES, st.none(), st.just({"requests": "x"})))
def test_merge_resources_is_the_reference(template: dict[str, Any], kserve: Any) -> None:
    merged = merge_resources(template, kserve)
    want = _reference_merge(template, kserve)
    assert merged == want
    assert [list(v) for v in merged.values()] == [list(v) for v in want.values()]
    assert list(merged) == list(want)


# The key functions as they were before the fast path of `cache_key`: it must agree with them.
def _reference_normalize(uri: str) -> str:
    text = uri.strip()
    parts = urlsplit(text)
    if not parts.scheme:
        return text.rstrip("/") or text
    scheme = parts.scheme.lower()
    netloc = parts.netloc.lower() if scheme in ("http", "https") else parts.netloc
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, parts.fragment))


def _reference_slug(uri: str) -> str:
    parts = urlsplit(uri)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc
    return re.sub(r"[^a-z0-9]+", "-", tail.lower()).strip("-")[:SLUG_MAX].strip("-")


def _reference_key(uri: str, revision: str, endpoint: str) -> str:
    normalized = _reference_normalize(uri)
    text = f"{normalized}\n{revision}" + (f"\n{endpoint}" if endpoint else "")
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    slug = _reference_slug(normalized)
    return f"{slug}-{digest}" if slug else digest


def _outcome(function: Any, *args: str) -> tuple[str, str]:
    """The result, or the error (urlsplit refuses some netlocs), to compare both."""
    try:
        return "ok", function(*args)
    except ValueError as exc:
        return "error", str(exc)


PIECES = st.sampled_from(
    [
        *"sShHtTpP:/?#[]@.%-_aZ09 \t\n\x00~=",
        *("ﬀ", "İ", "\u2100", "é", "//", "://", "s3://", "HTTP://", "https://", "file:///"),
        *("[::1]", "[v1.x]", "Bucket", "/Model-V2/"),
    ]
)


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(PIECES, max_size=20).map("".join),
    st.sampled_from(["", "v1"]),
    st.sampled_from(["", "https://e.x"]),
)
def test_keys_are_the_keys_of_the_reference(uri: str, revision: str, endpoint: str) -> None:
    assert _outcome(normalize_uri, uri) == _outcome(_reference_normalize, uri)
    assert _outcome(slug_of, uri) == _outcome(_reference_slug, uri)
    assert _outcome(cache_key, uri, revision, endpoint) == _outcome(
        _reference_key, uri, revision, endpoint
    )


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("s3://bucket/models/Llama-3/", "llama-3-"),
        ("HTTPS://Example.COM/a/B", "b-"),
        ("gs://bucket", "bucket-"),
        ("hf://org/model?rev=1#x", "model-"),
        ("file:///models/m", "m-"),
        ("bucket/only/", "only-"),
    ],
)
def test_known_keys(uri: str, key: str) -> None:
    assert cache_key(uri).startswith(key)
    assert cache_key(uri) == cache_key(f"  {uri}  ") == _reference_key(uri, "", "")
