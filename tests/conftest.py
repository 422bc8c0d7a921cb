"""Shared fixtures: golden-case switch, a real `kserve-cache serve` over TLS."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.fakekube import FakeKube

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*/expected.json from the current code",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kserve_cache_exe() -> list[str]:
    exe = shutil.which("kserve-cache", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "webhook"]


@dataclass
class Server:
    url: str
    ca_file: Path
    cert_dir: Path
    process: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.Client(base_url=self.url, verify=context, **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(
    tmp: Path,
    *extra: str,
    cert_args: list[str] | None = None,
    ca_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `kserve-cache serve` as a real process and wait until /healthz answers."""
    port = free_port()
    cert_dir = tmp / "certs"
    args = cert_args if cert_args is not None else ["--self-signed", "--cert-dir", str(cert_dir)]
    log = tmp / f"serve-{port}.log"
    handle = log.open("wb")
    process = subprocess.Popen(
        [
            *kserve_cache_exe(),
            "serve",
            "--port",
            str(port),
            "--reload-interval",
            "0.2",
            *args,
            *extra,
        ],
        stdout=handle,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env={**os.environ, **(env or {})},
    )
    handle.close()
    server = Server(
        url=f"https://localhost:{port}",
        ca_file=ca_file or cert_dir / "ca.crt",
        cert_dir=cert_dir,
        process=process,
        log=log,
    )
    try:
        _wait_until_healthy(server)
    except BaseException:
        stop_server(server)  # never leak a server process, whatever went wrong
        raise
    return server


def _wait_until_healthy(server: Server) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"serve exited {server.process.returncode}:\n{server.output()}")
        if server.ca_file.exists():
            try:
                with server.client(timeout=1) as client:
                    if client.get("/healthz").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"serve did not come up:\n{server.output()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    """A fresh Kubernetes API stand-in on 127.0.0.1 (namespaces, claims, pods)."""
    with FakeKube() as server:
        yield server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="session")
def webhook_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real `kserve-cache serve --self-signed` for the session (default config)."""
    server = start_server(tmp_path_factory.mktemp("serve"))
    try:
        yield server
    finally:
        stop_server(server)
