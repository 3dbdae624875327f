"""One conformance suite that every installed backend passes.

Each case runs on every backend that runs its input's library (NumPy: numpy and
numba; Torch CPU tensors: torch; CuPy: cupy where a GPU is present) and on
float32 and float64 scores, and checks the answer against float64 arithmetic
on the scores themselves or against an exact LP solver (HiGHS).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from _helpers import bounded_lp_optimum

import otlabel
from otlabel.kernels import get_backend


@dataclass
class Backend:
    name: str
    to: Any  # NumPy array -> the backend's array library
    library: str


def _torch(array: np.ndarray) -> Any:
    import torch

    return torch.as_tensor(array)


def _cupy(array: np.ndarray) -> Any:
    import cupy

    return cupy.asarray(array)


def _available() -> list[Backend]:
    found = [Backend("numpy", np.asarray, "numpy"), Backend("numba", np.asarray, "numpy")]
    if importlib.util.find_spec("torch"):
        found.append(Backend("torch", _torch, "torch"))
    if importlib.util.find_spec("cupy"):
        import cupy

        if cupy.cuda.is_available():
            found.append(Backend("cupy", _cupy, "cupy"))
    return found


@pytest.fixture(params=_available(), ids=lambda backend: backend.name)
def backend(request) -> Backend:
    return request.param


DTYPES = [np.float32, np.float64]


def host(value: Any) -> np.ndarray:
    """Any library's array as float64 NumPy."""
    if hasattr(value, "get"):
        value = value.get()
    if hasattr(value, "cpu"):
        value = value.cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def problem(seed: int, n: int = 400, k: int = 7, spread: float = 3.0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n, k)) * spread
    a = rng.random(n) + 0.5
    b = rng.random(k) + 0.5
    return scores, a / a.sum(), b / b.sum()


def plan_of(scores: np.ndarray, res: Any, epsilon: float) -> np.ndarray:
    """The returned iterate's plan, in float64 from the scores themselves."""
    exponent = scores.astype(np.float64) + host(res.row_potential)[:, None] + host(res.potential)
    return np.exp(exponent / epsilon)


@pytest.mark.parametrize("dtype", DTYPES)
def test_plan_meets_its_marginals_and_reports_its_true_error(backend, dtype):
    scores, a, b = problem(1)
    scores = scores.astype(dtype)
    res = otlabel.sinkhorn(
        backend.to(scores), 0.3, sample_weights=a, cluster_weights=b, tol=1e-7, backend=backend.name
    )
    assert res.backend == backend.name and res.converged
    plan = plan_of(scores, res, 0.3)
    true_error = np.abs(plan.sum(1) - a).sum() + np.abs(plan.sum(0) - b).sum()
    assert true_error <= 1e-7
    assert res.error == pytest.approx(true_error, rel=1e-6, abs=1e-15)
    assert res.errors[-1] == res.error and len(res.errors) == res.n_iter
    assert sum(n for phase, n in res.phases.items() if phase != "start") == res.n_iter


@pytest.mark.parametrize("dtype", DTYPES)
def test_agrees_with_the_float64_log_domain(backend, dtype):
    scores, a, b = problem(2, spread=5.0)
    kwargs = {"sample_weights": a, "cluster_weights": b, "tol": 1e-10}
    reference = otlabel.sinkhorn(scores, 0.2, method="log", backend="numpy", **kwargs)
    got = otlabel.sinkhorn(backend.to(scores.astype(dtype)), 0.2, backend=backend.name, **kwargs)
    # float32 scores are the same numbers as their float64 copies: same answer
    exact_input = scores.astype(dtype).astype(np.float64)
    if dtype == np.float32:
        reference = otlabel.sinkhorn(exact_input, 0.2, method="log", backend="numpy", **kwargs)
    np.testing.assert_allclose(host(got.potential), reference.potential, atol=1e-8)
    np.testing.assert_allclose(host(got.row_potential), reference.row_potential, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_converged_warm_start_takes_one_pass(backend, dtype):
    scores = otlabel.make_scores(3000, 12, kind="head", seed=3).astype(dtype)
    first = otlabel.assign(backend.to(scores), 0.05, tol=1e-8, backend=backend.name)
    again = otlabel.assign(
        backend.to(scores), 0.05, tol=1e-8, backend=backend.name, init=first.potential
    )
    assert first.n_iter > 5 and again.n_iter == 1 and again.start == "given"
    np.testing.assert_array_equal(host(again.labels), host(first.labels))


def test_stacked_heads_are_separate_solves(backend):
    rng = np.random.default_rng(4)
    stack = (rng.normal(size=(3, 500, 6)) * 2).astype(np.float32)
    together = otlabel.assign(backend.to(stack), 0.1, backend=backend.name, tol=1e-6)
    for h in range(3):
        alone = otlabel.assign(backend.to(stack[h]), 0.1, backend=backend.name, tol=1e-6)
        assert together.n_iter[h] == alone.n_iter
        np.testing.assert_array_equal(host(together.potential[h]), host(alone.potential))
        np.testing.assert_array_equal(host(together.labels[h]), host(alone.labels))


@pytest.mark.parametrize("dtype", DTYPES)
def test_weighted_counts_are_the_lp_optimum(backend, dtype):
    scores, a, b = problem(5, n=240, k=5)
    scores = scores.astype(dtype)
    res = otlabel.assign(
        backend.to(scores), 0.5, sample_weights=a, cluster_weights=b, backend=backend.name
    )
    lower, upper = otlabel.count_bounds(240, b)
    counts = host(res.counts)
    assert np.all((counts >= lower) & (counts <= upper)) and counts.sum() == 240
    labels = host(res.labels).astype(int)
    achieved = scores.astype(np.float64)[np.arange(240), labels].sum()
    optimum = bounded_lp_optimum(scores.astype(np.float64), lower, upper)
    assert achieved == pytest.approx(optimum, rel=1e-10) and res.gap <= 1e-10


@pytest.mark.parametrize("dtype", DTYPES)
def test_bounded_sizes_meet_their_optimality_conditions(backend, dtype):
    """Rows exact; lo <= m <= hi; g > 0 only at the lower bound, g < 0 only at the upper."""
    rng = np.random.default_rng(6)
    scores = (rng.normal(size=(600, 6)) * 2 + np.linspace(0, 3, 6)).astype(dtype)
    lower = np.array([0.05, 0.1, 0.0, 0.12, 0.1, 0.1])
    upper = np.array([0.5, 0.2, 0.3, 0.22, 0.15, 1.0])
    res = otlabel.sinkhorn(
        backend.to(scores),
        0.2,
        min_size=lower,
        max_size=upper,
        tol=1e-11,
        max_iter=50_000,
        backend=backend.name,
    )
    assert res.converged
    plan = plan_of(scores, res, 0.2)
    mass = plan.sum(axis=0)
    g = host(res.potential)
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 600, rtol=1e-8)
    assert np.all(mass >= lower - 1e-9) and np.all(mass <= upper + 1e-9)
    at_lower, at_upper = g > 1e-7, g < -1e-7
    assert at_lower.any() and at_upper.any()  # both bounds bind in this problem
    np.testing.assert_allclose(mass[at_lower], lower[at_lower], atol=1e-9)
    np.testing.assert_allclose(mass[at_upper], upper[at_upper], atol=1e-9)
    free = ~(at_lower | at_upper)
    assert np.all((mass[free] > lower[free] - 1e-9) & (mass[free] < upper[free] + 1e-9))


def test_overwritten_scores_come_back_when_a_pass_raises(backend, monkeypatch):
    """An interrupt in the middle of a stored-kernel solve leaves the caller's scores."""
    if backend.name == "numba":
        from otlabel.kernels.numba import NumbaKernel, sparse

        monkeypatch.setattr(sparse, "SPARSE_DENSITY", 0.0)  # the dense kernel, in place
        kernel_type: Any = NumbaKernel
    else:
        from otlabel.kernels import reference

        kernel_type = reference.ScalingKernel
    sweep = kernel_type.sweep
    calls = {"n": 0}

    def interrupted(self, *args):
        calls["n"] += 1
        if calls["n"] > 3 and getattr(self, "phase", "stored") == "stored":
            raise KeyboardInterrupt
        return sweep(self, *args)

    monkeypatch.setattr(kernel_type, "sweep", interrupted)
    scores = (np.random.default_rng(7).normal(size=(2000, 30)) * 3).astype(np.float32)
    work = backend.to(scores.copy())
    with pytest.raises(KeyboardInterrupt):
        otlabel.sinkhorn(work, 0.5, overwrite_scores=True, backend=backend.name, tol=1e-9)
    assert calls["n"] > 3
    # every entry is within 87 eps of its row's best here: all come back, to rounding
    np.testing.assert_allclose(host(work), scores, rtol=0, atol=1e-5 * np.abs(scores).max())


def test_results_come_back_in_the_input_library(backend):
    scores = otlabel.make_scores(300, 5, seed=8)
    res = otlabel.assign(backend.to(scores), 0.1, backend=backend.name)
    module = type(res.labels).__module__.split(".")[0]
    assert module == backend.library
    assert type(res.potential).__module__.split(".")[0] == backend.library


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"init": np.zeros(4)}, r"init: expected a previous result's potential of shape \(5,\)"),
        ({"min_size": 0.3}, "min_size: the lower bounds sum to 1.5 > 1"),
        ({"max_size": 0.1}, "max_size: the upper bounds sum to 0.5 < 1"),
        ({"cluster_weights": np.ones(5), "max_size": 0.5}, "cluster_weights: give either"),
    ],
)
def test_bad_arguments_are_named(backend, kwargs, match):
    scores = backend.to(otlabel.make_scores(100, 5, seed=9))
    with pytest.raises(ValueError, match=match):
        otlabel.assign(scores, 0.1, backend=backend.name, **kwargs)


def test_nan_scores_are_named(backend):
    scores = otlabel.make_scores(100, 5, seed=9).astype(np.float64)
    scores[17, 3] = np.nan
    with pytest.raises(ValueError, match=r"scores: contains NaN or \+inf \(first in row 17"):
        otlabel.assign(backend.to(scores), 0.1, backend=backend.name)


def test_every_backend_says_what_it_provides(backend):
    """The table's object answers every question the solver asks of it."""
    provided = get_backend(backend.name)
    for operation in (
        "context",
        "vectors",
        "row_extremes",
        "log_kernel",
        "first_kernel",
        "rounding_passes",
        "wants_subsample",
    ):
        assert callable(getattr(provided, operation)), operation
    assert provided.name == backend.name


CONSTRAINTS = {
    "bounded": {"min_size": 0.1, "max_size": 0.3},
    "relaxed": {"size_penalty": 0.5},
    "partial": {"mass": 0.8},
    "partial-relaxed": {"mass": 0.8, "size_penalty": 0.5},
    "known": {"known_labels": np.where(np.arange(500) % 9 == 0, np.arange(500) % 5, -1)},
}


@pytest.mark.parametrize("constraint", list(CONSTRAINTS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_constraint_agrees_with_the_float64_reference(backend, constraint, dtype):
    scores = (otlabel.make_scores(500, 5, kind="head", seed=13) * 2).astype(dtype)
    kwargs = {"tol": 1e-9, **CONSTRAINTS[constraint]}
    reference = otlabel.assign(
        scores.astype(np.float64), 0.1, backend="numpy", method="log", **kwargs
    )
    got = otlabel.assign(backend.to(scores), 0.1, backend=backend.name, **kwargs)
    assert got.converged
    np.testing.assert_allclose(host(got.potential), reference.potential, atol=1e-7)
    np.testing.assert_array_equal(host(got.labels), reference.labels)
    if reference.unassigned_potential is not None:
        assert got.unassigned_potential == pytest.approx(reference.unassigned_potential, abs=1e-7)


def test_predict_comes_back_in_the_input_library(backend):
    scores = otlabel.make_scores(300, 5, seed=14)
    res = otlabel.assign(backend.to(scores), 0.1, backend=backend.name, rounding="argmax")
    labels = otlabel.predict(backend.to(scores), res, backend=backend.name)
    codes = otlabel.predict(backend.to(scores), res, soft=True, backend=backend.name)
    assert type(labels).__module__.split(".")[0] == backend.library
    assert type(codes).__module__.split(".")[0] == backend.library
    np.testing.assert_array_equal(host(labels), host(res.labels))
    np.testing.assert_allclose(host(codes).sum(axis=1), 1.0, rtol=1e-6)
