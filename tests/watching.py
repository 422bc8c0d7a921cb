"""Helpers for tests of the watch-backed namespace and claim caches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from webhook.namespaces import NamespaceView, WatchedNamespaces

DEADLINE = 15.0


def eventually(check: Callable[[], object], *, what: str, deadline: float = DEADLINE) -> None:
    """Poll until `check()` is truthy; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.02)


def lookup(source: WatchedNamespaces, name: str) -> NamespaceView:
    # The bound here only stops a broken test from hanging; it is not what is tested.
    return asyncio.run(asyncio.wait_for(source.lookup(name), 10))


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0
