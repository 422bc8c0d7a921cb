"""constraints/runtime.txt (the images' pins) is current with pyproject.toml: every runtime and
fetcher dependency is pinned, every pin satisfies its specifier, and the set is closed (what the
pinned packages need is pinned too, at versions they accept)."""

from __future__ import annotations

import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.conftest import ROOT

CONSTRAINTS = ROOT / "constraints" / "runtime.txt"
TARGET = {"sys_platform": "linux", "platform_system": "Linux", "extra": ""}


def pins() -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in found, f"{name} pinned twice"
        found[key] = Version(version)
    return found


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"], *project["optional-dependencies"]["fetcher"]]
    return [Requirement(t) for t in texts]


def applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate(TARGET)


@pytest.mark.parametrize("req", project_requirements(), ids=str)
def test_every_dependency_is_pinned_within_its_range(req: Requirement) -> None:
    if not applies(req):
        pytest.skip(f"{req} does not apply on Linux")
    pinned = pins()
    key = canonicalize_name(req.name)
    assert key in pinned, f"{req.name} is not in {CONSTRAINTS.name}: run constraints/update.py"
    assert req.specifier.contains(pinned[key], prereleases=True), (
        f"{req.name}=={pinned[key]} does not satisfy {req.specifier}: run constraints/update.py"
    )


def test_the_pins_are_closed_and_consistent() -> None:
    """For each pinned package installed here at the pinned version, its own requirements are
    pinned too, at versions it accepts (packages at another version here are not judged)."""
    pinned = pins()
    problems = []
    for key, version in sorted(pinned.items()):
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue
        if Version(dist.version) != version:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if not applies(req):
                continue
            dep = canonicalize_name(req.name)
            if dep not in pinned:
                problems.append(f"{key} needs {req}, which is not pinned")
            elif not req.specifier.contains(pinned[dep], prereleases=True):
                problems.append(f"{key} needs {req}, pinned {pinned[dep]}")
    assert not problems, "; ".join(problems)


def test_the_generator_agrees_with_the_file_on_names() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("update", ROOT / "constraints" / "update.py")
    assert spec is not None
    assert spec.loader is not None
    update = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(update)
    assert set(update.closure()) <= set(pins()), "run .venv/bin/python constraints/update.py"
