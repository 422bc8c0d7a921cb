"""`preview --cluster`: the cluster config ConfigMap and the Namespace read with the real
`kubernetes` client from a small API stand-in on 127.0.0.1 (GETs only; anything else fails)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.preview.conftest import DATA

URI = "gs://kfserving-examples/models/sklearn/1.0/model"


class Api(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.objects: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, list[dict[str, Any]]] = {}  # namespaces not here: 403
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def namespace(self, name: str, annotations: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{name}"] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "annotations": annotations},
        }

    def config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.objects[f"/api/v1/namespaces/{namespace}/configmaps/{name}"] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        }

    def claim(self, namespace: str, name: str, *modes: str, deleting: bool = False) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if deleting:
            meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        self.claims.setdefault(namespace, []).append(
            {"metadata": meta, "spec": {"accessModes": list(modes)}, "status": {"phase": "Bound"}}
        )

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "c", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        return path


class Handler(BaseHTTPRequestHandler):
    server: Api
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append(("GET", path))
        parts = path.split("/")
        if len(parts) == 6 and parts[5] == "persistentvolumeclaims":
            items = self.server.claims.get(parts[4])
            if items is None:
                self._send(403, {"kind": "Status", "status": "Failure", "code": 403})
            else:
                self._send(200, {"kind": "PersistentVolumeClaimList", "items": items})
            return
        found = self.server.objects.get(path)
        if found is None:
            status = {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
            self._send(404, status)
        else:
            self._send(200, found)

    def _refuse(self) -> None:
        self.server.requests.append((self.command, self.path))
        self._send(405, {"kind": "Status", "code": 405, "message": "read only"})

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse


@pytest.fixture
def api() -> Iterator[Api]:
    server = Api()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def isvc_without_opt_in(tmp_path: Path) -> Path:
    obj = yaml.safe_load((DATA / "sklearn-iris.yaml").read_text())
    del obj["metadata"]["annotations"]["cache.kserve.io/enabled"]
    path = tmp_path / "isvc.yaml"
    path.write_text(yaml.safe_dump(obj))
    return path


def test_cluster_config_and_namespace_are_read(api: Api, preview: Any, tmp_path: Path) -> None:
    api.config_map(
        "kserve-cache",
        "kserve-cache-config",
        {"config.yaml": "pvc: cluster-cache\nservingMode: copy\n"},
    )
    api.namespace("models", {"cache.kserve.io/policy": "default-on"})
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    run = preview(
        "-f", str(isvc_without_opt_in(tmp_path)), "--cluster", "--kubeconfig", str(kubeconfig),
        "--explain", "-o", "json",
    )  # fmt: skip
    assert run.code == 0, run.err
    status = json.loads(run.json()["metadata"]["annotations"]["cache.kserve.io/status"])
    assert status["pvc"] == "cluster-cache"
    assert status["mode"] == "copy"
    assert "policy         default-on" in run.err
    assert "namespace" in next(line for line in run.err.splitlines() if "default-on" in line)
    assert ("GET", "/api/v1/namespaces/kserve-cache/configmaps/kserve-cache-config") in (
        api.requests
    )
    assert ("GET", "/api/v1/namespaces/models") in api.requests
    assert all(method == "GET" for method, _ in api.requests), "nothing is written"


def test_local_flags_override_the_cluster(api: Api, preview: Any, tmp_path: Path) -> None:
    api.config_map("kserve-cache", "kserve-cache-config", {"config.yaml": "pvc: cluster-cache\n"})
    api.namespace("models", {"cache.kserve.io/policy": "default-on"})
    config = tmp_path / "config.yaml"
    config.write_text("pvc: local-cache\n")
    run = preview(
        "-f", str(isvc_without_opt_in(tmp_path)), "--cluster",
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")),
        "--config", str(config), "--namespace-annotation", "cache.kserve.io/policy=disabled",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "skipped: policy-disabled" in run.err


def test_missing_config_map_and_namespace(api: Api, preview: Any, tmp_path: Path) -> None:
    run = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster",
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")), "-o", "json",
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "ConfigMap kserve-cache/kserve-cache-config not found" in run.err
    assert "Namespace models not found" in run.err
    status = json.loads(run.json()["metadata"]["annotations"]["cache.kserve.io/status"])
    assert status["pvc"] == "kserve-model-cache", "built-in defaults"


def test_bad_cluster_config(api: Api, preview: Any, tmp_path: Path) -> None:
    api.config_map("kserve-cache", "kserve-cache-config", {"config.yaml": "policy: sometimes\n"})
    run = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster",
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")),
    )  # fmt: skip
    assert run.code == 1
    assert "ConfigMap kserve-cache/kserve-cache-config: policy" in run.err
    assert run.out == ""


def test_unreachable_cluster(api: Api, preview: Any, tmp_path: Path) -> None:
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    api.shutdown()
    api.server_close()
    run = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster", "--kubeconfig", str(kubeconfig)
    )
    assert run.code == 1
    assert "cannot reach" in run.err
    no_config = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster",
        "--kubeconfig", str(tmp_path / "missing"),
    )  # fmt: skip
    assert no_config.code == 1
    assert "no usable kubeconfig" in no_config.err


@pytest.mark.parametrize(
    ("claims", "outcome", "message"),
    [
        pytest.param([("kserve-model-cache", "ReadWriteMany")], "mutated", None, id="rwx"),
        pytest.param(
            [("kserve-model-cache", "ReadWriteOnce")],
            "mutated",
            "is not ReadWriteMany (ReadWriteOnce): pods on other nodes cannot mount it",
            id="rwo",
        ),
        pytest.param([("other", "ReadWriteMany")], "skipped: pvc-missing", "not found", id="none"),
        pytest.param(
            [("kserve-model-cache", "deleting")], "skipped: pvc-missing", "not found", id="deleting"
        ),
    ],
)
def test_cache_claim_is_checked(
    api: Api,
    preview: Any,
    tmp_path: Path,
    claims: list[tuple[str, str]],
    outcome: str,
    message: str | None,
) -> None:
    for name, mode in claims:
        api.claim("models", name, "ReadWriteMany" if mode == "deleting" else mode,
                  deleting=mode == "deleting")  # fmt: skip
    run = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster",
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")),
    )  # fmt: skip
    assert run.code == 0, run.err
    assert f"document 1 (InferenceService models/sklearn-iris): {outcome}" in run.err
    if message:
        assert message in run.err
    assert ("GET", "/api/v1/namespaces/models/persistentvolumeclaims") in api.requests


def test_claims_that_cannot_be_listed_are_not_checked(
    api: Api, preview: Any, tmp_path: Path
) -> None:
    run = preview(
        "-f", str(DATA / "sklearn-iris.yaml"), "--cluster",
        "--kubeconfig", str(api.kubeconfig(tmp_path / "kubeconfig")),
    )  # fmt: skip
    assert run.code == 0, run.err
    assert "cannot list PersistentVolumeClaims in models" in run.err
    assert ": mutated" in run.err
