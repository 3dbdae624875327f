"""The ``otlabel`` command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import otlabel
from otlabel.cli import main


def test_assign_writes_labels_and_prints_summary(tmp_path, capsys):
    scores = otlabel.make_scores(600, 6, seed=2)
    np.save(tmp_path / "scores.npy", scores)
    status = main(
        [
            "assign",
            str(tmp_path / "scores.npy"),
            "-o",
            str(tmp_path / "labels.npy"),
            "--epsilon",
            "0.1",
        ]
    )
    out = capsys.readouterr().out
    labels = np.load(tmp_path / "labels.npy")
    expected = otlabel.assign(scores, 0.1)
    assert status == 0
    np.testing.assert_array_equal(labels, expected.labels)
    assert "600 x 6 float32" in out and "sizes 100..100" in out
    assert f"iterations {expected.n_iter} " in out and "converged True" in out


def test_assign_with_weights_and_mmap(tmp_path, capsys):
    scores = np.random.default_rng(0).normal(size=(90, 3))
    np.save(tmp_path / "s.npy", scores)
    np.save(tmp_path / "w.npy", np.array([1.0, 1.0, 4.0]))
    status = main(
        [
            "assign",
            str(tmp_path / "s.npy"),
            "--mmap",
            "--cluster-weights",
            str(tmp_path / "w.npy"),
            "--rounding",
            "balanced",
        ]
    )
    assert status == 0 and "sizes 15..60" in capsys.readouterr().out


def test_bad_input_exits_1_with_the_argument_named(tmp_path, capsys):
    np.save(tmp_path / "bad.npy", np.array([[0.0, np.nan], [1.0, 2.0]]))
    assert main(["assign", str(tmp_path / "bad.npy")]) == 1
    assert "scores: contains NaN" in capsys.readouterr().err
    assert main(["assign", str(tmp_path / "missing.npy")]) == 1
    assert main(["assign", str(tmp_path / "bad.npy"), "--epsilon", "-1"]) == 1


def test_not_converged_exits_3(tmp_path):
    np.save(tmp_path / "s.npy", otlabel.make_scores(300, 5, seed=1))
    with pytest.warns(otlabel.ConvergenceWarning):
        assert main(["assign", str(tmp_path / "s.npy"), "--max-iter", "2"]) == 3


def test_demo_runs_small(capsys):
    assert main(["demo", "--n-samples", "2000", "--n-clusters", "20"]) == 0
    out = capsys.readouterr().out
    assert "balanced (otlabel default)      100..100" in out


def test_help_and_version():
    run = subprocess.run(
        [sys.executable, "-m", "otlabel", "--help"], capture_output=True, text=True, check=True
    )
    assert "otlabel assign scores.npy -o labels.npy" in run.stdout
    version = subprocess.run(
        [sys.executable, "-m", "otlabel", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"otlabel {otlabel.__version__}"
    assert main([]) == 2
