"""The read-path benchmark runs end to end on a small model, every method reads every byte, and
it writes where it is told, never over the committed results unless asked to."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "benchmarks" / "readpath" / "run.py"
COMMITTED = ROOT / "benchmarks" / "results"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readpath_run", RUN)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("readpath_run", module)
    spec.loader.exec_module(module)
    return module


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("readpath.*")}


def test_default_out_is_a_new_folder_not_the_committed_one() -> None:
    args = load().parse_args(["--fs", "local"])
    assert args.out.resolve() != COMMITTED.resolve()
    assert args.out.is_dir()
    assert not any(args.out.iterdir())
    args.out.rmdir()


def test_a_small_local_run_reads_every_byte_with_every_method(tmp_path: Path) -> None:
    run = load()
    before = digest(COMMITTED)
    out = tmp_path / "results"
    code = run.main(
        [
            "--fs=local",
            "--size=12M",
            "--repeat=1",
            "--parallel=3",
            "--copy-workers=2",
            "--prefetch-limit=0",
            "--cold=fadvise",
            f"--work={tmp_path / 'work'}",
            f"--out={out}",
        ]
    )
    assert code == 0
    assert digest(COMMITTED) == before
    data = json.loads((out / "readpath.json").read_text())
    (local,) = data["filesystems"]
    names = [row["method"] for row in local["methods"]]
    assert names == [
        "seq-1m",
        "seq-16m",
        "parallel-3",
        "mmap-safetensors",
        "prefetch+seq-1m",
        "copy-before",
        "copy-2",
    ]
    assert local["model"]["bytes"] > 12_000_000 * 0.9
    assert local["ceiling_mb_s"] > 0
    copy = next(r for r in local["methods"] if r["method"] == "copy-2")
    assert copy["runs"][0]["copy_method"] in ("copy_file_range", "sendfile", "readwrite")
    assert "| copy (2 workers), then local read |" in (out / "readpath.md").read_text()
    assert (out / "readpath.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("bad", ["--fs=nfs", "--cold=never"])
def test_bad_arguments_are_refused(bad: str) -> None:
    run = load()
    with pytest.raises(SystemExit):
        run.main([bad, "--size=1M", "--repeat=1"])
