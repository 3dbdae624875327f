"""What to solve: the validated problem, built once for every caller.

:func:`build_problem` is the one validation path of :func:`otlabel.assign`,
:func:`otlabel.sinkhorn`, :func:`otlabel.distributed.assign` and
:func:`otlabel.soft_assign`: it checks every argument (each error names the
argument and says what is expected), resolves the backend, and returns a
:class:`Problem`: one :class:`Head` per score matrix (scores source, sample
weights, column constraint, start) and the :class:`Options` of the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation as check
from ._arrays import is_half
from .constraints import BoundedSizes, ColumnConstraint, FixedSizes
from .initializers import STARTS
from .kernels import resolve_backend
from .streaming import ChunkedScores

#: Default stopping tolerance on the L1 marginal error (rows plus columns, plan
#: of total mass 1).  Chosen on evidence: argmax labels at this tolerance agree
#: with a solve converged to 1e-9 on at least 99.9% of samples on the benchmark
#: problems (tests/test_default_tol.py, docs/guide.md).
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 5000

Array = Any


@dataclass(frozen=True)
class Options:
    """How to solve: the validated options shared by every head."""

    epsilon: float
    tol: float
    max_iter: int
    method: str  # "auto", "scaling" or "log"
    backend: Any  # a Backend of otlabel.kernels
    rounding: str | None  # "balanced", "argmax" or None
    return_plan: bool
    overwrite_scores: bool
    n_threads: int | None
    overrelaxation: float | str
    callback: Callable[[int, float], Any] | None = None


@dataclass
class Head:
    """One score matrix's problem."""

    scores: Any  # (N, K) array of any supported library, or ChunkedScores
    log_a: np.ndarray  # (N,) log sample weights, normalised (host, float64)
    weight_total: float  # sum of the raw sample weights (N for uniform)
    constraint: ColumnConstraint
    init: np.ndarray | str | None  # a potential (K,), "subsample", or None (auto)
    name: str  # how errors name it: "scores" or "scores[h]"
    row_max: Array  # (N,) float64, in the backend's namespace
    row_min: Array  # (N,)


@dataclass
class Problem:
    """Every head of a call, how they are laid out, and the options."""

    heads: list[Head]
    layout: str  # "single", "stack" or "list"
    options: Options

    @property
    def reference(self) -> Any:
        """An array whose library and device the results take."""
        scores = self.heads[0].scores
        return scores.template() if isinstance(scores, ChunkedScores) else scores


def build_problem(
    scores: Any,
    epsilon: float,
    *,
    cluster_weights: Any = None,
    sample_weights: Any = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    method: str = "auto",
    backend: str = "auto",
    rounding: str | None = "balanced",
    init: Any = None,
    return_plan: bool = False,
    overwrite_scores: bool = False,
    n_threads: int | None = None,
    overrelaxation: float | str = "auto",
    min_size: Any = None,
    max_size: Any = None,
    callback: Callable[[int, float], Any] | None = None,
    n_samples: int | None = None,
    argument: str = "scores",
) -> Problem:
    """Validate every argument of :func:`otlabel.assign` and build the problem.

    ``n_samples``: the number of samples of the whole problem when ``scores``
    holds one shard of it (:mod:`otlabel.distributed`); the count checks use it.
    ``argument``: what errors call the scores.
    """
    heads, layout = check.heads_of(scores, argument)
    options = Options(
        epsilon=check.positive_float(epsilon, "epsilon"),
        tol=check.positive_float(tol, "tol"),
        max_iter=check.positive_int(max_iter, "max_iter"),  # type: ignore[arg-type]
        method=check.choice(method, "method", check.METHODS),
        backend=resolve_backend(backend, heads),
        rounding=check.choice(rounding, "rounding", check.ROUNDINGS),
        return_plan=check.flag(return_plan, "return_plan"),
        overwrite_scores=check.flag(overwrite_scores, "overwrite_scores"),
        n_threads=check.positive_int(n_threads, "n_threads", allow_none=True),
        overrelaxation=check.overrelaxation(overrelaxation),
        callback=check.optional_callable(callback, "callback"),
    )
    n_local = heads[0].shape[0]
    raw_weights = check.weights(sample_weights, n_local, "sample_weights", normalise=False)
    weight_total = float(np.sum(raw_weights))
    log_a = np.log(raw_weights / weight_total)
    per_head = {
        name: check.per_head(value, len(heads), layout, name)
        for name, value in [
            ("cluster_weights", cluster_weights),
            ("min_size", min_size),
            ("max_size", max_size),
            ("init", init),
        ]
    }
    built = []
    for h, matrix in enumerate(heads):
        index = None if layout == "single" else h
        given = {name: values[h] for name, values in per_head.items()}
        name = _named(argument, index)
        built.append(
            _head(matrix, name, index, log_a, weight_total, given, options, n_samples or n_local)
        )
    return Problem(built, layout, options)


def _head(
    scores: Any,
    name: str,
    index: int | None,
    log_a: np.ndarray,
    weight_total: float,
    given: dict[str, Any],
    options: Options,
    n_samples: int,
) -> Head:
    """One head: its constraint, its start, and one read of its scores (finite rows)."""
    n_clusters = scores.shape[1]
    constraint = _constraint(given, n_clusters, index)
    _check_domain(scores, options, name)
    if (
        options.rounding == "balanced"
        and isinstance(constraint, FixedSizes)
        and n_clusters > n_samples
    ):
        raise ValueError(
            f"{name}: balanced rounding needs K <= N, got K={n_clusters} clusters for "
            f"N={n_samples} samples; use fewer clusters or rounding='argmax'"
        )
    start = _start(given["init"], n_clusters, _named("init", index))
    row_max, row_min = options.backend.row_extremes(scores)  # one read of the matrix
    check.check_finite_rows(row_max, row_min, name)
    return Head(scores, log_a, weight_total, constraint, start, name, row_max, row_min)


def _constraint(given: dict[str, Any], n_clusters: int, index: int | None) -> ColumnConstraint:
    """Fixed sizes (``cluster_weights``) or bounded sizes (``min_size``/``max_size``)."""
    bounded = given["min_size"] is not None or given["max_size"] is not None
    if bounded and given["cluster_weights"] is not None:
        raise ValueError(
            "cluster_weights: give either cluster proportions (fixed sizes) or "
            "min_size/max_size (bounded sizes), not both; for bounds around proportions b, "
            "pass min_size=(1 - t) * b and max_size=(1 + t) * b"
        )
    if bounded:
        lower, upper = check.size_bounds(
            given["min_size"],
            given["max_size"],
            n_clusters,
            _named("min_size", index),
            _named("max_size", index),
        )
        return BoundedSizes(lower, upper)
    name = _named("cluster_weights", index)
    return FixedSizes(check.weights(given["cluster_weights"], n_clusters, name))


def _start(value: Any, n_clusters: int, name: str) -> np.ndarray | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in STARTS:
            raise ValueError(
                f"{name}: expected a previous result's potential ({n_clusters},), one of "
                f"{STARTS} or None, got {value!r}"
            )
        return value
    return check.initial_potential(value, n_clusters, name)


def _check_domain(scores: Any, options: Options, name: str) -> None:
    """What a stream or half precision cannot do."""
    if isinstance(scores, ChunkedScores):
        if options.method == "scaling":
            raise ValueError(
                "method: 'scaling' stores exp(S/eps), as large as the matrix; ChunkedScores are "
                "solved in the log domain, use method='auto' or 'log'"
            )
        if options.return_plan:
            raise ValueError(
                "return_plan: the plan is as large as the matrix, which ChunkedScores never "
                "holds; use return_plan=False (potentials and labels stay available)"
            )
    elif is_half(scores) and options.method == "scaling":
        raise ValueError(
            f"method: 'scaling' stores exp((S - max S)/eps) in the precision of {name}, too "
            "coarse for float16/bfloat16; use method='auto' or 'log'"
        )


def _named(argument: str, index: int | None) -> str:
    return argument if index is None else f"{argument}[{index}]"
