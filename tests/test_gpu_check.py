"""benchmarks/gpu_check.py runs end to end (on the CPU, tiny sizes: its figures mean nothing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_runs_every_row_and_writes_its_report(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "check"
    report = module.main(
        ["--device", "cpu", "--tiny", "--skip-tests", "--passes", "2", "--out", str(out)]
    )
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["rows"] == report["rows"] and len(report["rows"]) >= 2
    for row in report["rows"]:
        assert row["ms_per_pass"] > 0 and row["bandwidth_fraction"] > 0
    where = [row["where"] for row in report["imagenet"]]
    assert where[0] == "in GPU memory" and where[-1] == "streamed from pinned host memory"
    for row in report["imagenet"]:
        assert row["converged"] and row["sizes"] == "100..100" and row["gap"] <= 1e-9
    assert report["soft_assign"]["ms"] > 0
    assert "| 20000 x 300 | torch |" in (out / "gpu_check.md").read_text()
