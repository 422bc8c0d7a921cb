"""Graceful shutdown of a real `kserve-cache serve`: on SIGTERM readiness turns false, the
server keeps serving for `--drain-seconds`, an admission in flight (its body still being sent
after the drain, when new connections are refused) finishes with 200, then the process exits."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, stop_server
from tests.golden_cases import load_cases, make_review

POD = next(c.pod for c in load_cases() if c.name == "02-kserve-after-gs")


def _port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _refuses_connections(server: Server) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=1):
            return False
    except OSError:
        return True


def _readiness(server: Server) -> tuple[int, str]:
    with server.client(timeout=5) as client:
        response = client.get("/readyz")
        return response.status_code, response.text


def _wait(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_drains_then_finishes_in_flight_admissions(tmp_path: Path, workers: int) -> None:
    server = start_server(tmp_path, "--drain-seconds", "1.5", "--workers", str(workers))
    try:
        assert _readiness(server) == (200, "ok")
        body = json.dumps(make_review(POD, namespace="default", uid="in-flight")).encode()
        context = ssl.create_default_context(cafile=str(server.ca_file))
        raw = socket.create_connection(("127.0.0.1", _port(server)), timeout=30)
        with context.wrap_socket(raw, server_hostname="localhost") as held:
            held.sendall(
                b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body)
            )
            held.sendall(body[:100])  # the admission is now in flight

            server.process.send_signal(signal.SIGTERM)
            # draining: still serving, but not ready, so the Service stops sending new pods
            assert _wait(lambda: _readiness(server)[0] == 503, 10)
            code, text = _readiness(server)
            assert (code, "shutting down" in text) == (503, True)
            assert server.process.poll() is None

            # after the drain the listener closes; the held request is still being answered
            assert _wait(lambda: _refuses_connections(server), 15)
            assert server.process.poll() is None, "exited with an admission in flight"
            held.sendall(body[100:])
            response = b""
            while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
                chunk = held.recv(65536)
                if not chunk:
                    break
                response += chunk
        head, _, payload = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        answer = json.loads(payload)["response"]
        assert answer["uid"] == "in-flight"
        assert answer["patchType"] == "JSONPatch"

        # uvicorn ends a graceful shutdown by re-raising the signal: killed by SIGTERM (143)
        assert server.process.wait(timeout=20) == -signal.SIGTERM
        with pytest.raises(httpx.ConnectError):
            _readiness(server)
        log = server.output()
        assert "stopping in 1.5s" in log
        assert log.count("Application shutdown complete") == workers
        assert "Traceback" not in log
    finally:
        stop_server(server)
