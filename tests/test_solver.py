"""The Sinkhorn solve: marginals, agreement with POT, domains, stability."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import ot
import pytest
from _helpers import plan_marginal_errors

import otlabel
from otlabel import solver
from otlabel.constraints import FixedSizes
from otlabel.kernels import reference


def weighted_problem(rng, n=300, k=7, spread=3.0):
    scores = rng.normal(size=(n, k)) * spread
    a = rng.random(n) + 0.5
    b = rng.random(k) + 0.5
    return scores, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("method", ["scaling", "log"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plan_marginals_within_tol_and_mass_one(rng, method, dtype):
    scores, a, b = weighted_problem(rng)
    tol = 1e-6
    res = otlabel.sinkhorn(
        scores.astype(dtype),
        0.5,
        sample_weights=a,
        cluster_weights=b,
        tol=tol,
        method=method,
        return_plan=True,
    )
    row_error, col_error = plan_marginal_errors(res.plan, a, b)
    assert res.converged and res.method == method
    assert res.plan.dtype == dtype
    assert row_error + col_error <= tol * (1.01 if dtype == np.float64 else 2.0)
    assert res.error <= tol
    assert abs(float(np.sum(res.plan, dtype=np.float64)) - 1.0) <= tol
    assert res.n_iter > 1


def test_error_is_the_returned_plans_own_l1_violation(rng):
    """The reported error is that of the returned iterate, also when not converged."""
    scores, a, b = weighted_problem(rng, spread=8.0)
    with pytest.warns(otlabel.ConvergenceWarning):
        res = otlabel.sinkhorn(
            scores, 0.2, sample_weights=a, cluster_weights=b, max_iter=5, return_plan=True
        )
    row_error, col_error = plan_marginal_errors(res.plan, a, b)
    assert not res.converged and res.n_iter == 5
    assert row_error < 1e-12  # rows are exact after the row update
    assert res.error == pytest.approx(row_error + col_error, rel=1e-9)
    assert res.error > res.n_iter * 1e-12


@pytest.mark.parametrize("method", ["scaling", "log"])
def test_plan_matches_pot_sinkhorn_log(rng, method):
    scores, a, b = weighted_problem(rng, n=120, k=6, spread=2.0)
    epsilon = 0.3
    res = otlabel.sinkhorn(
        scores,
        epsilon,
        sample_weights=a,
        cluster_weights=b,
        tol=1e-13,
        max_iter=100000,
        method=method,
        return_plan=True,
    )
    reference = ot.sinkhorn(
        a, b, -scores, epsilon, method="sinkhorn_log", numItermax=100000, stopThr=1e-14
    )
    assert res.converged
    assert np.max(np.abs(res.plan - reference)) <= 1e-6 * np.max(reference)


def test_plan_is_exp_of_potentials(rng):
    scores, a, b = weighted_problem(rng, n=50, k=4)
    res = otlabel.sinkhorn(scores, 0.4, sample_weights=a, cluster_weights=b, return_plan=True)
    rebuilt = np.exp((scores + res.row_potential[:, None] + res.potential) / 0.4)
    np.testing.assert_allclose(res.plan, rebuilt, rtol=1e-12)
    assert abs(float(b @ res.potential)) < 1e-12  # normalised potential


def test_log_and_scaling_domains_agree_where_both_are_safe(rng):
    scores, a, b = weighted_problem(rng, n=400, k=9)
    kwargs = {"sample_weights": a, "cluster_weights": b, "tol": 1e-11, "return_plan": True}
    log = otlabel.sinkhorn(scores, 0.25, method="log", **kwargs)
    scaling = otlabel.sinkhorn(scores, 0.25, method="scaling", **kwargs)
    assert log.n_iter == scaling.n_iter
    np.testing.assert_allclose(log.plan, scaling.plan, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(log.potential, scaling.potential, atol=1e-9)


def test_logits_and_log_probabilities_give_the_same_answer(rng):
    logits = rng.normal(size=(200, 8)) * 3
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    from_logits = otlabel.assign(logits, 0.1, tol=1e-10)
    from_log_probs = otlabel.assign(log_probs, 0.1, tol=1e-10)
    np.testing.assert_allclose(from_logits.potential, from_log_probs.potential, atol=1e-8)
    np.testing.assert_array_equal(from_logits.labels, from_log_probs.labels)


def test_auto_stays_finite_at_tiny_epsilon_in_float32(rng):
    """epsilon = 1e-3 with scores spread over 100 units: exp underflows everywhere."""
    scores = (rng.random((2000, 30)) * 100).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", otlabel.ConvergenceWarning)
        res = otlabel.assign(scores, 1e-3, max_iter=300, return_plan=True)
        cold = otlabel.assign(scores, 1e-3, max_iter=300, init=np.zeros(30))
    # far below the spread: from the exact labels' dual, its stored kernel stabilised by
    # the potentials, and closer than the cold solve after as many passes
    assert res.start == "exact" and res.error < cold.error
    assert np.all(np.isfinite(res.potential)) and np.all(np.isfinite(res.row_potential))
    assert np.all(np.isfinite(res.plan)) and np.isfinite(res.error)
    assert np.all(np.isfinite(res.cost))
    lower, upper = otlabel.count_bounds(2000, np.full(30, 1 / 30))
    assert np.all((res.counts >= lower) & (res.counts <= upper))


def test_starved_column_keeps_a_finite_potential():
    """A cluster nobody favours by 1000 nats: exp underflows to 0 in its whole column."""
    scores = np.zeros((64, 3))
    scores[:, 2] = -1000.0
    res = otlabel.sinkhorn(scores, 1.0, tol=1e-10, method="log", return_plan=True)
    assert res.converged
    np.testing.assert_allclose(res.plan.sum(axis=0), 1 / 3, rtol=1e-9)
    assert res.potential[2] - res.potential[0] == pytest.approx(1000.0)  # its bonus, finite


def starved_scores(rng):
    """Cluster 0 scores 100 below every sample's best: exp(-100/0.05) is 0 in float64."""
    scores = rng.random((300, 12)) * 5
    scores[:, 0] -= 100
    return scores


def test_auto_falls_back_to_log_domain_when_scaling_overflows(rng, monkeypatch):
    scores = starved_scores(rng)
    monkeypatch.setitem(reference.SCALING_SAFE_SPREAD, "float64", np.inf)  # let auto try
    res = otlabel.sinkhorn(scores, 0.05, tol=1e-8)
    assert res.method == "log" and res.converged
    log_only = otlabel.sinkhorn(scores, 0.05, tol=1e-8, method="log")
    assert res.n_iter >= log_only.n_iter  # the failed scaling passes are counted
    np.testing.assert_allclose(res.potential, log_only.potential, atol=1e-6)


def test_forced_scaling_that_overflows_raises(rng):
    with pytest.raises(FloatingPointError, match="method='log'"):
        otlabel.sinkhorn(starved_scores(rng), 0.05, method="scaling")


@pytest.mark.parametrize("method", ["scaling", "log"])
def test_block_size_does_not_change_the_answer(rng, method, monkeypatch):
    scores, a, b = weighted_problem(rng, n=333, k=5)
    kwargs = {"sample_weights": a, "cluster_weights": b, "method": method, "backend": "numpy"}
    whole = otlabel.sinkhorn(scores, 0.3, **kwargs)
    monkeypatch.setattr(reference.ReferenceBackend, "block_bytes", 5 * 8 * 7)  # 7 rows a block
    blocked = otlabel.sinkhorn(scores, 0.3, **kwargs)
    assert blocked.n_iter == whole.n_iter
    np.testing.assert_allclose(blocked.potential, whole.potential, atol=1e-12)


def test_repeated_runs_are_identical(rng):
    scores = otlabel.make_scores(3000, 20, seed=4)
    first = otlabel.assign(scores, 0.05)
    second = otlabel.assign(scores, 0.05)
    np.testing.assert_array_equal(first.potential, second.potential)
    np.testing.assert_array_equal(first.labels, second.labels)


def test_loop_uses_only_the_array_api_standard(rng):
    """The reference kernels run on array_api_strict: nothing outside the standard."""
    xp = pytest.importorskip("array_api_strict")
    scores_np, a, b = weighted_problem(rng, n=60, k=4)
    scores = xp.asarray(scores_np)
    log_a = xp.asarray(np.log(a))
    constraint = FixedSizes(xp.asarray(b))
    row_max, row_min = reference.row_extremes(scores, xp.float64)
    assert reference.scaling_is_safe(row_max, row_min, 0.5, scores.dtype)
    kernels = [
        reference.LogKernel(scores, log_a, 0.5, xp.float64),
        reference.ScalingKernel(scores, log_a, 0.5, row_max),
    ]
    for kernel in kernels:
        out = solver.solve(
            kernel, constraint, 0.5, xp.zeros(4, dtype=xp.float64), tol=1e-10, max_iter=10000
        )
        expected = otlabel.sinkhorn(
            scores_np, 0.5, sample_weights=a, cluster_weights=b, tol=1e-10, method=kernel.method
        )
        assert out.error <= 1e-10
        np.testing.assert_allclose(
            np.asarray(constraint.normalise(out.potential)), expected.potential, atol=1e-9
        )


def test_iterate_yields_each_pass_and_solve_stops_at_tol(rng):
    scores, a, b = weighted_problem(rng, n=80, k=5)
    kernel = reference.LogKernel(scores, np.log(a), 0.3, np.float64)
    constraint = FixedSizes(b)
    passes = solver.iterate(kernel, constraint, 0.3, np.zeros(5))
    errors = [next(passes).error for _ in range(200)]
    assert errors[-1] < errors[0] and errors[-1] < 1e-3
    assert all(later <= earlier * 1.5 for earlier, later in itertools.pairwise(errors))
    stop = next(i for i, error in enumerate(errors, start=1) if error <= 1e-3)
    out = solver.solve(kernel, constraint, 0.3, np.zeros(5), tol=1e-3, max_iter=1000)
    assert out.n_iter == stop and out.error == errors[stop - 1]


def test_overrelaxation_keeps_the_fixed_point(rng):
    scores, a, b = weighted_problem(rng, n=300, k=6, spread=4.0)
    kwargs = {"sample_weights": a, "cluster_weights": b, "tol": 1e-11, "max_iter": 20000}
    plain = otlabel.sinkhorn(scores, 0.1, overrelaxation=1.0, **kwargs)
    for weight in (1.5, "auto"):
        relaxed = otlabel.sinkhorn(scores, 0.1, overrelaxation=weight, **kwargs)
        assert relaxed.converged and relaxed.n_iter < plain.n_iter
        np.testing.assert_allclose(relaxed.potential, plain.potential, atol=1e-8)


def test_overrelaxed_error_counts_both_sides_of_the_returned_plan(rng):
    """With omega != 1 neither marginal is exact; the error is still the plan's own."""
    scores, a, b = weighted_problem(rng, n=200, k=5, spread=6.0)
    with pytest.warns(otlabel.ConvergenceWarning):
        res = otlabel.sinkhorn(
            scores,
            0.1,
            sample_weights=a,
            cluster_weights=b,
            overrelaxation=1.6,
            max_iter=12,
            return_plan=True,
        )
    row_error, col_error = plan_marginal_errors(res.plan, a, b)
    assert row_error > 1e-6  # rows are not exact when relaxed
    assert res.error == pytest.approx(row_error + col_error, rel=1e-9)


def test_auto_overrelaxation_cuts_passes_on_a_sela_like_problem():
    scores = otlabel.make_scores(4000, 60, kind="sela", seed=3)
    plain = otlabel.sinkhorn(scores, 0.05, overrelaxation=1.0)
    auto = otlabel.sinkhorn(scores, 0.05)
    assert plain.converged and auto.converged
    assert auto.n_iter * 3 < plain.n_iter


def test_diverging_weight_falls_back_to_plain_sinkhorn():
    scores = otlabel.make_scores(3000, 40, kind="head", seed=2)
    res = otlabel.sinkhorn(scores, 0.05, overrelaxation=1.97, max_iter=5000)
    assert res.converged


def test_the_guard_waits_out_a_transient_and_halves_a_weight_that_makes_no_progress():
    """A rise then a steady fall (the transient after switching a weight on) keeps the
    weight however long the fall takes; an error that stops falling halves its excess
    over 1, then again, down to plain Sinkhorn-Knopp."""
    schedule = solver.OverRelaxation("auto", weight=1.8)
    transient = [1e-3 * 1.3**t for t in range(8)] + [1e-3 * 8 * 0.97**t for t in range(150)]
    for error in transient:
        schedule.observe(error)
    assert schedule.weight == 1.8
    stuck = solver.OverRelaxation("auto", weight=1.8)
    weights = []
    for t in range(200):
        stuck.observe(1e-3 * (1.0 + 0.1 * np.sin(t)))  # oscillates, no net progress
        weights.append(stuck.weight)
    assert weights[30] == 1.8 and 1.4 in weights and weights[-1] == 1.0
    assert all(later <= earlier for earlier, later in itertools.pairwise(weights))


def test_auto_weight_from_the_warm_up_rate_and_the_cap():
    """The successive-over-relaxation optimum ``2 / (1 + sqrt(1 - r))`` of the warm-up's
    rate r per pass, capped; a given weight skips the warm-up; a fixed one is kept."""
    for rate, expected in [(0.64, 2 / 1.6), (0.9999, solver.OverRelaxation.MAX_WEIGHT)]:
        schedule = solver.OverRelaxation("auto")
        for t in range(solver.OverRelaxation.WARMUP):
            assert schedule.weight == 1.0
            schedule.observe(rate**t)
        assert schedule.weight == pytest.approx(expected)
    assert solver.OverRelaxation("auto", weight=1.5).weight == 1.5
    assert solver.OverRelaxation(1.3, weight=1.5).weight == 1.3


def test_the_finish_goes_on_at_the_weight_of_the_float32_passes(monkeypatch):
    """float32 passes, then the float64 finish: the finish takes the weight the passes
    before it settled on instead of warming up again (which cost 2 000 passes at a
    small epsilon), and the answer is the plain loop's."""
    scores = np.random.default_rng(0).normal(size=(4000, 30)).astype(np.float32)
    made = []
    init = solver.OverRelaxation.__init__

    def spy(self, omega, weight=None):
        init(self, omega, weight)
        made.append(self)

    monkeypatch.setattr(solver.OverRelaxation, "__init__", spy)
    res = otlabel.sinkhorn(scores, 0.005, tol=1e-6, max_iter=20_000)
    assert res.converged and res.phases["log"] > 0 and res.phases["finish"] > 1
    first, finish = made[0], made[-1]
    assert first.weight > 1.0 and finish.warmed_up
    assert len(finish.errors) == res.phases["finish"] - 1  # the last pass stops it
    monkeypatch.undo()
    plain = otlabel.sinkhorn(scores, 0.005, tol=1e-9, max_iter=50_000)
    np.testing.assert_allclose(res.potential, plain.potential, atol=1e-4)


@pytest.mark.parametrize("bad, error", [(2.0, ValueError), (0.0, ValueError), ("fast", TypeError)])
def test_overrelaxation_is_validated(bad, error):
    with pytest.raises(error, match="overrelaxation: expected 'auto' or a number in"):
        otlabel.sinkhorn(np.zeros((5, 2)), overrelaxation=bad)
