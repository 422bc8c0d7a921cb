"""A real TLS handshake against `kserve-cache serve` with certificates from `kserve-cache certs`.

The client behaves like the API server calling the webhook: it trusts only the caBundle and
checks the Service's DNS name, while the server runs as a replica would, from a directory
that the kubelet updates when the Secret changes.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import free_port, kserve_cache_exe
from webhook.cli import main

SERVICE_HOST = "kserve-cache-webhook.kserve-cache.svc"


@dataclass
class Replica:
    port: int
    pod_dir: Path
    process: subprocess.Popen[bytes]
    log: Path


def handshake(port: int, ca_file: Path, *, host: str = SERVICE_HOST) -> tuple[bytes, bytes]:
    """(server certificate PEM, response head of GET /healthz), trusting only `ca_file`."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        tls.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := tls.recv(65536):
            response += chunk
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    return pem, response.split(b"\r\n", 1)[0]


def install(source: Path, pod_dir: Path) -> None:
    """Put tls.crt/tls.key in place atomically, as the kubelet swaps a Secret volume."""
    for name in ("tls.key", "tls.crt"):
        tmp = pod_dir / f".{name}.new"
        shutil.copyfile(source / name, tmp)
        tmp.replace(pod_dir / name)


def run_certs(out_dir: Path, *args: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["certs", "--out-dir", str(out_dir), *args]) == 0


@contextlib.contextmanager
def start_replica(tmp_path: Path) -> Iterator[Replica]:
    """`kserve-cache certs` into tmp_path/out, then `serve` from a copy in tmp_path/pod."""
    out = tmp_path / "out"
    run_certs(out)
    pod_dir = tmp_path / "pod"
    pod_dir.mkdir()
    install(out, pod_dir)
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [
                *kserve_cache_exe(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--cert-file",
                str(pod_dir / "tls.crt"),
                "--key-file",
                str(pod_dir / "tls.key"),
                "--reload-interval",
                "0.2",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    server = Replica(port=port, pod_dir=pod_dir, process=process, log=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"serve exited {process.returncode}: {log.read_text()}")
            try:
                handshake(port, out / "ca.crt")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"serve did not come up: {log.read_text()}")
                time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Replica, Path]]:
    tmp = tmp_path_factory.mktemp("replica")
    with start_replica(tmp) as replica:
        yield replica, tmp


def wait_for_cert(port: int, ca_file: Path, expected: bytes) -> None:
    deadline = time.monotonic() + 20
    while handshake(port, ca_file)[0] != expected:
        assert time.monotonic() < deadline, "serve did not pick up the renewed certificate"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "host",
    [
        "kserve-cache-webhook",
        "kserve-cache-webhook.kserve-cache",
        "kserve-cache-webhook.kserve-cache.svc",
        "kserve-cache-webhook.kserve-cache.svc.cluster.local",
    ],
)
def test_handshake_with_the_generated_ca(shared: tuple[Replica, Path], host: str) -> None:
    replica, tmp_path = shared
    pem, status = handshake(replica.port, tmp_path / "out" / "ca.crt", host=host)
    assert pem == (replica.pod_dir / "tls.crt").read_bytes()
    assert status == b"HTTP/1.1 200 OK"


def test_handshake_fails_for_another_name_or_another_ca(shared: tuple[Replica, Path]) -> None:
    replica, tmp_path = shared
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            replica.port, tmp_path / "out" / "ca.crt", host="kserve-cache-webhook.default.svc"
        )
    run_certs(tmp_path / "unrelated")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(replica.port, tmp_path / "unrelated" / "ca.crt")


def test_rotation_keeps_old_and_new_replicas_trusted(tmp_path: Path) -> None:
    with start_replica(tmp_path) as replica:
        rotate(replica, tmp_path)


def rotate(replica: Replica, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first_bundle = tmp_path / "first-ca.crt"
    shutil.copyfile(out / "ca.crt", first_bundle)
    old_cert = (replica.pod_dir / "tls.crt").read_bytes()

    run_certs(out)  # rotation: new CA, bundle = new CA + previous CA
    # caBundle updated first; a replica still serving the old certificate keeps working.
    assert handshake(replica.port, out / "ca.crt") == (old_cert, b"HTTP/1.1 200 OK")

    install(out, replica.pod_dir)  # the Secret is updated; the replica reloads it
    new_cert = (out / "tls.crt").read_bytes()
    wait_for_cert(replica.port, out / "ca.crt", new_cert)
    assert handshake(replica.port, out / "ca.crt") == (new_cert, b"HTTP/1.1 200 OK")
    # The new certificate really is under the new CA only.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(replica.port, first_bundle)

    # Without an overlap the bundle drops the CA the running replica's certificate needs.
    run_certs(out, "--overlap-days", "0")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(replica.port, out / "ca.crt")
