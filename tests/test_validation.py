"""Every invalid input raises its documented error; properties over random inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import otlabel

GOOD = np.random.default_rng(0).normal(size=(20, 4))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"epsilon": 0.0, "rounding": None}, ValueError, "epsilon: expected a finite number > 0"),
        ({"epsilon": -1.0}, ValueError, "epsilon"),
        ({"epsilon": float("nan")}, ValueError, "epsilon"),
        ({"epsilon": "0.1"}, TypeError, "epsilon: expected a positive number"),
        ({"epsilon": True}, TypeError, "epsilon"),
        ({"tol": 0.0}, ValueError, "tol"),
        ({"tol": float("inf")}, ValueError, "tol"),
        ({"max_iter": 0}, ValueError, "max_iter: expected an integer >= 1"),
        ({"max_iter": 2.5}, TypeError, "max_iter"),
        ({"method": "fast"}, ValueError, r"method: expected one of \('auto', 'scaling', 'log'\)"),
        ({"backend": "tpu"}, ValueError, "backend: expected one of"),
        ({"rounding": "round"}, ValueError, "rounding: expected one of"),
        ({"rounding": True}, ValueError, "rounding"),
        ({"n_threads": -2}, ValueError, "n_threads"),
        ({"return_plan": "yes"}, TypeError, "return_plan: expected True or False"),
        ({"overwrite_scores": 1}, TypeError, "overwrite_scores"),
        ({"cluster_weights": np.ones(3)}, ValueError, r"cluster_weights: expected shape \(4,\)"),
        ({"cluster_weights": [1, 0, 1, 1]}, ValueError, "cluster_weights: weights must be > 0"),
        ({"cluster_weights": [1, -1, 1, 1]}, ValueError, "drop that sample or cluster"),
        ({"cluster_weights": [1, np.nan, 1, 1]}, ValueError, "cluster_weights: contains NaN"),
        ({"cluster_weights": ["a", "b", "c", "d"]}, TypeError, "cluster_weights: expected real"),
        ({"sample_weights": np.ones(19)}, ValueError, r"sample_weights: expected shape \(20,\)"),
        ({"sample_weights": np.r_[np.ones(19), np.inf]}, ValueError, "sample_weights: contains"),
        ({"sample_weights": np.r_[np.ones(19), 0.0]}, ValueError, "sample_weights: weights must"),
        (
            {"init": np.zeros(5)},
            ValueError,
            r"init: expected a previous result's potential of shape \(4,\)",
        ),
        ({"init": np.full(4, np.nan)}, ValueError, "init: contains NaN"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        otlabel.assign(GOOD, **kwargs)


@pytest.mark.parametrize(
    "scores, error, match",
    [
        (GOOD.tolist(), TypeError, r"scores: a list must hold one \(N, K\) array \(NumPy, Torch"),
        ("scores.npy", TypeError, "scores: expected an array .N, K."),
        (GOOD[0], ValueError, r"scores: expected a 2-D array \(N, K\), got shape \(4,\)"),
        (np.zeros((0, 4)), ValueError, "at least one sample"),
        (np.zeros((4, 0)), ValueError, "at least one sample"),
        (np.zeros((0, 3, 4)), ValueError, "no heads"),
        (GOOD[None, None], ValueError, "expected a 2-D array"),
        (GOOD > 0, TypeError, "expected real floating-point scores, got dtype bool"),
        (GOOD.astype(complex), TypeError, "complex"),
        (np.array([["a", "b"]]), TypeError, "expected real floating-point"),
        ([], ValueError, "scores: an empty list"),
        ([GOOD, GOOD[:10]], ValueError, "must share N"),
        ([GOOD, "x"], TypeError, "scores: a list must hold"),
    ],
)
def test_bad_scores_raise(scores, error, match):
    with pytest.raises(error, match=match):
        otlabel.assign(scores)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_plus_inf_scores_raise_with_row(bad):
    scores = GOOD.copy()
    scores[7, 2] = bad
    with pytest.raises(ValueError, match=r"scores: contains NaN or \+inf \(first in row 7\)"):
        otlabel.assign(scores)
    stack = np.stack([GOOD, scores])
    with pytest.raises(ValueError, match=r"scores\[1\]: contains NaN"):
        otlabel.assign(stack)


def test_minus_inf_is_a_forbidden_pair_not_an_error():
    scores = GOOD.copy()
    scores[7, 2] = -np.inf
    labels = otlabel.assign(scores).labels
    assert labels[7] != 2


def test_more_clusters_than_samples_with_balanced_rounding():
    wide = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"balanced rounding needs K <= N, got K=5 .* N=3"):
        otlabel.assign(wide)
    assert otlabel.assign(wide, rounding="argmax").labels.shape == (3,)


def test_unsupported_array_libraries_are_named():
    class FakeArray:  # the check goes by module name, so jax need not be installed
        pass

    FakeArray.__module__ = "jax.numpy"
    with pytest.raises(TypeError, match="scores: JAX arrays are not supported"):
        otlabel.assign(FakeArray())


def test_per_head_arguments_must_match_the_heads():
    stack = np.stack([GOOD, GOOD])
    with pytest.raises(ValueError, match=r"init: expected shape \(2, K\)"):
        otlabel.assign(stack, init=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="cluster_weights: expected one entry per head"):
        otlabel.assign(stack, cluster_weights=[np.ones(4)])
    with pytest.raises(ValueError, match=r"cluster_weights\[1\]: expected shape"):
        otlabel.assign(stack, cluster_weights=[np.ones(4), np.ones(3)])


# -- properties ---------------------------------------------------------------

shapes = st.tuples(st.integers(1, 40), st.integers(1, 6)).filter(lambda s: s[1] <= s[0])


@st.composite
def problems(draw):
    n, k = draw(shapes)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scores = draw(
        hnp.arrays(dtype, (n, k), elements=st.floats(-30, 30, width=32, allow_subnormal=False))
    )
    weights = draw(
        st.none() | hnp.arrays(np.float64, k, elements=st.floats(0.01, 100, allow_subnormal=False))
    )
    samples = draw(
        st.none() | hnp.arrays(np.float64, n, elements=st.floats(0.01, 100, allow_subnormal=False))
    )
    epsilon = draw(st.sampled_from([0.01, 0.1, 1.0]))
    return scores, weights, samples, epsilon


@given(problems())
def test_properties_of_every_result(problem):
    scores, weights, samples, epsilon = problem
    n, k = scores.shape
    # No hidden overflow or invalid operation on the way (underflow is legitimate).
    faults = np.errstate(over="raise", divide="raise", invalid="raise", under="ignore")
    with faults, warnings.catch_warnings():
        warnings.simplefilter("ignore", otlabel.ConvergenceWarning)
        res = otlabel.assign(
            scores,
            epsilon,
            cluster_weights=weights,
            sample_weights=samples,
            max_iter=200,
            return_plan=True,
        )
    b = np.full(k, 1 / k) if weights is None else weights / weights.sum()
    lower, upper = otlabel.count_bounds(n, b)
    assert np.all((res.counts >= lower) & (res.counts <= upper)) and res.counts.sum() == n
    assert res.labels.shape == (n,) and res.labels.min() >= 0 and res.labels.max() < k
    assert np.all(np.isfinite(res.potential)) and np.all(np.isfinite(res.row_potential))
    assert np.all(np.isfinite(res.plan)) and np.isfinite(res.error) and res.error >= 0
    assert res.converged == (res.error <= otlabel.DEFAULT_TOL)
    assert abs(float(b @ res.potential)) <= 1e-9 * (1 + np.abs(res.potential).max())
    assert res.gap >= 0 and res.gap <= 1e-9 * (1 + float(np.abs(scores).max()))
    achieved = scores.astype(np.float64)[np.arange(n), res.labels].mean()
    assert res.cost == pytest.approx(achieved)
