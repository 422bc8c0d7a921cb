"""The images' install steps, without a Docker engine: the Dockerfile's own commands, run here.

Builds the wheel from the files the build context holds (.dockerignore), makes the virtualenv
the Dockerfile makes, runs each target's `pip install` line as written (paths mapped into a
temporary directory; the two targets install side by side), and runs the installed
`kserve-cache`. Needs the package index; pip uses this machine's settings and cache (the
Dockerfile's PIP_NO_CACHE_DIR only keeps image layers small). Deselect with -m 'not image'.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.conftest import ROOT

# Two pip installs from the package index at once: minutes on a loaded machine.
pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]
TARGETS = ("webhook", "fetcher")


def dockerfile_stages() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def run_instructions(stage: str) -> list[str]:
    """The shell commands of a stage's RUN instructions, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", stage)
    commands = re.findall(r"^RUN\s+(.*)$", joined, flags=re.MULTILINE)
    # BuildKit mount flags are not part of the shell command.
    return [re.sub(r"--mount=\S+\s+", "", command).strip() for command in commands]


def build_context(dest: Path) -> Path:
    """Copy what .dockerignore lets into the build context."""
    dest.mkdir(parents=True)
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert sorted(allowed) == [
        "LICENSE",
        "README.md",
        "constraints/runtime.txt",
        "pyproject.toml",
        "webhook",
    ]
    for name in allowed:
        source = ROOT / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def sh(command: str, *, env: dict[str, str], timeout: float = 600) -> str:
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"$ {command}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wheel_installs_and_runs_as_in_the_images(tmp_path: Path) -> None:
    stages = dockerfile_stages()
    # The machine's pip settings (index, wheelhouse) stay; the test venv must not leak in.
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}

    # builder: python -m build --wheel --outdir /dist, in the build context
    context = build_context(tmp_path / "src")
    dist = tmp_path / "dist"
    (build_cmd,) = [c for c in run_instructions(stages["builder"]) if "-m build" in c]
    assert build_cmd == "python -m build --wheel --outdir /dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(context)],
        capture_output=True,
        check=True,
        timeout=600,
        env=env,
    )
    (wheel,) = dist.glob("kserve_cache-*.whl")

    # runtime: python -m venv /opt/kserve-cache; then each target's pip install, both at once
    (venv_cmd,) = run_instructions(stages["runtime"])
    assert venv_cmd == "python -m venv /opt/kserve-cache"
    prefixes = {target: tmp_path / target / "opt" / "kserve-cache" for target in TARGETS}
    installs: dict[str, subprocess.Popen[str]] = {}
    for target, prefix in prefixes.items():
        subprocess.run([sys.executable, "-m", "venv", str(prefix)], check=True, timeout=120)
        (install_cmd,) = run_instructions(stages[target])
        assert install_cmd.startswith("/opt/kserve-cache/bin/pip install ")
        assert " -c /constraints.txt " in install_cmd  # the pinned versions
        command = (
            install_cmd.replace("/opt/kserve-cache", str(prefix))
            .replace("/dist", str(dist))
            .replace("/constraints.txt", str(context / "constraints" / "runtime.txt"))
        )
        installs[target] = subprocess.Popen(
            ["sh", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
    try:
        for target, process in installs.items():
            output, _ = process.communicate(timeout=900)
            assert process.returncode == 0, f"{target}: {output}"
    finally:  # never leave an install running (or its pipe open) for the next test
        for process in installs.values():
            if process.poll() is None:
                process.kill()
            process.communicate()

    for target, prefix in prefixes.items():
        exe = prefix / "bin" / "kserve-cache"
        usage = sh(f"{exe} --help", env=env)
        for command in ("serve", "certs", "fetch"):
            assert command in usage
        assert "--uri" in sh(f"{exe} fetch --help", env=env)
        installed = sh(f"{prefix / 'bin' / 'python'} -m pip list --format=freeze", env=env)
        # Only the fetcher image carries KServe's downloader.
        assert ("kserve-storage==" in installed.lower()) is (target == "fetcher"), target
        assert f"kserve-cache=={wheel.name.split('-')[1]}" in installed
        # every installed package at its pinned version
        pinned = {
            line.split("==")[0]: line
            for line in (context / "constraints" / "runtime.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        }
        for line in installed.lower().splitlines():
            name = line.split("==")[0].replace("_", "-")
            if name in pinned:
                assert line.replace("_", "-") == pinned[name], (target, line)
    sh(f"{prefixes['fetcher'] / 'bin' / 'python'} -c 'import kserve_storage'", env=env)
