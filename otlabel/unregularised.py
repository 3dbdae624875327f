"""``epsilon=0`` and small epsilons: the exact labels' dual as the answer, or the start.

Without entropy the problem is a linear program whose optimum (under count
bounds, or the relaxed sizes' concave reward) the exact rounding already
computes from any potential, with an optimal dual that certifies it.  A
Sinkhorn solve at a moderate epsilon (:func:`warm_epsilon`: a fixed fraction of
the scores' spread) gives a potential from which that rounding has little to
move; its dual then replaces the potential, ``f_i = -(S_{i,y_i} + g_{y_i})`` the
row potential (the labels are each sample's best cluster at ``g``: complementary
slackness), and the plan is the labels' plan (each sample's weight on its label).

A small positive epsilon (below :data:`SMALL_EPSILON` times the warm one) starts
from that dual (:func:`exact_start`): the entropic potential is within about
``epsilon log N`` of an optimal dual of the unregularised problem, so the passes
at the small epsilon only settle the samples that are nearly tied there, instead
of crawling ``epsilon`` at a time from far away (100 000 x 100 normal scores at
0.001: 2 201 passes cold before the over-relaxation kept its weight from phase to
phase, 242 from the dual now).

>>> import otlabel
>>> res = otlabel.assign(otlabel.make_scores(600, 6, seed=0), epsilon=0)
>>> res.epsilon, res.gap <= 1e-9, res.counts.tolist()
(0.0, True, [100, 100, 100, 100, 100, 100])
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from ._arrays import device_of, from_host, namespace, to_numpy
from .central_dual import central_dual
from .initializers import Start, start_of
from .rounding import HardLabels, WithColumn, hard_labels, label_scores
from .solver import SolveOutput, solve_head

__all__ = [
    "CENTRAL_CLUSTERS",
    "SMALL_EPSILON",
    "TINY_EPSILON",
    "WARM_SPREAD",
    "WARM_TOL",
    "exact_solve_output",
    "exact_start",
    "label_plan",
    "wants_exact_start",
    "warm_epsilon",
]

#: The Sinkhorn solve before the exact labels runs at this fraction of the scores'
#: spread (the standard deviation of their finite entries): 0.005 is SeLa's 0.04 on
#: log-probability heads (standard deviation about 8).
WARM_SPREAD = 0.005
#: Rows read to estimate the spread.
SPREAD_ROWS = 1024
#: An epsilon below this fraction of the warm one starts from the exact labels' dual.
SMALL_EPSILON = 0.6
#: An epsilon below this fraction of the warm one starts from the labels' central
#: dual (:mod:`otlabel.central_dual`) where their plan meets the sizes.
TINY_EPSILON = 1e-3
#: Clusters above which the central dual is not computed: Karp's algorithm is
#: ``O(K^3)``, 2 s at K = 1 000 and 24 s at K = 2 000 on a 2-core host.
CENTRAL_CLUSTERS = 1000
#: The warm solve's tolerance (at most the caller's): the exact labels need only a
#: potential close enough that the repair has little to move.
WARM_TOL = 1e-3


def wants_exact_start(head: Any, options: Any, collective: Any) -> float | None:
    """The warm epsilon when ``head`` (cold, one process) should start from the exact
    labels' dual, else None: its epsilon is small against the scores' spread, and exact
    labels exist for its constraint (fixed sizes: K <= N)."""
    if head.init is not None or collective is not None or options.epsilon == 0:
        return None
    if options.rounding != "balanced":  # the labels' counts are checked for it only
        return None
    if not head.constraint.counts_bounded:  # relaxed sizes: measured slower from it
        return None
    n_rows, n_clusters = head.scores.shape
    if head.constraint.kind == "fixed" and head.virtual is None and n_clusters > n_rows:
        return None
    warm = warm_epsilon(head)
    return warm if options.epsilon < SMALL_EPSILON * warm else None


def exact_start(head: Any, options: Any, warm: float) -> Start:
    """The exact labels' dual (K,) or (K + 1,) from a solve at ``warm``: the start of
    a solve at a small epsilon; its passes count as the start's (and ``callback``
    hears them, numbered from 1 as the main solve's are next)."""
    solving = replace(options, epsilon=warm, tol=max(options.tol, WARM_TOL), return_plan=False)
    solved = solve_head(head, solving, start_of(head, solving))
    labels = hard_labels(
        head.scores,
        to_numpy(solved.potential),
        head.constraint,
        "balanced",
        options.backend,
        virtual=head.virtual,
        unassigned=solved.unassigned_potential,
        argmax=None if solved.argmax is None else to_numpy(solved.argmax),
    )
    assert labels.dual is not None and labels.labels is not None  # exact labels
    dual = labels.dual
    if wants_central_dual(head, options, warm, labels.labels):
        dual, _ = central_dual(head.scores, labels.labels, dual)
    return Start(dual, "exact", solved.n_iter)


def wants_central_dual(head: Any, options: Any, warm: float, labels: np.ndarray) -> bool:
    """Whether a solve at ``options.epsilon`` should start from the labels' central dual:
    an epsilon below :data:`TINY_EPSILON` times the warm one, where Sinkhorn cannot
    move the rounding's dual off its ties, at most :data:`CENTRAL_CLUSTERS` clusters,
    and a plan of the labels that meets the fixed sizes to ``tol`` (so that the
    entropic plan at that epsilon is theirs)."""
    if options.epsilon >= TINY_EPSILON * warm or head.constraint.kind != "fixed":
        return False
    n_clusters = head.scores.shape[1]
    if head.virtual is not None or head.known is not None or n_clusters > CENTRAL_CLUSTERS:
        return False
    masses = np.bincount(labels, weights=np.exp(head.log_a), minlength=n_clusters)
    target = np.asarray(to_numpy(head.constraint.target), dtype=np.float64)
    return float(np.sum(np.abs(masses - target))) <= options.tol / 2


def warm_epsilon(head: Any, collective: Any = None) -> float:
    """:data:`WARM_SPREAD` times the standard deviation of the finite scores of
    :data:`SPREAD_ROWS` rows, read as four contiguous slices spread over the matrix
    (the largest over a group's ranks, so that every rank solves at the same
    epsilon); 1 for constant scores."""
    n_rows = head.scores.shape[0]
    width = max(1, SPREAD_ROWS // 4)
    starts = sorted({min(n_rows - 1, q * n_rows // 4) for q in range(4)})
    values = np.concatenate(
        [to_numpy(head.scores[i : min(n_rows, i + width)]).ravel() for i in starts]
    ).astype(np.float64)
    finite = values[np.isfinite(values)]
    largest = float(np.max(np.abs(finite))) if finite.size else 0.0
    # in units of the largest score: the squares of scores beyond 1e154 overflow
    spread = largest * float(np.std(finite / largest)) if largest > 0 else 0.0
    if collective is not None:
        spread = -float(collective.min(np.array([-spread]))[0])
    return WARM_SPREAD * spread if spread > 0 else 1.0


def exact_solve_output(
    solved: SolveOutput, labels: HardLabels, head: Any, backend: Any
) -> SolveOutput:
    """The solve's output with the exact labels' dual as its potentials: ``g`` the
    certificate's (as it is: under count bounds its level is part of the optimal dual,
    so fixed sizes' ``sum_k b_k g_k = 0`` does not hold), ``f_i = -(S_{i,y_i}
    + g_{y_i})`` (every free row has a label); the record (passes, error) stays the
    warm solve's, ``converged`` is True (the labels are exact, ``gap`` certifies them)."""
    assert labels.labels is not None and labels.dual is not None  # exact labels
    dual = np.asarray(labels.dual, dtype=np.float64)
    # a cluster no sample may join has an infinite dual (relaxed sizes): any finite
    # value gives the same labels and predictions
    dual = np.where(np.isfinite(dual), dual, 0.0)
    n_clusters = head.scores.shape[1]
    chosen = np.asarray(np.where(labels.labels < 0, n_clusters, labels.labels), np.int64)  # (N,)
    scores = head.scores if head.virtual is None else WithColumn(head.scores, head.virtual)
    _, rows_per_block = backend.rounding_passes(scores)
    own = label_scores(scores, chosen, rows_per_block)  # (N,)
    like = solved.potential
    xp, where = namespace(like), device_of(like)
    return replace(
        solved,
        potential=from_host(dual[:n_clusters], xp, where),
        row_potential=from_host(-(own + dual[chosen]), xp, where),
        unassigned_potential=None if head.virtual is None else float(dual[n_clusters]),
        argmax=None,
        converged=True,  # the answer is the labels, exact whatever the warm solve reached
    )


def unwarmed_output(head: Any, start: Any, backend: Any) -> SolveOutput:
    """The output of a warm solve that could not run (its log domain left the
    floating-point range: a tiny batch far from its start, say): its start, no pass.
    The exact labels do not need it; they start from that potential instead."""
    n_clusters = head.scores.shape[1]
    potential, row_potential = backend.vectors(
        head.scores, np.asarray(start.potential[:n_clusters], np.float64),
        np.zeros(head.scores.shape[0]),
    )  # fmt: skip
    unassigned = None
    if head.virtual is not None:  # partial mass: the virtual column's g0 comes last
        unassigned = (
            float(start.potential[n_clusters]) if start.potential.size > n_clusters else 0.0
        )
    return SolveOutput(
        row_potential=row_potential, potential=potential, n_iter=0, error=math.inf,
        converged=False, method="log", errors=[], phases={"start": start.passes},
        start=start.kind, unassigned_potential=unassigned,
    )  # fmt: skip


def label_plan(scores: Any, labels: np.ndarray, log_a: np.ndarray) -> Any:
    """The labels' plan (N, K) in the scores' library and dtype: each sample's weight
    ``a_i`` on its label (none for an unassigned one)."""
    template = scores.template() if hasattr(scores, "template") else scores
    xp, where = namespace(template), device_of(template)
    plan = np.zeros(scores.shape)
    assigned = np.flatnonzero(labels >= 0)
    plan[assigned, labels[assigned]] = np.exp(log_a[assigned])
    return xp.astype(from_host(plan, xp, where), template.dtype)
