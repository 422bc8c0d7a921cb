"""Hypothesis strategies: well-typed pods (what an API server can send: the golden pods with
random, schema-shaped edits), arbitrary JSON, namespace annotations and cluster configs."""

from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import strategies as st

from tests.golden_cases import load_cases
from webhook import names
from webhook.clusterconfig import ClusterConfig, ConfigError, parse_config

BASE_PODS = [c.pod for c in load_cases()]

# Values that matter to the webhook, plus hostile and odd ones.
NAMES = st.sampled_from(
    [
        names.CACHE_VOLUME,
        names.PROVISION_VOLUME,
        names.STORAGE_INITIALIZER,
        names.KSERVE_CONTAINER,
        "istio-proxy",
        "model",
        "data",
        "a" * 63,
    ]
)
PATHS = st.sampled_from(
    [names.MODEL_MOUNT_PATH, names.MODEL_MOUNT_PATH + "/", "/cache", "/mnt", "/data", "/", "/tmp"]
)
TEXT = st.text(max_size=40)
ODD = st.sampled_from(
    [
        "",
        "true",
        "false",
        "True",
        "mount",
        "copy",
        "opt-in",
        "default-on",
        "forced",
        "disabled",
        "kserve-model-cache",
        "pvc://claim/model",
        "oci://registry/model:1",
        "s3://bucket/model",
        "gs://bucket/dir/",
        "hf://org/model",
        "https://example.com/model.tar.gz",
        "../../etc/passwd",
        "bad\nname: {{ evil }}",
        "${CACHE_KEY}",
        "1000",
        "-1",
        "x" * 300,
        "pvc,secret,serving-mode",
        '{"uri": "s3://b/m", "key": "k"}',
    ]
)
VALUES = st.one_of(ODD, TEXT)
ANNOTATION_KEYS = st.sampled_from(
    [
        names.ENABLED,
        names.POLICY,
        names.PVC,
        names.STORAGE_URI,
        names.SECRET,
        names.REVISION,
        names.SERVING_MODE,
        names.FS_GROUP,
        names.POD_OVERRIDES,
        names.STATUS,
        names.KSERVE_SOURCE_URI,
    ]
)
LABEL_KEYS = st.sampled_from(
    [names.COMPONENT_LABEL, names.ISVC_LABEL, names.KSERVE_LOCALMODEL_LABEL, "app"]
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=20,
)


@st.composite
def mounts(draw: st.DrawFn) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": draw(NAMES), "mountPath": draw(PATHS)}
    if draw(st.booleans()):
        mount["readOnly"] = draw(st.booleans())
    if draw(st.integers(0, 4)) == 0:
        mount["subPath"] = draw(st.sampled_from(["models/x", "a/b", "x"]))
    return mount


@st.composite
def containers(draw: st.DrawFn) -> dict[str, Any]:
    container: dict[str, Any] = {"name": draw(NAMES), "image": "example/image:1"}
    if draw(st.booleans()):
        container["args"] = draw(st.lists(VALUES, max_size=3))
    if draw(st.booleans()):
        container["volumeMounts"] = draw(st.lists(mounts(), max_size=3))
    if draw(st.booleans()):
        container["env"] = [
            {"name": f"VAR_{i}", "value": v}
            for i, v in enumerate(draw(st.lists(VALUES, max_size=3)))
        ]
    return container


@st.composite
def volumes(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(NAMES)
    source = draw(
        st.sampled_from(
            [
                {"emptyDir": {}},
                {"persistentVolumeClaim": {"claimName": "kserve-model-cache"}},
                {"persistentVolumeClaim": {"claimName": "other"}},
                {"configMap": {"name": "cm"}},
            ]
        )
    )
    return {"name": name, **source}


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    """A golden pod with random schema-shaped edits (what a real API server may send)."""
    pod = copy.deepcopy(draw(st.sampled_from(BASE_PODS)))
    meta = pod.setdefault("metadata", {})
    if draw(st.integers(0, 3)):  # mostly opted in, so that most pods reach the mutation
        meta.setdefault("annotations", {})[names.ENABLED] = "true"
    for field, keys, most in (("annotations", ANNOTATION_KEYS, 4), ("labels", LABEL_KEYS, 1)):
        edits = draw(st.dictionaries(keys, st.one_of(st.none(), VALUES), max_size=most))
        if field == "labels" and draw(st.integers(0, 3)):
            edits = {}  # the predictor labels usually stay as KServe set them
        target = meta.setdefault(field, {})
        for key, value in edits.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    spec = pod.setdefault("spec", {})
    for field, strategy in (
        ("volumes", volumes()),
        ("initContainers", containers()),
        ("containers", containers()),
    ):
        action = draw(st.sampled_from(["keep", "keep", "append", "drop-first", "replace"]))
        items = spec.get(field) or []
        if action == "append":
            spec[field] = [*items, draw(strategy)]
        elif action == "drop-first" and items:
            spec[field] = items[1:]
        elif action == "replace":
            spec[field] = draw(st.lists(strategy, max_size=3))
    if not spec.get("containers"):
        spec["containers"] = [{"name": names.KSERVE_CONTAINER, "image": "example/image:1"}]
    # names are unique in a pod the API server accepts: keep the first of each
    seen: set[str] = set()
    for field in ("initContainers", "containers", "volumes"):
        if field == "volumes":
            seen = set()
        if field in spec:
            kept = []
            for item in spec[field]:
                if item["name"] not in seen:
                    seen.add(item["name"])
                    kept.append(item)
            spec[field] = kept
    if draw(st.booleans()):
        spec["securityContext"] = draw(
            st.sampled_from([{}, {"fsGroup": 2000}, {"runAsUser": 1000}, {"fsGroup": 0}])
        )
    if draw(st.integers(0, 3)) == 0:
        pod[draw(TEXT)] = draw(JSON)  # unknown fields are kept
    return pod


NAMESPACE_ANNOTATIONS = st.one_of(st.none(), st.dictionaries(ANNOTATION_KEYS, VALUES, max_size=4))


@st.composite
def configs(draw: st.DrawFn) -> ClusterConfig:
    """A valid cluster config with random settings (invalid drafts are redrawn)."""
    data: dict[str, Any] = {}
    options: dict[str, st.SearchStrategy[Any]] = {
        "policy": st.sampled_from(["opt-in", "default-on", "forced", "disabled"]),
        "pvc": st.sampled_from(["kserve-model-cache", "models", "a.b-c"]),
        "servingMode": st.sampled_from(["mount", "copy"]),
        "fsGroup": st.integers(1, 70_000),
        "podOverrides": st.lists(st.sampled_from(sorted(names.OVERRIDABLE)), unique=True),
        "excludedNamespaces": st.lists(st.sampled_from(["default", "kube-system", "other"])),
        "injectWithoutKServe": st.booleans(),
        "onError": st.sampled_from(["admit", "refuse"]),
        "cacheMountPath": st.sampled_from(["/cache", "/var/cache/models"]),
    }
    for key, strategy in options.items():
        if draw(st.booleans()):
            data[key] = draw(strategy)
    if draw(st.booleans()):
        data["initContainer"] = {
            "env": [{"name": "URI", "value": "${STORAGE_URI}"}],
            "extraArgs": draw(st.lists(st.sampled_from(["--x", "${CACHE_KEY}"]), max_size=2)),
        }
    try:
        return parse_config(yaml.safe_dump(data))
    except ConfigError:  # pragma: no cover - the options above are all valid
        return ClusterConfig()
