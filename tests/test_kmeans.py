"""otlabel.KMeans: scikit-learn's conformance, exact assignment steps, sizes, inputs."""

from __future__ import annotations

import itertools
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sparse
from _helpers import bounded_lp_optimum
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.cluster import kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import check_estimator

import otlabel
from otlabel.cli import main
from otlabel.kmeans import EXPECTED_FAILED_CHECKS, KMeans


def blobs(rng, n_samples=300, n_features=4, n_centres=5, dtype=np.float64):
    """Samples around ``n_centres`` random centres, of unequal sizes."""
    centres = rng.normal(scale=4.0, size=(n_centres, n_features))
    which = rng.choice(n_centres, size=n_samples, p=np.arange(1, n_centres + 1) / 15)
    return (centres[which] + rng.normal(size=(n_samples, n_features))).astype(dtype)


def score_matrix(X, centres):
    """``-||x_i - c_k||^2`` (N, K) in float64."""
    X, centres = np.asarray(X, np.float64), np.asarray(centres, np.float64)
    return -((X[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)


def label_score(scores, labels):
    return float(scores[np.arange(scores.shape[0]), labels].sum())


# --------------------------------------------------------------------------
# scikit-learn's conformance
# --------------------------------------------------------------------------


def test_check_estimator_passes_all_but_the_declared_checks():
    results = check_estimator(
        KMeans(), expected_failed_checks=EXPECTED_FAILED_CHECKS, on_fail=None, on_skip=None
    )
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == []
    xfailed = {r["check_name"] for r in results if r["status"] == "xfail"}
    assert xfailed == set(EXPECTED_FAILED_CHECKS)


def test_without_scikit_learn_the_error_names_the_extra(monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == "sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "otlabel.kmeans")
    with pytest.raises(ImportError, match=r"pip install 'otlabel\[sklearn\]'"):
        otlabel.KMeans(3)


# --------------------------------------------------------------------------
# every assignment step is the exact optimum under the sizes
# --------------------------------------------------------------------------


def _random_bounds(rng, n_samples, n_clusters):
    lower = rng.integers(0, n_samples // n_clusters + 1, size=n_clusters)
    upper = lower + rng.integers(0, n_samples, size=n_clusters)
    upper = np.maximum(upper, 1)
    short = n_samples - upper.sum()
    if short > 0:
        upper[0] += short
    return lower, np.minimum(upper, n_samples)


@pytest.mark.parametrize("few_rows", [False, True], ids=["all-rows", "least-margins"])
@pytest.mark.parametrize("seed", range(25))
def test_the_assignment_step_is_the_lp_optimum(monkeypatch, seed, few_rows):
    """Random bounds, ties on one seed in three; with ``few_rows`` the exact step
    first solves only the 3 samples of least margin (and 1 per sample to move),
    proves the rest, or solves more."""
    if few_rows:
        import otlabel.kmeans as kmeans_module

        monkeypatch.setattr(kmeans_module, "IN_MEMORY_MARGIN_ROWS", 3)
        monkeypatch.setattr(kmeans_module, "MARGIN_ROWS_PER_MOVE", 1)
    rng = np.random.default_rng(seed)
    n_samples, n_clusters = int(rng.integers(8, 40)), int(rng.integers(2, 6))
    X = rng.normal(size=(n_samples, 3))
    if seed % 3 == 0:  # ties: samples on a coarse grid, some repeated
        X = np.round(X)[rng.integers(0, n_samples, n_samples)]
    model = KMeans(n_clusters, init=X[:n_clusters], max_iter=1, min_size=0, max_size=1.0)
    model.fit(X)
    lower, upper = _random_bounds(rng, n_samples, n_clusters)
    labels = model.predict_exact(X, min_size=lower, max_size=upper)
    counts = np.bincount(labels, minlength=n_clusters)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    scores = score_matrix(X, model.cluster_centers_)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert label_score(scores, labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)


def test_the_least_margins_solved_cover_the_clusters_left_short():
    """The samples of least margin are a short cluster's own best ones: solved alone
    they cannot fill it (and those tied at the last margin are more than wanted),
    so more are solved; the labels meet the bounds and are the LP optimum."""
    from otlabel.kernels.numba.rounding import margins_on_this_thread
    from otlabel.kmeans import margin_labels

    scores = np.zeros((3610, 3))
    scores[:1100] = [0.0, 0.0, 1.0]  # cluster 2, margin 1: short of 1 200 by 100
    scores[1100:2350] = [5.0, 0.0, 0.0]  # margin 5, each of clusters 0 and 1 50 over
    scores[2350:3600] = [0.0, 5.0, 0.0]
    scores[3600:] = [0.5, 0.0, 0.0]  # margin 0.5: the ten least
    lower, upper = np.full(3, 1200), np.full(3, 1300)
    potential = np.zeros(3)
    for first_rows in (10, 1024):
        labels, margins = np.empty(3610, np.int64), np.empty(3610)
        margins_on_this_thread(scores, potential, labels, margins)
        step = margin_labels(
            scores.__getitem__, labels, margins, potential, (lower, upper), first_rows
        )
        counts = np.bincount(step.labels, minlength=3)
        assert np.all(counts >= lower) and np.all(counts <= upper)
        np.testing.assert_array_equal(step.counts, counts)
        optimum = bounded_lp_optimum(scores, lower, upper)
        assert label_score(scores, step.labels) == pytest.approx(optimum, rel=1e-12)
        assert step.gap == pytest.approx(0.0, abs=1e-12)


def test_each_try_solves_the_rows_of_the_last_and_the_least_margins(rng):
    """The rows a failed try relabelled are solved again whatever rows tie at the
    margin where the next try stops (the rows kept must be at their argmax), and
    every row kept has at least the margin returned."""
    from otlabel.kmeans import _least_margins

    margins = np.round(rng.random(300) * 4) / 4  # five values, many ties
    solved = np.array([3, 50, 299])
    margins[solved] = 1.0  # above most: not among the least
    for wanted in (1, 10, 77, 200, 299):
        active, tau = _least_margins(margins, wanted, solved)
        assert np.all(np.diff(active) > 0) and np.isin(solved, active).all()
        least = np.setdiff1d(active, solved)
        assert least.size >= wanted - solved.size
        kept = np.setdiff1d(np.arange(300), active)
        assert tau == margins[kept].min(initial=np.inf) and np.all(margins[least] <= tau)
    np.testing.assert_array_equal(_least_margins(margins, 300, solved)[0], np.arange(300))


@pytest.mark.parametrize("sizes", [{"min_size": 0.15}, {"min_size": 0.2, "max_size": 0.6}])
def test_samples_of_weight_zero_tie_at_every_cluster_and_the_bounds_hold(rng, sizes):
    """Weights of 0 make score rows of 0 (every sample tied, margin 0), more of them
    than the first samples solved: every step still meets the bounds, at the LP
    optimum of the weighted distances."""
    X = rng.normal(size=(6000, 3))
    weights = rng.uniform(0.5, 1.5, 6000)
    weights[rng.choice(6000, 3000, replace=False)] = 0.0
    model = KMeans(4, random_state=0, max_iter=1, **sizes).fit(X, sample_weight=weights)
    lower, upper = otlabel.constraints.BoundedSizes(
        np.full(4, sizes["min_size"]), np.full(4, sizes.get("max_size", 1.0))
    ).count_bounds(6000)
    assert np.all(model.counts_ >= lower) and np.all(model.counts_ <= upper)
    scores = weights[:, None] * score_matrix(X, model.cluster_centers_)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert label_score(scores, model.labels_) == pytest.approx(optimum, rel=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_the_assignment_step_matches_brute_force_on_tiny_problems(seed):
    rng = np.random.default_rng(100 + seed)
    n_samples, n_clusters = 6, 3
    X = rng.integers(-2, 3, size=(n_samples, 2)).astype(np.float64)  # many ties
    centres = rng.normal(size=(n_clusters, 2))
    with warnings.catch_warnings():  # a centre may be left without samples
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters, init=centres, max_iter=1, min_size=0, max_size=1.0).fit(X)
    lower, upper = np.array([1, 0, 2]), np.array([3, 2, 4])
    scores = score_matrix(X, model.cluster_centers_)
    best = max(
        label_score(scores, np.array(labels))
        for labels in itertools.product(range(n_clusters), repeat=n_samples)
        if _within(np.bincount(labels, minlength=n_clusters), lower, upper)
    )
    labels = model.predict_exact(X, min_size=lower, max_size=upper)
    assert label_score(scores, labels) == pytest.approx(best, rel=1e-12, abs=1e-12)


def _within(counts, lower, upper):
    return bool(np.all(counts >= lower) and np.all(counts <= upper))


@pytest.mark.parametrize(
    "sizes",
    [
        {"min_size": 40, "max_size": 90},
        {"min_size": 0.1, "max_size": 0.3},
        {"min_size": np.array([10, 20, 30, 40, 50]), "max_size": 1.0},
        {"max_size": np.array([0.5, 0.2, 0.2, 0.2, 0.2])},
        {},
    ],
    ids=["counts", "fractions", "per-cluster-min", "per-cluster-max", "equal"],
)
def test_every_fit_respects_its_bounds_and_its_labels_are_optimal(rng, sizes):
    X = blobs(rng)
    model = KMeans(5, random_state=0, **sizes).fit(X)
    lower = _counts(sizes.get("min_size", 0), np.floor)
    upper = _counts(sizes.get("max_size", 1.0), np.ceil)
    if not sizes:  # equal sizes
        lower = upper = np.full(5, 60)
    counts = np.bincount(model.labels_, minlength=5)
    assert np.array_equal(counts, model.counts_)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    scores = score_matrix(X, model.cluster_centers_)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert label_score(scores, model.labels_) == pytest.approx(optimum, rel=1e-10)
    assert 0.0 <= model.gap_ <= 1e-9 * np.abs(scores).max()  # the certificate, at rounding level
    assert model.inertia_ == pytest.approx(-label_score(scores, model.labels_), rel=1e-12)


def _counts(value, rounding, n_samples=300, n_clusters=5):
    """A size bound as (K,) counts: an int is a count, a float a fraction of N."""
    array = np.asarray(value) * np.ones(n_clusters, np.asarray(value).dtype)
    if np.issubdtype(array.dtype, np.integer):
        return array
    return rounding(n_samples * array).astype(int)


@pytest.mark.parametrize("n_samples", [101, 99, 100])
def test_equal_sizes_are_floor_or_ceil_of_n_over_k(rng, n_samples):
    X = rng.normal(size=(n_samples, 3))
    counts = KMeans(7, random_state=1).fit(X).counts_
    assert set(counts.tolist()) <= {n_samples // 7, -(-n_samples // 7)}
    assert counts.sum() == n_samples


def test_bounds_too_tight_for_a_batch_raise_naming_the_bound(rng):
    X = rng.normal(size=(60, 2))
    model = KMeans(3, random_state=0).fit(X)
    with pytest.raises(ValueError, match=r"min_size: 3 clusters need at least 30 samples.*"):
        model.predict_exact(X[:20], min_size=10)
    assert np.bincount(model.predict_exact(X[:20])).tolist() in ([7, 7, 6], [7, 6, 7], [6, 7, 7])


# --------------------------------------------------------------------------
# plain k-means: scikit-learn's fit from the same centres
# --------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_without_bounds_it_is_scikit_learns_kmeans(rng, weighted):
    X = blobs(rng, n_samples=500)
    weights = rng.uniform(0.5, 2.0, size=500) if weighted else None
    start = X[rng.choice(500, 5, replace=False)]
    ours = KMeans(5, init=start, min_size=0, max_size=1.0).fit(X, sample_weight=weights)
    theirs = SklearnKMeans(5, init=start, n_init=1).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.inertia_ == pytest.approx(theirs.inertia_, rel=1e-10)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    np.testing.assert_allclose(ours.transform(X[:20]), theirs.transform(X[:20]), rtol=1e-9)


def test_an_emptied_cluster_takes_the_farthest_sample_as_scikit_learn_does(rng):
    X = rng.normal(size=(200, 2))
    start = np.array([[0.0, 0.0], [1.0, 0.0], [50.0, 50.0]])  # the last one wins no sample
    ours = KMeans(3, init=start, min_size=0, max_size=1.0).fit(X)
    theirs = SklearnKMeans(3, init=start, n_init=1).fit(X)
    np.testing.assert_array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, rtol=1e-10)


def test_sample_weights_move_the_centres_to_the_weighted_means(rng):
    X = blobs(rng)
    weights = rng.uniform(0.0, 3.0, size=300)
    model = KMeans(5, random_state=0, min_size=30).fit(X, sample_weight=weights)
    for k in range(5):
        members = model.labels_ == k
        mean = np.average(X[members], axis=0, weights=weights[members])
        np.testing.assert_allclose(model.cluster_centers_[k], mean, rtol=1e-10)
    unweighted = KMeans(5, random_state=0, min_size=30).fit(X)
    assert not np.allclose(unweighted.cluster_centers_, model.cluster_centers_)


# --------------------------------------------------------------------------
# inputs: float32, CSR, memmap, tensors
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_the_chunked_product_reads_the_argmax_of_every_row_once(monkeypatch, rng, dtype, weighted):
    """The in-memory scores are computed a chunk at a time on every thread, and each
    chunk's argmax labels at the dual read there: every row once, as NumPy's argmax
    of the scores plus the dual (the first of ties), for chunks of 1 row to all of
    them and a row count no chunk divides."""
    from otlabel import _kmeans_data

    X = blobs(rng, n_samples=1013, n_features=3, dtype=dtype)
    X[::7] = X[3]  # equal rows: tied scores
    weights = rng.random(X.shape[0]) + 0.5 if weighted else None
    centres = np.round(X[rng.choice(X.shape[0], 6, replace=False)].astype(np.float64))
    potential = np.round(rng.normal(size=6), 1)
    for chunk_rows in (1, 37, 1013, 5000):
        monkeypatch.setattr(_kmeans_data, "CHUNK_BYTES", chunk_rows * 3 * X.itemsize)
        samples = _kmeans_data.samples_of(X, weights)
        rows_of, labels, _ = samples.labels_and_margins(centres, potential)
        scores = rows_of(np.arange(X.shape[0]))  # a gathered copy of the buffer
        product, norms = samples._score_operands(centres)
        expected = X @ product - norms
        if weighted:
            expected *= weights[:, None].astype(dtype)
        assert scores.dtype == dtype  # BLAS rounds a chunk's product its own way
        tolerance = 1e-4 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(scores, expected, rtol=0, atol=tolerance)
        np.testing.assert_array_equal(labels, np.argmax(scores.astype(np.float64) + potential, 1))
        np.testing.assert_array_equal(samples.scores(centres), scores)


def test_a_memmap_with_relaxed_sizes_never_holds_its_scores_whole(monkeypatch, rng, tmp_path):
    """Relaxed sizes judge no argmax labels: a memmap's steps read its scores block by
    block, never into one (N, K) buffer, and give the in-memory fit."""
    from otlabel import _kmeans_data

    X = blobs(rng, n_samples=600)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    start = X[:5].copy()
    in_memory = KMeans(5, init=start, size_penalty=2.0, max_iter=5).fit(X)

    def whole(*args):
        raise AssertionError("a memmap's scores were held whole")

    monkeypatch.setattr(_kmeans_data.DenseSamples, "_product", whole)
    streamed = KMeans(5, init=start, size_penalty=2.0, max_iter=5).fit(mapped)
    np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)


def test_the_scores_of_the_same_centres_are_read_not_computed_again(monkeypatch, rng):
    """A far step asks for the scores of its centres three times (its margins, the
    Sinkhorn solve, the margins at the solve's dual): one product; new centres or a
    new origin compute them again."""
    from otlabel import _kmeans_data

    products = []
    fill = _kmeans_data.DenseSamples._fill
    monkeypatch.setattr(
        _kmeans_data.DenseSamples,
        "_fill",
        lambda self, *args: products.append(1) or fill(self, *args),
    )
    X = blobs(rng, n_samples=500)
    samples = _kmeans_data.samples_of(X, None)
    centres, potential = X[:5].copy(), rng.normal(size=5)
    _, labels, margins = samples.labels_and_margins(centres, potential)
    assert len(products) == 1
    scores = samples.scores(centres)
    _, again, margins_again = samples.labels_and_margins(centres.copy(), potential)
    assert len(products) == 1
    np.testing.assert_array_equal(again, np.argmax(scores + potential, axis=1))
    np.testing.assert_array_equal(again, labels)
    np.testing.assert_array_equal(margins_again, margins)
    samples.scores(centres + 1.0)
    assert len(products) == 2
    samples.centre_at(X.mean(axis=0))
    samples.scores(centres + 1.0)
    assert len(products) == 3


def test_float32_stays_float32(rng):
    X = blobs(rng, dtype=np.float32)
    model = KMeans(5, random_state=0, min_size=40).fit(X)
    assert model.cluster_centers_.dtype == np.float32
    assert model.transform(X).dtype == np.float32
    assert model.labels_.dtype == np.int64 and isinstance(model.inertia_, float)
    double = KMeans(5, random_state=0, min_size=40).fit(X.astype(np.float64))
    assert (model.labels_ != double.labels_).mean() < 0.02


def test_a_csr_matrix_gives_the_dense_fit(rng):
    X = blobs(rng)
    X[np.abs(X) < 1.0] = 0.0
    start = X[:5]
    dense = KMeans(5, init=start, min_size=40, max_size=80).fit(X)
    csr = KMeans(5, init=start, min_size=40, max_size=80).fit(sparse.csr_matrix(X))
    np.testing.assert_array_equal(dense.labels_, csr.labels_)
    np.testing.assert_allclose(dense.cluster_centers_, csr.cluster_centers_, rtol=1e-10)
    assert dense.inertia_ == pytest.approx(csr.inertia_, rel=1e-10)


def test_a_memmap_fit_equals_the_in_memory_fit(rng, tmp_path):
    X = blobs(rng, n_samples=2000, dtype=np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    start, _ = kmeans_plusplus(X, 5, random_state=0)
    in_memory = KMeans(5, init=start, min_size=300).fit(X)
    streamed = KMeans(5, init=start, min_size=300).fit(mapped)
    np.testing.assert_array_equal(in_memory.labels_, streamed.labels_)
    np.testing.assert_allclose(in_memory.cluster_centers_, streamed.cluster_centers_, rtol=1e-6)
    assert in_memory.n_iter_ == streamed.n_iter_
    np.testing.assert_array_equal(streamed.predict(mapped), in_memory.predict(X))


@pytest.mark.parametrize(
    "sizes", [{"min_size": 300, "max_size": 500}, {}], ids=["bounded", "equal"]
)
def test_a_memmap_step_solves_the_least_margins_and_proves_the_rest(monkeypatch, tmp_path, sizes):
    """A memmap's exact step holds only the rows of least margin (here first 50, then
    4 times more until the dual moves less than their margin), its first solve starts
    from a solve on a few of its rows: the in-memory fit's labels, a dual that
    certifies them, and the LP optimum."""
    import otlabel.kmeans as kmeans_module

    monkeypatch.setattr(kmeans_module, "MARGIN_ROWS", 50)
    monkeypatch.setattr(kmeans_module, "IN_MEMORY_MARGIN_ROWS", 50)
    monkeypatch.setattr(kmeans_module, "MARGIN_ROWS_PER_MOVE", 1)
    monkeypatch.setattr(kmeans_module, "START_ROWS", 500)  # the first step from 500 rows
    solves_per_step: list[int] = []  # of the least-margin rows, each step
    margin_labels, solved_rows = kmeans_module.margin_labels, kmeans_module._solved_rows

    def counted_step(*args):
        solves_per_step.append(0)
        return margin_labels(*args)

    def counted_solve(*args):
        solves_per_step[-1] += 1
        return solved_rows(*args)

    monkeypatch.setattr(kmeans_module, "margin_labels", counted_step)
    monkeypatch.setattr(kmeans_module, "_solved_rows", counted_solve)
    X = blobs(np.random.default_rng(3), n_samples=2500, dtype=np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    start, _ = kmeans_plusplus(X, 5, random_state=0)
    for max_iter in (1, 300):
        in_memory = KMeans(5, init=start, max_iter=max_iter, **sizes).fit(X)
        streamed = KMeans(5, init=start, max_iter=max_iter, **sizes).fit(mapped)
        np.testing.assert_array_equal(streamed.labels_, in_memory.labels_)
        assert streamed.gap_ <= 1e-9 and streamed.n_iter_ == in_memory.n_iter_
        scores = score_matrix(X, streamed.cluster_centers_)
        shifted = scores + streamed.potential_  # the dual certifies the labels (float32)
        slack = shifted.max(axis=1) - shifted[np.arange(X.shape[0]), streamed.labels_]
        assert np.all(slack <= 1e-5 * np.abs(scores).max())
        lower, upper = (
            (np.full(5, 300), np.full(5, 500)) if sizes else (np.full(5, 500), np.full(5, 500))
        )
        optimum = bounded_lp_optimum(scores, lower, upper)
        assert label_score(scores, streamed.labels_) == pytest.approx(optimum, rel=1e-6)
    assert max(solves_per_step) >= 2  # a proof failed: more rows solved, from the same labels


def test_torch_tensors_in_tensors_out(rng):
    torch = pytest.importorskip("torch")
    X = blobs(rng, dtype=np.float32)
    start = X[:5]
    on_numpy = KMeans(5, init=start, min_size=40).fit(X)
    on_torch = KMeans(5, init=start, min_size=40).fit(torch.from_numpy(X))
    assert isinstance(on_torch.labels_, torch.Tensor)
    assert on_torch.cluster_centers_.dtype == torch.float32
    np.testing.assert_array_equal(on_torch.labels_.numpy(), on_numpy.labels_)
    np.testing.assert_allclose(on_torch.cluster_centers_.numpy(), on_numpy.cluster_centers_)
    assert isinstance(on_torch.predict(torch.from_numpy(X[:10])), torch.Tensor)
    assert on_torch.transform(torch.from_numpy(X[:10])).dtype == torch.float32


@pytest.mark.parametrize("kind", ["array", "memmap", "torch"])
@pytest.mark.parametrize("offset", [1e4, np.array([40.7, -74.0, 12.5, 3e3])])
def test_float32_samples_far_from_zero_keep_their_distances(rng, tmp_path, kind, offset):
    """float32 points far from 0 (spread 1 at 1e4, or GPS-like coordinates spread
    0.05): ``2 x.c`` and ``||c||^2`` are huge and nearly equal, so the scores are
    measured from the samples' mean.  Every step's labels are then the LP optimum
    of the true distances, as for the same points near 0, and predict, transform
    and predict_exact agree with them."""
    spread = 0.05 if isinstance(offset, np.ndarray) else 1.0
    near = blobs(rng, n_samples=600) * spread
    X = (near + offset).astype(np.float32)
    data = X
    if kind == "memmap":
        np.save(tmp_path / "X.npy", X)
        data = np.load(tmp_path / "X.npy", mmap_mode="r")
    elif kind == "torch":
        data = pytest.importorskip("torch").from_numpy(X)
    start, _ = kmeans_plusplus(X.astype(np.float64), 5, random_state=0)
    model = KMeans(5, init=start, min_size=100).fit(data)
    centres = np.asarray(model.cluster_centers_, dtype=np.float64)
    scores = score_matrix(X, centres)  # the true distances, in float64
    labels = np.asarray(model.labels_)
    optimum = bounded_lp_optimum(scores, np.full(5, 100), np.full(5, 600))
    assert label_score(scores, labels) == pytest.approx(optimum, rel=1e-7)
    assert model.gap_ <= 1e-9 and model.n_iter_ < 60
    shifted = KMeans(5, init=start - offset, min_size=100).fit((X - offset).astype(np.float64))
    assert model.inertia_ == pytest.approx(shifted.inertia_, rel=1e-5)
    distances = np.asarray(model.transform(data), dtype=np.float64)
    np.testing.assert_allclose(distances**2, -scores, rtol=1e-3, atol=1e-5 * -scores.min())
    assert np.mean(np.asarray(model.predict(data)) == labels) > 0.99
    exact = np.asarray(model.predict_exact(data))
    assert label_score(scores, exact) == pytest.approx(optimum, rel=1e-7)


# --------------------------------------------------------------------------
# bad input: the error names the argument and the fix
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"n_clusters": 11}, r"n_clusters: 11 clusters for 10 samples; lower n_clusters"),
        ({"n_clusters": 3, "min_size": 4}, r"min_size: 3 clusters need at least 12 .*lower"),
        ({"n_clusters": 3, "max_size": 3}, r"max_size: 3 clusters hold at most 9 .*raise"),
        ({"n_clusters": 3, "min_size": 1.5}, r"min_size: a float is a fraction .*pass an int"),
        ({"n_clusters": 2, "min_size": 4, "max_size": 3}, r"min_size: cluster 0 needs"),
        ({"n_clusters": 2, "min_size": 2, "cluster_weights": [1, 1]}, r"cluster_weights: "),
        ({"n_clusters": 2, "max_size": [5, 5, 5]}, r"max_size: expected one number or one"),
        ({"n_clusters": 2, "init": np.zeros((3, 2))}, r"init: expected initial centres"),
    ],
)
def test_bad_sizes_and_parameters_raise_naming_the_argument(parameters, message):
    X = np.random.default_rng(0).normal(size=(10, 2))
    with pytest.raises(ValueError, match=message):
        KMeans(**parameters).fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(bad):
    X = np.random.default_rng(0).normal(size=(10, 2))
    X[3, 1] = bad
    with pytest.raises(ValueError, match=r"X contains (NaN|infinity)"):
        KMeans(2).fit(X)


def test_predict_with_the_wrong_number_of_features_raises(rng):
    model = KMeans(2, random_state=0).fit(rng.normal(size=(20, 3)))
    with pytest.raises(ValueError, match=r"X has 4 features, but KMeans is expecting 3"):
        model.predict(rng.normal(size=(5, 4)))


def test_bad_sample_weights_raise_naming_them(rng):
    X = rng.normal(size=(20, 2))
    with pytest.raises(ValueError, match=r"sample_weight: expected shape \(20,\)"):
        KMeans(2).fit(X, sample_weight=np.ones(19))
    with pytest.raises(ValueError, match=r"sample_weight: expected finite weights >= 0"):
        KMeans(2).fit(X, sample_weight=-np.ones(20))
    for weights, dtype in [(np.array(["a"] * 20), "<U1"), (np.ones(20) * 1j, "complex128")]:
        with pytest.raises(ValueError, match=f"sample_weight: expected real numbers, .*{dtype}"):
            KMeans(2).fit(X, sample_weight=weights)
    with pytest.raises(ValueError, match=r"sample_weight: weights up to 1e\+306 times .*scale"):
        KMeans(2).fit(X, sample_weight=np.full(20, 1e306))
    with pytest.raises(ValueError, match=r"sample_weight: the weights sum to more than float64"):
        KMeans(2).fit(X, sample_weight=np.full(20, 1e308))
    with pytest.raises(ValueError, match=r"sample_weight: weights as small as 1e-40 vanish"):
        KMeans(2).fit(X.astype(np.float32), sample_weight=np.full(20, 1e-40))
    huge = KMeans(2, random_state=0).fit(X, sample_weight=np.full(20, 1e300))  # ratios matter
    np.testing.assert_array_equal(huge.labels_, KMeans(2, random_state=0).fit(X).labels_)


def test_samples_whose_distances_overflow_their_dtype_raise_naming_x():
    X = np.random.default_rng(0).normal(size=(20, 2)) * 1e20
    with pytest.raises(ValueError, match=r"X: squared distances up to .* overflow float32"):
        KMeans(2).fit(X.astype(np.float32))
    assert KMeans(2).fit(X).gap_ <= 1e-9  # float64 holds them


@pytest.mark.parametrize("tol", [float("nan"), float("inf"), -1.0])
def test_a_tolerance_that_is_not_a_finite_number_raises(tol):
    with pytest.raises(ValueError, match=r"tol: expected a finite number >= 0"):
        KMeans(2, tol=tol).fit(np.random.default_rng(0).normal(size=(10, 2)))


def test_a_complex_tensor_raises():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=r"X: complex samples \(torch.complex128\)"):
        KMeans(2).fit(torch.ones((10, 2), dtype=torch.complex128))


def test_a_callable_init_is_called_as_scikit_learn_calls_it(rng):
    X = blobs(rng)
    calls = []

    def first_rows(data, n_clusters, random_state):
        calls.append((data.shape, n_clusters, type(random_state).__name__))
        return data[random_state.choice(data.shape[0], n_clusters, replace=False)]

    model = KMeans(5, init=first_rows, random_state=0).fit(X)
    assert calls == [((300, 4), 5, "RandomState")] * 10  # n_init "auto": 10 runs
    assert len(np.unique(model.labels_)) == 5
    with pytest.raises(ValueError, match=r"init\(X\): expected initial centres of shape"):
        KMeans(5, init=lambda data, k, random_state: data[:2]).fit(X)


@pytest.mark.parametrize("layout", ["fortran", "float16"])
def test_a_memmap_that_cannot_be_streamed_warns_that_it_is_read_whole(rng, tmp_path, layout):
    X = blobs(rng)
    saved = np.asfortranarray(X) if layout == "fortran" else X.astype(np.float16)
    np.save(tmp_path / "X.npy", saved)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    with pytest.warns(RuntimeWarning, match=r"X: a memmap of dtype .* is copied into memory"):
        model = KMeans(5, random_state=0).fit(mapped)
    np.testing.assert_array_equal(model.labels_, KMeans(5, random_state=0).fit(saved).labels_)


def test_clusters_left_empty_warn_as_scikit_learn_does():
    X = np.repeat(np.eye(3), 10, axis=0)  # 3 distinct points for 5 clusters
    with pytest.warns(ConvergenceWarning, match=r"distinct clusters \(3\) .* n_clusters \(5\)"):
        model = KMeans(5, min_size=0, max_size=1.0, random_state=0).fit(X)
    assert sorted(np.asarray(model.counts_).tolist()) == [0, 0, 10, 10, 10]


# --------------------------------------------------------------------------
# predict and the command line
# --------------------------------------------------------------------------


def test_predict_is_the_argmax_with_the_fitted_potential(rng):
    X = blobs(rng)
    model = KMeans(5, random_state=0, max_size=0.25).fit(X)
    new = blobs(np.random.default_rng(9), n_samples=50)
    scores = score_matrix(new, model.cluster_centers_) + np.asarray(model.potential_)
    np.testing.assert_array_equal(model.predict(new), scores.argmax(axis=1))
    expected = label_score(score_matrix(new, model.cluster_centers_), model.predict(new))
    assert model.score(new) == pytest.approx(expected, rel=1e-12)


def test_predict_with_the_fits_weights_gives_its_labels(rng):
    """A weighted step maximises ``-sum w_i ||x_i - c||^2``: its dual labels a sample of
    weight w by ``argmax -w ||x - c_k||^2 + g_k``, which predict takes the weights for."""
    X = blobs(rng, n_samples=1000)
    weights = rng.choice([0.1, 1.0, 10.0], size=1000)
    model = KMeans(4, random_state=0).fit(X, sample_weight=weights)
    predicted = model.predict(X, sample_weight=weights)
    shifted = weights[:, None] * score_matrix(X, model.cluster_centers_) + model.potential_
    rows = np.arange(X.shape[0])
    tied = shifted[rows, model.labels_] >= shifted.max(axis=1) - 1e-9 * np.abs(shifted).max()
    assert np.all(tied)  # every label is a best one at the dual
    differ = predicted != model.labels_
    assert np.all(tied[differ]) and differ.sum() <= 3  # only at the dual's ties (K - 1)
    unweighted = model.predict(X) != model.labels_
    assert unweighted.sum() > 10  # weight 1 each: other labels


@pytest.mark.parametrize("kind", ["array", "csr", "memmap", "torch"])
def test_predict_exact_on_a_batch_smaller_than_k(rng, tmp_path, kind):
    """Equal sizes for 2 samples and 5 clusters: at most one sample per cluster, the
    brute-force optimum (the exact step of fixed sizes needs K <= N: bounds instead)."""
    X = blobs(rng)
    model = KMeans(5, random_state=0).fit(X)
    for seed in range(10):
        batch = blobs(np.random.default_rng(seed), n_samples=2)
        data = {"array": batch, "csr": sparse.csr_matrix(batch)}.get(kind)
        if kind == "memmap":
            np.save(tmp_path / "batch.npy", batch)
            data = np.load(tmp_path / "batch.npy", mmap_mode="r")
        elif kind == "torch":
            data = pytest.importorskip("torch").from_numpy(batch)
        labels = np.asarray(model.predict_exact(data))
        scores = score_matrix(batch, model.cluster_centers_)
        best = max(scores[0, a] + scores[1, b] for a in range(5) for b in range(5) if a != b)
        assert labels[0] != labels[1] and label_score(scores, labels) == pytest.approx(best)


@pytest.mark.parametrize(
    "sizes",
    [{"min_size": 40, "max_size": 90}, {}, {"cluster_weights": [0.1, 0.2, 0.2, 0.2, 0.3]}],
    ids=["bounded", "equal", "fixed"],
)
@pytest.mark.parametrize("max_iter", [1, 300], ids=["one-step", "converged"])
def test_the_potential_is_the_exact_labels_optimal_dual(rng, sizes, max_iter):
    """``potential_`` is the last step's optimal dual: every label is a best cluster at
    it (complementary slackness), so ``predict`` on the training samples gives
    ``labels_`` wherever that best cluster is unique; the dual objective at it equals
    the labels' (and the LP optimum)."""
    X = blobs(rng)
    model = KMeans(5, random_state=0, max_iter=max_iter, **sizes).fit(X)
    scores = score_matrix(X, model.cluster_centers_)
    shifted = scores + np.asarray(model.potential_)
    rows = np.arange(X.shape[0])
    slack = shifted.max(axis=1) - shifted[rows, model.labels_]
    scale = np.abs(scores).max()
    assert np.all(slack <= 1e-9 * scale)
    top_two = np.sort(shifted, axis=1)[:, -2:]
    unique = top_two[:, 1] - top_two[:, 0] > 1e-9 * scale
    assert unique.mean() > 0.9
    predicted = np.asarray(model.predict(X))
    np.testing.assert_array_equal(predicted[unique], model.labels_[unique])
    lower, upper = (np.asarray(b) for b in _bounds_of(sizes, X.shape[0]))
    potential = np.asarray(model.potential_)
    # D(g) = sum_i max_k (S_ik + g_k) - sum_k n_k(g) g_k, n_k(g) = lower where g_k > 0
    dual = shifted.max(axis=1).sum() - np.sum(np.where(potential > 0, lower, upper) * potential)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert dual == pytest.approx(optimum, rel=1e-9)
    assert label_score(scores, model.labels_) == pytest.approx(optimum, rel=1e-9)


def _bounds_of(sizes, n_samples, n_clusters=5):
    if "cluster_weights" in sizes:
        return otlabel.count_bounds(n_samples, np.asarray(sizes["cluster_weights"]))
    if not sizes:
        return otlabel.count_bounds(n_samples, np.full(n_clusters, 1 / n_clusters))
    return np.full(n_clusters, sizes["min_size"]), np.full(n_clusters, sizes["max_size"])


def test_a_tensor_fit_gives_the_dual_too(rng):
    """Tensors take ``assign`` at ``epsilon=0`` for their exact steps: the same labels,
    centres and optimal dual as NumPy's repair from the dual."""
    torch = pytest.importorskip("torch")
    X = blobs(rng, dtype=np.float32)
    start = X[:5]
    on_numpy = KMeans(5, init=start, min_size=40, max_size=80).fit(X)
    on_torch = KMeans(5, init=start, min_size=40, max_size=80).fit(torch.from_numpy(X))
    np.testing.assert_array_equal(on_torch.labels_.numpy(), on_numpy.labels_)
    scores = score_matrix(X, on_numpy.cluster_centers_) + np.asarray(on_torch.potential_.cpu())
    slack = scores.max(axis=1) - scores[np.arange(X.shape[0]), on_numpy.labels_]
    assert np.all(slack <= 1e-4 * np.abs(scores).max())  # float32 scores


def test_cluster_command_writes_labels_and_centres(tmp_path, capsys, rng):
    X = blobs(rng, dtype=np.float32)
    np.save(tmp_path / "X.npy", X)
    arguments = [str(tmp_path / "X.npy"), "-k", "5", "--min-size", "40", "--max-size", "0.3"]
    outputs = ["-o", str(tmp_path / "l.npy"), "--centers", str(tmp_path / "c.npy")]
    assert main(["cluster", *arguments, *outputs]) == 0
    out = capsys.readouterr().out
    labels, centres = np.load(tmp_path / "l.npy"), np.load(tmp_path / "c.npy")
    expected = KMeans(5, random_state=0, min_size=40, max_size=0.3, n_init=1).fit(X)
    np.testing.assert_array_equal(labels, expected.labels_)
    np.testing.assert_array_equal(centres, expected.cluster_centers_)
    assert "300 x 4 float32" in out and f"iterations {expected.n_iter_} " in out
    assert "optimality certified gap" in out
    assert main(["cluster", str(tmp_path / "X.npy"), "-k", "5", "--min-size", "70"]) == 1
    assert "--min-size: 5 clusters need at least 350" in capsys.readouterr().err
    assert main(["cluster", str(tmp_path / "X.npy"), "-k", "5", "--min-size", "-5"]) == 1
    assert "--min-size: a count of samples is 0..300 (X's N), got -5" in capsys.readouterr().err


def test_the_docs_example_runs_and_prints_what_it_says(capsys):
    page = (Path(__file__).parents[1] / "docs" / "kmeans.md").read_text()
    example = re.search(r"## Example\n\n```python\n(.*?)```", page, re.DOTALL).group(1)
    exec(compile(example, "docs/kmeans.md", "exec"), {})
    assert capsys.readouterr().out.split("\n")[:3] == ["True True", "float32", "True"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_groups_far_apart_for_their_size_warn_that_x_rounds_their_distances(rng, dtype):
    """Two groups 1e4 apart, each of spread 1: float32 rounds the squared distances by
    tens, more than the distances within a cluster (the labels are exact for the
    rounded scores only), and says so; float64 does not."""
    X = np.concatenate([blobs(rng, n_samples=300), blobs(rng, n_samples=300) + 1e4])
    if dtype == np.float32:
        with pytest.warns(RuntimeWarning, match=r"X: float32 rounds the squared distances"):
            KMeans(4, random_state=0).fit(X.astype(dtype))
    else:
        KMeans(4, random_state=0).fit(X)  # warnings are errors in the tests
