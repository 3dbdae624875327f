"""Where a solve starts: a given potential, a subsample's solve, or zero.

``init=`` of :func:`otlabel.assign` selects one (per head):

- an array (K,): a previous result's ``potential`` (valid at another epsilon:
  potentials are in score units), ``"given"``;
- ``"subsample"``: the potential of the same problem solved on a 1-in-``stride``
  subsample of the rows (about :data:`SUBSAMPLE_ROWS` rows, at least 20 per
  cluster) to :data:`SUBSAMPLE_TOL`, with the backend's subsample kernel (the log
  domain, or a stored kernel where it is faster: the Numba backend's, which stores
  a sparse kernel of the subsample once its error is at most 1); the passes it
  spent are reported as ``res.phases["start"]``;
- None: the backend decides (:meth:`wants_subsample`): a subsample for a large
  cold problem where the stored kernel follows (the Numba backend on float32
  scores or a stream), else zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._arrays import to_numpy
from .solver import Iterate, Kernel, Record, UnstableIteration, quiet, solve

if TYPE_CHECKING:
    from .problem import Head, Options

#: Large problems solved cold start from a solve on about this many rows (at
#: least 20 per cluster), to this tolerance; it pays from twice its size on
#: (docs/benchmarks-history.md, "subsample start").
SUBSAMPLE_ROWS = 20_000
SUBSAMPLE_TOL = 3e-2
#: Times the subsample's solve goes back to a stored kernel after one starved a
#: cluster (kept none of its entries), before it stays in the log domain.
STARVED_RETRIES = 2
#: What ``init=`` may name.
STARTS = ("subsample",)


@dataclass
class Start:
    """A head's starting cluster potential and where it came from."""

    potential: np.ndarray  # (K,) g, score units, on the host
    kind: str  # "given", "subsample", "zero" or "exact" (otlabel.unregularised)
    passes: int = 0  # passes of the initialiser's own solve (over its rows)
    #: over-relaxation weight that the start's own solve settled on ("auto"), which
    #: the main solve takes instead of estimating it again; 1: none
    weight: float = 1.0


def start_of(head: Head, options: Options, *, reducer: Any = None) -> Start:
    """The start of ``head``'s solve, as its ``init`` asks (see the module docstring)."""
    n_clusters = head.scores.shape[1] + (head.virtual is not None)  # + partial mass's column
    if isinstance(head.init, np.ndarray):
        return Start(head.init, "given")
    stride = subsample_stride(*head.scores.shape)
    wanted = head.init == "subsample" or (
        head.init is None
        and reducer is None
        and not head.forbidden  # a subsample of forbidden pairs may admit no plan
        and stride > 1
        and options.backend.wants_subsample(head, options)
    )
    if wanted:
        return subsample_start(head, options, max(stride, 2), reducer)
    return Start(np.zeros(n_clusters), "zero")


def subsample_start(head: Head, options: Options, stride: int, reducer: Any = None) -> Start:
    """The potential of the solve on rows ``0, stride, 2 stride, ...`` of ``head``."""
    backend = options.backend
    rows = backend.subsample_rows(head.scores, stride)  # the kernels read it once per pass
    sub_weights = np.exp(head.log_a[::stride])
    total = float(np.sum(sub_weights))
    if reducer is not None:
        total = float(reducer.sum(np.array([total]))[0])
    n_columns = rows.shape[1] + (head.virtual is not None)
    sub_log_a, start = backend.vectors(rows, np.log(sub_weights / total), np.zeros(n_columns))
    virtual = None
    if head.virtual is not None:
        (virtual,) = backend.vectors(rows, np.ascontiguousarray(head.virtual[::stride]))
    record = Record()

    def solve_from(kernel: Kernel, potential: Any) -> Iterate:
        return solve(
            kernel,
            head.constraint.to(potential),
            options.epsilon,
            potential,
            tol=SUBSAMPLE_TOL,
            max_iter=max(options.max_iter - len(record.errors), 1),
            omega=options.overrelaxation if head.constraint.relaxable else 1.0,
            reducer=reducer,
            record=record,
            virtual=virtual,
        )

    potential, attempt = start, 0
    with quiet(start):
        while True:
            # shards stay in the log domain, which every shard leaves (or not) together
            in_log_domain = reducer is not None or attempt > STARVED_RETRIES
            if in_log_domain:
                kernel = backend.log_kernel(rows, sub_log_a, options)
            else:
                kernel = backend.subsample_kernel(rows, sub_log_a, options, SUBSAMPLE_TOL)
            try:
                solved = solve_from(kernel, potential)
                break
            except UnstableIteration as unstable:
                if in_log_domain or kernel.method == "log":  # no other domain to go to
                    raise
                # a stored kernel kept no entry of some cluster: log passes from the
                # last finite potential (which feed the starved cluster), then again
                potential, attempt = unstable.potential, attempt + 1
    potential = to_numpy(solved.next_potential)
    return Start(potential, "subsample", len(record.errors), solved.weight)


def subsample_stride(n_samples: int, n_clusters: int) -> int:
    """1 (no subsample) unless the matrix has at least twice the subsample's rows."""
    rows = max(SUBSAMPLE_ROWS, 20 * n_clusters)
    return n_samples // rows if n_samples >= 2 * rows else 1
