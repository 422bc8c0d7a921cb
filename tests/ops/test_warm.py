"""`kserve-cache warm`: real processes filling a real cache from a `file://` source, the
InferenceService reader, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.ops.helpers import entry_problems, run_cli, tree_state
from webhook.cache.layout import Layout, read_manifest, read_usage
from webhook.cli.warm import IsvcError, source_of_isvc
from webhook.keys import cache_key


@pytest.fixture
def source(tmp_path: Path) -> Path:
    model = tmp_path / "src" / "iris"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.bin").write_bytes(bytes(range(256)) * 40)
    (model / "config.json").write_text('{"name": "iris"}')
    return model


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    root = tmp_path / "cache"
    root.mkdir()
    return Layout(root)


def warm(*args: str) -> tuple[int, dict[str, Any], str]:
    proc = run_cli("warm", *args)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return proc.returncode, json.loads(lines[0]), proc.stderr


def test_warm_downloads_once_then_hits(source: Path, layout: Layout) -> None:
    uri = source.as_uri()
    code, line, err = warm("--uri", uri, "--revision", "v1", "--cache-root", str(layout.root))
    assert code == 0, err
    key = cache_key(uri, "v1")
    assert line["outcome"] == "miss"
    assert line["key"] == key
    assert line["revision"] == "v1"
    assert (line["bytes"], line["files"]) == (10240 + 16, 2)
    assert line["path"] == str(layout.entry(key))
    assert entry_problems(layout, key) == []
    assert (layout.entry(key) / "1" / "model.bin").read_bytes() == (
        source / "1" / "model.bin"
    ).read_bytes()
    code, line, _ = warm("--uri", uri, "--revision", "v1", "--cache-root", str(layout.root))
    assert code == 0
    assert line["outcome"] == "hit"
    usage = read_usage(layout, key)
    assert usage is not None
    assert (usage.hits, usage.misses) == (1, 1)


ISVC = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: unrelated}
---
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: iris
  annotations:
    cache.kserve.io/enabled: "true"
    cache.kserve.io/revision: from-isvc
spec:
  predictor:
    annotations:
      cache.kserve.io/revision: "2024-06"
    model:
      modelFormat: {name: sklearn}
      storageUri: URI
"""


def test_warm_from_an_inferenceservice(source: Path, layout: Layout, tmp_path: Path) -> None:
    uri = source.as_uri()
    isvc = tmp_path / "isvc.yaml"
    isvc.write_text(ISVC.replace("URI", uri))
    code, line, err = warm("--from-isvc", str(isvc), "--cache-root", str(layout.root))
    assert code == 0, err
    # The predictor's annotation wins, as KServe copies it onto the pods.
    assert line["key"] == cache_key(uri, "2024-06")
    manifest = read_manifest(layout, line["key"])
    assert manifest is not None
    assert (manifest.uri, manifest.revision) == (uri, "2024-06")
    # --revision overrides the manifest's.
    code, line, _ = warm("--from-isvc", str(isvc), "--revision", "r2", "--cache-root",
                         str(layout.root))  # fmt: skip
    assert code == 0
    assert (line["key"], line["outcome"]) == (cache_key(uri, "r2"), "miss")


def isvc(predictor: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "kind": "InferenceService",
        "metadata": {"name": "m", "annotations": annotations or {}},
        "spec": {"predictor": predictor},
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(isvc({"model": {"storageUri": "s3://b/m"}}), ("s3://b/m", ""), id="model"),
        pytest.param(
            isvc({"sklearn": {"storageUri": "gs://b/iris"}}, {"cache.kserve.io/revision": "7"}),
            ("gs://b/iris", "7"),
            id="framework-and-isvc-revision",
        ),
        pytest.param(
            isvc(
                {"annotations": {"cache.kserve.io/storage-uri": "hf://org/model"}},
            ),
            ("hf://org/model", ""),
            id="storage-uri-annotation",
        ),
    ],
)
def test_source_of_isvc(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert source_of_isvc(obj) == expected


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        pytest.param({"kind": "Pod"}, "not an InferenceService", id="kind"),
        pytest.param({"kind": "InferenceService", "spec": {}}, "no spec.predictor", id="nopred"),
        pytest.param(isvc({"model": {}}), "no storageUri", id="no-uri"),
        pytest.param(isvc({"model": {"storageUri": "pvc://c/m"}}), "pvc://", id="pvc"),
    ],
)
def test_source_of_isvc_refuses(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(IsvcError, match=message):
        source_of_isvc(obj)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["--uri", "s3://b/m", "--revision", "bad rev"], 2, "invalid revision", id="revision"
        ),
        pytest.param(["--from-isvc", "/nonexistent.yaml"], 2, "cannot read", id="no-file"),
    ],
)
def test_bad_input_gives_a_json_error(
    layout: Layout, args: list[str], code: int, message: str
) -> None:
    before = tree_state(layout.root)
    got, line, _ = warm(*args, "--cache-root", str(layout.root))
    assert got == code
    assert line["outcome"] == "error"
    assert message in line["message"]
    assert tree_state(layout.root) == before


def test_uri_and_isvc_together_exit_2(layout: Layout) -> None:
    proc = run_cli("warm", "--uri", "s3://b/m", "--from-isvc", "x.yaml", "--cache-root",
                   str(layout.root))  # fmt: skip
    assert proc.returncode == 2
    assert "not allowed with argument" in proc.stderr


def test_missing_source_fails_without_publishing(layout: Layout, tmp_path: Path) -> None:
    got, line, _ = warm("--uri", (tmp_path / "absent").as_uri(), "--cache-root", str(layout.root))
    assert got != 0
    assert line["outcome"] == "error"
    assert not layout.models.exists() or list(layout.models.iterdir()) == []
