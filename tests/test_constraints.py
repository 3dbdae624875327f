"""Cluster sizes beyond fixed: relaxed (KL), partial mass, known labels
(docs/theory.md, sections "Column constraints", "Partial mass" and "Known labels").

Each is checked against its optimality conditions in float64, an independent
solver (POT for the relaxed entropic problem, HiGHS for the exact labels), or
the equivalent problem it reduces to.
"""

from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
from _helpers import bounded_lp_optimum, slot_lp_optimum

import otlabel
from otlabel.constraints import BoundedSizes


def problem(seed: int, n: int = 300, k: int = 5):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k)) * 2 + np.linspace(1.5, -1.0, k)  # imbalanced
    b = rng.random(k) + 0.5
    return scores, b / b.sum()


def kl_slots(n_total: int, b: np.ndarray, tau: float, known=None, slots=None) -> np.ndarray:
    """c_kj = h_k(j + known_k) - h_k(j - 1 + known_k), h_k(n) = -tau n log(n / (N b_k))."""
    known = np.zeros(b.size, dtype=int) if known is None else known
    j = np.arange(1, (slots or n_total) + 1)[None, :] + known[:, None]
    expected = (n_total * b)[:, None]

    def h(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, -tau * x * np.log(x / expected), 0.0)

    return h(j) - h(j - 1)


def relaxed_objective(scores, labels, b, tau):
    n = labels.size
    counts = np.bincount(labels, minlength=b.size)
    with np.errstate(divide="ignore", invalid="ignore"):
        penalty = np.where(counts > 0, counts * np.log(counts / (n * b)), 0.0).sum()
    return scores[np.arange(n), labels].sum() - tau * penalty


# --------------------------------------------------------------------------
# relaxed sizes
# --------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.05, 0.5, 5.0])
def test_relaxed_plan_meets_its_optimality_conditions(tau):
    scores, b = problem(1)
    res = otlabel.sinkhorn(
        scores, 0.2, cluster_weights=b, size_penalty=tau, tol=1e-12, max_iter=100_000,
        return_plan=True, backend="numpy",
    )  # fmt: skip
    assert res.converged and res.unassigned_potential is None
    plan = res.plan
    mass = plan.sum(axis=0)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 300, rtol=1e-8)
    np.testing.assert_allclose(res.potential, -tau * np.log(mass / b), atol=1e-8)


@pytest.mark.parametrize("seed", range(3))
def test_relaxed_plan_agrees_with_pot(seed):
    scores, b = problem(seed, n=60, k=4)
    a = np.full(60, 1 / 60)
    epsilon, tau = 0.5, [0.3, 1.0, 3.0][seed]
    res = otlabel.sinkhorn(
        scores, epsilon, cluster_weights=b, size_penalty=tau, tol=1e-13, max_iter=100_000,
        return_plan=True, backend="numpy",
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POT warns that it rewrites its c with reg_type
        reference = ot.unbalanced.sinkhorn_unbalanced(
            a, b, -scores, epsilon, reg_m=(float("inf"), tau), reg_type="entropy",
            stopThr=1e-12, numItermax=100_000,
        )  # fmt: skip
    assert np.max(np.abs(res.plan - reference)) <= 1e-6 * np.max(reference)


def test_large_tau_gives_fixed_sizes():
    scores, b = problem(2)
    fixed = otlabel.sinkhorn(scores, 0.2, cluster_weights=b, tol=1e-9, backend="numpy")
    relaxed = otlabel.sinkhorn(
        scores, 0.2, cluster_weights=b, size_penalty=1e9, tol=1e-9, backend="numpy"
    )
    shift = relaxed.potential - fixed.potential
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-6)


def test_small_tau_gives_plain_argmax():
    scores, b = problem(3)
    res = otlabel.assign(scores, 0.05, cluster_weights=b, size_penalty=1e-9)
    np.testing.assert_array_equal(res.labels, np.argmax(scores, axis=1))


@pytest.mark.parametrize("unit", [1.0, 1e-10, 1e10])
@pytest.mark.parametrize("seed", range(25))
def test_relaxed_labels_are_the_exact_optimum(seed, unit):
    """In any unit: scores, epsilon and tau scaled together (the exchanges' rounding
    level is relative to the scale of the scores, not an absolute 1e-12)."""
    rng = np.random.default_rng(100 + seed)
    n, k = int(rng.integers(4, 40)), int(rng.integers(2, 6))
    scores = rng.normal(size=(n, k)) * rng.choice([0.3, 2.0])
    if seed % 4 == 0:
        scores = np.round(scores)  # ties
    b = rng.random(k) + 0.3
    b /= b.sum()
    tau = float(rng.choice([0.1, 0.5, 2.0, 10.0]))
    res = otlabel.assign(scores * unit, 0.2 * unit, cluster_weights=b, size_penalty=tau * unit)
    optimum = slot_lp_optimum(scores, kl_slots(n, b, tau))
    achieved = relaxed_objective(scores, res.labels, b, tau)
    assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9 * unit


def test_relaxed_labels_brute_force():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=(7, 3))
    b, tau = np.array([0.5, 0.3, 0.2]), 0.8
    res = otlabel.assign(scores, 0.1, cluster_weights=b, size_penalty=tau)
    grid = np.stack(np.meshgrid(*[np.arange(3)] * 7, indexing="ij"), -1).reshape(-1, 7)
    best = max(relaxed_objective(scores, labels, b, tau) for labels in grid)
    assert relaxed_objective(scores, res.labels, b, tau) == pytest.approx(best, rel=1e-12)


# --------------------------------------------------------------------------
# partial mass
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", ["fixed", "bounded", "relaxed"])
def test_virtual_column_takes_one_minus_rho(sizes):
    scores, b = problem(4)
    kind = {
        "fixed": {"cluster_weights": b},
        "bounded": {"min_size": 0.05, "max_size": 0.4},
        "relaxed": {"cluster_weights": b, "size_penalty": 0.5},
    }[sizes]
    res = otlabel.sinkhorn(
        scores, 0.2, mass=0.7, tol=1e-9, return_plan=True, backend="numpy", **kind
    )
    assert res.converged and res.unassigned_potential is not None
    s0 = np.log(np.exp(scores).sum(axis=1))
    unassigned = np.exp((s0 + res.row_potential + res.unassigned_potential) / 0.2)
    assert abs(1.0 - res.plan.sum() - 0.3) <= 1e-9
    np.testing.assert_allclose(res.plan.sum(axis=1) + unassigned, 1 / 300, rtol=1e-8)


def test_logits_and_log_softmax_give_the_same_partial_answer():
    scores, _ = problem(5)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    logits = otlabel.assign(scores, 0.1, mass=0.8, tol=1e-10)
    probs = otlabel.assign(log_probs, 0.1, mass=0.8, tol=1e-10)
    np.testing.assert_array_equal(logits.labels, probs.labels)
    np.testing.assert_allclose(logits.potential, probs.potential, atol=1e-7)
    assert np.sum(logits.labels == -1) in (60, 61) and logits.unassigned_potential < 0


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("sizes", ["fixed", "bounded", "relaxed"])
def test_partial_labels_are_the_exact_optimum_with_the_extra_column(seed, sizes):
    rng = np.random.default_rng(200 + seed)
    n, k = int(rng.integers(6, 40)), int(rng.integers(2, 5))
    scores = rng.normal(size=(n, k)) * 2
    rho = float(rng.uniform(0.5, 0.95))
    s0 = np.log(np.exp(scores).sum(axis=1))
    extended = np.column_stack([scores, s0])
    low, high = np.floor(n * (1 - rho) - 1e-9), np.ceil(n * (1 - rho) + 1e-9)
    if sizes == "relaxed":
        b = np.full(k, 1 / k)
        tau = 0.7
        res = otlabel.assign(scores, 0.2, mass=rho, size_penalty=tau)
        slots = np.vstack(
            [kl_slots(n, rho * b, tau), np.where(np.arange(1, n + 1) <= low, np.inf, 0.0)]
        )
        slots[-1, np.arange(1, n + 1) > high] = -np.inf
        optimum = slot_lp_optimum(extended, slots)
        labels = np.where(res.labels < 0, k, res.labels)
        counts = np.bincount(labels, minlength=k + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            penalty = np.where(
                counts[:k] > 0, counts[:k] * np.log(counts[:k] / (n * rho * b)), 0.0
            ).sum()
        achieved = extended[np.arange(n), labels].sum() - tau * penalty
    else:
        if sizes == "fixed":
            res = otlabel.assign(scores, 0.2, mass=rho)
            bounds = otlabel.count_bounds(n, np.append(np.full(k, rho / k), 1 - rho))
        else:
            lower, upper = np.full(k, 0.2 * rho / k), np.full(k, 2.0 * rho / k)
            res = otlabel.assign(scores, 0.2, mass=rho, min_size=lower, max_size=upper)
            bounds = BoundedSizes(np.append(lower, 1 - rho), np.append(upper, 1 - rho))
            bounds = bounds.count_bounds(n)
        optimum = bounded_lp_optimum(extended, *bounds)
        labels = np.where(res.labels < 0, k, res.labels)
        achieved = extended[np.arange(n), labels].sum()
    assert low <= np.sum(res.labels == -1) <= high
    assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9


def test_given_unassigned_scores_are_used():
    scores, _ = problem(6)
    s0 = np.full(300, -50.0)  # nobody wants the virtual column: its mass is forced
    res = otlabel.assign(scores, 0.1, mass=0.9, unassigned_scores=s0)
    assert np.sum(res.labels == -1) == 30 and res.unassigned_potential > 40


# --------------------------------------------------------------------------
# known labels
# --------------------------------------------------------------------------


def known_sample(rng, n, k, share):
    labels = np.full(n, -1)
    chosen = rng.choice(n, size=int(share * n), replace=False)
    labels[chosen] = rng.integers(0, k, size=chosen.size)
    return labels


@pytest.mark.parametrize("sizes", ["fixed", "bounded"])
def test_known_labels_equal_the_reduced_problem(sizes):
    """Fixed and bounded: the known rows removed and the targets (and the integer
    bounds) reduced by the known counts give the same answer."""
    rng = np.random.default_rng(8)
    scores, b = problem(8, n=400, k=4)
    known = known_sample(rng, 400, 4, 0.15)
    free = known < 0
    counts = np.bincount(known[~free], minlength=4)
    if sizes == "fixed":
        res = otlabel.assign(scores, 0.1, cluster_weights=b, known_labels=known, tol=1e-10)
        reduced_b = b - counts / 400
        alone = otlabel.assign(scores[free], 0.1, cluster_weights=reduced_b, tol=1e-10)
        lower, upper = otlabel.count_bounds(400, b)
    else:
        lo, hi = np.full(4, 0.15), np.full(4, 0.4)
        res = otlabel.assign(scores, 0.1, min_size=lo, max_size=hi, known_labels=known, tol=1e-10)
        scale = free.sum() / 400
        alone = otlabel.sinkhorn(
            scores[free], 0.1, min_size=np.maximum(lo - counts / 400, 0) / scale,
            max_size=(hi - counts / 400) / scale, tol=1e-10,
        )  # fmt: skip
        lower, upper = BoundedSizes(lo, hi).count_bounds(400)
    np.testing.assert_array_equal(res.labels[~free], known[~free])  # kept
    assert np.isnan(res.row_potential[~free]).all()
    if sizes == "fixed":
        np.testing.assert_array_equal(res.labels[free], alone.labels)
    shift = res.potential - alone.potential
    np.testing.assert_allclose(shift, shift.mean() if sizes == "fixed" else 0.0, atol=1e-7)
    assert np.all((res.counts >= lower) & (res.counts <= upper)) and res.counts.sum() == 400
    # exact: the free rows' labels are the LP optimum under the reduced integer bounds
    optimum = bounded_lp_optimum(scores[free], np.maximum(lower - counts, 0), upper - counts)
    assert scores[free][np.arange(free.sum()), res.labels[free]].sum() == pytest.approx(
        optimum, rel=1e-10
    )


def test_known_labels_with_relaxed_sizes_meet_the_optimality_conditions():
    rng = np.random.default_rng(9)
    scores, b = problem(9, n=500, k=4)
    known = known_sample(rng, 500, 4, 0.1)
    tau = 0.6
    res = otlabel.sinkhorn(
        scores, 0.2, cluster_weights=b, size_penalty=tau, known_labels=known, tol=1e-12,
        max_iter=100_000, return_plan=True, backend="numpy",
    )  # fmt: skip
    mass = res.plan.sum(axis=0)  # known rows carry their mass to their label
    np.testing.assert_allclose(res.plan.sum(axis=1), 1 / 500, rtol=1e-8)
    np.testing.assert_allclose(res.potential, -tau * np.log(mass / b), atol=1e-8)
    labels = otlabel.assign(scores, 0.2, cluster_weights=b, size_penalty=tau, known_labels=known)
    free = known < 0
    counts = np.bincount(known[~free], minlength=4)
    slots = kl_slots(500, b, tau, known=counts, slots=int(free.sum()))
    optimum = slot_lp_optimum(scores[free], slots)
    # the whole objective less what the known samples alone give (their scores, h(known))
    known_part = scores[~free][np.arange((~free).sum()), known[~free]].sum()
    achieved = relaxed_objective(scores, labels.labels, b, tau) - known_part
    assert achieved == pytest.approx(optimum + _known_penalty_offset(counts, b, tau, 500), rel=1e-9)
    np.testing.assert_array_equal(labels.labels[~free], known[~free])


def _known_penalty_offset(known_counts, b, tau, n):
    """h(known) summed: the part of sum_k h_k(n_k) that the known samples alone give."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(
            np.where(
                known_counts > 0, -tau * known_counts * np.log(known_counts / (n * b)), 0
            ).sum()
        )


def test_known_labels_with_partial_mass_are_never_unassigned():
    rng = np.random.default_rng(10)
    scores, _ = problem(10)
    known = known_sample(rng, 300, 5, 0.2)
    res = otlabel.assign(scores, 0.1, mass=0.8, known_labels=known)
    np.testing.assert_array_equal(res.labels[known >= 0], known[known >= 0])
    assert np.sum(res.labels == -1) == 60


# --------------------------------------------------------------------------
# every constraint: heads, streams, and clear errors
# --------------------------------------------------------------------------

CONSTRAINTS = {
    "relaxed": {"size_penalty": 0.4},
    "partial": {"mass": 0.85},
    "partial-relaxed": {"mass": 0.85, "size_penalty": 0.4},
    "known": {"known_labels": known_sample(np.random.default_rng(11), 600, 6, 0.05)},
}


@pytest.mark.parametrize("name", list(CONSTRAINTS))
def test_stacked_heads_and_streams_give_the_single_answer(name, tmp_path):
    scores = otlabel.make_scores(600, 6, kind="head", seed=12).astype(np.float64)
    kwargs = {"tol": 1e-9, **CONSTRAINTS[name]}
    alone = otlabel.assign(scores, 0.1, **kwargs)
    stack_kwargs = dict(kwargs)
    if "known_labels" in kwargs:
        stack_kwargs["known_labels"] = np.stack([kwargs["known_labels"]] * 2)
    stacked = otlabel.assign(np.stack([scores, scores]), 0.1, **stack_kwargs)
    for h in range(2):
        np.testing.assert_array_equal(stacked.labels[h], alone.labels)
        np.testing.assert_array_equal(stacked.potential[h], alone.potential)
    np.save(tmp_path / "scores.npy", scores)
    streamed = otlabel.assign(otlabel.ChunkedScores(tmp_path / "scores.npy"), 0.1, **kwargs)
    np.testing.assert_array_equal(streamed.labels, alone.labels)
    np.testing.assert_allclose(streamed.potential, alone.potential, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"size_penalty": 0.0}, ValueError, "size_penalty: tau must be > 0"),
        ({"size_penalty": -1.0}, ValueError, "size_penalty: tau must be > 0"),
        ({"size_penalty": "big"}, TypeError, "size_penalty: expected a number"),
        ({"size_penalty": 1.0, "max_size": 0.5}, ValueError, "size_penalty: relaxed sizes"),
        ({"mass": 0.0}, ValueError, r"mass: expected the fraction .* in \(0, 1\]"),
        ({"mass": 1.5}, ValueError, "mass: expected the fraction"),
        ({"mass": "all"}, TypeError, "mass: expected a number"),
        ({"known_labels": np.full(19, -1)}, ValueError, r"known_labels: expected shape \(20,\)"),
        ({"known_labels": np.r_[np.full(19, -1), 4]}, ValueError, "a cluster in 0..3, got 4"),
        ({"known_labels": np.r_[np.full(19, -1), -2]}, ValueError, "known_labels: a label is -1"),
        ({"known_labels": np.full(20, 0.5)}, TypeError, "known_labels: expected integer"),
        ({"known_labels": np.zeros(20, dtype=int)}, ValueError, "every sample's label is given"),
        (
            {"known_labels": np.r_[np.zeros(6, dtype=int), np.full(14, -1)]},
            ValueError,
            "known_labels: the known samples of cluster 0",
        ),
        ({"min_size": 0.3, "mass": 0.9}, ValueError, "min_size: the lower bounds sum to 1.2 > 0.9"),
        ({"unassigned_scores": np.zeros(3), "mass": 0.9}, ValueError, "unassigned_scores"),
    ],
)
def test_bad_constraint_arguments_are_named(kwargs, error, match):
    scores = np.random.default_rng(0).normal(size=(20, 4))
    with pytest.raises(error, match=match):
        otlabel.assign(scores, 0.1, **kwargs)


def test_more_known_samples_than_a_bounded_cluster_holds_names_the_cluster():
    scores = np.random.default_rng(0).normal(size=(20, 4))
    known = np.r_[np.full(3, 2), np.full(17, -1)]
    with pytest.raises(ValueError, match="cluster 2"):
        otlabel.assign(scores, 0.1, max_size=np.array([0.5, 0.5, 0.1, 0.5]), known_labels=known)


# --------------------------------------------------------------------------
# labels for new samples
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixed", "relaxed", "partial", "partial-relaxed", "bounded"])
def test_predict_on_the_training_scores_is_the_argmax_labelling(name, tmp_path):
    scores, _ = problem(14)
    kwargs = {
        "fixed": {},
        "relaxed": {"size_penalty": 0.5},
        "partial": {"mass": 0.8},
        "partial-relaxed": {"mass": 0.8, "size_penalty": 0.5},
        "bounded": {"min_size": 0.1, "max_size": 0.3},
    }[name]
    res = otlabel.assign(scores, 0.1, rounding="argmax", **kwargs)
    np.testing.assert_array_equal(otlabel.predict(scores, res), res.labels)
    np.testing.assert_array_equal(res.predict(scores), res.labels)
    np.save(tmp_path / "scores.npy", scores)
    streamed = otlabel.predict(otlabel.ChunkedScores(tmp_path / "scores.npy"), res)
    np.testing.assert_array_equal(streamed, res.labels)
    if "mass" in kwargs:
        assert np.any(res.labels == -1)
        unassigned = np.log(np.exp(scores).sum(axis=1)) + res.unassigned_potential
        best = np.max(scores + res.potential, axis=1)
        np.testing.assert_array_equal(res.labels == -1, unassigned > best)


def test_soft_codes_are_the_softmax_of_scores_plus_potential():
    scores, _ = problem(15)
    res = otlabel.assign(scores, 0.1)
    codes = otlabel.predict(scores[:50], res.potential, soft=True, epsilon=0.1)
    x = (scores[:50] + res.potential) / 0.1
    expected = np.exp(x - x.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(codes, expected, rtol=1e-12)
    np.testing.assert_allclose(codes.sum(axis=1), 1.0, rtol=1e-12)
    partial = otlabel.assign(scores, 0.1, mass=0.8)
    shares = partial.predict(scores, soft=True).sum(axis=1)
    assert np.all(shares < 1) and np.all(shares > 0)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda s, r: otlabel.predict(s, r.potential, soft=True), ValueError, "epsilon: soft"),
        (lambda s, r: otlabel.predict(s, np.zeros(3)), ValueError, r"potential: .* shape \(5,\)"),
        (lambda s, r: otlabel.predict(s[:, :3], r), ValueError, r"potential: .* shape \(3,\)"),
        (lambda s, r: otlabel.predict(np.stack([s, s]), r), ValueError, "one \\(N, K\\) matrix"),
    ],
)
def test_predict_errors_are_named(call, error, match):
    scores, _ = problem(16)
    res = otlabel.assign(scores, 0.1)
    with pytest.raises(error, match=match):
        call(scores, res)


@pytest.mark.parametrize("seed", range(4))
def test_relaxed_labels_equal_from_numpy_and_numba_passes(seed):
    scores, b = problem(300 + seed, n=3000, k=20)
    kwargs = {"cluster_weights": b, "size_penalty": 0.3, "mass": 0.9 if seed % 2 else 1.0}
    numpy_ = otlabel.assign(scores, 0.05, backend="numpy", **kwargs)
    numba_ = otlabel.assign(scores, 0.05, backend="numba", **kwargs)
    np.testing.assert_array_equal(numpy_.labels, numba_.labels)
    assert numpy_.gap <= 1e-9 and numba_.gap <= 1e-9


def test_the_cluster_sizes_page_examples_run():
    """docs/cluster-sizes.md: every code block runs, in order, as written."""
    import re
    from pathlib import Path

    page = Path(__file__).parents[1] / "docs" / "cluster-sizes.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(page), "exec"), namespace)
    assert (namespace["res"].labels[:50] == namespace["known"][:50]).all()


# --------------------------------------------------------------------------
# known samples that fill a cluster; bounds that force the sizes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, k, n_known, kwargs",
    [
        (100, 10, 10, {}),
        (100, 10, 10, {"backend": "numpy"}),
        (100, 10, 10, {"max_size": 0.1}),
        (100, 10, 10, {"max_size": 0.1, "min_size": 0.05}),
        (100, 10, 9, {"mass": 0.9}),
        (5, 5, 1, {}),
        (100, 10, 10, {"rounding": "argmax"}),
    ],
)
def test_known_samples_that_exactly_fill_a_cluster_close_it(n, k, n_known, kwargs):
    """A cluster whose known samples carry exactly its share is closed to the others
    (it was refused): no free sample joins it, the solve converges, and the free
    labels are the LP optimum with that cluster's count at its known samples."""
    scores = otlabel.make_scores(n, k, seed=0, dtype=np.float64)
    known = np.full(n, -1)
    known[:n_known] = 0
    res = otlabel.assign(scores, 0.05, known_labels=known, **kwargs)
    assert res.converged and np.isfinite(res.potential).all()
    free = known < 0
    assert not np.any(res.labels[free] == 0) and res.counts[0] == n_known
    if kwargs.get("rounding") == "argmax" or "mass" in kwargs:
        return
    if "min_size" in kwargs:
        lower, upper = BoundedSizes(np.full(k, 0.05), np.full(k, 0.1)).count_bounds(n)
    else:
        lower, upper = otlabel.count_bounds(n, np.ones(k) / k)
    counts = np.bincount(known[~free], minlength=k)
    optimum = bounded_lp_optimum(scores[free], np.maximum(lower - counts, 0), upper - counts)
    achieved = scores[free][np.arange(free.sum()), res.labels[free]].sum()
    assert achieved == pytest.approx(optimum, rel=1e-10) and res.gap <= 1e-9


@pytest.mark.parametrize("bound", ["max_size", "min_size"])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bounds_that_sum_to_the_whole_mass_solve_as_fixed_sizes(bound, backend):
    """Upper (lower) bounds summing to 1 force every size onto them: the solve takes
    about the fixed sizes' passes (it took none in 5 000), the same labels, and a
    potential of the bounded sign (the fixed one up to a constant)."""
    scores = otlabel.make_scores(100, 10, seed=0, dtype=np.float64)
    fixed = otlabel.assign(scores, 0.05, backend=backend)
    res = otlabel.assign(scores, 0.05, backend=backend, **{bound: 0.1})
    assert res.converged and res.n_iter <= 1.2 * fixed.n_iter
    np.testing.assert_array_equal(res.labels, fixed.labels)
    fixed = otlabel.sinkhorn(scores, 0.05, backend=backend, tol=1e-10)
    res = otlabel.sinkhorn(scores, 0.05, backend=backend, tol=1e-10, **{bound: 0.1})
    shift = res.potential - fixed.potential
    np.testing.assert_allclose(shift, shift.mean(), atol=1e-8)
    edge = res.potential.max() if bound == "max_size" else res.potential.min()
    assert abs(edge) <= 1e-9


@pytest.mark.parametrize("bound", ["min_size", "max_size"])
def test_forcing_bounds_round_to_their_floor_and_ceiling(bound):
    """min_size = 1/7 for every cluster forces the sizes: 300 samples give counts 42 or
    43 each (one cluster took the rounding slack of 6 before: 48)."""
    scores = otlabel.make_scores(300, 7, seed=0, dtype=np.float64)
    res = otlabel.assign(scores, 0.05, **{bound: 1 / 7})
    assert set(res.counts.tolist()) <= {42, 43}
    np.testing.assert_array_equal(res.labels, otlabel.assign(scores, 0.05).labels)
