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
from ._arrays import device_of, from_host, is_half, namespace, to_numpy
from ._system import available_memory
from .constraints import BoundedSizes, ColumnConstraint, FixedSizes, RelaxedSizes
from .feasibility import check_head, unreachable_columns
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
class KnownLabels:
    """The samples whose label is given: they keep it, and count toward its cluster."""

    labels: np.ndarray  # (N,) int64, -1 where unknown
    free: np.ndarray  # (N_free,) the rows that are iterated
    counts: np.ndarray  # (K,) known samples per cluster
    mass: np.ndarray  # (K,) their weight (of the whole problem's mass 1)
    log_a: np.ndarray  # (N,) every sample's log weight
    score_sum: float = 0.0  # sum of the known samples' scores for their labels


@dataclass
class Head:
    """One score matrix's problem (with known labels: the rows that are iterated)."""

    scores: Any  # (N, K) array of any supported library, or ChunkedScores
    log_a: np.ndarray  # (N,) log sample weights of the whole problem (host, float64)
    weight_total: float  # sum of the raw sample weights (N for uniform)
    constraint: ColumnConstraint
    init: np.ndarray | str | None  # a potential (K,) or (K + 1,), "subsample", or None
    name: str  # how errors name it: "scores" or "scores[h]"
    row_max: Array  # (N,) float64 in the backend's namespace, or None: not needed yet
    row_min: Array  # (N,) (see Backend.extremes_of)
    virtual: np.ndarray | None = None  # (N,) s0: scores of partial mass's virtual column
    known: KnownLabels | None = None  # (with known labels, the rows above are the free ones)
    n_total: int = 0  # samples of the whole matrix, known ones included
    forbidden: bool = False  # some score is -inf: a pair that the plan and labels never use


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
    size_penalty: Any = None,
    mass: Any = 1.0,
    known_labels: Any = None,
    unassigned_scores: Any = None,
    callback: Callable[[int, float], Any] | None = None,
    n_samples: int | None = None,
    argument: str = "scores",
    check_plan: bool = True,
) -> Problem:
    """Validate every argument of :func:`otlabel.assign` and build the problem.

    ``n_samples``: the number of samples of the whole problem when ``scores``
    holds one shard of it (:mod:`otlabel.distributed`); the count checks use it.
    ``argument``: what errors call the scores.  ``check_plan``: whether scores with
    forbidden pairs are checked to admit a plan (:func:`otlabel.feasibility.check_head`;
    a shard's are checked with every rank's, :func:`otlabel.predict` solves nothing).
    """
    heads, layout = check.heads_of(scores, argument)
    options = Options(
        epsilon=check.epsilon(epsilon, rounding),
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
            ("size_penalty", size_penalty),
            ("mass", mass),
            ("known_labels", known_labels),
            ("unassigned_scores", unassigned_scores),
            ("init", init),
        ]
    }
    built = []
    for h, matrix in enumerate(heads):
        index = None if layout == "single" else h
        given = {name: values[h] for name, values in per_head.items()}
        name = _named(argument, index)
        built.append(
            _head(
                matrix,
                name,
                index,
                log_a,
                weight_total,
                given,
                options,
                n_samples or n_local,
                check_plan,
            )
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
    check_plan: bool = True,
) -> Head:
    """One head: its constraint, its start, and one read of its scores (finite rows)."""
    n_local, n_clusters = scores.shape
    rho = check.fraction(given["mass"], _named("mass", index))
    if rho == 1.0 and given["unassigned_scores"] is not None:
        raise ValueError(
            f"{_named('unassigned_scores', index)}: the scores of the unassigned column "
            "are only used with partial mass; pass mass < 1, or leave them out"
        )
    known = _known_labels(given["known_labels"], n_local, n_clusters, log_a, index)
    counts, mass = (None, None) if known is None else (known.counts, known.mass)
    constraint = make_constraint(given, n_clusters, rho, counts, mass, index)
    _check_domain(scores, options, name)
    if options.overwrite_scores and isinstance(scores, np.ndarray) and not scores.flags.writeable:
        raise ValueError(
            f"overwrite_scores: {name} is read-only (a read-only view or memmap), so the "
            "kernel cannot be built in its place; pass overwrite_scores=False (the kernel "
            "then takes new memory) or a writeable array"
        )
    if (
        options.rounding == "balanced"
        and isinstance(constraint, FixedSizes)
        and rho == 1.0
        and n_clusters > n_samples
    ):
        raise ValueError(
            f"{name}: balanced rounding needs K <= N, got K={n_clusters} clusters for "
            f"N={n_samples} samples; use fewer clusters or rounding='argmax'"
        )
    n_columns = n_clusters + (rho < 1.0)
    start = _start(given["init"], n_clusters, n_columns, _named("init", index))
    free_scores, free_log_a = scores, log_a
    if known is not None:
        free_scores, free_log_a = rows_of(scores, known.free), log_a[known.free]
        known.score_sum = known_score_sum(scores, known)
        n_free = n_samples - (n_local - known.free.size)
        check_known_counts(constraint, known.counts, n_free, index)
    row_max, row_min, forbidden = options.backend.validate(free_scores, name)  # one read
    virtual = None
    if rho < 1.0:
        virtual = _unassigned_scores(
            given["unassigned_scores"], scores, free_scores, known, options, index
        )
    head = Head(
        free_scores,
        free_log_a,
        weight_total,
        constraint,
        start,
        name,
        row_max,
        row_min,
        virtual,
        known,
        n_local,
        forbidden,
    )
    if forbidden:
        _check_forbidden_start(start, name, index)
        if check_plan:
            patterns = check_head(head, options.rounding, shares=options.epsilon > 0)
            head.constraint = constraint.reaching(unreachable_columns(patterns, n_clusters))
    return head


def _check_forbidden_start(start: Any, name: str, index: int | None) -> None:
    """A subsample of scores with forbidden pairs may admit no plan: refused by name."""
    if isinstance(start, str) and start == "subsample":
        raise ValueError(
            f"{_named('init', index)}: 'subsample' cannot start scores with -inf "
            f"(forbidden pairs) in {name}: a subsample of the rows may admit no plan; "
            "pass init=None (a start from zero) or a potential"
        )


def make_constraint(
    given: dict[str, Any],
    n_clusters: int,
    rho: float,
    counts: np.ndarray | None = None,
    mass: np.ndarray | None = None,
    index: int | None = None,
) -> ColumnConstraint:
    """Fixed, bounded or relaxed sizes (``given``: cluster_weights, min_size, max_size,
    size_penalty), with known labels' ``counts`` and ``mass`` and partial mass ``rho``."""
    bounded = given["min_size"] is not None or given["max_size"] is not None
    relaxed = given["size_penalty"] is not None
    if bounded and given["cluster_weights"] is not None:
        raise ValueError(
            "cluster_weights: give either cluster proportions (fixed sizes) or "
            "min_size/max_size (bounded sizes), not both; for bounds around proportions b, "
            "pass min_size=(1 - t) * b and max_size=(1 + t) * b"
        )
    if bounded and relaxed:
        raise ValueError(
            "size_penalty: relaxed sizes (a KL penalty toward cluster_weights) and bounds "
            "(min_size/max_size) are two different constraints; give one of them"
        )
    known = mass is not None
    mass = np.zeros(n_clusters) if mass is None else mass
    extend = rho < 1.0  # partial mass: one more column, fixed at 1 - rho
    if bounded:
        lower, upper = check.size_bounds(
            given["min_size"],
            given["max_size"],
            n_clusters,
            _named("min_size", index),
            _named("max_size", index),
            total=rho,
        )
        _check_known_mass(mass, upper, "max_size", index)
        lower_free, upper_free = np.maximum(lower - mass, 0.0), np.maximum(upper - mass, 0.0)
        given_bounds = (lower, upper)
        if extend:
            lower_free, upper_free = _append(lower_free, 1 - rho), _append(upper_free, 1 - rho)
            given_bounds = (_append(lower, 1 - rho), _append(upper, 1 - rho))
        free_mass = 1.0 - float(mass.sum())
        forced = (
            "upper"
            if upper_free.sum() <= free_mass * (1 + 1e-12)
            else "lower"
            if lower_free.sum() >= free_mass * (1 - 1e-12)
            else None
        )
        return BoundedSizes(
            lower_free, upper_free, _append_zero(counts, extend), given_bounds, forced
        )
    weights = rho * check.weights(
        given["cluster_weights"], n_clusters, _named("cluster_weights", index)
    )
    penalty = None
    if relaxed:
        penalty = check.penalty(given["size_penalty"], n_clusters, _named("size_penalty", index))
    if penalty is not None and not np.all(np.isinf(penalty)):  # all inf: fixed sizes
        return RelaxedSizes(
            _append(weights, 1 - rho) if extend else weights,
            _append(penalty, np.inf) if extend else penalty,
            (_append(mass, 0.0) if extend else mass) if known else None,
            _append_zero(counts, extend),
        )
    _check_known_mass(mass, weights, "cluster_weights", index)
    target = np.maximum(weights - mass, 0.0)
    if extend:
        return FixedSizes(
            _append(target, 1 - rho), _append_zero(counts, True), _append(weights, 1 - rho)
        )
    return FixedSizes(target, counts, weights if known else None)


def _append(values: np.ndarray, last: float) -> np.ndarray:
    return np.append(np.asarray(values, dtype=np.float64), last)


def _append_zero(counts: np.ndarray | None, extend: bool) -> np.ndarray | None:
    if counts is None or not extend:
        return counts
    return np.append(counts, 0).astype(np.int64)


def _check_known_mass(mass: np.ndarray, room: np.ndarray, argument: str, index: int | None) -> None:
    """Known samples may fill a cluster's upper mass (it is then closed to the other
    samples), not overfill it."""
    over = mass > room * (1 + 1e-12)
    if np.any(over):
        k = int(np.flatnonzero(over)[0])
        raise ValueError(
            f"{_named('known_labels', index)}: the known samples of cluster {k} carry "
            f"{mass[k]:.6g} of the mass, above its share {room[k]:.6g} ({argument}); "
            f"label fewer samples, or raise the cluster's {argument}"
        )


def check_known_counts(
    constraint: ColumnConstraint, counts: np.ndarray, n_free: int, index: int | None = None
) -> None:
    """In counts, the known samples of a cluster may not exceed its upper count."""
    if not constraint.counts_bounded:
        return
    _, upper = constraint.count_bounds(n_free)
    if np.any(upper < 0):
        k = int(np.flatnonzero(upper < 0)[0])
        raise ValueError(
            f"{_named('known_labels', index)}: cluster {k} has {int(counts[k])} known "
            f"samples, more than its largest count {int(counts[k] + upper[k])}; label "
            "fewer samples or widen the cluster's size"
        )


def _known_labels(
    value: Any, n_samples: int, n_clusters: int, log_a: np.ndarray, index: int | None
) -> KnownLabels | None:
    if value is None:
        return None
    labels = check.known_labels(value, n_samples, n_clusters, _named("known_labels", index))
    free = np.flatnonzero(labels < 0)
    if free.size == 0:
        raise ValueError(
            f"{_named('known_labels', index)}: every sample's label is given; there is "
            "nothing to solve"
        )
    is_known = labels >= 0
    counts = np.bincount(labels[is_known], minlength=n_clusters).astype(np.int64)
    mass = np.bincount(labels[is_known], weights=np.exp(log_a[is_known]), minlength=n_clusters)
    return KnownLabels(labels, free, counts, mass, log_a)


def known_score_sum(scores: Any, known: KnownLabels) -> float:
    """``sum_{i known} S_{i, y_i}`` (the known rows' part of the labels' cost)."""
    return float(known_label_scores(scores, known.labels).sum())


def known_label_scores(scores: Any, labels: np.ndarray) -> np.ndarray:
    """``S_{i, y_i}`` (n_known,) float64 of the rows whose label is known (``labels``
    (N,), -1: unknown); raises, naming them, where that pair is forbidden (``-inf``)."""
    rows = np.flatnonzero(labels >= 0)
    picked = rows_of(scores, rows)  # (n_known, K)
    xp = namespace(picked) if not isinstance(picked, ChunkedScores) else picked.namespace()
    if isinstance(picked, ChunkedScores):
        picked = picked[0 : rows.size]
    where = device_of(picked)
    own = picked[from_host(np.arange(rows.size), xp, where), from_host(labels[rows], xp, where)]
    own = to_numpy(xp.astype(own, xp.float64))
    if not np.all(np.isfinite(own)):
        bad = rows[~np.isfinite(own)]
        raise ValueError(
            f"known_labels: {bad.size} known label(s) are forbidden pairs (score -inf) "
            f"of their samples (rows {', '.join(map(str, bad[:5]))}"
            f"{', ...' if bad.size > 5 else ''}); give those samples a label they allow"
        )
    return own


def rows_of(scores: Any, rows: np.ndarray) -> Any:
    """The rows ``rows`` of the scores: a copy of them if it fits in half the available
    memory (NumPy; always for device arrays), else a stream that gathers them."""
    if isinstance(scores, ChunkedScores):
        return ChunkedScores(lambda i0, i1: scores[rows[i0:i1]], n_samples=rows.size)
    copy_bytes = rows.size * scores.shape[1] * scores.dtype.itemsize
    if isinstance(scores, np.ndarray) and copy_bytes > 0.5 * available_memory():
        return ChunkedScores(lambda i0, i1: scores[rows[i0:i1]], n_samples=rows.size)
    xp = namespace(scores)
    return scores[from_host(rows, xp, device_of(scores)), ...]


def _unassigned_scores(
    value: Any,
    scores: Any,
    free_scores: Any,
    known: KnownLabels | None,
    options: Options,
    index: int | None,
) -> np.ndarray:
    """``s0`` (N_free,): given, or each row's log-sum-exp of its scores."""
    if value is None:
        return to_numpy(options.backend.row_logsumexp(free_scores)).astype(np.float64)
    s0 = check.finite_vector(value, scores.shape[0], _named("unassigned_scores", index))
    return s0 if known is None else s0[known.free]


def _start(value: Any, n_clusters: int, n_columns: int, name: str) -> np.ndarray | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value not in STARTS:
            raise ValueError(
                f"{name}: expected a previous result's potential ({n_clusters},), one of "
                f"{STARTS} or None, got {value!r}"
            )
        return value
    host = check.as_host(value)
    if n_columns > n_clusters and host.shape == (n_clusters,):  # no unassigned potential
        return np.append(check.initial_potential(host, n_clusters, name), 0.0)
    return check.initial_potential(host, n_columns, name)


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
