"""otlabel.ChunkedScores: streams give what arrays give; bad sources give clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import otlabel
from otlabel.kernels import installed

N, K = 3_000, 40  # the NumPy kernel reads 1 MiB blocks: 3 200 float64 rows at K = 40


def _scores(n=N, k=K, seed=0, dtype=np.float32):
    return otlabel.make_scores(n, k, kind="head", seed=seed).astype(dtype)


def _sources(scores, tmp_path):
    """Every kind of source over the same matrix, with uneven chunks and blocks."""
    path = tmp_path / "scores.npy"
    np.save(path, scores)
    cuts = [0, 7, 1000, 1001, 2500, scores.shape[0]]
    return {
        "npy path": otlabel.ChunkedScores(path),
        "memmap": otlabel.ChunkedScores(np.load(path, mmap_mode="r")),
        "array": otlabel.ChunkedScores(scores),
        "chunks": otlabel.ChunkedScores([scores[a:b] for a, b in itertools.pairwise(cuts)]),
        "callable": otlabel.ChunkedScores(
            lambda i0, i1: scores[i0:i1].copy(), n_samples=len(scores)
        ),
    }


@pytest.mark.parametrize("kind", ["npy path", "memmap", "array", "chunks", "callable"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_equals_in_memory_numpy_backend(tmp_path, kind, dtype):
    scores = _scores(dtype=dtype)
    stream = _sources(scores, tmp_path)[kind]
    options = {"epsilon": 0.05, "backend": "numpy", "method": "log"}
    expected = otlabel.assign(scores, **options)
    got = otlabel.assign(stream, **options)
    assert got.n_iter == expected.n_iter
    np.testing.assert_array_equal(got.potential, expected.potential)  # same blocks, same bits
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert got.gap == expected.gap and got.cost == expected.cost


@pytest.mark.skipif(not installed("numba"), reason="needs numba")
@pytest.mark.parametrize("kind", ["npy path", "chunks", "callable"])
def test_stream_equals_in_memory_numba_backend(tmp_path, kind):
    scores = _scores(seed=1)
    stream = _sources(scores, tmp_path)[kind]
    log = otlabel.assign(scores, 0.05, backend="numba", method="log")
    got = otlabel.assign(stream, 0.05, backend="numba")
    np.testing.assert_allclose(got.potential, log.potential, atol=1e-9)
    np.testing.assert_array_equal(got.labels, log.labels)
    hybrid = otlabel.assign(scores, 0.05, backend="numba")  # the stored kernel in memory
    np.testing.assert_array_equal(got.labels, hybrid.labels)  # balanced labels are the optimum
    assert got.error <= otlabel.DEFAULT_TOL


@pytest.mark.skipif(not installed("numba"), reason="needs numba")
def test_large_stream_starts_from_a_subsample():
    scores = _scores(n=200_000, k=8, seed=2)
    stream = otlabel.ChunkedScores(lambda i0, i1: scores[i0:i1], n_samples=len(scores))
    got = otlabel.assign(stream, 0.05, backend="numba")
    expected = otlabel.assign(scores, 0.05, backend="numba")
    np.testing.assert_array_equal(got.labels, expected.labels)
    assert got.converged and got.counts.tolist() == [25_000] * 8


def test_stream_options_weights_warm_start_argmax_and_sinkhorn(tmp_path):
    scores = _scores(seed=3, dtype=np.float64)
    stream = _sources(scores, tmp_path)["chunks"]
    rng = np.random.default_rng(0)
    options = {
        "epsilon": 0.05,
        "backend": "numpy",
        "sample_weights": rng.uniform(0.5, 2, N),
        "cluster_weights": rng.uniform(0.5, 2, K),
    }
    for rounding in ("balanced", "argmax", None):
        got = otlabel.assign(stream, rounding=rounding, **options)
        expected = otlabel.assign(scores, rounding=rounding, **options)
        np.testing.assert_array_equal(got.potential, expected.potential)
        if rounding is not None:
            np.testing.assert_array_equal(got.labels, expected.labels)
    warm = otlabel.assign(stream, init=expected.potential, **options)
    assert warm.n_iter <= 1
    np.testing.assert_array_equal(
        otlabel.sinkhorn(stream, **options).potential, otlabel.sinkhorn(scores, **options).potential
    )


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_stream_with_bounded_sizes_equals_in_memory(tmp_path, backend):
    scores = _scores(seed=5, dtype=np.float64)
    stream = _sources(scores, tmp_path)["chunks"]
    bounds = {"min_size": np.full(K, 0.5 / K), "max_size": np.full(K, 1.5 / K)}
    options = {"epsilon": 0.05, "backend": backend, "method": "log", "tol": 1e-8, **bounds}
    got = otlabel.assign(stream, **options)
    expected = otlabel.assign(scores, **options)
    np.testing.assert_allclose(got.potential, expected.potential, atol=1e-9)
    np.testing.assert_array_equal(got.labels, expected.labels)
    counts = np.bincount(got.labels, minlength=K)
    assert np.all((counts >= np.floor(N * 0.5 / K)) & (counts <= np.ceil(N * 1.5 / K)))


def test_repeated_stream_runs_are_identical(tmp_path):
    stream = _sources(_scores(seed=4), tmp_path)["callable"]
    first, second = otlabel.assign(stream, 0.05), otlabel.assign(stream, 0.05)
    np.testing.assert_array_equal(first.potential, second.potential)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_numpy_sources_are_read_in_place_by_the_exact_labels(tmp_path, monkeypatch):
    """A stream of a NumPy array or .npy file hands its array to the exact labels' repair
    (the file's pages, not a copy): no row is gathered through the stream, and the labels,
    gap and cost are those of the same matrix in memory (its stored kernel's potential
    differs from the stream's log domain's in the last bits; the optimal labels do not).
    Chunks and callables gather."""
    scores = _scores(seed=2)
    sources = _sources(scores, tmp_path)
    for kind in ("npy path", "memmap", "array"):
        array = sources[kind].numpy_source()
        assert isinstance(array, np.ndarray) and np.array_equal(array, scores)
    assert np.shares_memory(sources["array"].numpy_source(), scores)
    assert sources["chunks"].numpy_source() is None
    assert sources["callable"].numpy_source() is None
    fortran = np.asfortranarray(scores)  # read in place, the repair would copy it whole
    assert otlabel.ChunkedScores(fortran).numpy_source() is None
    assert otlabel.ChunkedScores(scores[::2]).numpy_source() is None
    gathered = []
    gather = otlabel.ChunkedScores._gather
    monkeypatch.setattr(
        otlabel.ChunkedScores, "_gather", lambda self, i: gathered.append(i.size) or gather(self, i)
    )
    bounds = {"min_size": 0.02, "max_size": 0.03}
    for kind in ("npy path", "memmap"):
        got = otlabel.assign(sources[kind], 0.05, **bounds)
        expected = otlabel.assign(scores, 0.05, **bounds)
        np.testing.assert_array_equal(got.labels, expected.labels)  # the optimum
        assert got.gap <= 1e-12 and got.cost == pytest.approx(expected.cost, rel=1e-12)
    got = otlabel.assign(sources["npy path"], 0.05)
    np.testing.assert_array_equal(got.labels, otlabel.assign(scores, 0.05).labels)
    assert gathered == []
    otlabel.assign(sources["chunks"], 0.05, **bounds)
    assert gathered  # the repair's moves gather rows through the stream


def test_stream_rows_and_gathers():
    scores = _scores(n=50, k=3)
    for stream in (
        otlabel.ChunkedScores([scores[:20], scores[20:]]),
        otlabel.ChunkedScores(lambda i0, i1: scores[i0:i1], n_samples=50),
    ):
        assert stream.shape == (50, 3) and stream.dtype == np.float32 and len(stream) == 50
        np.testing.assert_array_equal(stream[15:25], scores[15:25])
        np.testing.assert_array_equal(stream[[49, 3, 21, 3]], scores[[49, 3, 21, 3]])
        np.testing.assert_array_equal(stream[::7], scores[::7])
        assert "ChunkedScores(" in repr(stream)


# ---------------------------------------------------------------------------
# bad sources
# ---------------------------------------------------------------------------


def test_nan_in_a_chunk_names_the_row():
    scores = _scores(n=100, k=4)
    bad = scores.copy()
    bad[61, 2] = np.nan
    with pytest.raises(ValueError, match="row 61"):
        otlabel.assign(otlabel.ChunkedScores([bad[:50], bad[50:]]), 0.1)
    with pytest.raises(ValueError, match="row 61"):
        otlabel.assign(otlabel.ChunkedScores(lambda a, b: bad[a:b], n_samples=100), 0.1)


@pytest.mark.skipif(not installed("numba"), reason="needs numba")
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_a_stream_checked_in_blocks_names_the_rows_and_finds_forbidden_pairs(monkeypatch, backend):
    """A stream is validated a block at a time (here 16 rows; the Numba backend
    keeps a byte per row, not the row extremes): the rows named are the matrix's,
    and a ``-inf`` in a late block is a forbidden pair."""
    import otlabel.kernels.numba.backend as numba_backend

    scores = _scores(n=100, k=4)
    monkeypatch.setattr(numba_backend, "STREAM_CHUNK_BYTES", 16 * 4 * scores.itemsize)
    for row, value, match in [(61, np.nan, "row 61"), (97, np.inf, "row 97")]:
        bad = scores.copy()
        bad[row, 2] = value
        with pytest.raises(ValueError, match=match):
            otlabel.assign(otlabel.ChunkedScores(bad), 0.1, backend=backend)
    bad = scores.copy()
    bad[[70, 83]] = -np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\) are -inf for every cluster \(rows 70, 83\)"):
        otlabel.assign(otlabel.ChunkedScores(bad), 0.1, backend=backend)
    forbidden = scores.copy()
    forbidden[90:, 0] = -np.inf  # the last block's rows may not join cluster 0
    result = otlabel.assign(otlabel.ChunkedScores(forbidden), 0.1, backend=backend)
    assert result.converged and not np.any(result.labels[90:] == 0)
    np.testing.assert_array_equal(result.labels, otlabel.assign(forbidden, 0.1).labels)


def test_callable_that_raises_names_the_rows():
    def failing(i0, i1):
        if i1 > 10:
            raise KeyError("feature shard missing")
        return np.zeros((i1 - i0, 4), np.float32)

    stream = otlabel.ChunkedScores(failing, n_samples=100)
    with pytest.raises(RuntimeError, match=r"rows 0:100: the source callable raised KeyError"):
        otlabel.assign(stream, 0.1)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda s: otlabel.ChunkedScores(lambda a, b: s[a:b]), ValueError, "n_samples"),
        (
            lambda s: otlabel.ChunkedScores(lambda a, b: s[a : b + 1], n_samples=50),
            ValueError,
            "must return rows i0:i1",
        ),
        (lambda s: otlabel.ChunkedScores(lambda a, b: s[a:b, 0], n_samples=50), ValueError, "K"),
        (
            lambda s: otlabel.ChunkedScores([s[:10], s[10:].astype(np.float64)]),
            TypeError,
            "chunk 1: dtype float64",
        ),
        (lambda s: otlabel.ChunkedScores([s[:10], s[10:, :2]]), ValueError, "same K"),
        (lambda s: otlabel.ChunkedScores([]), ValueError, "empty list"),
        (lambda s: otlabel.ChunkedScores([s[:10], s[10]]), ValueError, "chunk 1"),
        (lambda s: otlabel.ChunkedScores(s.astype(np.int64)), TypeError, "float32 or float64"),
        (lambda s: otlabel.ChunkedScores(s[None]), ValueError, "2-D"),
        (lambda s: otlabel.ChunkedScores(s, n_samples=49), ValueError, "n_samples"),
        (lambda s: otlabel.ChunkedScores(42), TypeError, "source"),
    ],
)
def test_bad_sources_are_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(_scores(n=50, k=3))


def test_callable_changing_dtype_or_shape_midway():
    scores = _scores(n=30_000, k=300)  # the validation pass reads 27 904-row blocks

    def drifting(i0, i1):
        block = scores[i0:i1]
        return block.astype(np.float64) if i0 > 0 else block

    with pytest.raises(TypeError, match="dtype float64, but the stream's is float32"):
        otlabel.assign(otlabel.ChunkedScores(drifting, n_samples=30_000), 0.1, backend="numpy")


def test_stream_rejects_what_needs_the_whole_matrix():
    stream = otlabel.ChunkedScores(_scores(n=100, k=4))
    with pytest.raises(ValueError, match="return_plan"):
        otlabel.assign(stream, 0.1, return_plan=True)
    with pytest.raises(ValueError, match="method: 'scaling'"):
        otlabel.assign(stream, 0.1, method="scaling")
