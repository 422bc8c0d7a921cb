"""The Makefile: a wrong Python fails clearly and leaves no .venv; a failed install removes the
venv it made (never one that was there); `make image`/`make push` build and push both targets
of the Dockerfile with the registry and tag given. Runs make for real, with stand-in
interpreters (no network, no Docker engine)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def fake_python(path: Path, *, version_ok: bool, pip_ok: bool) -> Path:
    """An interpreter stand-in: answers the version check, and `-m venv DIR` makes a venv whose
    pip succeeds or fails."""
    pip = "exit 0" if pip_ok else "exit 1"
    path.write_text(
        f"""#!/bin/sh
case "$1" in
  --version) echo "Python {"3.12.1" if version_ok else "3.9.18"}";;
  -c) exit {0 if version_ok else 1};;
  -m) mkdir -p "$3/bin"; printf '#!/bin/sh\\n{pip}\\n' > "$3/bin/pip";
      ln -s "$0" "$3/bin/python"; chmod +x "$3/bin/pip";;
esac
"""
    )
    path.chmod(0o755)
    return path


def test_a_wrong_python_fails_clearly_and_makes_no_venv(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    python = fake_python(tmp_path / "python3.9", version_ok=False, pip_ok=True)
    result = make(f"{venv}/.run", f"VENV={venv}", f"PYTHON={python}")
    assert result.returncode != 0
    assert "needs Python 3.11, 3.12 or 3.13" in result.stderr
    assert "Python 3.9.18" in result.stderr
    assert not venv.exists()


def test_a_missing_python_fails_clearly(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    result = make(f"{venv}/.run", f"VENV={venv}", f"PYTHON={tmp_path / 'nope'}")
    assert result.returncode != 0
    assert "not installed" in result.stderr
    assert not venv.exists()


def test_a_failed_install_removes_the_venv_it_made(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    python = fake_python(tmp_path / "python3", version_ok=True, pip_ok=False)
    result = make(f"{venv}/.dev", f"VENV={venv}", f"PYTHON={python}")
    assert result.returncode != 0
    assert "removed the new" in result.stderr
    assert not venv.exists()


def test_a_failed_install_keeps_an_existing_venv(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    python = fake_python(tmp_path / "python3", version_ok=True, pip_ok=False)
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True)
    result = make(f"{venv}/.run", f"VENV={venv}", f"PYTHON={python}")
    assert result.returncode != 0
    assert "kept as it was" in result.stderr
    assert (venv / "bin" / "python").exists()
    assert not (venv / ".run").exists()


def test_a_good_install_says_how_to_activate(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    python = fake_python(tmp_path / "python3", version_ok=True, pip_ok=True)
    result = make(f"{venv}/.run", f"VENV={venv}", f"PYTHON={python}")
    assert result.returncode == 0, result.stderr
    assert f"activate it with: . {venv}/bin/activate" in result.stdout
    assert (venv / ".run").exists()


def stages() -> set[str]:
    text = (ROOT / "Dockerfile").read_text()
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE))


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_image_builds_both_targets_with_registry_and_tag(engine: str) -> None:
    result = make("-n", "image", f"ENGINE={engine}", "REGISTRY=reg.example.com/ml", "TAG=1.2.3")
    assert result.returncode == 0, result.stderr
    builds = re.findall(r"DOCKER_BUILDKIT=1 (\S+) build --target (\S+) -t (\S+)", result.stdout)
    assert builds == [
        (engine, "webhook", "reg.example.com/ml/kserve-cache:1.2.3"),
        (engine, "fetcher", "reg.example.com/ml/kserve-cache-fetcher:1.2.3"),
    ]
    assert {target for _, target, _ in builds} <= stages()
    assert "--iidfile build/image-webhook.iid" in result.stdout


def test_image_tag_defaults_to_the_package_version() -> None:
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    result = make("-n", "image-fetcher", "ENGINE=docker")
    assert f"-t ghcr.io/kserve-cache/kserve-cache-fetcher:{version.group(1)} " in result.stdout


def test_a_base_image_override_reaches_the_build() -> None:
    result = make("-n", "image-webhook", "ENGINE=docker", "PYTHON_IMAGE=python:3.12-slim")
    assert "--build-arg PYTHON_IMAGE=python:3.12-slim" in result.stdout


def test_push_pushes_both_and_prints_digests() -> None:
    result = make("-n", "push", "ENGINE=podman", "REGISTRY=reg.example.com/ml", "TAG=1.2.3")
    assert result.returncode == 0, result.stderr
    pushes = re.findall(r"^podman push (\S+)$", result.stdout, flags=re.MULTILINE)
    assert pushes == [
        "reg.example.com/ml/kserve-cache:1.2.3",
        "reg.example.com/ml/kserve-cache-fetcher:1.2.3",
    ]
    assert result.stdout.count("RepoDigests") == 2


def test_no_engine_is_a_clear_error() -> None:
    result = make("image", "ENGINE=")
    assert result.returncode != 0
    assert "neither docker nor podman found" in result.stderr


def test_the_dockerfile_uses_the_constraints_and_a_pinned_base() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(
        r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$", text, re.M
    )
    installs = re.findall(r"pip install -c /constraints\.txt", text)
    assert len(installs) == 2
    assert text.count("source=constraints/runtime.txt,target=/constraints.txt") == 2
    # every file the Dockerfile copies exists and is let into the build context
    ignore = (ROOT / ".dockerignore").read_text()
    for name in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, flags=re.MULTILINE):
        for item in name.split():
            assert (ROOT / item).exists(), item
            assert f"!{item.rstrip('/')}" in ignore or f"!{item.rstrip('/')}/" in ignore, item
    assert (ROOT / "constraints" / "runtime.txt").is_file()
