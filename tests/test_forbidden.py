"""Forbidden pairs (``-inf`` scores): never in the plan or the labels, the HiGHS optimum
with those variables removed, and patterns that admit no plan refused before a pass."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import bounded_lp_optimum, slot_lp_optimum
from test_constraints import kl_slots, relaxed_objective
from test_distributed import launch, shards_of

import otlabel
from otlabel.constraints import BoundedSizes


def forbidden_scores(seed: int, n: int, k: int, share: float = 0.4, dtype=np.float64):
    """Normal scores with a random ``share`` of pairs -inf, each row allowed one at least."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k)).astype(dtype)
    forbid = rng.random((n, k)) < share
    forbid[np.arange(n), rng.integers(0, k, n)] = False
    scores[forbid] = -np.inf
    return rng, scores


def uses_only_allowed(scores: np.ndarray, labels: np.ndarray) -> bool:
    assigned = labels >= 0
    return bool(np.isfinite(scores[np.flatnonzero(assigned), labels[assigned]]).all())


def objective(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.asarray(scores, np.float64)[np.arange(labels.size), labels].sum())


def solve_or_refusal(expected_optimum: float, solve):
    """The solve where the LP is feasible; else assert the refusal and return None."""
    if np.isnan(expected_optimum):
        with pytest.raises(ValueError, match="forbidden"):
            solve()
        return None
    return solve()


# --------------------------------------------------------------------------
# the exact optimum without the forbidden variables
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_fixed_sizes_labels_are_the_highs_optimum(seed):
    """Weighted fixed sizes: the labels maximise the score over the allowed pairs under
    the count bounds; the plan's mass and the labels' are checked as two problems
    (the fractional shares and the counts), the refusal where either has none."""
    rng, scores = forbidden_scores(seed, 40, 4, share=0.5)
    weights = rng.random(4) + 0.3
    weights /= weights.sum()
    lower, upper = otlabel.count_bounds(40, weights)
    mass_optimum = bounded_lp_optimum(scores, 40 * weights, 40 * weights, feasible_only=True)
    optimum = bounded_lp_optimum(scores, lower, upper, feasible_only=True)
    res = solve_or_refusal(
        mass_optimum + optimum,
        lambda: otlabel.assign(scores, 0.1, cluster_weights=weights, return_plan=True),
    )
    if res is None:
        return
    assert uses_only_allowed(scores, res.labels)
    assert np.all(res.plan[~np.isfinite(scores)] == 0)
    counts = np.bincount(res.labels, minlength=4)
    assert np.all((counts >= lower) & (counts <= upper))
    assert objective(scores, res.labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9 and res.converged


@pytest.mark.parametrize("seed", range(6))
def test_bounded_sizes_labels_are_the_highs_optimum(seed):
    _, scores = forbidden_scores(100 + seed, 36, 4)
    lo, hi = np.full(4, 0.15), np.full(4, 0.4)
    lower, upper = BoundedSizes(lo, hi).count_bounds(36)
    res = otlabel.assign(scores, 0.1, min_size=lo, max_size=hi)
    assert uses_only_allowed(scores, res.labels)
    counts = np.bincount(res.labels, minlength=4)
    assert np.all((counts >= lower) & (counts <= upper))
    optimum = bounded_lp_optimum(scores, lower, upper)
    assert objective(scores, res.labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_partial_mass_labels_are_the_highs_optimum(seed):
    """mass=0.8: the unassigned column (row log-sum-exp over the allowed pairs) is
    open to every sample."""
    _, scores = forbidden_scores(200 + seed, 40, 4, share=0.6)
    res = otlabel.assign(scores, 0.1, mass=0.8)
    with np.errstate(divide="ignore"):
        s0 = np.log(np.exp(scores).sum(axis=1))
    extended = np.column_stack([scores, s0])
    bounds = otlabel.count_bounds(40, np.append(np.full(4, 0.2), 0.2))
    labels = np.where(res.labels < 0, 4, res.labels)
    assert uses_only_allowed(extended, labels)
    counts = np.bincount(labels, minlength=5)
    assert np.all((counts >= bounds[0]) & (counts <= bounds[1]))
    optimum = bounded_lp_optimum(extended, *bounds)
    assert objective(extended, labels) == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_known_labels_with_forbidden_pairs_are_the_highs_optimum(seed):
    rng, scores = forbidden_scores(300 + seed, 40, 4)
    known = np.full(40, -1)
    chosen = rng.choice(40, size=6, replace=False)
    for i in chosen:  # a known label on an allowed pair
        known[i] = rng.choice(np.flatnonzero(np.isfinite(scores[i])))
    lower, upper = otlabel.count_bounds(40, np.full(4, 0.25))
    taken = np.bincount(known[chosen], minlength=4)
    free = known < 0
    optimum = bounded_lp_optimum(
        scores[free], np.maximum(lower - taken, 0), upper - taken, feasible_only=True
    )
    res = solve_or_refusal(optimum, lambda: otlabel.assign(scores, 0.1, known_labels=known))
    if res is None:
        return
    np.testing.assert_array_equal(res.labels[~free], known[~free])
    assert uses_only_allowed(scores, res.labels)
    achieved = objective(scores[free], res.labels[free])
    assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_relaxed_sizes_labels_are_the_slot_lp_optimum(seed):
    _, scores = forbidden_scores(400 + seed, 30, 3)
    b, tau = np.array([0.5, 0.3, 0.2]), 0.7
    res = otlabel.assign(scores, 0.1, cluster_weights=b, size_penalty=tau)
    assert uses_only_allowed(scores, res.labels)
    optimum = slot_lp_optimum(scores, kl_slots(30, b, tau))
    achieved = relaxed_objective(scores, res.labels, b, tau)
    assert achieved == pytest.approx(optimum, rel=1e-9, abs=1e-9)
    assert res.gap <= 1e-9


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("epsilon", [0.1, 0.0])
def test_relaxed_sizes_with_a_cluster_no_sample_may_join(backend, epsilon):
    """Relaxed sizes pull every cluster toward its share, but no sample may join the
    last one: it stays empty, its potential finite (the column update overflowed
    before), and the labels are the slot LP's optimum (the NumPy backend's exchanges
    looped for ever, picking a settled cluster again)."""
    _, scores = forbidden_scores(11, 40, 4)
    scores[:, 3] = -np.inf
    b, tau = np.array([0.3, 0.3, 0.2, 0.2]), 0.5
    given = scores
    if backend == "torch":
        given = pytest.importorskip("torch").from_numpy(scores)
    res = otlabel.assign(
        given, epsilon, cluster_weights=b, size_penalty=tau, backend=backend, return_plan=True
    )
    labels, plan = np.asarray(res.labels), np.asarray(res.plan)
    assert res.converged and np.isfinite(np.asarray(res.potential)).all()
    assert np.all(plan[:, 3] == 0) and np.bincount(labels, minlength=4)[3] == 0
    optimum = slot_lp_optimum(scores, kl_slots(40, b, tau))
    assert relaxed_objective(scores, labels, b, tau) == pytest.approx(optimum, rel=1e-9)


# --------------------------------------------------------------------------
# every backend, dtype and domain: the plan exactly zero there
# --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "numba", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("method", ["auto", "log", "scaling"])
def test_plan_is_zero_and_labels_allowed_on_every_backend(backend, dtype, method):
    _, scores = forbidden_scores(7, 600, 12, share=0.5, dtype=dtype)
    given = scores
    if backend == "torch":
        torch = pytest.importorskip("torch")
        given = torch.from_numpy(scores)
    res = otlabel.assign(given, 0.05, backend=backend, method=method, return_plan=True)
    plan, labels = np.asarray(res.plan), np.asarray(res.labels)
    assert res.converged and np.all(plan[~np.isfinite(scores)] == 0)
    assert uses_only_allowed(scores, labels) and res.gap <= 1e-9
    np.testing.assert_array_equal(np.bincount(labels, minlength=12), np.full(12, 50))
    predicted = np.asarray(otlabel.predict(given, res))
    assert uses_only_allowed(scores, predicted)
    soft = np.asarray(otlabel.predict(given, res, soft=True))
    assert np.all(soft[~np.isfinite(scores)] == 0)


def test_a_stream_gives_the_in_memory_answer():
    _, scores = forbidden_scores(8, 2_000, 10, share=0.5, dtype=np.float32)
    whole = otlabel.assign(scores, 0.05)
    chunks = [scores[i : i + 300] for i in range(0, 2_000, 300)]
    stream = otlabel.ChunkedScores(chunks)
    streamed = otlabel.assign(stream, 0.05)
    np.testing.assert_array_equal(streamed.labels, whole.labels)
    assert uses_only_allowed(scores, streamed.labels)


def test_heads_each_keep_their_own_pattern():
    _, first = forbidden_scores(9, 300, 6)
    _, second = forbidden_scores(10, 300, 4)
    results = otlabel.assign([first, second], 0.05)
    for scores, labels in zip([first, second], results.labels, strict=True):
        assert uses_only_allowed(scores, np.asarray(labels))


# --------------------------------------------------------------------------
# patterns that admit no plan: refused before any pass, naming rows or clusters
# --------------------------------------------------------------------------


def refused(scores, **kwargs) -> str:
    passes = []
    with pytest.raises(ValueError) as error:
        otlabel.assign(scores, 0.1, callback=lambda n, e: passes.append(n), **kwargs)
    assert passes == []  # before any Sinkhorn pass
    return str(error.value)


def test_a_row_of_minus_inf_is_refused_by_name():
    scores = np.zeros((20, 4))
    scores[[3, 11]] = -np.inf
    for backend in ("numpy", "numba"):
        message = refused(scores, backend=backend)
        assert "2 row(s) are -inf for every cluster (rows 3, 11)" in message


def test_a_cluster_that_cannot_be_filled_is_refused_by_name():
    scores = np.zeros((20, 4))
    scores[2:, 0] = -np.inf  # cluster 0 needs 5 samples; 2 may go there
    message = refused(scores)
    assert "cluster [0] needs at least 0.25 of the mass" in message
    assert "2 samples (rows 0, 1)" in message


def test_samples_with_too_few_clusters_are_refused_by_name():
    scores = np.zeros((20, 4))
    scores[:6, [0, 2, 3]] = -np.inf  # 6 samples may go only to cluster 1, which takes 5
    message = refused(scores)  # so clusters 0, 2, 3 get 14 samples, not 15
    assert "clusters [0, 2, 3] need at least 0.75 of the mass" in message
    assert "14 samples (rows 6, 7, 8, 9, 10, ...) allowed to them hold only 0.7" in message
    scores = np.zeros((20, 4))
    scores[:6, [0, 2, 3]] = -np.inf
    message = refused(scores, min_size=0.0, max_size=0.25)  # no lower bound to fill
    assert "6 samples (rows 0, 1, 2, 3, 4, ...)" in message
    assert "may go only to cluster [1], which take at most 0.25" in message


def test_bounds_that_cannot_be_met_are_refused():
    scores = np.zeros((20, 4))
    scores[4:, 2] = -np.inf  # 4 samples allowed to cluster 2
    assert "cluster [2] needs at least" in refused(scores, min_size=0.25, max_size=0.5)
    otlabel.assign(scores, 0.1, min_size=0.2, max_size=0.5)  # 4 of 20: met exactly


def test_counts_checked_for_hard_labels_only():
    """Partial mass: a row all -inf has the unassigned column; labels with mass 1 on
    three rows that only cluster 0 takes, where it holds 2."""
    scores = np.zeros((6, 3))
    scores[:3, 1:] = -np.inf
    refused(scores)
    res = otlabel.assign(scores, 0.1, mass=0.5)
    assert uses_only_allowed(scores, res.labels)


def test_a_known_label_on_a_forbidden_pair_is_refused():
    scores = np.zeros((10, 3))
    scores[4, 2] = -np.inf
    known = np.full(10, -1)
    known[4] = 2
    assert "known label(s) are forbidden pairs" in refused(scores, known_labels=known)


def test_nan_and_plus_inf_remain_errors_and_subsample_starts_are_refused():
    scores = np.zeros((10, 3))
    scores[0, 0] = -np.inf
    for bad in (np.nan, np.inf):
        broken = scores.copy()
        broken[5, 1] = bad
        for backend in ("numpy", "numba"):
            assert "NaN or +inf (first in row 5)" in refused(broken, backend=backend)
    assert "'subsample' cannot start" in refused(scores, init="subsample")


@pytest.mark.parametrize("seed", range(40))
def test_the_check_agrees_with_the_lp(seed):
    """Sparse random patterns: refused exactly where HiGHS finds no fractional plan
    with the exact shares or no labels within the count bounds."""
    rng = np.random.default_rng(500 + seed)
    n, k = int(rng.integers(6, 15)), int(rng.integers(2, 5))
    scores = rng.normal(size=(n, k))
    scores[rng.random((n, k)) < 0.65] = -np.inf
    scores[np.arange(n), rng.integers(0, k, n)] = 0.0
    weights = np.full(k, 1 / k)
    shares = bounded_lp_optimum(scores, n * weights, n * weights, feasible_only=True)
    counts = bounded_lp_optimum(scores, *otlabel.count_bounds(n, weights), feasible_only=True)
    if np.isnan(shares) or np.isnan(counts):
        refused(scores)
    else:
        assert uses_only_allowed(scores, otlabel.assign(scores, 0.1).labels)


# --------------------------------------------------------------------------
# the sharded solve
# --------------------------------------------------------------------------


def test_two_and_three_ranks_give_the_single_process_answer(tmp_path):
    _, scores = forbidden_scores(11, 90, 5, share=0.5)
    infeasible = np.zeros((30, 3))
    infeasible[2:, 0] = -np.inf
    known = np.full(90, -1)
    known[50] = int(np.flatnonzero(~np.isfinite(scores[50]))[0])
    cases = [
        {"shards": shards_of(scores, [40, 50]), "epsilon": 0.1},
        {"shards": shards_of(infeasible, [12, 18]), "epsilon": 0.1},
        {
            "shards": shards_of(scores, [40, 50]),
            "epsilon": 0.1,
            "per_rank": {"known_labels": shards_of(known, [40, 50])},
        },
    ]
    (tmp_path / "two").mkdir()
    (tmp_path / "three").mkdir()
    solved, refusal, forbidden_known = launch(2, cases, tmp_path / "two")
    single = otlabel.assign(scores, 0.1, method="log", backend="numpy")
    labels = np.concatenate([outcome["result"]["labels"] for outcome in solved])
    np.testing.assert_array_equal(labels, single.labels)
    with pytest.raises(ValueError) as expected:
        otlabel.assign(infeasible, 0.1)
    for outcome in refusal:  # the single process's message, on every rank
        assert outcome == {
            "error": ("ValueError", str(expected.value).replace("scores", "local_scores", 1))
        }
    for outcome in forbidden_known:
        assert outcome["error"][0] == "ValueError"
        assert "known label(s) are forbidden pairs" in outcome["error"][1]
    (three,) = launch(
        3, [{"shards": shards_of(scores, [20, 30, 40]), "epsilon": 0.1}], tmp_path / "three"
    )
    labels = np.concatenate([outcome["result"]["labels"] for outcome in three])
    np.testing.assert_array_equal(labels, single.labels)


def test_a_cluster_that_no_free_sample_may_join():
    """Known labels fill cluster 3 and every other sample forbids it: its mass is 0
    whatever its potential, which stays finite (it was an overflow of the column
    update)."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((100, 4))
    scores[25:, 3] = -np.inf
    known = np.full(100, -1)
    known[:25] = 3
    for kwargs in ({}, {"max_size": 0.25}, {"min_size": 0.25}, {"min_size": 0.2, "max_size": 0.3}):
        for epsilon in (0.05, 0):
            res = otlabel.assign(scores, epsilon, known_labels=known, **kwargs)
            assert res.counts[3] == 25 and res.gap <= 1e-9
            assert kwargs.get("min_size") == 0.2 or res.counts.tolist() == [25] * 4
            assert np.isfinite(res.potential).all() and uses_only_allowed(scores, res.labels)


def test_epsilon_zero_checks_the_labels_only():
    """No plan with the exact shares (1.6 samples for cluster 3 from one allowed row),
    but labels within floor..ceil exist: epsilon=0 solves it, epsilon > 0 refuses."""
    scores = np.zeros((8, 5))
    scores[:7, 3] = -np.inf
    assert "no plan meets the cluster sizes" in refused(scores)
    res = otlabel.assign(scores, 0)
    assert res.labels[7] == 3 and res.counts.tolist() == [2, 1, 2, 1, 2] and res.converged
    weighted = np.zeros((4, 2))
    weighted[:2, 1] = -np.inf
    res = otlabel.assign(weighted, 0, sample_weights=[0.4, 0.4, 0.1, 0.1])
    assert res.labels.tolist() == [0, 0, 1, 1]
    counts = np.zeros((6, 3))
    counts[:3, 1:] = -np.inf  # 3 samples only for cluster 0, which holds 2
    with pytest.raises(ValueError, match="no hard labels meet the count bounds"):
        otlabel.assign(counts, 0)
