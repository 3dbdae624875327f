"""The ``otlabel`` command."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time

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
    "unassigned_potential",
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
    assert captured.err.startswith(f"otlabel {argv[0]}: error: "), captured.err
    assert captured.err.count("\n") == 1, captured.err
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
        assert saved["unassigned_potential"].shape == ()  # all the mass: no unassigned column
        assert np.isnan(saved["unassigned_potential"])
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
        assert saved["unassigned_potential"].shape == (2,)
        assert np.all(np.isnan(saved["unassigned_potential"]))
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


# ---------------------------------------------------------------------------
# otlabel assign: relaxed sizes, partial mass, known labels; otlabel predict
# ---------------------------------------------------------------------------

EPS = "0.1"
NUMPY = ["--backend", "numpy"]


@pytest.fixture
def new_file(tmp_path):
    """New samples (300, 6) of other clusters, on disk, and the matrix."""
    new = otlabel.make_scores(300, 6, seed=5)
    np.save(tmp_path / "new.npy", new)
    return str(tmp_path / "new.npy"), new


def _assign_and_save(path, tmp_path, capsys, *options):
    """``otlabel assign --save``; the .npz path and what was printed."""
    saved = str(tmp_path / "result.npz")
    status = main(["assign", path, "--epsilon", EPS, *NUMPY, "--save", saved, *options])
    out = capsys.readouterr().out
    assert status == 0, out
    return saved, out


def _predict(path, saved, tmp_path, capsys, *options):
    """``otlabel predict``; what it wrote to -o and what it printed."""
    written = str(tmp_path / "predicted.npy")
    status = main(["predict", path, "--result", saved, "-o", written, *NUMPY, *options])
    out = capsys.readouterr().out
    assert status == 0, out
    return np.load(written), out


def test_predict_labels_equal_the_python_api(scores_file, new_file, tmp_path, capsys):
    path, scores = scores_file
    saved, _ = _assign_and_save(path, tmp_path, capsys)
    result = otlabel.assign(scores, 0.1, backend="numpy")
    for file, matrix in (scores_file, new_file):
        labels, out = _predict(file, saved, tmp_path, capsys)
        expected = otlabel.predict(matrix, result.potential, backend="numpy")
        assert labels.dtype == np.int64 and labels.shape == (matrix.shape[0],)
        np.testing.assert_array_equal(labels, expected)
        counts = np.bincount(expected, minlength=6)
        assert f"{matrix.shape[0]} x 6 float32" in out
        assert f"sizes {counts.min()}..{counts.max()}  counts [" in out
        assert f"counts [{', '.join(str(c) for c in counts)}]" in out
        assert "unassigned" not in out  # all the mass was assigned
        assert f"labels     written to {tmp_path / 'predicted.npy'}" in out
    # argmax rounding: predict on the same matrix gives the saved labels themselves
    saved, _ = _assign_and_save(path, tmp_path, capsys, "--rounding", "argmax")
    labels, _ = _predict(path, saved, tmp_path, capsys)
    np.testing.assert_array_equal(labels, np.load(saved)["labels"])
    argmax = otlabel.assign(scores, 0.1, rounding="argmax", backend="numpy")
    np.testing.assert_array_equal(labels, argmax.labels)


def test_predict_soft_codes_equal_the_python_api(scores_file, new_file, tmp_path, capsys):
    path, scores = scores_file
    saved, _ = _assign_and_save(path, tmp_path, capsys)
    result = otlabel.assign(scores, 0.1, backend="numpy")
    file, new = new_file
    codes, out = _predict(file, saved, tmp_path, capsys, "--soft")
    expected = otlabel.predict(new, result.potential, soft=True, epsilon=0.1, backend="numpy")
    assert codes.dtype == np.float64 and codes.shape == (300, 6)
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert "codes      300 x 6 float64, row sums 1..1" in out
    assert "epsilon 0.1" in out and "codes      written to" in out
    streamed, out = _predict(file, saved, tmp_path, capsys, "--soft", "--stream")
    assert "streamed block by block from disk (--stream)" in out
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-12)


def test_mass_leaves_samples_unassigned_and_predict_reproduces_them(scores_file, tmp_path, capsys):
    path, scores = scores_file
    rho, n = 0.8, scores.shape[0]
    saved, out = _assign_and_save(path, tmp_path, capsys, "--mass", str(rho))
    result = otlabel.assign(scores, 0.1, mass=rho, backend="numpy")
    with np.load(saved) as arrays:
        labels, g0 = arrays["labels"], arrays["unassigned_potential"]
    left = int(np.sum(labels == -1))
    assert left in {math.floor(n * (1 - rho)), math.ceil(n * (1 - rho))}
    assert f"unassigned {left} of {n} samples (label -1)" in out
    np.testing.assert_array_equal(labels, result.labels)
    assert g0.shape == () and float(g0) == result.unassigned_potential
    # predict: argmax over the clusters and the unassigned column (s0 = log-sum-exp, g0)
    predicted, out = _predict(path, saved, tmp_path, capsys)
    np.testing.assert_array_equal(predicted, otlabel.predict(scores, result, backend="numpy"))
    s = scores.astype(np.float64) + result.potential
    s0 = np.logaddexp.reduce(scores.astype(np.float64), axis=1) + float(g0)
    np.testing.assert_array_equal(predicted == -1, s0 > s.max(axis=1))
    np.testing.assert_array_equal(predicted[predicted >= 0], s.argmax(axis=1)[predicted >= 0])
    assert f"unassigned {int(np.sum(predicted == -1))} of {n} samples (label -1)" in out
    assert f"unassigned potential {float(g0):.6g}" in out
    # soft codes: rows sum to 1 less the unassigned share
    codes, out = _predict(path, saved, tmp_path, capsys, "--soft")
    expected = otlabel.predict(scores, result, soft=True, backend="numpy")
    np.testing.assert_allclose(codes, expected, rtol=0, atol=1e-12)
    x, x0 = s / 0.1, s0 / 0.1
    lse = np.logaddexp.reduce(x, axis=1)
    share = 1 / (1 + np.exp(lse - x0))  # the unassigned column's share of each row
    np.testing.assert_allclose(codes.sum(axis=1), 1 - share, rtol=0, atol=1e-12)
    assert f"unassigned {int(np.sum(predicted == -1))} of {n} samples (label -1: " in out
    # argmax rounding: predict reproduces the saved labels, -1 included
    saved, _ = _assign_and_save(path, tmp_path, capsys, "--mass", str(rho), "--rounding", "argmax")
    predicted, _ = _predict(path, saved, tmp_path, capsys)
    np.testing.assert_array_equal(predicted, np.load(saved)["labels"])
    assert np.sum(predicted == -1) > 0


def test_unassigned_scores_are_passed_to_assign_and_predict(scores_file, tmp_path, capsys):
    path, scores = scores_file
    s0 = np.random.default_rng(1).normal(-1.0, 0.5, size=scores.shape[0])
    np.save(tmp_path / "s0.npy", s0)
    given = ["--unassigned-scores", str(tmp_path / "s0.npy")]
    saved, _ = _assign_and_save(path, tmp_path, capsys, "--mass", "0.7", *given)
    result = otlabel.assign(scores, 0.1, mass=0.7, unassigned_scores=s0, backend="numpy")
    np.testing.assert_array_equal(np.load(saved)["labels"], result.labels)
    predicted, _ = _predict(path, saved, tmp_path, capsys, *given)
    expected = otlabel.predict(scores, result, unassigned_scores=s0, backend="numpy")
    np.testing.assert_array_equal(predicted, expected)
    assert not np.array_equal(predicted, otlabel.predict(scores, result, backend="numpy"))


def test_known_labels_are_kept(scores_file, tmp_path, capsys):
    path, scores = scores_file
    known = np.full(scores.shape[0], -1, dtype=np.int64)
    known[:60] = np.argmin(scores[:60], axis=1)  # the labels the solve would never pick
    np.save(tmp_path / "known.npy", known)
    saved, out = _assign_and_save(
        path, tmp_path, capsys, "--known-labels", str(tmp_path / "known.npy")
    )
    labels = np.load(saved)["labels"]
    np.testing.assert_array_equal(labels[:60], known[:60])
    expected = otlabel.assign(scores, 0.1, known_labels=known, backend="numpy")
    np.testing.assert_array_equal(labels, expected.labels)
    assert "known      60 of 600 samples kept their given label" in out
    assert "sizes 100..100" in out  # the known samples count toward their cluster's size


@pytest.mark.parametrize("as_file", [False, True])
def test_size_penalty_matches_the_python_api(scores_file, tmp_path, capsys, as_file):
    path, scores = scores_file
    tau: float | np.ndarray = 0.5
    option = "0.5"
    if as_file:
        tau = np.array([0.2, 0.5, 1.0, 2.0, 5.0, 10.0])
        np.save(tmp_path / "tau.npy", tau)
        option = str(tmp_path / "tau.npy")
    saved, out = _assign_and_save(path, tmp_path, capsys, "--size-penalty", option)
    expected = otlabel.assign(scores, 0.1, size_penalty=tau, backend="numpy")
    labels = np.load(saved)["labels"]
    np.testing.assert_array_equal(labels, expected.labels)
    counts = np.bincount(labels, minlength=6)
    assert counts.min() < 100 < counts.max()  # relaxed: not the balanced 100 each
    assert f"sizes {counts.min()}..{counts.max()}" in out


def test_predict_picks_a_head_of_a_stacked_result(tmp_path, capsys):
    stack = np.stack([otlabel.make_scores(600, 6, seed=s) for s in (3, 4)])
    np.save(tmp_path / "heads.npy", stack)
    np.save(tmp_path / "head1.npy", stack[1])
    saved, out = _assign_and_save(str(tmp_path / "heads.npy"), tmp_path, capsys, "--mass", "0.9")
    assert "unassigned [60, 60] of 600 samples per head (label -1)" in out
    result = otlabel.assign(stack, 0.1, mass=0.9, backend="numpy")
    assert np.load(saved)["unassigned_potential"].shape == (2,)
    head = str(tmp_path / "head1.npy")
    labels, out = _predict(head, saved, tmp_path, capsys, "--head", "1")
    expected = otlabel.predict(
        stack[1], result.potential[1], unassigned=result.unassigned_potential[1], backend="numpy"
    )
    np.testing.assert_array_equal(labels, expected)
    assert "potential of 6 clusters (head 1 of 2)" in out
    argv = ["predict", head, "--result", saved, "-o", str(tmp_path / "x.npy")]
    _fails_naming(argv, capsys, "--result", "2 heads", "--head")
    _fails_naming([*argv, "--head", "2"], capsys, "--head", "0..1")
    _fails_naming(["predict", str(tmp_path / "heads.npy"), *argv[2:]], capsys, "scores", "(N, K)")
    single, _ = _assign_and_save(head, tmp_path, capsys)
    _fails_naming([*argv[:3], single, *argv[4:], "--head", "0"], capsys, "--head", "one head")


def test_predict_streams_large_files_automatically(scores_file, tmp_path, monkeypatch, capsys):
    from otlabel import cli

    path, _ = scores_file
    saved, _ = _assign_and_save(path, tmp_path, capsys, "--mass", "0.8")
    in_memory, _ = _predict(path, saved, tmp_path, capsys)
    monkeypatch.setattr(cli, "available_memory", lambda: 20_000)  # the file: 14.4 kB of data
    streamed, out = _predict(path, saved, tmp_path, capsys)
    assert "streamed block by block from disk (14.4 kB > 50% of the 20 kB available)" in out
    np.testing.assert_array_equal(streamed, in_memory)
    mapped, out = _predict(path, saved, tmp_path, capsys, "--mmap")
    assert "streamed" not in out
    np.testing.assert_array_equal(mapped, in_memory)


def test_new_options_fail_naming_the_option(scores_file, tmp_path, capsys):
    path, _ = scores_file
    argv = ["assign", path, *NUMPY]
    _fails_naming([*argv, "--mass", "1.5"], capsys, "--mass:", "(0, 1]")
    _fails_naming([*argv, "--mass", "0"], capsys, "--mass:")
    _fails_naming([*argv, "--size-penalty", "0"], capsys, "--size-penalty:", "> 0")
    _fails_naming([*argv, "--size-penalty", "-1"], capsys, "--size-penalty:", "> 0")
    _fails_naming([*argv, "--size-penalty", "lots"], capsys, "--size-penalty:", "'lots'")
    bounded = [*argv, "--size-penalty", "0.5", "--min-size", "0.1"]
    _fails_naming(bounded, capsys, "--size-penalty:", "--min-size/--max-size")
    np.save(tmp_path / "short.npy", np.full(599, -1, dtype=np.int64))
    short = [*argv, "--known-labels", str(tmp_path / "short.npy")]
    _fails_naming(short, capsys, "--known-labels:", "(600,)")
    np.save(tmp_path / "floats.npy", np.full(600, -1.0))
    floats = [*argv, "--known-labels", str(tmp_path / "floats.npy")]
    _fails_naming(floats, capsys, "--known-labels:", "integer")
    np.save(tmp_path / "big.npy", np.full(600, 6, dtype=np.int64))
    big = [*argv, "--known-labels", str(tmp_path / "big.npy")]
    _fails_naming(big, capsys, "--known-labels:", "0..5")
    s0 = ["--unassigned-scores", str(tmp_path / "short.npy")]
    _fails_naming([*argv, *s0], capsys, "--unassigned-scores:", "--mass")
    _fails_naming([*argv, "--mass", "0.8", *s0], capsys, "--unassigned-scores:", "(600,)")


def test_predict_bad_input_fails_naming_the_option_or_file(scores_file, tmp_path, capsys):
    path, _ = scores_file
    saved, _ = _assign_and_save(path, tmp_path, capsys)
    out = str(tmp_path / "labels.npy")
    argv = ["predict", path, "--result", saved, "-o", out]
    missing = str(tmp_path / "missing.npz")
    _fails_naming(
        [*argv[:3], missing, *argv[4:]], capsys, "--result:", "missing.npz", "cannot read"
    )
    np.savez(tmp_path / "other.npz", labels=np.zeros(600, dtype=np.int64))
    other = str(tmp_path / "other.npz")
    _fails_naming([*argv[:3], other, *argv[4:]], capsys, "--result:", "no 'potential'", "labels")
    _fails_naming([*argv[:3], path, *argv[4:]], capsys, "--result:", "not a .npz", ".npy array")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "result.npz").read_bytes()[:100])
    cut = str(tmp_path / "cut.npz")
    _fails_naming([*argv[:3], cut, *argv[4:]], capsys, "--result:", "cannot read")
    np.savez(tmp_path / "k5.npz", potential=np.zeros(5))
    k5 = str(tmp_path / "k5.npz")
    _fails_naming([*argv[:3], k5, *argv[4:]], capsys, "--result:", "5 clusters", "K=6")
    np.savez(tmp_path / "nan.npz", potential=np.full(6, np.nan))
    nan = str(tmp_path / "nan.npz")
    _fails_naming([*argv[:3], nan, *argv[4:]], capsys, "--result (potential):", "NaN")
    _fails_naming([*argv[:3], k5.replace("k5", "nan"), *argv[4:], "--soft"], capsys, "epsilon")
    (tmp_path / "table.txt").write_text("1 2 3\n")
    _fails_naming(["predict", str(tmp_path / "table.txt"), *argv[2:]], capsys, "scores:", ".npy")
    _fails_naming([*argv, "--backend", "torch"], capsys, "--backend:")
    nowhere = str(tmp_path / "no" / "labels.npy")
    _fails_naming([*argv[:5], nowhere], capsys, "--output:", "no folder")
    np.save(tmp_path / "s0.npy", np.zeros(600))
    s0 = ["--unassigned-scores", str(tmp_path / "s0.npy")]
    _fails_naming([*argv, *s0], capsys, "--unassigned-scores:", "--mass")
    assert not (tmp_path / "labels.npy").exists()  # nothing written on an error
    with pytest.raises(SystemExit) as usage:  # --result is required: a usage error
        main(["predict", path, "-o", out])
    assert usage.value.code == 2


def test_ctrl_c_mid_solve_exits_130_with_one_line_and_no_output(tmp_path):
    """SIGINT while ``otlabel assign`` iterates: one line naming the passes and the
    error, exit status 130, no output file (nor a partial one), the input untouched."""
    path, out = str(tmp_path / "scores.npy"), tmp_path / "labels.npy"
    scores = otlabel.make_scores(200_000, 50, seed=0, dtype=np.float64)
    np.save(path, scores)
    argv = [sys.executable, "-m", "otlabel", "assign", path, "-o", str(out)]
    # an epsilon that is not small against the scores (no warm solve first): passes only
    argv += ["--epsilon", "0.05", "--tol", "1e-14", "--max-iter", "1000000", "--no-progress"]
    argv += ["--backend", "numpy"]  # no compiling: the interruption lands in the passes
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell without job control starts background commands with SIGINT ignored,
        # and a child inherits that: the command must hear Ctrl-C as a terminal's does
        preexec_fn=_hear_ctrl_c,
    )
    assert process.stdout.readline().startswith("scores")  # the solve starts next
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    try:
        _, stderr = process.communicate(timeout=60)
    finally:  # a process that did not stop leaves no pipes open for the next test
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr
    assert re.fullmatch(r"otlabel assign: interrupted after \d+ passes, error \S+", lines[0])
    assert list(tmp_path.iterdir()) == [tmp_path / "scores.npy"]
    np.testing.assert_array_equal(np.load(path), scores)


def _hear_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
