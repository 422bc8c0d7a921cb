"""/mutate under hostile HTTP: hypothesis bodies and headers against the app (no 5xx, every
answer is an AdmissionReview or a JSON error), and against the real TLS server: bodies sent
slowly, huge streamed bodies (413), deep nesting, a stalled client, broken config files."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, start_server, stop_server
from tests.fuzz.strategies import JSON, pods
from tests.golden_cases import load_cases, make_review
from webhook.app import create_app

CASES = {c.name: c for c in load_cases()}
MUTATED_POD = CASES["02-kserve-after-gs"].pod
SMALL_LIMIT = 64 * 1024

BODIES = st.one_of(
    st.binary(max_size=300),
    JSON.map(lambda v: json.dumps(v).encode()),
    pods().map(lambda p: json.dumps(make_review(p, namespace="default")).encode()),
    st.builds(
        lambda depth, head: head * depth + b"]" * depth,
        st.integers(1, 3000),
        st.sampled_from([b"[", b'{"a":[']),
    ),
    st.just(b"\xff\xfe{}"),
    st.just(b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "x": NaN}'),
    st.just(b'{"a": "\\ud800"}'),
    st.just(b"x" * (SMALL_LIMIT + 1)),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json",
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/yaml",
        "",
        "application/json\x7f",
    ]
)
HEADERS = st.dictionaries(
    st.sampled_from(["x-request-id", "accept", "content-encoding", "transfer-encoding-x"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
    max_size=2,
)


def _check(status: int, payload: bytes) -> str:
    assert status < 500, payload[:300]
    answer = json.loads(payload)
    if status == 200:
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["allowed"] is True
        return "200"
    assert status in (400, 413, 415), status
    assert answer["error"]
    return str(status)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, content_type=CONTENT_TYPES, headers=HEADERS)
def test_app_never_answers_5xx(body: bytes, content_type: str, headers: dict[str, str]) -> None:
    app = create_app(max_body=SMALL_LIMIT)

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://webhook") as client:
            return await client.post(
                "/mutate", content=body, headers={**headers, "content-type": content_type}
            )

    response = asyncio.run(send())
    event(_check(response.status_code, response.content))


# the real server -----------------------------------------------------------------------------


def _tls(server: Server) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(server.ca_file))
    port = int(server.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_response(sock: ssl.SSLSocket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _request_head(path: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n{extra}\r\n"
    ).encode()


def test_body_sent_slowly_in_pieces_is_answered(webhook_server: Server) -> None:
    body = json.dumps(make_review(MUTATED_POD, namespace="default", uid="slow")).encode()
    with _tls(webhook_server) as sock:
        sock.sendall(_request_head("/mutate", f"content-length: {len(body)}\r\n"))
        step = len(body) // 5 + 1
        for start in range(0, len(body), step):
            time.sleep(0.05)
            sock.sendall(body[start : start + step])
        status, _, payload = _read_response(sock)
    assert status == 200
    answer = json.loads(payload)["response"]
    assert answer["uid"] == "slow"
    assert answer["patchType"] == "JSONPatch"


def test_huge_streamed_body_without_length_is_413(webhook_server: Server) -> None:
    """Chunked, no content-length: the server stops at its limit (3 MiB) and answers 413."""
    chunk = b"[" + b"0," * 32_000 + b"0]"
    with _tls(webhook_server) as sock:
        sock.sendall(_request_head("/mutate", "transfer-encoding: chunked\r\n"))
        sent = 0
        try:
            while sent < 5 * 1024 * 1024:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may answer and close before the client is done
        status, _, payload = _read_response(sock)
    assert status == 413
    assert "larger than" in json.loads(payload)["error"]


@pytest.mark.parametrize("depth", [500, 1025, 5000, 200_000])
def test_deep_nesting_inside_a_review_is_400_or_answered(
    webhook_server: Server, depth: int
) -> None:
    pod = json.loads(json.dumps(MUTATED_POD))
    envelope = json.dumps(make_review(pod, namespace="default", uid="deep")).encode()
    nested = b"[" * depth + b"]" * depth
    body = envelope.replace(b'"metadata":', b'"x-deep":' + nested + b',"metadata":', 1)
    with webhook_server.client(timeout=30) as client:
        response = client.post(
            "/mutate", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code in (200, 400), response.text[:300]
    if response.status_code == 400:
        assert "nested too deeply" in response.json()["error"]
    else:
        assert response.json()["response"]["uid"] == "deep"


def test_stalled_client_does_not_block_others(webhook_server: Server) -> None:
    with _tls(webhook_server) as stalled:
        stalled.sendall(_request_head("/mutate", "content-length: 100000\r\n") + b'{"a": ')
        body = json.dumps(make_review(MUTATED_POD, namespace="default", uid="other")).encode()
        with webhook_server.client(timeout=10) as client:
            for _ in range(3):
                response = client.post(
                    "/mutate", content=body, headers={"content-type": "application/json"}
                )
                assert response.status_code == 200
                assert response.json()["response"]["uid"] == "other"


# broken config files -------------------------------------------------------------------------


@pytest.fixture
def configured_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    config = tmp_path / "config.yaml"
    config.write_text("policy: default-on\npvc: good-cache\n")
    server = start_server(tmp_path, "--config", str(config))
    try:
        yield server, config
    finally:
        stop_server(server)


def _errors(server: Server) -> float:
    with server.client(timeout=10) as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith('kserve_cache_config_reloads_total{result="error"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


BROKEN: list[Any] = [
    b"\xff\xfe\x00garbage\x80",
    b"- a\n- list\n",
    b"policy: [unclosed\n",
    b"fsGroup: many\n",
    b"initContainer:\n  image: ''\n",
    b"pvc: Not_A_Name\n",
    None,  # the file disappears
]


def test_broken_config_files_keep_the_last_good_one(
    configured_server: tuple[Server, Path],
) -> None:
    server, config = configured_server
    pod = CASES["22-not-opted-in"].pod  # cached only because the config says default-on
    body = json.dumps(make_review(pod, namespace="default")).encode()
    for count, content in enumerate(BROKEN, start=1):
        if content is None:
            config.unlink()
        else:
            config.write_bytes(content + b"\n" * count)  # a new size: seen as a change
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _errors(server) < count:
            time.sleep(0.1)
        assert _errors(server) == count, content
        with server.client(timeout=10) as client:
            answer = client.post(
                "/mutate", content=body, headers={"content-type": "application/json"}
            ).json()["response"]
        ops = json.loads(base64.b64decode(answer["patch"]))
        status = next(op["value"] for op in ops if op["path"].endswith("cache.kserve.io~1status"))
        assert json.loads(status)["pvc"] == "good-cache", content
