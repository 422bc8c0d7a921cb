"""The cold-start benchmark writes where it is told, and never over the committed results unless
asked to (`--out benchmarks/results`)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from tests.deploy.conftest import ROOT

RUN = ROOT / "benchmarks" / "coldstart" / "run.py"
COMMITTED = ROOT / "benchmarks" / "results"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("coldstart_run", RUN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("coldstart_run", module)
    spec.loader.exec_module(module)
    return module


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("coldstart.*")}


ROW = {
    "size": "10M",
    "plain_download_s": 1.0,
    "fetch_miss_s": 1.1,
    "fetch_hit_mount_s": 0.2,
    "fetch_hit_mount_inner_s": 0.001,
    "fetch_hit_copy_s": 0.3,
    "recipe_hit_cp_s": 0.3,
}
META = {"date": "2026-12-01", "machine": "test", "cpus": 2}


def test_default_out_is_not_the_committed_folder(tmp_path: Path) -> None:
    run = load()
    args = run.parse_args(["--sizes", "10M"])
    assert args.out.resolve() != COMMITTED.resolve()
    assert args.out.is_dir()
    assert not any(args.out.iterdir())
    args.out.rmdir()


def test_results_go_to_out_and_the_committed_ones_stay(tmp_path: Path) -> None:
    run = load()
    before = digest(COMMITTED)
    args = run.parse_args(["--out", str(tmp_path / "res")])
    run.write_results([ROW], META, args.out)
    assert digest(COMMITTED) == before
    assert "| 10M | 1.00 s |" in (tmp_path / "res" / "coldstart.md").read_text()
    assert (tmp_path / "res" / "coldstart.json").is_file()
