"""``epsilon=0``: the exact labels are the HiGHS optimum of the unregularised problem,
and the potentials returned are an optimal dual that certifies them."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import bounded_lp_optimum, slot_lp_optimum
from test_constraints import kl_slots, relaxed_objective

import otlabel
from otlabel.constraints import BoundedSizes


def dual_value(scores: np.ndarray, g: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """The LP dual of max <S, x> (rows sum to 1, lower <= column sums <= upper) at the
    cluster potential g: ``sum_i max_k (S_ik + g_k) - sum_k bound_k g_k`` with the
    lower bound where ``g_k > 0`` (it pushes the cluster up), else the upper one."""
    bound = np.where(g > 0, lower, upper)
    return float(np.max(scores + g, axis=1).sum() - np.sum(bound * g))


def objective(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(scores[np.arange(labels.size), labels].sum())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sizes", ["fixed", "bounded"])
def test_labels_are_the_lp_optimum_and_the_potential_certifies_them(seed, sizes):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(20, 60)), int(rng.integers(2, 6))
    scores = rng.normal(size=(n, k)) * rng.choice([0.01, 1.0, 100.0])
    if seed % 2:
        scores = np.round(scores)  # ties
    if sizes == "fixed":
        weights = rng.random(k) + 0.2
        weights /= weights.sum()
        res = otlabel.assign(scores, 0, cluster_weights=weights, return_plan=True)
        lower, upper = otlabel.count_bounds(n, weights)
    else:
        lo, hi = np.full(k, 0.4 / k), np.full(k, 1.7 / k)
        res = otlabel.assign(scores, 0, min_size=lo, max_size=hi, return_plan=True)
        lower, upper = BoundedSizes(lo, hi).count_bounds(n)
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert objective(scores, res.labels) == pytest.approx(optimum, rel=1e-12, abs=1e-9)
    # the dual at the returned potential equals the primal: an optimal dual
    assert dual_value(scores, res.potential, lower, upper) == pytest.approx(
        optimum, rel=1e-12, abs=1e-9 * max(1.0, np.abs(scores).max())
    )
    # f_i = -(S_{i,y_i} + g_{y_i}) = -max_k (S_ik + g_k): complementary slackness
    np.testing.assert_allclose(
        -res.row_potential, np.max(scores + res.potential, axis=1), rtol=1e-12, atol=1e-9
    )
    assert res.gap <= 1e-9 * max(1.0, np.abs(scores).max()) and res.epsilon == 0.0
    plan = np.zeros((n, k))
    plan[np.arange(n), res.labels] = 1 / n
    np.testing.assert_allclose(res.plan, plan, rtol=1e-15, atol=0)  # exp(log(1/n))


@pytest.mark.parametrize("seed", range(4))
def test_partial_mass_and_known_labels(seed):
    rng = np.random.default_rng(50 + seed)
    scores = rng.normal(size=(40, 4))
    res = otlabel.assign(scores, 0, mass=0.75)
    s0 = np.log(np.exp(scores).sum(axis=1))
    extended = np.column_stack([scores, s0])
    bounds = otlabel.count_bounds(40, np.append(np.full(4, 0.75 / 4), 0.25))
    labels = np.where(res.labels < 0, 4, res.labels)
    assert objective(extended, labels) == pytest.approx(
        bounded_lp_optimum(extended, *bounds), rel=1e-12
    )
    g = np.append(res.potential, res.unassigned_potential)
    assert dual_value(extended, g, *bounds) == pytest.approx(objective(extended, labels), 1e-12)
    known = np.full(40, -1)
    known[:5] = [0, 0, 1, 2, 3]
    res = otlabel.assign(scores, 0, known_labels=known)
    lower, upper = otlabel.count_bounds(40, np.full(4, 0.25))
    taken = np.bincount(known[:5], minlength=4)
    optimum = bounded_lp_optimum(scores[5:], np.maximum(lower - taken, 0), upper - taken)
    np.testing.assert_array_equal(res.labels[:5], known[:5])
    assert objective(scores[5:], res.labels[5:]) == pytest.approx(optimum, rel=1e-12)
    assert np.isnan(res.row_potential[:5]).all() and res.gap <= 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_relaxed_sizes(seed):
    rng = np.random.default_rng(70 + seed)
    scores = rng.normal(size=(30, 3))
    b, tau = np.array([0.5, 0.3, 0.2]), 0.6
    res = otlabel.assign(scores, 0, cluster_weights=b, size_penalty=tau)
    optimum = slot_lp_optimum(scores, kl_slots(30, b, tau))
    assert relaxed_objective(scores, res.labels, b, tau) == pytest.approx(optimum, rel=1e-9)
    assert res.gap <= 1e-9


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
def test_every_backend_and_a_stream_give_the_same_labels(backend):
    scores = otlabel.make_scores(3_000, 20, seed=3)
    reference = otlabel.assign(scores.astype(np.float64), 0, backend="numpy")
    given = scores
    if backend == "torch":
        torch = pytest.importorskip("torch")
        given = torch.from_numpy(scores)
    res = otlabel.assign(given, 0, backend=backend)
    assert objective(scores.astype(np.float64), np.asarray(res.labels)) == pytest.approx(
        objective(scores.astype(np.float64), reference.labels), rel=1e-6
    )
    assert res.gap <= 1e-6
    stream = otlabel.ChunkedScores([scores[i : i + 700] for i in range(0, 3_000, 700)])
    streamed = otlabel.assign(stream, 0)
    np.testing.assert_array_equal(streamed.labels, otlabel.assign(scores, 0).labels)


def test_epsilon_zero_needs_exact_labels():
    scores = otlabel.make_scores(100, 4, seed=0)
    for call in (
        lambda: otlabel.sinkhorn(scores, 0),
        lambda: otlabel.assign(scores, 0, rounding="argmax"),
        lambda: otlabel.assign(scores, 0, rounding=None),
    ):
        with pytest.raises(ValueError, match="epsilon: expected a finite number > 0 for a"):
            call()
    with pytest.raises(ValueError, match="epsilon: expected a finite number > 0"):
        otlabel.assign(scores, -1.0)
    res = otlabel.assign(scores, 0)
    np.testing.assert_array_equal(
        otlabel.predict(scores, res), np.argmax(scores + res.potential, 1)
    )
    with pytest.raises(ValueError, match="soft codes need epsilon > 0"):
        otlabel.predict(scores, res, soft=True)


# --------------------------------------------------------------------------
# a small epsilon starts from the exact labels' dual
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "sizes"), [(0, {}), (1, {"min_size": 0.19, "max_size": 0.21})])
def test_a_small_epsilon_from_the_exact_dual_reaches_the_plain_loops_plan(seed, sizes):
    """epsilon 0.001 on normal scores (warm epsilon 0.005): the start is the exact
    labels' dual; the plan is the cold loop's within tol (the potential is not: near
    epsilon 0 a cluster's potential may move within a gap of the scores without
    changing the plan), the labels identical, in fewer passes."""
    scores = np.random.default_rng(seed).normal(size=(1_000, 5))
    kwargs = {"tol": 1e-5, "max_iter": 100_000, "method": "log", "return_plan": True}
    fast = otlabel.assign(scores, 0.001, **sizes, **kwargs)
    plain = otlabel.assign(scores, 0.001, init=np.zeros(5), **sizes, **kwargs)
    assert fast.start == "exact" and fast.phases["start"] > 0 and plain.start == "given"
    assert fast.converged and plain.converged
    assert np.abs(fast.plan - plain.plan).sum() < 1e-4
    np.testing.assert_array_equal(fast.labels, plain.labels)
    assert fast.n_iter < plain.n_iter


def test_the_exact_start_is_for_balanced_labels_and_max_iter_bounds_each_solve():
    scores = np.random.default_rng(5).normal(size=(1_000, 5))
    with pytest.warns(otlabel.ConvergenceWarning):
        cold = otlabel.assign(scores, 0.001, rounding="argmax", max_iter=20)
    assert cold.start != "exact"
    with pytest.warns(otlabel.ConvergenceWarning):
        res = otlabel.assign(scores, 0.001, max_iter=60)
    assert res.start == "exact" and res.phases["start"] <= 60 and res.n_iter <= 60


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_exact_labels_where_the_warm_solve_leaves_the_float_range(backend):
    """One sample, bounds 0..1 and a start far off (a k-means batch labelled from the
    fit's dual): the warm solve's log domain overflows at once, and epsilon=0 still
    gives the exact labels, from the start, instead of a FloatingPointError."""
    scores = np.array([[-4.2174, -5.7018]])
    result = otlabel.assign(
        scores, 0, min_size=0.0, max_size=1.0, init=[-7.0159, 0.0], max_iter=1,
        method="log", backend=backend,
    )  # fmt: skip
    assert result.labels.tolist() == [0] and result.converged and result.gap == 0.0
    with pytest.raises(FloatingPointError, match="pass a larger epsilon"):  # not at eps > 0
        otlabel.assign(
            scores, 1e-3, min_size=0.0, max_size=1.0, init=[-7.0159, 0.0], max_iter=1,
            method="log", backend=backend,
        )  # fmt: skip
