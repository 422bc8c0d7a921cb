"""Helpers for the preview tests: run the CLI in-process, load the test data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from webhook.cli import main

DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def yaml(self) -> list[Any]:
        return list(yaml.safe_load_all(self.out))


@pytest.fixture
def preview(capsys: pytest.CaptureFixture[str]) -> Any:
    """`preview(*argv)`: `kserve-cache preview ARGV` in this process; Run(code, out, err)."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(["preview", *argv])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / name).read_text())
    return data


def write(path: Path, *docs: Any) -> Path:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path
