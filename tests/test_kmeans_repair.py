"""The exact labels' repair on many units of excess (k-means' assignment steps from a
stale potential): the candidate lists of least losses give the reference's paths, bit
for bit, and the LP optimum."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import bounded_lp_optimum

import otlabel
from otlabel import rounding
from otlabel.kernels.numba import repair_candidates
from otlabel.kernels.numba.rounding import NumbaPasses


def far_problem(seed):
    """Untied scores (or, one seed in five, ties), a potential far from the optimum's
    (many units to move), fixed or bounded sizes, and one seed in seven partial mass's
    virtual column."""
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(60, 500)), int(rng.integers(2, 10))
    dtype = np.float32 if seed % 2 else np.float64
    scores = rng.normal(size=(n, k)).astype(dtype)
    if seed % 5 == 0:
        scores = np.round(2 * scores).astype(dtype)
    potential = rng.normal(size=k) * (3.0 if seed % 3 else 0.1)
    weights = rng.random(k) + 0.3
    weights /= weights.sum()
    bounds = otlabel.count_bounds(n, weights)
    if seed % 4 == 1:
        sizes = otlabel.constraints.BoundedSizes(0.5 * weights, np.minimum(1.5 * weights, 1))
        bounds = sizes.count_bounds(n)
    matrix = scores
    if seed % 7 == 3:
        matrix = rounding.WithColumn(scores, rng.normal(size=n))
        bounds = otlabel.count_bounds(n, np.append(0.8 * weights, 0.2))
        potential = np.append(potential, 0.0)
    return matrix, potential, bounds


@pytest.mark.parametrize("depth", [1, 2, 3, None], ids=["1", "2", "3", "default"])
def test_candidate_lists_give_the_reference_paths(monkeypatch, depth):
    """Lists of 1 to 3 entries run dry and are refilled by scans at almost every move;
    the default ones seldom do.  Either way: the reference's labels, prices, units moved
    and certificate."""
    monkeypatch.setattr(repair_candidates, "LIST_MEMBERS", 0)  # lists however few the rows
    if depth is not None:
        monkeypatch.setattr(repair_candidates, "FEWEST_CANDIDATES", depth)
        monkeypatch.setattr(repair_candidates, "CANDIDATES", depth)
    moved = 0
    for seed in range(40):
        matrix, potential, bounds = far_problem(seed)
        reference = rounding.balanced_labels(
            matrix, potential, bounds, rows_per_block=97, compiled=False
        )
        compiled = rounding.balanced_labels(
            matrix, potential, bounds, rows_per_block=97, passes=NumbaPasses(), compiled=True,
            merge_rows=False,
        )  # fmt: skip
        np.testing.assert_array_equal(compiled.labels, reference.labels, err_msg=str(seed))
        np.testing.assert_array_equal(compiled.prices, reference.prices, err_msg=str(seed))
        assert compiled.n_moves == reference.n_moves and compiled.gap == reference.gap
        moved += reference.n_moves
    assert moved > 5_000  # many units of excess


@pytest.mark.parametrize("seed", range(8))
def test_a_large_excess_is_repaired_to_the_lp_optimum(seed):
    """Every sample in a few clusters at the start (a potential far off): thousands of
    units move, the lists run dry and refill; the labels are the HiGHS optimum."""
    rng = np.random.default_rng(200 + seed)
    n, k = 1_500, 6
    scores = rng.normal(size=(n, k)).astype(np.float32 if seed % 2 else np.float64)
    potential = np.zeros(k)
    potential[: 1 + seed % 2] = 10.0  # one or two clusters take almost every sample
    lower = rng.integers(50, 200, size=k)
    upper = lower + rng.integers(150, 400, size=k)
    upper[-1] += max(0, n - int(upper.sum()))
    out = rounding.balanced_labels(
        scores, potential, (lower, upper), rows_per_block=256, passes=NumbaPasses(),
        compiled=True,
    )  # fmt: skip
    counts = np.bincount(out.labels, minlength=k)
    assert np.all(counts >= lower) and np.all(counts <= upper)
    assert out.n_moves > 500
    wide = np.asarray(scores, np.float64)
    achieved = float(wide[np.arange(n), out.labels].sum())
    assert achieved == pytest.approx(bounded_lp_optimum(wide, lower, upper), rel=1e-9)
    assert out.gap <= 1e-9
    # the dual certifies the labels: each sample at a best cluster at the dual
    shifted = wide + out.potential
    assert np.all(shifted.max(axis=1) - shifted[np.arange(n), out.labels] <= 1e-9)


def test_the_depth_follows_the_excess_within_its_bounds():
    rows = 10**8

    def depth(n_columns, excess):
        return repair_candidates.candidate_depth(n_columns, excess, rows)

    assert depth(50, 0) == repair_candidates.FEWEST_CANDIDATES
    assert depth(50, 50 * 20) == 20
    assert depth(50, 10**7) == repair_candidates.CANDIDATES
    assert depth(1_000, 10**7) == repair_candidates.CANDIDATE_SLOTS // 1_000**2
    assert depth(5_000, 10**7) == 0  # no lists: the scans alone
    few = repair_candidates.LIST_MEMBERS * 50  # rows per column: at the threshold ...
    assert repair_candidates.candidate_depth(50, 10**7, few) == repair_candidates.CANDIDATES
    assert repair_candidates.candidate_depth(50, 10**7, few - 1) == 0  # ... and below
