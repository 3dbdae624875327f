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


# ---------------------------------------------------------------------------
# otlabel assign: options added with bounded sizes, warm starts and streams
# ---------------------------------------------------------------------------


#: What ``--save`` writes.
SAVED = [
    *("labels", "counts", "potential", "row_potential", "errors", "gap"),
    *("n_iter", "error", "converged", "epsilon", "method", "backend", "cost"),
]


@pytest.fixture
def scores_file(tmp_path):
    """A (600, 6) float32 score matrix on disk, and the matrix."""
    scores = otlabel.make_scores(600, 6, seed=2)
    np.save(tmp_path / "scores.npy", scores)
    return str(tmp_path / "scores.npy"), scores


def _fails_naming(argv, capsys, *words):
    """Exit status 1 and each word in the one-line message on stderr."""
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 1, captured
    assert captured.err.startswith("otlabel assign: error: ")
    for word in words:
        assert word in captured.err, captured.err
    return captured.err


def test_save_writes_the_python_api_result(scores_file, tmp_path, capsys):
    path, scores = scores_file
    argv = ["assign", path, "--epsilon", "0.1", "--backend", "numpy"]
    assert main([*argv, "--save", str(tmp_path / "r")]) == 0
    assert f"result     written to {tmp_path / 'r.npz'}" in capsys.readouterr().out
    expected = otlabel.assign(scores, 0.1, backend="numpy")
    with np.load(tmp_path / "r.npz") as saved:  # no pickles needed to read it
        assert sorted(saved.files) == sorted(SAVED)
        for name in ("labels", "counts", "potential", "row_potential", "errors"):
            np.testing.assert_array_equal(saved[name], np.asarray(getattr(expected, name)))
        for name in ("n_iter", "error", "converged", "epsilon", "cost", "gap"):
            assert saved[name].shape == () and saved[name] == getattr(expected, name), name
        assert saved["labels"].dtype == np.int64 and saved["converged"].dtype == np.bool_
        assert str(saved["method"]) == expected.method
        assert str(saved["backend"]) == expected.backend
    missing = str(tmp_path / "no" / "r.npz")
    _fails_naming(["assign", path, "--save", missing], capsys, "--save", "no folder")


def test_save_stacks_heads_and_stores_missing_gap_as_nan(tmp_path, capsys):
    stack = np.stack([otlabel.make_scores(600, 6, seed=s, dtype=np.float64) for s in (3, 4)])
    np.save(tmp_path / "heads.npy", stack)
    argv = ["assign", str(tmp_path / "heads.npy"), "--rounding", "argmax", "--epsilon", "0.1"]
    assert main([*argv, "--backend", "numpy", "--save", str(tmp_path / "h.npz")]) == 0
    assert "2 x 600 x 6 float64" in capsys.readouterr().out
    expected = otlabel.assign(stack, 0.1, rounding="argmax", backend="numpy")
    with np.load(tmp_path / "h.npz") as saved:
        np.testing.assert_array_equal(saved["labels"], expected.labels)
        np.testing.assert_array_equal(saved["potential"], expected.potential)
        np.testing.assert_array_equal(saved["n_iter"], expected.n_iter)
        np.testing.assert_array_equal(saved["cost"], expected.cost)
        assert saved["labels"].shape == (2, 600) and saved["counts"].shape == (2, 6)
        assert saved["gap"].shape == (2,) and np.all(np.isnan(saved["gap"]))
        assert saved["method"].tolist() == list(expected.method)
        errors = saved["errors"]
        assert errors.shape == (2, max(expected.n_iter))
        for h in range(2):
            np.testing.assert_array_equal(errors[h, : expected.n_iter[h]], expected.errors[h])
            assert np.all(np.isnan(errors[h, expected.n_iter[h] :]))


@pytest.mark.parametrize("as_file", [False, True])
def test_min_and_max_size_bound_the_counts(scores_file, tmp_path, capsys, as_file):
    path, scores = scores_file
    lo, hi = np.array([0.1, 0.1, 0.1, 0.05, 0.05, 0.05]), np.full(6, 0.3)
    if as_file:
        np.save(tmp_path / "lo.npy", lo)
        np.save(tmp_path / "hi.npy", hi)
        bounds = ["--min-size", str(tmp_path / "lo.npy"), "--max-size", str(tmp_path / "hi.npy")]
    else:
        lo, hi = np.full(6, 0.1), np.full(6, 0.3)
        bounds = ["--min-size", "0.1", "--max-size", "0.3"]
    saved = tmp_path / "r.npz"
    argv = ["assign", path, "--epsilon", "0.1", "--backend", "numpy", *bounds]
    assert main([*argv, "--save", str(saved)]) == 0
    capsys.readouterr()
    counts = np.load(saved)["counts"]
    assert counts.sum() == 600
    assert np.all(counts >= np.floor(600 * lo)) and np.all(counts <= np.ceil(600 * hi))
    assert counts.max() > 100  # the bounds let the sizes differ, unlike fixed sizes
    expected = otlabel.assign(scores, 0.1, min_size=lo, max_size=hi, backend="numpy")
    np.testing.assert_array_equal(np.load(saved)["labels"], expected.labels)


def test_bad_size_bounds_name_the_option(scores_file, tmp_path, capsys):
    path, _ = scores_file
    _fails_naming(["assign", path, "--min-size", "lots"], capsys, "--min-size", "'lots'")
    _fails_naming(["assign", path, "--max-size", "0.1"], capsys, "--max-size", "sum to 0.6 < 1")
    _fails_naming(["assign", path, "--min-size", "-0.1"], capsys, "--min-size", ">= 0")
    _fails_naming(["assign", path, "--max-size", "missing.npy"], capsys, "--max-size", "missing")
    np.save(tmp_path / "three.npy", np.full(3, 0.5))
    _fails_naming(
        ["assign", path, "--max-size", str(tmp_path / "three.npy")], capsys, "--max-size", "(6,)"
    )
    np.save(tmp_path / "w.npy", np.ones(6))
    _fails_naming(
        ["assign", path, "--min-size", "0.1", "--cluster-weights", str(tmp_path / "w.npy")],
        capsys,
        "--cluster-weights",
        "--min-size",
    )


def test_init_with_a_converged_potential_takes_one_pass(tmp_path, capsys):
    scores = otlabel.make_scores(600, 6, seed=5, dtype=np.float64)
    np.save(tmp_path / "s.npy", scores)
    first = otlabel.assign(scores, 0.1, backend="numpy")
    np.save(tmp_path / "g.npy", first.potential)
    saved = tmp_path / "r.npz"
    argv = ["assign", str(tmp_path / "s.npy"), "--epsilon", "0.1", "--backend", "numpy"]
    argv += ["--save", str(saved)]
    assert main([*argv, "--init", str(tmp_path / "g.npy")]) == 0
    assert "iterations 1 " in capsys.readouterr().out
    assert int(np.load(saved)["n_iter"]) == 1
    np.testing.assert_array_equal(np.load(saved)["labels"], first.labels)
    assert main([*argv, "--init", "subsample"]) == 0
    np.testing.assert_array_equal(np.load(saved)["labels"], first.labels)
    np.save(tmp_path / "short.npy", first.potential[:4])
    _fails_naming([*argv, "--init", str(tmp_path / "short.npy")], capsys, "--init", "(6,)")
    _fails_naming([*argv, "--init", "warm"], capsys, "--init", "warm")


def test_backend_and_threads(scores_file, capsys):
    path, scores = scores_file
    assert main(["assign", path, "--backend", "numpy", "--n-threads", "1"]) == 0
    out = capsys.readouterr().out
    expected = otlabel.assign(scores, backend="numpy", n_threads=1)
    assert f"({expected.backend})" in out and f"iterations {expected.n_iter} " in out
    for name in ("torch", "triton", "cupy"):
        _fails_naming(["assign", path, "--backend", name], capsys, "--backend", name, "numpy")
    _fails_naming(["assign", path, "--n-threads", "0"], capsys, "--n-threads", ">= 1")
    with pytest.raises(SystemExit) as exit_:  # not a backend at all: argparse's usage error
        main(["assign", path, "--backend", "jax"])
    assert exit_.value.code == 2 and "--backend" in capsys.readouterr().err


def test_a_file_that_is_not_npy_gets_a_message_about_the_file(tmp_path, capsys):
    import pickle

    (tmp_path / "table.txt").write_text("0.1 0.2\n0.3 0.4\n")
    (tmp_path / "rows.pkl").write_bytes(pickle.dumps([[0.1, 0.2], [0.3, 0.4]]))
    np.savez(tmp_path / "both.npz", scores=np.ones((4, 2)))
    np.save(tmp_path / "objects.npy", np.array([[0.1, "x"]], dtype=object), allow_pickle=True)
    (tmp_path / "empty.npy").write_bytes(b"")
    for name, what in [
        ("table.txt", "no .npy header"),
        ("rows.pkl", "pickle"),
        ("both.npz", "zip archive"),
        ("empty.npy", "empty"),
    ]:
        err = _fails_naming(["assign", str(tmp_path / name)], capsys, "not a .npy array file", what)
        assert "allow_pickle" not in err and "pickled data" not in err
    err = _fails_naming(["assign", str(tmp_path / "objects.npy")], capsys, "Python objects")
    assert "allow_pickle" not in err
    np.save(tmp_path / "s.npy", otlabel.make_scores(20, 2, seed=0))
    cut = (tmp_path / "s.npy").read_bytes()[:-8]
    (tmp_path / "cut.npy").write_bytes(cut)
    _fails_naming(["assign", str(tmp_path / "cut.npy")], capsys, "truncated")
    argv = ["assign", str(tmp_path / "s.npy"), "--sample-weights", str(tmp_path / "rows.pkl")]
    _fails_naming(argv, capsys, "--sample-weights", "not a .npy array file")


def test_large_scores_are_streamed_automatically(scores_file, monkeypatch, capsys):
    from otlabel import cli

    path, _ = scores_file
    monkeypatch.setattr(cli, "available_memory", lambda: 20_000)  # the file: 14.5 kB of data
    argv = ["assign", path, "--epsilon", "0.1", "--backend", "numpy"]
    assert main([*argv, "-o", path + ".labels.npy"]) == 0
    out = capsys.readouterr().out
    assert "streamed block by block from disk (14.4 kB > 50% of the 20 kB available)" in out
    assert "method     log" in out  # streams solve in the log domain
    expected = otlabel.assign(otlabel.ChunkedScores(path), 0.1, backend="numpy")
    np.testing.assert_array_equal(np.load(path + ".labels.npy"), expected.labels)
    _fails_naming([*argv, "--method", "scaling"], capsys, "--method", "--mmap")
    assert main([*argv, "--mmap", "--method", "scaling"]) == 0  # --mmap: an array
    assert "streamed block" not in capsys.readouterr().out


def test_stream_option_forces_a_stream_and_matches_the_array(scores_file, capsys):
    path, scores = scores_file
    argv = ["assign", path, "--epsilon", "0.1", "--backend", "numpy", "--method", "log"]
    assert main([*argv, "--stream"]) == 0
    out = capsys.readouterr().out
    assert "streamed block by block from disk (--stream)" in out
    expected = otlabel.assign(scores, 0.1, method="log", backend="numpy")
    assert f"iterations {expected.n_iter} " in out and "sizes 100..100" in out


def test_progress_line_once_the_solve_runs_long(scores_file, monkeypatch, capsys):
    from otlabel import cli

    path, _ = scores_file
    argv = ["assign", path, "--epsilon", "0.1", "--backend", "numpy"]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no progress line
    monkeypatch.setattr(cli, "_is_terminal", lambda stream: True)
    assert main(argv) == 0
    assert capsys.readouterr().err == ""  # a terminal, but the solve is shorter than 2 s
    monkeypatch.setattr(cli, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(cli, "PROGRESS_INTERVAL", 0.0)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.startswith("\rpass 1  error ") and "\rpass 2  error " in err
    width = max(len(line) for line in err.split("\r"))
    assert err.endswith("\r" + " " * width + "\r")  # erased: the next output starts clean
    assert main([*argv, "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_assign_and_import_do_not_import_the_benchmark_runner(scores_file):
    path, _ = scores_file
    code = (
        "import sys\n"
        "import otlabel.cli\n"
        "assert 'otlabel.bench' not in sys.modules, 'import otlabel.cli imported otlabel.bench'\n"
        f"status = otlabel.cli.main(['assign', {path!r}, '--backend', 'numpy'])\n"
        "assert 'otlabel.bench' not in sys.modules, 'otlabel assign imported otlabel.bench'\n"
        "sys.exit(status)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "sizes 100..100" in run.stdout
    bench = subprocess.run(
        [sys.executable, "-m", "otlabel", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--sizes" in bench.stdout and "--solvers" in bench.stdout
