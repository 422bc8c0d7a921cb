"""A real `kserve-cache serve` over real TLS: admissions, errors, metrics, hot reloads."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from tests.conftest import Server, start_server, stop_server
from tests.golden_cases import load_cases, make_review
from webhook.certs import generate_ca, generate_serving_cert
from webhook.review import review_body

CASES = {c.name: c for c in load_cases()}


def post(server: Server, body: bytes, content_type: str = "application/json") -> httpx.Response:
    with server.client(timeout=10) as client:
        return client.post("/mutate", content=body, headers={"content-type": content_type})


def metric(server: Server, name: str, **labels: str) -> float:
    with server.client(timeout=10) as client:
        text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_and_readiness(webhook_server: Server) -> None:
    with webhook_server.client(timeout=5) as client:
        assert client.get("/healthz").text == "ok"
        assert client.get("/readyz").status_code == 200


def test_untrusted_ca_is_refused(webhook_server: Server) -> None:
    with pytest.raises(httpx.ConnectError), httpx.Client(timeout=5) as client:
        client.get(webhook_server.url + "/healthz")  # system CAs do not know ours


@pytest.mark.parametrize(
    "name", ["02-kserve-after-gs", "03-kserve-after-s3-credentials", "01-kserve-before-gs"]
)
def test_mutate_serves_the_core_answer(webhook_server: Server, name: str) -> None:
    case = CASES[name]
    body = make_review(case.pod, namespace=case.namespace, uid=f"uid-{name}")
    response = post(webhook_server, json.dumps(body).encode())
    assert response.status_code == 200
    served = response.json()
    expected = review_body(body, config=case.config, namespace=case.view).response
    assert served == expected
    assert served["response"]["uid"] == f"uid-{name}"
    if "patch" in served["response"]:
        ops = json.loads(base64.b64decode(served["response"]["patch"]))
        assert any(op["path"].startswith("/spec/initContainers") for op in ops)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "needle"),
    [
        (b"{not json", "application/json", 400, "not JSON"),
        (b"\xff\xfe\x00garbage", "application/json", 400, "UTF-8"),
        (b"[1, 2, 3]", "application/json", 400, "AdmissionReview"),
        (
            b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}',
            "application/json",
            400,
            "request",
        ),
        (
            b'{"apiVersion": "v2", "kind": "AdmissionReview", "request": {}}',
            "application/json",
            400,
            "apiVersion",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested"),
        (b"{}", "text/plain", 415, "application/json"),
        (b"x" * (4 * 1024 * 1024), "application/json", 413, "larger"),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "array",
        "no-request",
        "bad-version",
        "deep",
        "content-type",
        "huge",
    ],
)
def test_malformed_requests_get_clear_errors(
    webhook_server: Server, body: bytes, content_type: str, status: int, needle: str
) -> None:
    response = post(webhook_server, body, content_type)
    assert response.status_code == status
    assert needle in response.json()["error"]
    assert (
        post(
            webhook_server,
            json.dumps(make_review(CASES["02-kserve-after-gs"].pod, namespace="default")).encode(),
        ).status_code
        == 200
    )


def test_metrics_count_outcomes(webhook_server: Server) -> None:
    before = metric(
        webhook_server, "kserve_cache_admissions_total", outcome="skipped", reason="not-kserve"
    )
    case = CASES["08-not-kserve-pod"]
    post(webhook_server, json.dumps(make_review(case.pod, namespace="x")).encode())
    after = metric(
        webhook_server, "kserve_cache_admissions_total", outcome="skipped", reason="not-kserve"
    )
    assert after == before + 1
    assert metric(webhook_server, "kserve_cache_admission_duration_seconds_count") >= 1


def peer_certificate(server: Server) -> x509.Certificate:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    port = int(server.url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
        return x509.load_der_x509_certificate(der)


@pytest.fixture
def own_cert_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    ca = generate_ca()
    first = generate_serving_cert(ca, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "ca.crt").write_bytes(ca.cert_pem)
    (tls / "tls.crt").write_bytes(first.cert_pem)
    (tls / "tls.key").write_bytes(first.key_pem)
    server = start_server(
        tmp_path,
        cert_args=["--cert-file", str(tls / "tls.crt"), "--key-file", str(tls / "tls.key")],
        ca_file=tls / "ca.crt",
    )
    try:
        yield server, tls
    finally:
        stop_server(server)


def test_rotated_certificate_is_served_without_restart(
    own_cert_server: tuple[Server, Path],
) -> None:
    server, tls = own_cert_server
    old = peer_certificate(server)
    ca_pem = (tls / "ca.crt").read_bytes()
    # a new serving certificate from a new CA, written the way a Secret update lands
    ca2 = generate_ca(common_name="rotated-ca")
    second = generate_serving_cert(ca2, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    (tls / "ca.crt").write_bytes(ca_pem + ca2.cert_pem)
    staged = tls / "staged"
    staged.mkdir()
    (staged / "tls.key").write_bytes(second.key_pem)
    (staged / "tls.crt").write_bytes(second.cert_pem)
    (staged / "tls.key").replace(tls / "tls.key")
    (staged / "tls.crt").replace(tls / "tls.crt")
    deadline = time.monotonic() + 10
    new = old
    while time.monotonic() < deadline and new.serial_number == old.serial_number:
        time.sleep(0.2)
        new = peer_certificate(server)
    assert new.serial_number != old.serial_number
    assert (
        new.issuer.rfc4514_string() == "CN=rotated-ca"
        or "rotated-ca" in new.issuer.rfc4514_string()
    )
    assert server.process.poll() is None


def write_config(path: Path, text: str) -> None:
    """Replace the file the way a ConfigMap update does: a new file, then a symlink swap."""
    target = path.parent / f"..data-{time.monotonic_ns()}"
    target.write_text(text)
    link = path.parent / "tmp-link"
    link.symlink_to(target.name)
    link.replace(path)


def test_config_reload_and_bad_config_keeps_last_good(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    write_config(config, "policy: opt-in\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        pod = CASES["22-not-opted-in"].pod

        def outcome() -> Any:
            response = post(server, json.dumps(make_review(pod, namespace="default")).encode())
            return response.json()["response"].get("auditAnnotations", {})

        assert outcome() == {"skip-reason": "not-opted-in"}
        write_config(config, "policy: default-on\npvc: reloaded-cache\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "cache-key" not in outcome():
            time.sleep(0.1)
        assert "cache-key" in outcome()
        assert metric(server, "kserve_cache_config_reloads_total", result="ok") == 1
        write_config(config, "policy: sometimes\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not metric(
            server, "kserve_cache_config_reloads_total", result="error"
        ):
            time.sleep(0.1)
        assert metric(server, "kserve_cache_config_reloads_total", result="error") == 1
        assert "cache-key" in outcome()  # the last good config stays in force
        assert "keeping the last good one" in server.output()
    finally:
        stop_server(server)


def test_broken_config_at_start_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("fsGroup: -1\npvc: [x\n")
    with pytest.raises(RuntimeError, match="not valid YAML"):
        start_server(tmp_path, "--config", str(config))


def test_serve_refuses_without_certificates(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="--self-signed"):
        start_server(tmp_path, cert_args=[])
    assert shutil.which("true")  # the refusal above came from serve itself


@pytest.mark.parametrize(
    ("extra", "expected"), [((), "pvc-missing"), (("--no-claim-check",), None)]
)
def test_serve_checks_the_cache_claim_unless_told_not_to(
    tmp_path: Path, extra: tuple[str, ...], expected: str | None
) -> None:
    from tests.fakekube import FakeKube

    with FakeKube() as kube:
        kube.add_namespace("team")
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        server = start_server(tmp_path, "--kubeconfig", str(kubeconfig), *extra)
        try:
            body = make_review(CASES["02-kserve-after-gs"].pod, namespace="team")
            deadline = time.monotonic() + 10
            while True:  # the watches list right after start; /readyz says when
                with server.client(timeout=5) as client:
                    if client.get("/readyz").status_code == 200:
                        break
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.1)
            answer = post(server, json.dumps(body).encode()).json()["response"]
            if expected is None:
                # long enough for the claim watch to have listed, were it running
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    assert "patch" in answer, answer
                    time.sleep(0.2)
                    answer = post(server, json.dumps(body).encode()).json()["response"]
                assert metric(server, "kserve_cache_claims_synced") == 0
            else:
                deadline = time.monotonic() + 10
                while answer.get("auditAnnotations", {}).get("skip-reason") != expected:
                    assert time.monotonic() < deadline, answer
                    time.sleep(0.1)
                    answer = post(server, json.dumps(body).encode()).json()["response"]
                assert "patch" not in answer
                assert "not found in namespace 'team'" in answer["warnings"][0]
        finally:
            stop_server(server)


def test_the_webhook_never_imports_kserve_storage() -> None:
    """KServe's downloader (and boto3, azure, gcs) belongs to `fetch` only."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from webhook.cli import build_parser\n"
        "build_parser()\n"  # every command's parser, fetch's included
        "import webhook.app, webhook.cli.serve, webhook.review\n"
        "webhook.app.create_app()\n"
        "print(sorted(m for m in ('kserve_storage', 'boto3', 'botocore') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
