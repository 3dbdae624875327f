"""Hard labels: exactly balanced labels are LP-optimal and certified."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import bounded_lp_optimum

import otlabel
from otlabel import rounding


def random_problem(rng, n, k, *, weighted=False, ties=False):
    scores = rng.normal(size=(n, k)) * rng.choice([0.1, 1.0, 10.0])
    if ties:
        scores = np.round(scores)  # many exact ties
    weights = rng.random(k) + 0.2 if weighted else np.ones(k)
    return scores, weights / weights.sum()


def check_counts(labels, n, weights):
    lower, upper = otlabel.count_bounds(n, weights)
    counts = np.bincount(labels, minlength=weights.size)
    assert counts.sum() == n
    assert np.all(counts >= lower) and np.all(counts <= upper), (counts, lower, upper)
    return counts


def test_count_bounds_floor_and_ceil():
    lower, upper = otlabel.count_bounds(10, np.array([0.5, 0.3, 0.2]))
    assert lower.tolist() == [5, 3, 2] and upper.tolist() == [5, 3, 2]
    lower, upper = otlabel.count_bounds(7, np.full(3, 1 / 3))
    assert lower.tolist() == [2, 2, 2] and upper.tolist() == [3, 3, 3]


@pytest.mark.parametrize("n, k", [(120, 6), (121, 6), (125, 7), (7, 7), (100, 1)])
def test_balanced_counts_divisible_and_not(rng, n, k):
    scores = rng.normal(size=(n, k)) * 3
    res = otlabel.assign(scores, 0.1)
    counts = check_counts(res.labels, n, np.full(k, 1 / k))
    if n % k == 0:
        assert np.all(counts == n // k)


def test_balanced_counts_with_cluster_weights(rng):
    scores = rng.normal(size=(503, 5)) * 2
    weights = np.array([5.0, 1.0, 2.0, 1.5, 0.5])
    res = otlabel.assign(scores, 0.1, cluster_weights=weights)
    check_counts(res.labels, 503, weights / weights.sum())


@pytest.mark.parametrize("seed", range(8))
def test_balanced_objective_equals_exact_lp_optimum(seed):
    """Many small random problems, weighted and not, with and without ties."""
    rng = np.random.default_rng(seed)
    for trial in range(25):
        n = int(rng.integers(2, 45))
        k = int(rng.integers(2, min(n, 9) + 1))
        scores, weights = random_problem(rng, n, k, weighted=trial % 2 == 1, ties=trial % 3 == 0)
        res = otlabel.assign(scores, 1.0, cluster_weights=weights)
        check_counts(res.labels, n, weights)
        lower, upper = otlabel.count_bounds(n, weights)
        optimum = bounded_lp_optimum(scores, lower, upper)
        achieved = scores[np.arange(n), res.labels].sum()
        assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
        assert res.cost == pytest.approx(achieved / n, rel=1e-12)
        # The certificate bounds the true gap and is itself tight.
        assert res.gap >= (optimum - achieved) / n - 1e-12
        assert res.gap <= 1e-9 * max(1.0, abs(optimum) / n)


@pytest.mark.parametrize("start", ["zeros", "random", "sinkhorn"])
def test_any_starting_potential_reaches_the_optimum(rng, start):
    n, k = 300, 12
    scores = rng.normal(size=(n, k)) * 2
    weights = np.full(k, 1 / k)
    potential = {
        "zeros": np.zeros(k),
        "random": rng.normal(size=k) * 5,
        "sinkhorn": otlabel.sinkhorn(scores, 0.1).potential,
    }[start]
    out = rounding.balanced_labels(
        scores, potential, otlabel.count_bounds(n, weights), rows_per_block=17
    )
    lower, upper = otlabel.count_bounds(n, weights)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert scores[np.arange(n), out.labels].sum() == pytest.approx(optimum, rel=1e-10)
    assert out.gap <= 1e-10


def test_sinkhorn_start_needs_few_moves():
    scores = otlabel.make_scores(5000, 50, seed=7)
    res = otlabel.sinkhorn(scores, 0.05)
    bounds = otlabel.count_bounds(5000, np.full(50, 1 / 50))
    out = rounding.balanced_labels(scores, res.potential, bounds, rows_per_block=512)
    cold = rounding.balanced_labels(scores, np.zeros(50), bounds, rows_per_block=512)
    assert out.n_moves < cold.n_moves / 5
    np.testing.assert_array_equal(np.bincount(out.labels, minlength=50), 100)


def test_certificate_detects_a_suboptimal_labelling(rng):
    scores = rng.normal(size=(200, 5))
    weights = np.full(5, 0.2)
    lower, upper = otlabel.count_bounds(200, weights)
    best = rounding.balanced_labels(scores, np.zeros(5), (lower, upper), rows_per_block=64)
    worse = best.labels.copy()
    worse[[0, 1]] = worse[[1, 0]]  # a swap keeps the counts
    loss = scores[[0, 1], best.labels[[0, 1]]].sum() - scores[[0, 1], worse[[0, 1]]].sum()
    gap = rounding.certified_gap(scores, worse, best.prices, lower, upper, 64)
    assert gap * 200 >= loss - 1e-12 and loss > 0


def test_argmax_rounding_is_argmax_of_scores_plus_potential(rng):
    scores = rng.normal(size=(400, 9))
    res = otlabel.assign(scores, 0.1, rounding="argmax")
    np.testing.assert_array_equal(res.labels, np.argmax(scores + res.potential, axis=1))
    assert res.gap is None
    assert res.cost == pytest.approx(scores[np.arange(400), res.labels].mean())


def test_no_rounding_gives_duals_only(rng):
    res = otlabel.assign(rng.normal(size=(50, 4)), 0.1, rounding=None)
    assert res.labels is None and res.counts is None and res.cost is None and res.gap is None
    assert res.potential.shape == (4,) and res.row_potential.shape == (50,)


def test_argmax_labels_are_only_roughly_balanced_balanced_ones_exactly(rng):
    scores = otlabel.make_scores(2000, 20, seed=3)
    balanced = otlabel.assign(scores, 0.05)
    counts = np.bincount(otlabel.assign(scores, 0.05, rounding="argmax").labels, minlength=20)
    assert counts.max() > 100  # argmax labels are only roughly balanced
    np.testing.assert_array_equal(balanced.counts, 100)


def random_bounds(rng, k):
    """Feasible size bounds of every kind: tight, wide, missing, equal, at zero."""
    kind = rng.integers(4)
    if kind == 0:  # around random proportions
        b = rng.random(k) + 0.2
        b /= b.sum()
        lower, upper = b * rng.uniform(0.3, 1.0), b * rng.uniform(1.0, 2.5)
    elif kind == 1:  # lower bounds only
        lower, upper = np.full(k, rng.uniform(0, 1 / k)), np.ones(k)
    elif kind == 2:  # upper bounds only
        lower, upper = np.zeros(k), np.full(k, rng.uniform(1 / k, 2 / k))
    else:  # some equal bounds, some free
        lower = rng.uniform(0, 0.5 / k, size=k)
        upper = np.where(rng.random(k) < 0.5, lower, 1.0)
        upper[0] = 1.0  # room for everyone
    return lower, upper


@pytest.mark.parametrize("seed", range(40))
def test_bounded_labels_are_the_highs_optimum(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(3, 60)), int(rng.integers(2, 8))
    scores = rng.normal(size=(n, k)) * rng.choice([0.3, 2.0])
    if seed % 5 == 0:
        scores = np.round(scores)  # ties
    lower, upper = random_bounds(rng, k)
    res = otlabel.assign(scores, 0.2, min_size=lower, max_size=upper, backend="numpy")
    lo, hi = np.floor(n * lower - 1e-9 * n), np.ceil(n * upper + 1e-9 * n)
    counts = np.bincount(res.labels, minlength=k)
    assert np.all((counts >= lo) & (counts <= hi)) and counts.sum() == n
    bounds = otlabel.constraints.BoundedSizes(lower, upper).count_bounds(n)
    optimum = bounded_lp_optimum(scores, *bounds)
    achieved = scores[np.arange(n), res.labels].sum()
    assert achieved == pytest.approx(optimum, rel=1e-10, abs=1e-10)
    assert res.gap <= 1e-10


@pytest.mark.parametrize("seed", range(6))
def test_wide_bounds_need_few_paths_and_equal_numba(seed):
    """hi = 1 for every cluster gives (K - 1) N dummies: bulk dummy paths, same as Numba."""
    from otlabel.kernels.numba.rounding import NumbaPasses

    rng = np.random.default_rng(seed)
    n, k = 3000, 12
    scores = rng.normal(size=(n, k)) * 2
    scores[:, 0] += 2  # cluster 0 is popular: it must give samples away
    lower, upper = np.full(k, 0.05), np.ones(k)
    bounds = otlabel.constraints.BoundedSizes(lower, upper).count_bounds(n)
    results = [
        rounding.balanced_labels(scores, np.zeros(k), bounds, rows_per_block=500, passes=passes)
        for passes in (rounding.NumpyPasses(), NumbaPasses())
    ]
    np.testing.assert_array_equal(results[0].labels, results[1].labels)
    np.testing.assert_array_equal(results[0].prices, results[1].prices)
    assert results[0].n_moves == results[1].n_moves
    counts = np.bincount(results[0].labels, minlength=k)
    assert np.all(counts >= bounds[0])
    assert counts[0] > n // k  # free to stay large: only the lower bounds bind
    optimum = bounded_lp_optimum(scores, *bounds)
    assert scores[np.arange(n), results[0].labels].sum() == pytest.approx(optimum, rel=1e-10)


def test_equal_bounds_are_fixed_sizes(rng):
    scores = rng.normal(size=(300, 6)) * 2
    b = rng.random(6) + 0.5
    b /= b.sum()
    fixed = otlabel.assign(scores, 0.1, cluster_weights=b, tol=1e-10)
    bounded = otlabel.assign(scores, 0.1, min_size=b, max_size=b, tol=1e-10)
    np.testing.assert_array_equal(bounded.labels, fixed.labels)
    shift = bounded.potential - fixed.potential  # free constant of fixed sizes
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-7)


@pytest.mark.parametrize("with_virtual", [False, True])
def test_compiled_move_costs_and_their_samples_match_numpy(with_virtual):
    """C[k, l] = min over cluster k's samples of S_ik - S_il, as NumPy computes it, and
    for each minimum the first sample (in row order) that attains it, over two blocks."""
    pytest.importorskip("numba")
    from otlabel.kernels.numba.rounding import NumbaPasses

    rng = np.random.default_rng(7)
    scores = rng.normal(size=(500, 37)).astype(np.float32)
    scores[::50] = np.round(scores[::50])  # ties between samples
    own = rng.integers(0, 36, size=500)  # cluster 36 empty
    matrix = rounding.WithColumn(scores, rng.normal(size=500)) if with_virtual else scores
    n_cols = 38 if with_virtual else 37
    if with_virtual:
        own[::7] = 37  # some samples in the virtual column
    expected = np.full((n_cols, n_cols), np.inf)
    got, args = np.full((n_cols, n_cols), np.inf), np.full((n_cols, n_cols), -1)
    dense = np.asarray(matrix[0:500], dtype=np.float64) if with_virtual else scores
    for start in (0, 230):  # two blocks, as the repair reads them
        stop = 230 if start == 0 else 500
        rounding.NumpyPasses.move_costs(dense[start:stop], own[start:stop], expected)
        NumbaPasses.move_costs_with_args(matrix[start:stop], own[start:stop], got, args, start)
    np.testing.assert_array_equal(got, expected)
    loss = dense.astype(np.float64)[np.arange(500), own][:, None] - dense  # (N, K + ...)
    for k in np.unique(own):
        members = np.flatnonzero(own == k)
        for other in range(n_cols):
            attaining = members[loss[members, other] == got[k, other]]
            assert args[k, other] == attaining[0]  # the first in row order
    assert np.all(np.isinf(got[36])) and np.all(args[36] == -1)


@pytest.mark.parametrize("high", [1, 3_000, 65_536, 70_000])
def test_cluster_order_is_a_stable_argsort(high):
    """16-bit labels are radix-sorted, wider ones (and negative ones) as they are:
    either way the rows of a cluster come together, in row order."""
    from otlabel.rounding import cluster_order

    labels = np.random.default_rng(high).integers(0, high, 5_000)
    np.testing.assert_array_equal(cluster_order(labels), np.argsort(labels, kind="stable"))
    labels[7] = -1
    np.testing.assert_array_equal(cluster_order(labels), np.argsort(labels, kind="stable"))
    assert cluster_order(labels[:0]).size == 0


# --------------------------------------------------------------------------
# tied scores: a collapsed network's identical rows, rows from a few vectors,
# small integers (many samples of one loss move together, not one per path)
# --------------------------------------------------------------------------

TIED = ["all equal", "identical rows", "few vectors", "small integers", "few integer vectors"]


def tied_scores(rng, kind, n, k, dtype=np.float64):
    """``n x k`` scores with exact ties of the given kind."""
    if kind == "all equal":
        scores = np.full((n, k), rng.normal())
    elif kind == "identical rows":
        scores = np.tile(rng.normal(size=k), (n, 1))
    elif kind == "few vectors":  # 3 to 5 distinct rows
        scores = rng.normal(size=(int(rng.integers(3, 6)), k))[rng.integers(0, 3, n)]
    elif kind == "small integers":
        scores = rng.integers(0, 3, (n, k)).astype(float)
    else:
        scores = rng.integers(0, 4, (int(rng.integers(3, 6)), k)).astype(float)
        scores = scores[rng.integers(0, 3, n)]
    return scores.astype(dtype)


def tied_problem(seed, kind):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 240)), int(rng.integers(2, 8))
    return rng, tied_scores(rng, kind, n, k, rng.choice([np.float32, np.float64])), n, k


def exact_objective(scores, labels):
    return float(np.asarray(scores, np.float64)[np.arange(labels.size), labels].sum())


@pytest.mark.parametrize("kind", TIED)
@pytest.mark.parametrize("sizes", ["fixed", "bounded"])
@pytest.mark.parametrize("backend", ["auto", "numpy"])
def test_tied_scores_give_the_exact_lp_optimum(kind, sizes, backend):
    """Fixed sizes (weighted) and size bounds: counts within the bounds, the HiGHS
    optimum, a certified gap of 0."""
    for seed in range(4):
        rng, scores, n, k = tied_problem(seed, kind)
        if sizes == "fixed":
            weights = rng.random(k) + 0.2
            weights /= weights.sum()
            res = otlabel.assign(scores, 0.05, cluster_weights=weights, backend=backend)
            lower, upper = otlabel.count_bounds(n, weights)
        else:
            lo, hi = np.full(k, 0.3 / k), np.full(k, 1.8 / k)
            res = otlabel.assign(scores, 0.05, min_size=lo, max_size=hi, backend=backend)
            lower, upper = otlabel.constraints.BoundedSizes(lo, hi).count_bounds(n)
        counts = np.bincount(res.labels, minlength=k)
        assert np.all((counts >= lower) & (counts <= upper)) and counts.sum() == n
        optimum = bounded_lp_optimum(np.asarray(scores, np.float64), lower, upper)
        assert exact_objective(scores, res.labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)
        assert res.gap <= 1e-9


@pytest.mark.parametrize("kind", TIED)
def test_tied_scores_with_partial_mass_give_the_exact_lp_optimum(kind):
    """mass=0.8: the virtual column (its scores tied too) takes its share exactly."""
    for seed in range(4):
        _, scores, n, k = tied_problem(10 + seed, kind)
        res = otlabel.assign(scores, 0.05, mass=0.8)
        wide = np.asarray(scores, np.float64)
        s0 = np.log(np.exp(wide).sum(axis=1))
        extended = np.column_stack([wide, s0])
        bounds = otlabel.count_bounds(n, np.append(np.full(k, 0.8 / k), 0.2))
        labels = np.where(res.labels < 0, k, res.labels)
        counts = np.bincount(labels, minlength=k + 1)
        assert np.all((counts >= bounds[0]) & (counts <= bounds[1]))
        optimum = bounded_lp_optimum(extended, *bounds)
        assert exact_objective(extended, labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)
        assert res.gap <= 1e-9


@pytest.mark.parametrize("kind", TIED)
def test_tied_scores_with_known_labels_give_the_exact_lp_optimum(kind):
    """Known labels kept; the free rows' labels the optimum under the reduced bounds."""
    for seed in range(4):
        rng, scores, n, k = tied_problem(20 + seed, kind)
        known = np.full(n, -1)
        chosen = rng.choice(n, size=n // 10, replace=False)
        known[chosen] = rng.integers(0, k, chosen.size)
        res = otlabel.assign(scores, 0.05, known_labels=known)
        free = known < 0
        np.testing.assert_array_equal(res.labels[~free], known[~free])
        lower, upper = otlabel.count_bounds(n, np.full(k, 1 / k))
        counts = np.bincount(res.labels, minlength=k)
        assert np.all((counts >= lower) & (counts <= upper))
        taken = np.bincount(known[~free], minlength=k)
        wide = np.asarray(scores, np.float64)[free]
        optimum = bounded_lp_optimum(wide, np.maximum(lower - taken, 0), upper - taken)
        achieved = exact_objective(wide, res.labels[free])
        assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
        assert res.gap <= 1e-9


@pytest.mark.parametrize("kind", TIED)
def test_merged_rows_one_entry_per_sample_and_the_reference_agree(kind):
    """The compiled repair with identical rows merged, with one entry per sample, and
    the Python reference (streams, shards): the same optimum, counts and certificate;
    the reference and the compiled per-sample repair the same paths, bit for bit."""
    from otlabel.kernels.numba.rounding import NumbaPasses

    for seed in range(6):
        rng, scores, n, k = tied_problem(30 + seed, kind)
        weights = rng.random(k) + 0.2
        weights /= weights.sum()
        bounds = otlabel.count_bounds(n, weights)
        if seed % 2:
            lo, hi = weights * 0.4, np.minimum(weights * 2, 1)
            bounds = otlabel.constraints.BoundedSizes(lo, hi).count_bounds(n)
        potential = rng.normal(size=k) * 1e-3 if seed % 3 else np.zeros(k)
        runs = {
            name: rounding.balanced_labels(
                scores, potential, bounds, rows_per_block=int(rng.integers(7, 90)), **options
            )
            for name, options in {
                "merged": {"passes": NumbaPasses(), "compiled": True, "merge_rows": True},
                "per sample": {"passes": NumbaPasses(), "compiled": True, "merge_rows": False},
                "numpy passes": {"merge_rows": False},
                "automatic": {"passes": NumbaPasses()},
                "reference": {"compiled": False},
            }.items()
        }
        optimum = bounded_lp_optimum(np.asarray(scores, np.float64), *bounds)
        for name, out in runs.items():
            counts = np.bincount(out.labels, minlength=k)
            assert np.all((counts >= bounds[0]) & (counts <= bounds[1])), name
            achieved = exact_objective(scores, out.labels)
            assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9), name
            assert out.gap <= 1e-9, name
        reference = runs["reference"]
        for name in ("per sample", "numpy passes"):
            np.testing.assert_array_equal(runs[name].labels, reference.labels)
            np.testing.assert_array_equal(runs[name].prices, reference.prices)
            assert runs[name].n_moves == reference.n_moves


@pytest.mark.parametrize("kind", ["all equal", "few vectors", "small integers"])
def test_compiled_repair_of_large_tied_clusters_equals_the_reference(kind):
    """A cluster of 4 000 tied samples x 80 clusters: the compiled repair recomputes
    a giver's whole row of minima at once, in parallel over blocks of columns, and
    takes its moved samples' columns without branches; the same paths as the
    reference, labels and prices, with and without partial mass's column."""
    from otlabel.kernels.numba.rounding import NumbaPasses

    rng = np.random.default_rng(12)
    n, k = 4_000, 80
    scores = tied_scores(rng, kind, n, k, np.float32)
    for virtual in (None, rng.integers(0, 3, n).astype(np.float64)):
        matrix, columns = scores, k
        bounds = otlabel.count_bounds(n, np.full(k, 1 / k))
        if virtual is not None:
            matrix, columns = rounding.WithColumn(scores, virtual), k + 1
            bounds = otlabel.count_bounds(n, np.append(np.full(k, 0.9 / k), 0.1))
        runs = [
            rounding.balanced_labels(
                matrix, np.zeros(columns), bounds, rows_per_block=1000, **options
            )
            for options in (
                {"compiled": False},
                {"passes": NumbaPasses(), "compiled": True, "merge_rows": False},
            )
        ]
        np.testing.assert_array_equal(runs[0].labels, runs[1].labels)
        np.testing.assert_array_equal(runs[0].prices, runs[1].prices)
        assert runs[1].gap <= 1e-9 and runs[1].n_paths < 20 * k


def test_tied_samples_move_together():
    """All-equal rows, all in cluster 0 at the start: the N (K - 1) / K units of excess
    take K - 1 paths (one per cluster filled), not one each, merged, per sample or in
    the reference; rows from a few vectors and integer rows take few paths too."""
    from otlabel.kernels.numba import row_classes as rounding_classes

    n, k = 6_000, 12
    bounds = otlabel.count_bounds(n, np.full(k, 1 / k))
    variants = {
        "merged": {"compiled": True, "merge_rows": True},
        "per sample": {"compiled": True, "merge_rows": False},
    }
    variants["reference"] = {"compiled": False}
    for name, options in variants.items():
        out = rounding.balanced_labels(
            np.zeros((n, k), np.float32), np.zeros(k), bounds, rows_per_block=1000, **options
        )
        np.testing.assert_array_equal(np.bincount(out.labels, minlength=k), n // k)
        assert out.n_moves == n - n // k and out.n_paths == k - 1 and out.gap == 0.0, name
    reps, sizes, class_of = rounding_classes.row_classes(np.zeros((n, k), np.float32), np.zeros(0))
    assert reps.tolist() == [0] and sizes.tolist() == [n] and not class_of.any()
    rng = np.random.default_rng(4)
    for kind in ("few vectors", "small integers"):
        scores = tied_scores(rng, kind, n, k, np.float32)
        out = rounding.balanced_labels(scores, np.zeros(k), bounds, rows_per_block=1000)
        assert out.n_moves > 1_000 and out.n_paths < 10 * k, (kind, out.n_moves, out.n_paths)


@pytest.mark.parametrize("kind", ["all equal", "few vectors", "small integers"])
def test_tied_repair_is_not_quadratic(kind):
    """40 000 x 100 tied rows (a collapsed network's scores): once minutes (one path
    per sample, each reading the giver's whole list); now well under a second."""
    import time

    rng = np.random.default_rng(5)
    n, k = 40_000, 100
    scores = tied_scores(rng, kind, n, k, np.float32)
    bounds = otlabel.count_bounds(n, np.full(k, 1 / k))
    for merge in (None, False):
        began = time.perf_counter()
        out = rounding.balanced_labels(
            scores, np.zeros(k), bounds, rows_per_block=4096, merge_rows=merge
        )
        assert time.perf_counter() - began < 10.0
        np.testing.assert_array_equal(np.bincount(out.labels, minlength=k), n // k)
        assert out.gap <= 1e-9


def test_row_classes_are_exact_even_when_hashes_collide(monkeypatch):
    """Classes are equal rows bit for bit (the virtual column included); a hash
    collision only splits a class, and the repair stays exact."""
    from otlabel.kernels.numba import row_classes as rounding_classes

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 2, (300, 3)).astype(np.float32)  # 8 distinct rows
    virtual = np.where(np.arange(300) % 2 == 0, 0.5, 0.25)  # ... 16 with the column
    for column in (np.zeros(0), virtual):
        reps, sizes, class_of = rounding_classes.row_classes(scores, column)
        whole = np.column_stack([scores, column]) if column.size else scores
        distinct, first = np.unique(whole, axis=0, return_index=True)
        assert reps.size == len(distinct) and np.array_equal(np.sort(reps), np.sort(first))
        np.testing.assert_array_equal(whole[reps[class_of]], whole)  # each row its class's
        assert sizes.sum() == 300 and np.all(sizes == np.bincount(class_of))
    monkeypatch.setattr(  # every row hashes alike: only rows equal to row 0 stay merged
        rounding_classes, "_row_hashes", lambda bits, extra, hashes: hashes.fill(7)
    )
    reps, sizes, class_of = rounding_classes.row_classes(scores, np.zeros(0))
    same = np.all(scores == scores[0], axis=1)
    assert sizes[0] == same.sum() and reps.size == 300 - same.sum() + 1
    bounds = otlabel.count_bounds(300, np.full(3, 1 / 3))
    out = rounding.balanced_labels(
        scores, np.zeros(3), bounds, rows_per_block=64, compiled=True, merge_rows=True
    )
    optimum = bounded_lp_optimum(scores.astype(np.float64), *bounds)
    assert exact_objective(scores, out.labels) == pytest.approx(optimum) and out.gap <= 1e-9


def test_tied_scores_through_torch_passes_equal_the_compiled_repair():
    """Torch tensors run the Python reference (on the tensors' device): its bulk moves
    equal the compiled per-sample repair's, labels and prices."""
    torch = pytest.importorskip("torch")
    from otlabel.kernels.numba.rounding import NumbaPasses
    from otlabel.kernels.torch_ import TorchPasses

    for kind in TIED:
        _, scores, n, k = tied_problem(40, kind)
        bounds = otlabel.count_bounds(n, np.full(k, 1 / k))
        on_torch = rounding.balanced_labels(
            torch.as_tensor(scores), np.zeros(k), bounds, rows_per_block=50, passes=TorchPasses()
        )
        compiled = rounding.balanced_labels(
            scores, np.zeros(k), bounds, rows_per_block=50, passes=NumbaPasses(), compiled=True,
            merge_rows=False,
        )  # fmt: skip
        np.testing.assert_array_equal(on_torch.labels, compiled.labels)
        np.testing.assert_array_equal(on_torch.prices, compiled.prices)


def test_a_stream_of_tied_scores_is_repaired_exactly():
    """A stream that is not an array runs the Python reference: exact on ties too."""
    rng = np.random.default_rng(9)
    for kind in TIED:
        scores = tied_scores(rng, kind, 150, 5, np.float32)
        stream = otlabel.ChunkedScores(
            lambda i0, i1, scores=scores: scores[i0:i1].copy(), n_samples=150
        )
        res = otlabel.assign(stream, 0.05, backend="numpy")
        bounds = otlabel.count_bounds(150, np.full(5, 0.2))
        np.testing.assert_array_equal(np.bincount(res.labels, minlength=5), 30)
        optimum = bounded_lp_optimum(scores.astype(np.float64), *bounds)
        assert exact_objective(scores, res.labels) == pytest.approx(optimum) and res.gap <= 1e-9
