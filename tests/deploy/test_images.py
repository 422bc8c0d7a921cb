"""One place names each image: a user's overlay changes the webhook, the fetcher (the webhook's
KSERVE_CACHE_FETCHER_IMAGE) and the gc/warm/exporter examples with plain `images:` entries, and
the webhook injects what the Deployment says."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import start_server, stop_server
from tests.deploy.conftest import MANIFESTS, ROOT, find, kustomize
from webhook.clusterconfig import ConfigError
from webhook.config import ConfigStore, with_fetcher_image

WEBHOOK = "ghcr.io/kserve-cache/kserve-cache"
FETCHER = "ghcr.io/kserve-cache/kserve-cache-fetcher"
DIGEST = "sha256:" + "ab" * 32
EXAMPLES = ("gc-cronjob.yaml", "warm-job.yaml", "stats-exporter.yaml", "doctor-job.yaml")


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    found: list[dict[str, Any]] = spec["template"]["spec"]["containers"]
    return found


def fetcher_env(objects: list[dict[str, Any]]) -> str:
    (container,) = _containers(find(objects, "Deployment", "kserve-cache-webhook"))
    (value,) = [e["value"] for e in container["env"] if e["name"] == "KSERVE_CACHE_FETCHER_IMAGE"]
    return str(value)


def test_the_base_names_the_fetcher_image_once(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for objects in rendered.values():
        assert fetcher_env(objects) == f"{FETCHER}:0.1.0"
    # the cluster config leaves it to the Deployment (a file that sets it would win)
    config = yaml.safe_load((MANIFESTS / "base" / "config.yaml").read_text())
    assert "image" not in config["initContainer"]
    mentions = [
        p.relative_to(MANIFESTS)
        for p in (MANIFESTS / "base").glob("*.yaml")
        if f"{FETCHER}:"
        in "".join(
            line
            for line in p.read_text().splitlines(keepends=True)
            if not line.lstrip().startswith("#")
        )
    ]
    assert mentions == [Path("base/deployment.yaml")]


@pytest.mark.parametrize("overlay", ["cert-manager", "self-signed"])
def test_a_user_overlay_sets_every_image_with_images_entries(tmp_path: Path, overlay: str) -> None:
    user = tmp_path / "my-install"
    user.mkdir()
    for name in EXAMPLES:
        shutil.copy(MANIFESTS / "examples" / name, user / name)
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, user), *EXAMPLES],
                "images": [
                    {
                        "name": WEBHOOK,
                        "newName": "registry.example.com/ml/kserve-cache",
                        "newTag": "9.9.9",
                    },
                    {
                        "name": FETCHER,
                        "newName": "registry.example.com/ml/fetcher",
                        "digest": DIGEST,
                    },
                ],
            }
        )
    )
    objects = kustomize(user)
    assert fetcher_env(objects) == f"registry.example.com/ml/fetcher@{DIGEST}"
    (webhook,) = _containers(find(objects, "Deployment", "kserve-cache-webhook"))
    assert webhook["image"] == "registry.example.com/ml/kserve-cache:9.9.9"
    # the examples take theirs the same way
    assert _containers(find(objects, "CronJob", "kserve-cache-gc"))[0]["image"] == (
        "registry.example.com/ml/kserve-cache:9.9.9"
    )
    assert _containers(find(objects, "Job", "warm-sklearn-iris"))[0]["image"] == (
        f"registry.example.com/ml/fetcher@{DIGEST}"
    )
    assert _containers(find(objects, "Job", "kserve-cache-doctor"))[0]["image"] == (
        f"registry.example.com/ml/fetcher@{DIGEST}"
    )
    assert _containers(find(objects, "Deployment", "kserve-cache-stats"))[0]["image"] == (
        "registry.example.com/ml/kserve-cache:9.9.9"
    )
    # no other env value is touched
    others = [e for e in webhook["env"] if e["name"] != "KSERVE_CACHE_FETCHER_IMAGE"]
    assert all("registry.example.com" not in json.dumps(e) for e in others)


def test_the_config_file_wins_over_the_deployment(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("pvc: cache\n")
    assert ConfigStore(path, fetcher_image="r/f:1").config.initContainer.image == "r/f:1"
    path.write_text("initContainer:\n  image: r/own:2\n")
    assert ConfigStore(path, fetcher_image="r/f:1").config.initContainer.image == "r/own:2"
    assert ConfigStore(None, fetcher_image="r/f:1").config.initContainer.image == "r/f:1"
    default = ConfigStore(None).config.initContainer.image
    assert default == f"{FETCHER}:0.1.0"
    with pytest.raises(ConfigError, match="not an image reference"):
        with_fetcher_image(ConfigStore(None).config, "bad image")


def test_serve_injects_the_image_the_deployment_names(tmp_path: Path) -> None:
    review = json.loads((ROOT / "examples" / "admissionreview.json").read_text())
    server = start_server(
        tmp_path,
        "--no-cluster",
        env={"KSERVE_CACHE_FETCHER_IMAGE": f"registry.example.com/f@{DIGEST}"},
    )
    try:
        with server.client(timeout=10) as client:
            answer = client.post("/mutate", json=review).json()["response"]
            metrics = client.get("/metrics").text
    finally:
        stop_server(server)
    patch = json.loads(base64.b64decode(answer["patch"]))
    images = [op["value"] for op in patch if op["path"].endswith("/image")]
    images += [
        c.get("image")
        for op in patch
        if isinstance(op.get("value"), dict)
        for c in [op["value"]]
        if "image" in c
    ]
    assert f"registry.example.com/f@{DIGEST}" in images, patch
    # and the webhook exposes when its serving certificate expires
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith("kserve_cache_serving_certificate_expiry")
    )
    assert float(line.split()[-1]) > 0
