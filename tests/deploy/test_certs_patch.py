"""`kserve-cache certs --patch-webhook` against a local stand-in for the Kubernetes API.

The stand-in serves the MutatingWebhookConfiguration rendered from manifests/base and applies
the JSON patches it receives, so the test sees what a real API server would store.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml

from tests.deploy.conftest import MANIFESTS, find, kustomize
from webhook import certs
from webhook.cli import main

PREFIX = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"


@dataclass
class FakeApi:
    port: int = 0
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str, Any]] = field(default_factory=list)
    patch_status: int = 200


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str) -> None:
            self._send(
                code,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "reason": reason,
                    "code": code,
                },
            )

        def _name(self) -> str | None:
            path = self.path.split("?", 1)[0]
            return path[len(PREFIX) :] if path.startswith(PREFIX) else None

        def do_GET(self) -> None:
            name = self._name()
            api.requests.append(("GET", self.path, "", None))
            if name not in api.objects:
                self._status(404, "NotFound")
                return
            self._send(200, api.objects[name])

        def do_PATCH(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            name = self._name()
            api.requests.append(("PATCH", self.path, self.headers["Content-Type"], body))
            if name not in api.objects:
                self._status(404, "NotFound")
                return
            if api.patch_status != 200:
                self._status(api.patch_status, "Forbidden")
                return
            if self.headers["Content-Type"] != "application/json-patch+json":
                self._status(415, "UnsupportedMediaType")
                return
            try:
                api.objects[name] = jsonpatch.apply_patch(api.objects[name], body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException):
                self._status(422, "Invalid")
                return
            self._send(200, api.objects[name])

    return Handler


@pytest.fixture(scope="module")
def base_webhook_config() -> dict[str, Any]:
    return find(kustomize(MANIFESTS / "base"), "MutatingWebhookConfiguration", "kserve-cache")


@pytest.fixture
def api(base_webhook_config: dict[str, Any]) -> Iterator[FakeApi]:
    state = FakeApi(objects={"kserve-cache": copy.deepcopy(base_webhook_config)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def kubeconfig(api: FakeApi, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "local", "cluster": {"server": f"http://127.0.0.1:{api.port}"}}
                ],
                "users": [{"name": "admin", "user": {"token": "test-token"}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
                "current-context": "local",
            }
        )
    )
    return path


def patch_webhook(
    out: Path, kubeconfig: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, str]:
    code = main(
        [
            "certs",
            "--out-dir",
            str(out),
            "--patch-webhook",
            "kserve-cache",
            "--kubeconfig",
            str(kubeconfig),
            *extra,
        ]
    )
    return code, capsys.readouterr().out.strip()


def stored_bundles(api: FakeApi, name: str = "kserve-cache") -> list[str]:
    return [hook["clientConfig"].get("caBundle", "") for hook in api.objects[name]["webhooks"]]


def test_patch_sets_the_ca_bundle(
    api: FakeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = copy.deepcopy(api.objects["kserve-cache"])
    code, printed = patch_webhook(tmp_path / "out", kubeconfig, capsys)
    assert code == 0
    assert stored_bundles(api) == [printed]
    assert base64.b64decode(printed) == (tmp_path / "out" / "ca.crt").read_bytes()
    (patch,) = [r for r in api.requests if r[0] == "PATCH"]
    assert patch[1] == PREFIX + "kserve-cache"
    assert patch[2] == "application/json-patch+json"
    # Only caBundle changed.
    after = copy.deepcopy(api.objects["kserve-cache"])
    for hook in after["webhooks"]:
        del hook["clientConfig"]["caBundle"]
    assert after == before


def test_patch_keeps_the_bundle_found_in_the_cluster(
    api: FakeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # First install from one machine, rotation from another with an empty out-dir.
    assert patch_webhook(tmp_path / "laptop-a", kubeconfig, capsys)[0] == 0
    first_ca = certs.load_certificates((tmp_path / "laptop-a" / "ca.crt").read_bytes())
    code, printed = patch_webhook(tmp_path / "laptop-b", kubeconfig, capsys)
    assert code == 0
    bundle = certs.load_certificates(base64.b64decode(stored_bundles(api)[0]))
    assert stored_bundles(api) == [printed]
    assert len(bundle) == 2
    assert bundle[1] == first_ca[0]


def test_every_webhook_in_the_configuration_is_patched(
    api: FakeApi, kubeconfig: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = api.objects["kserve-cache"]
    second = copy.deepcopy(config["webhooks"][0])
    second["name"] = "other.cache.kserve.io"
    config["webhooks"].append(second)
    code, printed = patch_webhook(tmp_path / "out", kubeconfig, capsys)
    assert code == 0
    assert stored_bundles(api) == [printed, printed]


@pytest.mark.parametrize(
    ("name", "status"),
    [
        pytest.param("absent", None, id="no-such-configuration"),
        pytest.param("kserve-cache", 403, id="patch-forbidden"),
    ],
)
def test_patch_failure_is_reported(
    api: FakeApi,
    kubeconfig: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    status: int | None,
) -> None:
    if status is not None:
        api.patch_status = status
    before = copy.deepcopy(api.objects)
    code = main(
        [
            "certs",
            "--out-dir",
            str(tmp_path / "out"),
            "--patch-webhook",
            name,
            "--kubeconfig",
            str(kubeconfig),
        ]
    )
    assert code == 1
    assert capsys.readouterr().out == ""
    assert api.objects == before
    if status is None:
        # Nothing is written when the configuration cannot even be read.
        assert not (tmp_path / "out").exists()
