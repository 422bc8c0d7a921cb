"""Fixtures of tests/versions: the cache fixtures (moto S3, cache root) and the stub server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.cache.conftest import layout, s3  # noqa: F401  (fixtures shared with tests/cache)

from .stubs import StubServer


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    server = StubServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dead_port() -> int:
    """A loopback port nobody listens on (bound then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
