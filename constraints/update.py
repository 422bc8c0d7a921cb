"""Write constraints/runtime.txt: exact pins of everything `kserve-cache[fetcher]` needs at run
time (the webhook and fetcher images), taken from the installed environment.

    .venv/bin/python constraints/update.py          # rewrite the file
    .venv/bin/python constraints/update.py --check  # exit 1 when it is not current

The Dockerfile installs the wheel with `pip install -c constraints/runtime.txt`; the test
tests/deploy/test_constraints.py checks every dependency in pyproject.toml is pinned and
satisfied, and that the pins are complete and consistent.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "constraints" / "runtime.txt"
PROJECT = "kserve-cache"
EXTRAS = ("fetcher",)
# The images run Linux (glibc), whatever machine writes the file.
TARGET = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux"}
HEADER = """\
# Exact versions of every package the kserve-cache images install (runtime + fetcher extra),
# for `pip install -c constraints/runtime.txt` in the Dockerfile. Generated from the dev venv by
# `.venv/bin/python constraints/update.py`; tests/deploy/test_constraints.py keeps it current
# with pyproject.toml. Do not edit by hand.
"""


def closure(project: str = PROJECT, extras: tuple[str, ...] = EXTRAS) -> dict[str, str]:
    """canonical name -> installed version, for `project[extras]` and what it needs."""
    pins: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(project, extras)]
    seen: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = metadata.distribution(name)
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(project):
            pins[key] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            for extra in ("", *wanted):
                if req.marker is None or req.marker.evaluate({**TARGET, "extra": extra}):
                    break
            else:
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    return pins


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is not current")
    args = parser.parse_args()
    text = render(closure())
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            sys.stderr.write(f"{OUT} is not current: run .venv/bin/python constraints/update.py\n")
            return 1
        return 0
    OUT.write_text(text)
    sys.stderr.write(f"wrote {OUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
