"""The central dual of exact labels, and the tiny epsilons it lets converge."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

import otlabel
from otlabel import unregularised
from otlabel.central_dual import central_dual, label_gaps, max_mean_cycle, smallest_margin
from otlabel.problem import build_problem


def brute_max_mean_cycle(weights):
    """Every simple cycle's mean weight, the largest (-inf: none)."""
    n_nodes, best = weights.shape[0], -np.inf
    for length in range(2, n_nodes + 1):
        for cycle in itertools.permutations(range(n_nodes), length):
            if cycle[0] != min(cycle):
                continue
            total = sum(weights[a, b] for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True))
            best = max(best, total / length)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_karp_finds_the_brute_force_cycle_mean(seed):
    rng = np.random.default_rng(seed)
    n_nodes = int(rng.integers(2, 6))
    weights = rng.normal(size=(n_nodes, n_nodes))
    weights[rng.random((n_nodes, n_nodes)) < 0.3] = -np.inf  # missing edges
    np.fill_diagonal(weights, -np.inf)
    assert max_mean_cycle(weights) == pytest.approx(brute_max_mean_cycle(weights), abs=1e-12)


def lp_largest_margin(gaps):
    """max delta s.t. g_y - g_k >= D_yk + delta, by HiGHS (None: unbounded)."""
    n_clusters = gaps.shape[0]
    pairs = [
        (y, k) for y in range(n_clusters) for k in range(n_clusters) if np.isfinite(gaps[y, k])
    ]
    rows = np.zeros((len(pairs), n_clusters + 1))
    for row, (y, k) in enumerate(pairs):
        rows[row, y], rows[row, k], rows[row, -1] = -1.0, 1.0, 1.0
    bounds = [(None, None)] * n_clusters + [(None, None)]
    cost = np.zeros(n_clusters + 1)
    cost[-1] = -1.0
    out = linprog(cost, A_ub=rows, b_ub=[-gaps[y, k] for y, k in pairs], bounds=bounds)
    return None if out.status == 3 else -out.fun


@pytest.mark.parametrize("seed", range(10))
def test_the_central_dual_has_the_lps_largest_margin_and_certifies_the_labels(seed):
    rng = np.random.default_rng(seed)
    n_clusters = int(rng.integers(2, 6))
    scores = rng.normal(size=(n_clusters * int(rng.integers(3, 9)), n_clusters))
    exact = otlabel.assign(scores, 0.0)
    gaps = label_gaps(scores, exact.labels, n_clusters)
    dual, margin = central_dual(scores, exact.labels, exact.potential)
    assert margin == pytest.approx(lp_largest_margin(gaps), rel=1e-5)
    assert margin > 0 and smallest_margin(gaps, dual) == pytest.approx(margin)
    best = np.argmax(scores + dual, axis=1)  # every sample prefers its label strictly
    np.testing.assert_array_equal(best, exact.labels)
    second = np.sort(scores + dual, axis=1)[:, -2]
    assert np.all((scores + dual)[np.arange(len(scores)), exact.labels] - second >= margin * 0.999)


def test_tied_optima_keep_the_given_dual():
    """Two equal samples, one per cluster: they may swap at no cost, so no dual
    separates them (a cycle of mean 0), and the rounding's dual is kept."""
    scores = np.array([[1.0, 0.0], [1.0, 0.0]])
    dual = np.array([0.0, 1.0])  # both samples tied at it: optimal
    out, margin = central_dual(scores, np.array([0, 1]), dual)
    assert margin == 0.0 and out is dual


def test_forbidden_pairs_constrain_nothing():
    scores = np.array([[0.0, -np.inf, -1.0], [-np.inf, 0.0, -2.0], [-1.0, -3.0, 0.0]])
    labels = np.array([0, 1, 2])
    gaps = label_gaps(scores, labels, 3)
    assert gaps[0, 1] == -np.inf and gaps[1, 0] == -np.inf and gaps[0, 2] == -1.0
    dual, margin = central_dual(scores, labels, np.zeros(3))
    assert margin > 0 and np.all(np.argmax(scores + dual, axis=1) == labels)


@pytest.mark.parametrize("epsilon, scale", [(1e-9, 1.0), (1e-12, 1.0), (0.04, 1e30), (0.5, 1e12)])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_an_epsilon_far_below_the_scores_converges_to_the_exact_labels(epsilon, scale, backend):
    """Sinkhorn cannot move the rounding's dual off its ties at such an epsilon (5 000
    passes, error 3e-4, before); from the central dual the labels' plan is the
    entropic plan, and the first pass checks it (the reference kernels kept the
    sample weights apart from the row's frame for it: they drowned in 1e31)."""
    scores = np.random.default_rng(3).normal(size=(3000, 12)) * scale
    res = otlabel.assign(scores, epsilon, return_plan=True, backend=backend)
    exact = otlabel.assign(scores, 0.0)
    assert res.converged and res.error <= 1e-4 and res.start == "exact"
    np.testing.assert_array_equal(res.labels, exact.labels)
    labels_plan = np.zeros_like(scores)
    labels_plan[np.arange(len(scores)), exact.labels] = 1 / len(scores)
    # the exponent's float64 rounding over epsilon: 1e-4 relative at epsilon 1e-12
    np.testing.assert_allclose(res.plan, labels_plan, rtol=1e-3, atol=1e-12)


def test_sizes_the_labels_cannot_meet_leave_the_dual_to_sinkhorn():
    """1000 samples into 3 equal clusters: the entropic plan splits a sample, the
    labels' plan does not meet the sizes, and the rounding's dual is the start."""
    scores = np.random.default_rng(4).normal(size=(1000, 3))
    exact = otlabel.assign(scores, 0.0)
    problem = build_problem(scores, 1e-9)
    head, options = problem.heads[0], problem.options
    assert not unregularised.wants_central_dual(head, options, 0.005, exact.labels)
    fits = build_problem(scores[:999], 1e-9)
    exact = otlabel.assign(scores[:999], 0.0)
    assert unregularised.wants_central_dual(fits.heads[0], fits.options, 0.005, exact.labels)


@pytest.mark.parametrize("epsilon", [1e300, 1.0])
def test_scores_near_the_float64_limit(epsilon):
    """The spread of scores of 1e300 (their squares overflow) is measured in units of
    the largest: an epsilon of their size is not small, 1.0 is tiny."""
    scores = np.random.default_rng(0).standard_normal((3000, 10)) * 1e300
    res = otlabel.assign(scores, epsilon)
    assert res.converged and res.start == ("exact" if epsilon == 1.0 else "zero")
    np.testing.assert_array_equal(res.labels, otlabel.assign(scores, 0.0).labels)


def test_float32_beyond_its_range_is_a_clear_error():
    scores = np.random.default_rng(0).standard_normal((300, 10)).astype(np.float32)
    with pytest.raises(FloatingPointError, match="pass float64 scores, pass a larger epsilon"):
        otlabel.assign(scores, 1e-40)


def test_float64_beyond_its_range_does_not_ask_for_float64():
    """Partial mass at scores of 1e30 over epsilon 0.04: the way out named is a larger
    epsilon or epsilon=0, not the float64 the scores already are."""
    scores = np.random.default_rng(0).standard_normal((500, 6)) * 1e30
    with pytest.raises(FloatingPointError, match="range of float64; pass a larger epsilon"):
        otlabel.assign(scores, 0.04, mass=0.9)
    assert (otlabel.assign(scores, 0, mass=0.9).labels == -1).sum() == 50
