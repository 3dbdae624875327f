"""The front door: :func:`assign` and :func:`sinkhorn`.

Each builds the validated problem (:mod:`otlabel.problem`), hands every head to
the solver (:func:`otlabel.solver.solve_head`, with the backend the problem
chose), turns the potentials into hard labels (:mod:`otlabel.rounding`), and
returns one :class:`~otlabel.Result` (:func:`otlabel.result.assemble`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ._arrays import to_numpy
from .initializers import start_of
from .prediction import predict
from .problem import DEFAULT_MAX_ITER, DEFAULT_TOL, Head, Options, build_problem
from .result import HeadOutcome, Result, assemble, with_known_rows
from .rounding import hard_labels
from .solver import plan_of, solve_head
from .unregularised import (
    WARM_TOL,
    exact_solve_output,
    exact_start,
    label_plan,
    unwarmed_output,
    wants_exact_start,
    warm_epsilon,
)

__all__ = ["DEFAULT_MAX_ITER", "DEFAULT_TOL", "assign", "predict", "sinkhorn", "solve_and_label"]


def assign(
    scores: Any,
    epsilon: float = 0.04,
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
    mass: float = 1.0,
    known_labels: Any = None,
    unassigned_scores: Any = None,
    callback: Callable[[int, float], Any] | None = None,
) -> Result:
    r"""Balanced cluster labels from a score matrix, by entropic optimal transport.

    Solves, for scores ``S`` (N, K), sample weights ``a`` and cluster
    proportions ``b``,

    .. math::

        \max_{Q \ge 0,\; Q 1_K = a,\; Q^T 1_N = b} \langle Q, S\rangle + \epsilon H(Q)

    (or, with ``min_size``/``max_size``, with ``lo <= Q^T 1_N <= hi`` instead of
    fixed cluster masses) by Sinkhorn-Knopp matrix scaling (one read of the
    matrix per iteration), then turns the plan into hard labels.  SeLa's
    ``lambda`` is ``1/epsilon``.  Adding a constant to a row of ``S`` changes
    nothing, so logits and log-probabilities give the same answer.

    Parameters
    ----------
    scores : array (N, K), stack (H, N, K), list of (N, K) arrays, or ChunkedScores
        Model scores: logits, log-probabilities or similarities, finite or
        ``-inf`` (a forbidden pair: never in the plan or the labels); a
        NumPy array, a Torch tensor (CPU or CUDA) or a CuPy array, solved on
        its device; results come back in its library.  float32 and float64
        are kept as they are; Torch's float16 and bfloat16 are read block by
        block in float32; NumPy's float16, integers and non-native byte order
        are converted (one copy).  A stack
        or list is H heads solved as H problems, each stopping on its own (a
        list may mix K).  :class:`~otlabel.ChunkedScores`: a matrix read block
        by block, never held whole.
    epsilon : float, default 0.04
        Entropic regularisation in score units (SeLa: ``1/lambda``, 0.04 on
        ImageNet; SwAV: 0.05).  Smaller is closer to the exact assignment and
        takes more iterations.  0: the unregularised problem (needs
        ``rounding="balanced"``): the exact labels, ``potential`` and
        ``row_potential`` an optimal dual that certifies them, ``plan`` the
        labels' plan; the record (passes, error) is that of the Sinkhorn solve
        that warms them, at a fraction of the scores' spread.
    cluster_weights : array (K,) or None
        Cluster proportions ``b`` (fixed sizes): positive, normalised to sum 1;
        None is uniform.  For H heads: one (K,) array for all, (H, K), or a list.
    sample_weights : array (N,) or None
        Sample weights ``a`` of the Sinkhorn solve: positive, normalised;
        None is uniform.  Hard labels count samples, not weights.
    tol : float, default 1e-4
        Stop when the L1 marginal error of the plan (rows and columns) is at
        most ``tol``; any ``tol`` a float64 solve reaches, float32 scores reach
        too (float32 kernels are followed by exact float64 passes).
    max_iter : int, default 5000
        Most Sinkhorn passes; if reached, ``converged`` is False and a
        :class:`~otlabel.ConvergenceWarning` is issued.
    method : {"auto", "scaling", "log"}
        ``"scaling"`` iterates on ``exp((S - max_k S)/epsilon)`` (fast, needs a
        moderate score spread over epsilon); ``"log"`` on the potentials
        (always finite).  ``"auto"`` takes the scaling domain when it is
        provably safe for the input (with Numba and float32 scores: the log
        domain, then a stored stabilised kernel, dense or sparse) and falls
        back to the log domain, warm, if it under- or overflows anyway.  It
        never returns NaN or inf.
    backend : {"auto", "numpy", "numba", "torch", "triton", "cupy"}
        Implementation of the iteration.  ``"auto"`` picks the fastest
        installed one for the input's library: Numba (else NumPy) for NumPy
        arrays, Torch for tensors, CuPy for CuPy arrays.  ``"triton"`` (CUDA
        tensors; opt-in) fuses the log-domain pass into one Triton kernel.
    rounding : {"balanced", "argmax", None}
        ``"balanced"``: labels with ``floor(N b_k) <= n_k <= ceil(N b_k)`` that
        maximise ``sum_i S_{i, y_i}`` (exact, with a certified ``gap``).
        ``"argmax"``: ``argmax_k (S_ik + g_k)``, SeLa's labels (roughly
        balanced).  None: no labels, only the duals (and plan).
    init : array (K,), "subsample" or None
        Where the solve starts: a previous result's ``potential`` (also valid at
        another epsilon; a converged one takes one pass), ``"subsample"`` (the
        potential of a solve on a strided subsample of the rows), or None
        (``"subsample"`` for large float32 problems with the Numba backend, else
        zero).  ``res.start`` says which was used.
    return_plan : bool, default False
        Also return the (N, K) plan.
    overwrite_scores : bool, default False
        Allow the solver to use the ``scores`` array as workspace (build its
        kernel in place, like SciPy's ``overwrite_a``), so that a matrix that
        fits memory only once can be solved fast.  On every exit (a return, an
        error, an interrupt) the array holds the scores again up to float32
        rounding, except entries the stored kernel flushed (more than about
        ``87 epsilon`` below their row's best), which come back below the flush
        threshold (see the guide).  A read-only array (or memmap) raises; where
        the kernel cannot undo its entries (``-inf``, a spread beyond the
        dtype's exponent range) it takes new memory instead.
    n_threads : int or None
        Thread count of the fused kernels (results are identical run to run and
        do not depend on the count) and of Torch on the CPU (process-wide for
        the call's duration; None leaves Torch's alone).  The NumPy backend uses
        the BLAS library's own threads.
    overrelaxation : "auto" or float, default "auto"
        Weight ``omega`` of over-relaxed Sinkhorn: each potential moves to
        ``(1 - omega) old + omega new``.  ``"auto"`` runs a few plain passes,
        measures the convergence rate and takes the successive-over-relaxation
        optimum (at most 1.8; 4 to 5 times fewer passes at SeLa's settings),
        halving its excess over 1 whenever the error stops falling, and carries
        it from phase to phase of the solve.  A number in (0, 2) fixes it;
        1.0 is plain Sinkhorn-Knopp as SeLa runs it.  The fixed point (and so
        the answer) is the same for every weight (proven for fixed sizes,
        measured for bounded and relaxed ones: docs/cluster-sizes.md).
    min_size, max_size : float, array (K,) or None
        Bounded cluster sizes, as fractions of all the mass: ``min_size_k <=
        (Q^T 1)_k <= max_size_k`` in the Sinkhorn solve, and counts
        ``floor(N min_size_k) <= n_k <= ceil(N max_size_k)`` in the balanced
        labels.  A missing bound is 0 (lower) or 1 (upper).  Feasible bounds:
        ``0 <= min_size <= max_size``, ``max_size > 0``, ``sum(min_size) <= 1 <=
        sum(max_size)``.  Not together with ``cluster_weights``.  The potential
        then has no free constant (0: the cluster is inside its box).
    callback : callable or None
        ``callback(n_iter, error)`` after every pass over the matrix (for H
        heads, every head's passes in turn; ``n_iter`` restarts at 1, as it does
        after the warm solve of ``epsilon=0`` or of a small epsilon).

    Returns
    -------
    Result
        ``labels``, ``counts``, ``potential``, ``row_potential``, ``n_iter``,
        ``error`` (the float64 error of the returned iterate), ``converged``,
        ``errors`` (every pass's), ``phases`` (passes per phase), ``start``,
        ``backend``, ``method``, ``epsilon``, ``cost``, ``gap``, ``plan``; see
        :class:`~otlabel.Result`.

    Raises
    ------
    ValueError, TypeError
        For invalid input, naming the argument: NaN or ``+inf`` scores, a row
        of ``-inf`` only or forbidden pairs that admit no plan (naming the rows
        or clusters), wrong
        shapes, non-positive or non-finite weights, ``K > N`` with balanced
        rounding and fixed sizes, infeasible size bounds, ``epsilon <= 0``,
        unknown names.
    FloatingPointError
        With ``method="scaling"`` forced on an input that overflows it.

    See Also
    --------
    sinkhorn : the same solve without rounding.

    References
    ----------
    Y. M. Asano, C. Rupprecht, A. Vedaldi, "Self-labelling via simultaneous
    clustering and representation learning", ICLR 2020.
    M. Cuturi, "Sinkhorn distances: lightspeed computation of optimal
    transport", NeurIPS 2013.

    Examples
    --------
    >>> import numpy as np
    >>> import otlabel
    >>> scores = otlabel.make_scores(1000, 10, seed=0)  # log-probabilities
    >>> res = otlabel.assign(scores, epsilon=0.05)
    >>> res.converged, res.counts.tolist()
    (True, [100, 100, 100, 100, 100, 100, 100, 100, 100, 100])
    >>> again = otlabel.assign(scores, epsilon=0.05, init=res.potential)
    >>> int(again.n_iter), bool((again.labels == res.labels).all())
    (1, True)
    """
    problem = build_problem(
        scores,
        epsilon,
        cluster_weights=cluster_weights,
        sample_weights=sample_weights,
        tol=tol,
        max_iter=max_iter,
        method=method,
        backend=backend,
        rounding=rounding,
        init=init,
        return_plan=return_plan,
        overwrite_scores=overwrite_scores,
        n_threads=n_threads,
        overrelaxation=overrelaxation,
        min_size=min_size,
        max_size=max_size,
        size_penalty=size_penalty,
        mass=mass,
        known_labels=known_labels,
        unassigned_scores=unassigned_scores,
        callback=callback,
    )
    options = problem.options
    with options.backend.context(options.n_threads):
        outcomes = [solve_and_label(head, options) for head in problem.heads]
    return assemble(
        outcomes,
        problem.layout,
        backend=options.backend.name,
        epsilon=options.epsilon,
        tol=options.tol,
        reference=problem.reference,
    )


def sinkhorn(
    scores: Any,
    epsilon: float = 0.04,
    *,
    cluster_weights: Any = None,
    sample_weights: Any = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    method: str = "auto",
    backend: str = "auto",
    init: Any = None,
    return_plan: bool = False,
    overwrite_scores: bool = False,
    n_threads: int | None = None,
    overrelaxation: float | str = "auto",
    min_size: Any = None,
    max_size: Any = None,
    size_penalty: Any = None,
    mass: float = 1.0,
    known_labels: Any = None,
    unassigned_scores: Any = None,
    callback: Callable[[int, float], Any] | None = None,
) -> Result:
    """The Sinkhorn solve of :func:`assign` without hard labels.

    Returns the potentials (``potential`` g, ``row_potential`` f), the
    convergence record and, with ``return_plan=True``, the plan
    ``exp((S_ik + f_i + g_k) / epsilon)``.  Parameters as in :func:`assign`.

    Examples
    --------
    >>> import numpy as np
    >>> import otlabel
    >>> scores = otlabel.make_scores(500, 5, seed=1, dtype=np.float64)
    >>> res = otlabel.sinkhorn(scores, epsilon=0.1, tol=1e-8, return_plan=True)
    >>> plan = res.plan.astype(np.float64)
    >>> bool(np.allclose(plan.sum(axis=0), 1 / 5, atol=1e-7)), res.labels is None
    (True, True)
    """
    return assign(
        scores,
        epsilon,
        cluster_weights=cluster_weights,
        sample_weights=sample_weights,
        tol=tol,
        max_iter=max_iter,
        method=method,
        backend=backend,
        rounding=None,
        init=init,
        return_plan=return_plan,
        overwrite_scores=overwrite_scores,
        n_threads=n_threads,
        overrelaxation=overrelaxation,
        min_size=min_size,
        max_size=max_size,
        size_penalty=size_penalty,
        mass=mass,
        known_labels=known_labels,
        unassigned_scores=unassigned_scores,
        callback=callback,
    )


def solve_and_label(
    head: Head, options: Options, *, collective: Any = None, n_free: int | None = None
) -> HeadOutcome:
    """One head: the solve, its hard labels and (if asked) its plan, over every row
    (with known labels, the known rows keep theirs).

    ``collective`` and ``n_free``: for one shard of a problem sharded over the
    ranks of a group (:mod:`otlabel.distributed`), the group (which also reduces
    each pass) and the number of iterated samples over all ranks.
    """
    unregularised = options.epsilon == 0  # the Sinkhorn solve only warms the exact labels
    solving = options
    if unregularised:
        tol = max(options.tol, WARM_TOL)
        solving = replace(options, epsilon=warm_epsilon(head, collective), tol=tol)
    small = wants_exact_start(head, options, collective)  # a small epsilon: its warm one
    if small is not None:
        start = exact_start(head, options, small)
    else:
        start = start_of(head, solving, reducer=collective)
    try:
        solved = solve_head(head, solving, start, reducer=collective)
    except FloatingPointError:  # the warm solve's log domain left the range
        if not unregularised:
            raise
        solved = unwarmed_output(head, start, options.backend)  # exact labels from start
    potential = to_numpy(solved.potential)
    labels = hard_labels(
        head.scores,
        potential,
        head.constraint,
        options.rounding,
        options.backend,
        virtual=head.virtual,
        unassigned=solved.unassigned_potential,
        group=collective,
        n_samples=n_free,
        argmax=None if solved.argmax is None else to_numpy(solved.argmax),
    )
    if unregularised:
        solved = exact_solve_output(solved, labels, head, options.backend)
    plan = None
    if options.return_plan and unregularised:
        assert labels.labels is not None  # epsilon=0 is validated with exact labels
        plan = label_plan(head.scores, labels.labels, head.log_a)
    elif options.return_plan:
        log_a = head.log_a if head.virtual is None else None  # rows of the real columns only
        plan = plan_of(head.scores, solved.row_potential, solved.potential, options.epsilon, log_a)
    outcome = HeadOutcome(solved, labels.labels, None, labels.gap, labels.cost, plan)
    if head.known is not None:
        outcome = with_known_rows(outcome, head.known, head.scores)
    if outcome.labels is not None:
        outcome.counts = np.bincount(outcome.labels[outcome.labels >= 0], minlength=potential.size)
    return outcome
