"""The one result type that every path of :func:`otlabel.assign` returns, built in
one place (:func:`assemble`) from the outcome of each head."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import device

from ._arrays import like, namespace, to_numpy
from .prediction import predict

Array = Any


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped at ``max_iter`` before reaching ``tol``; see ``res.converged``."""


@dataclass(frozen=True, repr=False)
class Result:
    """What :func:`otlabel.assign` and :func:`otlabel.sinkhorn` return.

    For one score matrix ``(N, K)`` the per-head fields are scalars and the
    arrays have the shapes below.  For H heads (a stack ``(H, N, K)`` or a list),
    every field gains a leading head axis: ``labels (H, N)``, ``counts`` and
    ``potential (H, K)`` (lists for a list of heads with different K),
    ``n_iter``, ``error``, ``converged``, ``cost``, ``gap`` NumPy arrays ``(H,)``,
    ``method``, ``start`` tuples of H names, ``errors`` and ``phases`` lists of H.

    Arrays (``labels``, ``counts``, ``potential``, ``row_potential``, ``plan``)
    come back in the library of the input scores.

    Attributes
    ----------
    labels : (N,) int64 array or None
        Hard labels; None with ``rounding=None``.
    counts : (K,) int64 array or None
        Number of samples per cluster in ``labels``.
    potential : (K,) float64 array
        Cluster potential ``g`` in score units; ``argmax_k (S_ik + g_k)`` are the
        argmax labels, and ``init=potential`` warm-starts a later solve.  With
        fixed sizes it is defined up to a constant and normalised so that
        ``sum_k b_k g_k = 0``; with bounded sizes it has no free constant
        (``g_k = 0``: nothing pushes cluster k) and is reported as it is.
    row_potential : (N,) float64 array
        Sample potential ``f``: the plan is ``exp((S_ik + f_i + g_k) / epsilon)``.
    n_iter : int
        Sinkhorn passes over the matrix (each reads it once), every phase but
        the start's (which runs on a subsample).
    error : float
        L1 marginal violation of the returned plan, rows and columns together
        (the error of an iterate under the column constraint: docs/theory.md,
        section "The error of an iterate"), computed in
        float64 from the scores themselves.
    converged : bool
        Whether ``error <= tol``.
    errors : list of float
        The error after every pass, in order (``errors[-1] == error``).
    phases : dict
        Passes per phase: ``"start"`` (the initialiser's, over its subsample),
        ``"log"`` (log domain), ``"stored"`` (a stored or scaling-domain kernel),
        ``"finish"`` (exact float64 passes after a float32 kernel).
    start : str
        Where the solve started: ``"given"`` (``init=``), ``"subsample"``, ``"zero"``
        or ``"exact"`` (a small epsilon: the exact labels' dual of a solve at a larger
        one, :mod:`otlabel.unregularised`).
    unassigned_potential : float or None
        With partial mass (``mass < 1``): the potential ``g0`` of the virtual
        "unassigned" column, whose score is ``s0``; a sample is unassigned (label
        -1) by argmax when ``s0_i + g0`` beats every ``S_ik + g_k``.
    backend : str
        Backend that ran the iteration, e.g. ``"numpy"``.
    method : str
        ``"scaling"`` or ``"log"``: the domain that did the solve (a float64
        finish in the log domain may follow either; see ``phases``).
    epsilon : float
        The regularisation the problem was solved at.
    cost : float or None
        ``mean_i S_{i, y_i}`` of the hard labels (SeLa's objective is ``-cost``).
    gap : float or None
        Certified bound on ``(optimum - achieved) / N`` of the balanced labels'
        summed score (score units); None unless ``rounding="balanced"``.
    plan : (N, K) array or None
        The transport plan (rows sum to ``a_i``, total mass 1), only with
        ``return_plan=True``.
    """

    labels: Array | None
    counts: Array | None
    potential: Array
    row_potential: Array
    n_iter: Any
    error: Any
    converged: Any
    backend: str
    method: Any
    epsilon: float
    cost: Any
    gap: Any
    plan: Array | None = None
    errors: Any = field(default_factory=list)
    phases: Any = field(default_factory=dict)
    start: Any = "zero"
    unassigned_potential: Any = None

    def predict(self, scores: Any, *, soft: bool = False, **options: Any) -> Any:
        """Labels (or soft codes) for new samples from this result's potential:
        :func:`otlabel.predict` ``(scores, self, soft=soft, **options)``."""
        return predict(scores, self, soft=soft, **options)

    def __repr__(self) -> str:
        fields = [
            f"n_iter={self.n_iter!r}",
            f"error={_short(self.error)}",
            f"converged={self.converged!r}",
            f"method={self.method!r}",
            f"backend={self.backend!r}",
        ]
        if self.counts is not None:
            fields.append(f"cost={_short(self.cost)}")
            fields.append(f"cluster sizes {_size_range(self.counts)}")
        if self.gap is not None:
            fields.append(f"gap={_short(self.gap)}")
        return f"Result({', '.join(fields)})"


@dataclass
class HeadOutcome:
    """What one head's solve and labels gave: the parts of a :class:`Result`."""

    solved: Any  # otlabel.solver.SolveOutput
    labels: np.ndarray | None
    counts: np.ndarray | None
    gap: float | None
    cost: float | None
    plan: Array | None = None


def with_known_rows(outcome: HeadOutcome, known: Any, free_scores: Any) -> HeadOutcome:
    """A head's outcome on its free rows spread over every row: known rows keep their
    label, carry their whole mass to it in the plan, and have no row potential (NaN)."""
    n_total = known.labels.size
    labels = None
    if outcome.labels is not None:
        labels = known.labels.copy()
        labels[known.free] = outcome.labels
    solved = outcome.solved
    row_potential = np.full(n_total, np.nan)
    row_potential[known.free] = to_numpy(solved.row_potential)
    solved.row_potential = row_potential
    cost = outcome.cost
    if cost is not None:
        cost = (cost * known.free.size + known.score_sum) / n_total
    plan = None if outcome.plan is None else _plan_with_known(outcome.plan, known)
    return HeadOutcome(solved, labels, None, outcome.gap, cost, plan)


def _plan_with_known(free_plan: Array, known: Any) -> Array:
    """The (N, K) plan: the free rows' entries, and ``a_i`` on each known row's label."""
    xp = namespace(free_plan)
    where = device(free_plan)
    n_total, n_clusters = known.labels.size, free_plan.shape[1]
    one_hot = np.zeros((n_total, n_clusters))
    rows = np.flatnonzero(known.labels >= 0)
    one_hot[rows, known.labels[rows]] = np.exp(known.log_a[rows])
    plan = xp.asarray(one_hot.astype(to_numpy(free_plan[:1]).dtype), device=where)
    plan[xp.asarray(known.free, device=where), ...] = free_plan
    return plan


def assemble(
    outcomes: list[HeadOutcome],
    layout: str,
    *,
    backend: str,
    epsilon: float,
    tol: float,
    reference: Any,
) -> Result:
    """The one result of a call: per-head values (``layout="single"``), or stacked
    by head; arrays in the library and on the device of ``reference``."""
    for index, outcome in enumerate(outcomes):
        if not outcome.solved.converged:
            _warn_not_converged(None if layout == "single" else index, outcome.solved, tol)
    per_head: dict[str, list[Any]] = {
        "labels": [outcome.labels for outcome in outcomes],
        "counts": [outcome.counts for outcome in outcomes],
        "potential": [to_numpy(outcome.solved.potential) for outcome in outcomes],
        "row_potential": [to_numpy(outcome.solved.row_potential) for outcome in outcomes],
    }
    moved = {name: [like(v, reference) for v in values] for name, values in per_head.items()}
    moved["plan"] = [outcome.plan for outcome in outcomes]  # in the scores' library already
    scalars = {
        "n_iter": [outcome.solved.n_iter for outcome in outcomes],
        "error": [outcome.solved.error for outcome in outcomes],
        "converged": [outcome.solved.converged for outcome in outcomes],
        "cost": [outcome.cost for outcome in outcomes],
        "gap": [outcome.gap for outcome in outcomes],
    }
    records = {
        "method": [outcome.solved.method for outcome in outcomes],
        "errors": [outcome.solved.errors for outcome in outcomes],
        "phases": [outcome.solved.phases for outcome in outcomes],
        "start": [outcome.solved.start for outcome in outcomes],
        "unassigned_potential": [outcome.solved.unassigned_potential for outcome in outcomes],
    }
    if layout == "single":
        parts: list[dict[str, list[Any]]] = [moved, scalars, records]
        fields = {name: values[0] for part in parts for name, values in part.items()}
        return Result(**fields, backend=backend, epsilon=epsilon)
    return Result(
        **{name: _stack(values) for name, values in moved.items()},
        **{name: _column(values) for name, values in scalars.items()},
        method=tuple(records["method"]),
        errors=records["errors"],
        phases=records["phases"],
        start=tuple(records["start"]),
        unassigned_potential=_column(records["unassigned_potential"]),
        backend=backend,
        epsilon=epsilon,
    )


def _stack(values: list[Any]) -> Any:
    """Stack per-head arrays along a new first axis; a list if their shapes differ."""
    if values[0] is None:
        return None
    if len({tuple(value.shape) for value in values}) > 1:
        return values
    return namespace(values[0]).stack(values)


def _column(values: list[Any]) -> Any:
    """Per-head scalars as an (H,) array; None when the heads have none."""
    return None if values[0] is None else np.array(values)


def _warn_not_converged(head: int | None, solved: Any, tol: float) -> None:
    where = "" if head is None else f" (head {head})"
    error, tolerance = _distinct(float(solved.error), tol)
    warnings.warn(
        f"Sinkhorn stopped after max_iter={solved.n_iter} passes{where} with marginal error "
        f"{error} > tol={tolerance}; raise max_iter, raise epsilon, or warm-start "
        "with init=<previous result>.potential",
        ConvergenceWarning,
        stacklevel=4,  # _warn_not_converged <- assemble <- assign <- caller
    )


def _distinct(error: float, tol: float) -> tuple[str, str]:
    """``error`` and ``tol`` with the fewest significant digits (at least 3) that tell
    them apart: 1.0028e-4 against 1e-4 is ``0.00010028 > 0.0001``, not ``0.0001 > 0.0001``."""
    for digits in range(3, 18):
        shown = f"{error:.{digits}g}", f"{tol:.{digits}g}"
        if shown[0] != shown[1]:
            return shown
    return shown


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, separator=", ")
    return f"{value:.3g}" if isinstance(value, float) else repr(value)


def _size_range(counts: Any) -> str:
    heads = counts if isinstance(counts, list) else [counts]
    sizes = [np.asarray(c) for c in heads]
    return f"{min(int(c.min()) for c in sizes)}..{max(int(c.max()) for c in sizes)}"
