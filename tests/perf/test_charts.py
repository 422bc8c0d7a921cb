"""The benchmark charts are drawn from the committed results alone (`benchmarks/charts.py`)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

import charts  # noqa: E402


@pytest.mark.parametrize("name", sorted(charts.CHARTS))
def test_each_chart_is_drawn_from_its_committed_json(name: str, tmp_path: Path) -> None:
    shutil.copy(RESULTS / f"{name}.json", tmp_path / f"{name}.json")
    assert charts.main(["--results", str(tmp_path), name]) == 0
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_result_is_reported_not_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert charts.main(["--results", str(tmp_path), "admission"]) == 1
    assert "run benchmarks/admission/run.py first" in capsys.readouterr().err
    assert not (tmp_path / "admission.png").exists()


def test_the_admission_chart_needs_the_one_worker_parse_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = json.loads((RESULTS / "admission.json").read_text())
    for config in data["configs"]:
        config["parse_floor"] = {}
    (tmp_path / "admission.json").write_text(json.dumps(data))
    assert charts.main(["--results", str(tmp_path), "admission"]) == 1
    assert "no one-worker run with the parse floor" in capsys.readouterr().err
    assert not (tmp_path / "admission.png").exists()
