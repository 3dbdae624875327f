"""The front door: :func:`assign` and :func:`sinkhorn`.

Validation, the choice of backend and domain, the Sinkhorn solve
(:mod:`otlabel.solver`), hard labels (:mod:`otlabel.rounding`) and the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from . import _validation as check
from ._arrays import device_of, from_host, is_half, like, to_numpy
from .kernels import resolve_backend
from .result import Result, warn_not_converged
from .rounding import HostPasses, NumpyPasses, argmax_labels, balanced_labels
from .solver import (
    BLOCK_BYTES,
    LogKernel,
    ScalingKernel,
    SolveOutput,
    UnstableIteration,
    block_rows,
    plan_of,
    row_extremes,
    scaling_is_safe,
    solve,
)
from .streaming import ChunkedScores

#: Default stopping tolerance on the L1 marginal error (rows plus columns, plan
#: of total mass 1).  Chosen on evidence: argmax labels at this tolerance agree
#: with a solve converged to 1e-9 on at least 99.9% of samples on the benchmark
#: problems (tests/test_default_tol.py, docs/guide.md).
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITER = 5000
#: The working precision of the NumPy backend: every block is computed in
#: float64, whatever the storage precision of the scores.
WORK_DTYPE = np.float64
#: Backends whose potentials live on the scores' device (Torch, CuPy arrays).
ON_DEVICE = ("torch", "triton", "cupy")
#: Backends on Torch tensors: Torch's block sizes, passes and solve context.
ON_TORCH = ("torch", "triton")
#: Bytes per block of rows on a GPU (CuPy; Torch's are in kernels/torch_.py).
DEVICE_BLOCK_BYTES = 512 << 20


@dataclass(frozen=True)
class _Options:
    epsilon: float
    tol: float
    max_iter: int
    method: str
    backend: str
    rounding: str | None
    return_plan: bool
    overwrite_scores: bool
    n_threads: int | None
    overrelaxation: float | str


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
) -> Result:
    r"""Balanced cluster labels from a score matrix, by entropic optimal transport.

    Solves, for scores ``S`` (N, K), sample weights ``a`` and cluster
    proportions ``b``,

    .. math::

        \max_{Q \ge 0,\; Q 1_K = a,\; Q^T 1_N = b} \langle Q, S\rangle + \epsilon H(Q)

    by Sinkhorn-Knopp matrix scaling (one read of the matrix per iteration),
    then turns the plan into hard labels.  SeLa's ``lambda`` is ``1/epsilon``.
    Adding a constant to a row of ``S`` changes nothing, so logits and
    log-probabilities give the same answer.

    Parameters
    ----------
    scores : array (N, K), stack (H, N, K), list of (N, K) arrays, or ChunkedScores
        Model scores: logits, log-probabilities or similarities, finite; a
        NumPy array, a Torch tensor (CPU or CUDA) or a CuPy array, solved on
        its device; results come back in its library.  float32 and float64
        are kept as they are; Torch's float16 and bfloat16 are read block by
        block in float32; NumPy's float16 and integers are converted.  A stack
        or list is H heads solved as H problems, each stopping on its own (a
        list may mix K).  :class:`~otlabel.ChunkedScores`: a matrix read block
        by block, never held whole.
    epsilon : float, default 0.04
        Entropic regularisation in score units (SeLa: ``1/lambda``, 0.04 on
        ImageNet; SwAV: 0.05).  Smaller is closer to the exact assignment and
        takes more iterations.
    cluster_weights : array (K,) or None
        Cluster proportions ``b``: positive, normalised to sum 1; None is
        uniform.  For H heads: one (K,) array for all, (H, K), or a list.
    sample_weights : array (N,) or None
        Sample weights ``a`` of the Sinkhorn solve: positive, normalised;
        None is uniform.  Hard labels count samples, not weights.
    tol : float, default 1e-4
        Stop when the L1 marginal error of the plan (rows and columns) is at
        most ``tol``.
    max_iter : int, default 5000
        Most Sinkhorn passes; if reached, ``converged`` is False and a
        :class:`~otlabel.ConvergenceWarning` is issued.
    method : {"auto", "scaling", "log"}
        ``"scaling"`` iterates on ``exp((S - max_k S)/epsilon)`` (fast, needs a
        moderate score spread over epsilon); ``"log"`` on the potentials
        (always finite).  ``"auto"`` takes the scaling domain when it is
        provably safe for the input and falls back to the log domain, warm,
        if it under- or overflows anyway.  It never returns NaN or inf.
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
    init : array (K,) or None
        Warm start: a previous result's ``potential`` (also valid at another
        epsilon).
    return_plan : bool, default False
        Also return the (N, K) plan.
    overwrite_scores : bool, default False
        Allow the solver to use the ``scores`` array as workspace (build its
        kernel in place, like SciPy's ``overwrite_a``), so that a matrix that
        fits memory only once can be solved fast.  On return the array holds the
        scores again up to rounding, except entries far below their row's best
        (see the guide), which come back as an upper bound.
    n_threads : int or None
        Thread count of the fused kernels (results are identical run to run and
        do not depend on the count) and of Torch on the CPU.  The NumPy backend
        uses the BLAS library's own threads.
    overrelaxation : "auto" or float, default "auto"
        Weight ``omega`` of over-relaxed Sinkhorn: each potential moves to
        ``(1 - omega) old + omega new``.  ``"auto"`` runs a few plain passes,
        measures the convergence rate and takes the successive-over-relaxation
        optimum (at most 1.8; 4 to 5 times fewer passes at SeLa's settings),
        falling back to 1 if the error stalls.  A number in (0, 2) fixes it;
        1.0 is plain Sinkhorn-Knopp as SeLa runs it.  The fixed point (and so
        the answer) is the same for every weight.

    Returns
    -------
    Result
        ``labels``, ``counts``, ``potential``, ``row_potential``, ``n_iter``,
        ``error``, ``converged``, ``backend``, ``method``, ``epsilon``, ``cost``,
        ``gap``, ``plan``; see :class:`~otlabel.Result`.

    Raises
    ------
    ValueError, TypeError
        For invalid input, naming the argument: non-finite scores, wrong
        shapes, non-positive or non-finite weights, ``K > N`` with balanced
        rounding, ``epsilon <= 0``, unknown names.
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
    heads, layout = check.heads_of(scores)
    options = _options(
        heads,
        epsilon=epsilon,
        tol=tol,
        max_iter=max_iter,
        method=method,
        backend=backend,
        rounding=rounding,
        return_plan=return_plan,
        overwrite_scores=overwrite_scores,
        n_threads=n_threads,
        overrelaxation=overrelaxation,
    )
    n_heads = len(heads)
    sample_w = check.weights(sample_weights, heads[0].shape[0], "sample_weights")
    cluster_ws = check.per_head(cluster_weights, n_heads, layout, "cluster_weights")
    inits = check.per_head(init, n_heads, layout, "init")
    outcomes = []
    with _backend_context(options):
        for h, head in enumerate(heads):
            index = None if layout == "single" else h
            name = _name("cluster_weights", index)
            cluster_w = check.weights(cluster_ws[h], head.shape[1], name)
            start = check.initial_potential(inits[h], head.shape[1])
            outcomes.append(_assign_head(head, sample_w, cluster_w, start, options, index))
    reference = heads[0].template() if isinstance(heads[0], ChunkedScores) else heads[0]
    return _assemble(outcomes, layout, options, reference)


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
    )


def _options(heads: list[Any], **given: Any) -> _Options:
    """The validated options of a call (each check names its argument)."""
    return _Options(
        epsilon=check.positive_float(given["epsilon"], "epsilon"),
        tol=check.positive_float(given["tol"], "tol"),
        max_iter=check.positive_int(given["max_iter"], "max_iter"),  # type: ignore[arg-type]
        method=check.choice(given["method"], "method", check.METHODS),
        backend=resolve_backend(given["backend"], heads),
        rounding=check.choice(given["rounding"], "rounding", check.ROUNDINGS),
        return_plan=check.flag(given["return_plan"], "return_plan"),
        overwrite_scores=check.flag(given["overwrite_scores"], "overwrite_scores"),
        n_threads=check.positive_int(given["n_threads"], "n_threads", allow_none=True),
        overrelaxation=check.overrelaxation(given["overrelaxation"]),
    )


@dataclass
class _HeadOutcome:
    solved: SolveOutput
    labels: np.ndarray | None
    gap: float | None
    cost: float | None
    plan: np.ndarray | None


def _assign_head(
    scores: np.ndarray,
    sample_w: np.ndarray,
    cluster_w: np.ndarray,
    start: np.ndarray,
    options: _Options,
    head: int | None,
) -> _HeadOutcome:
    n_samples, n_clusters = scores.shape
    if options.rounding == "balanced" and n_clusters > n_samples:
        raise ValueError(
            f"{_name('scores', head)}: balanced rounding needs K <= N, got K={n_clusters} "
            f"clusters for N={n_samples} samples; use fewer clusters or rounding='argmax'"
        )
    row_max, row_min = _row_extremes(scores, options)
    check.check_finite_rows(row_max, row_min, _name("scores", head))
    log_a, log_b, start = _on_device(scores, options, np.log(sample_w), np.log(cluster_w), start)
    if isinstance(scores, ChunkedScores):
        if options.return_plan:
            raise ValueError(
                "return_plan: the plan is as large as the matrix, which ChunkedScores never "
                "holds; use return_plan=False (potentials and labels stay available)"
            )
        solved = _solve_stream(scores, log_a, log_b, start, options)
    else:
        solved, scores = _solve(scores, log_a, log_b, start, (row_max, row_min), options)
    if not solved.converged:
        warn_not_converged(head, solved.n_iter, solved.error, options.tol)
    plan = None
    if options.return_plan:
        plan = plan_of(scores, solved.row_potential, solved.potential, options.epsilon)
    solved.potential, solved.row_potential = map(to_numpy, (solved.potential, solved.row_potential))
    labels, gap, cost = _hard_labels(scores, solved.potential, cluster_w, options)
    return _HeadOutcome(solved, labels, gap, cost, plan)


def _on_device(scores: Any, options: _Options, *vectors: np.ndarray) -> tuple[Any, ...]:
    """Host vectors (log a, log b, the start) where the backend keeps its potentials:
    on the scores' device for Torch, Triton and CuPy, as they are otherwise."""
    if options.backend not in ON_DEVICE:
        return vectors
    template = scores.template() if isinstance(scores, ChunkedScores) else scores
    xp, where = array_namespace(template), device_of(template)
    return tuple(from_host(vector, xp, where) for vector in vectors)


def _hard_labels(
    scores: Any,
    potential: np.ndarray,
    cluster_w: np.ndarray,
    options: _Options,
    *,
    group: Any = None,
    n_samples: int | None = None,
) -> tuple[np.ndarray | None, float | None, float | None]:
    """``options.rounding``'s labels of these rows, the certified gap (balanced) and
    ``mean_i S[i, y_i]`` over these rows.  ``group``, ``n_samples``: a shard's rows
    (otlabel.distributed), the counts' bounds and the certificate then global."""
    passes, rows_per_block = _rounding_passes(scores, options)
    labels, gap = None, None
    if options.rounding == "balanced":
        balanced = balanced_labels(
            scores,
            potential,
            cluster_w,
            rows_per_block=rows_per_block,
            passes=passes,
            group=group,
            n_samples=n_samples,
        )
        labels, gap = balanced.labels, balanced.gap
    elif options.rounding == "argmax":
        labels = argmax_labels(scores, potential, rows_per_block, passes)
    cost = None if labels is None else _mean_label_score(scores, labels, rows_per_block)
    return labels, gap, cost


def _rounding_passes(scores: Any, options: _Options) -> tuple[Any, int]:
    """Who reads the matrix for rounding, and in blocks of how many rows."""
    if options.backend == "numba":
        from .kernels.numba_ import CHUNK_BYTES, SUB_BLOCK_ROWS
        from .kernels.rounding_numba import NumbaPasses

        row_bytes = scores.shape[1] * scores.dtype.itemsize
        return NumbaPasses(), max(SUB_BLOCK_ROWS, CHUNK_BYTES // row_bytes)
    if options.backend in ON_TORCH:
        from .kernels import torch_

        return torch_.TorchPasses(), torch_.rows_per_block(scores)
    if options.backend == "cupy":
        return HostPasses(), block_rows(scores.shape[1], 8, DEVICE_BLOCK_BYTES)
    return NumpyPasses(), block_rows(scores.shape[1])


def _backend_context(options: _Options) -> Any:
    """Thread count (Numba, Torch) and Torch's precision settings for the whole call."""
    if options.backend == "numba":
        from .kernels.numba_ import threads

        return threads(options.n_threads)
    if options.backend in ON_TORCH:
        from .kernels.torch_ import solve_context

        return solve_context(options.n_threads)
    return contextlib.nullcontext()


def _mean_label_score(scores: Any, labels: np.ndarray, rows_per_block: int) -> float:
    """``mean_i S[i, labels_i]``: N entries gathered (a stream: block by block)."""
    if not isinstance(scores, ChunkedScores):
        xp = array_namespace(scores)
        where = device_of(scores)
        rows = from_host(np.arange(labels.size), xp, where)
        picked = scores[rows, from_host(labels, xp, where)]  # (N,)
        return float(xp.sum(xp.astype(picked, xp.float64))) / labels.size
    total = 0.0
    for start in range(0, labels.size, rows_per_block):
        block = scores[start : start + rows_per_block]
        total += _mean_label_score(block, labels[start : start + rows_per_block], 0) * len(block)
    return total / labels.size


def _work(scores: Any, options: _Options) -> tuple[Any, int]:
    """The precision of the (n, K) temporaries, and the bytes of one block in it."""
    if options.backend in ON_TORCH:
        from .kernels import torch_

        return torch_.work_dtype(scores), torch_.block_bytes(scores)
    if options.backend == "cupy":
        xp = array_namespace(scores)
        return (xp.float64 if scores.dtype == xp.float64 else xp.float32), DEVICE_BLOCK_BYTES
    return WORK_DTYPE, BLOCK_BYTES


def _solve(
    scores: np.ndarray,
    log_a: np.ndarray,
    log_b: np.ndarray,
    start: np.ndarray,
    extremes: tuple[np.ndarray, np.ndarray],
    options: _Options,
) -> tuple[SolveOutput, np.ndarray]:
    """Sinkhorn in the chosen domain; the scaling domain falls back to the log domain.

    Returns the solve and the scores (rebuilt in place if the kernel was).
    """
    eps, method = options.epsilon, options.method
    row_max, row_min = extremes
    if method == "auto" and options.backend == "numba" and scores.dtype == np.float32:
        return _solve_numba_auto(scores, log_a, log_b, start, options)
    if is_half(scores) and method == "scaling":
        raise ValueError(
            "method: 'scaling' stores exp((S - max S)/eps) in the scores' precision, too "
            "coarse for float16/bfloat16; use method='auto' or 'log'"
        )
    if method == "auto":
        safe = (
            options.backend != "triton"  # its fused kernel is the log domain's
            and not is_half(scores)
            and scaling_is_safe(row_max, row_min, eps, scores.dtype)
        )
        method = "scaling" if safe else "log"
    done = 0
    if method == "scaling":
        overwrite = options.overwrite_scores and _writeable(scores)
        xp = array_namespace(scores)
        _, block_bytes = _work(scores, options)
        kernel = ScalingKernel(
            scores, log_a, eps, xp.float64, row_max, overwrite=overwrite, block_bytes=block_bytes
        )
        try:
            # The loop detects a non-finite iterate itself and raises
            # UnstableIteration; NumPy's own warnings on the way are noise.
            with np.errstate(all="ignore"):
                solved = solve(
                    kernel,
                    log_b,
                    eps,
                    start,
                    tol=options.tol,
                    max_iter=options.max_iter,
                    omega=options.overrelaxation,
                )
            return solved, kernel.restore_scores() if overwrite else scores
        except UnstableIteration as unstable:
            if options.method == "scaling":
                raise FloatingPointError(
                    f"method='scaling': {unstable}; the scores spread too far over "
                    "epsilon for this domain, use method='log' or 'auto'"
                ) from None
            scores = kernel.restore_scores() if overwrite else scores
            start, done = unstable.potential, unstable.n_iter
    log_kernel = _log_kernel(scores, log_a, options)
    solved = solve(
        log_kernel,
        log_b,
        eps,
        start,
        tol=options.tol,
        max_iter=options.max_iter - done,
        omega=options.overrelaxation,
    )
    solved.n_iter += done
    return solved, scores


def _solve_numba_auto(
    scores: np.ndarray,
    log_a: np.ndarray,
    log_b: np.ndarray,
    start: np.ndarray,
    options: _Options,
) -> tuple[SolveOutput, np.ndarray]:
    """Numba's log domain, then its stored stabilised kernel; warm log fallback.

    A large problem solved cold first solves a 1-in-``stride`` subsample of its
    rows (to ``SUBSAMPLE_TOL``, in the log domain) and starts from that
    potential with the stored kernel built at once: the expensive log-domain
    passes then run on the subsample only.
    """
    from .kernels.numba_ import NumbaKernel

    eps, tol, omega = options.epsilon, options.tol, options.overrelaxation
    start, warm = _subsample_start(scores, log_a, log_b, start, options)
    overwrite = options.overwrite_scores and scores.flags.writeable and scores.flags.c_contiguous
    kernel = NumbaKernel(
        scores, log_a, eps, options.n_threads, overwrite=overwrite, store_at_start=warm
    )
    try:
        with np.errstate(all="ignore"):  # a non-finite iterate is detected by the loop
            solved = solve(
                kernel, log_b, eps, start, tol=tol, max_iter=options.max_iter, omega=omega
            )
        return solved, kernel.restore_scores()
    except UnstableIteration as unstable:
        scores = kernel.restore_scores()
        remaining = options.max_iter - unstable.n_iter
        fallback = _log_kernel(scores, log_a, options)
        solved = solve(
            fallback, log_b, eps, unstable.potential, tol=tol, max_iter=remaining, omega=omega
        )
        solved.n_iter += unstable.n_iter
        return solved, scores


def _subsample_start(
    scores: Any, log_a: np.ndarray, log_b: np.ndarray, start: np.ndarray, options: _Options
) -> tuple[np.ndarray, bool]:
    """A cold start on a large matrix: the potential of a 1-in-``stride`` subsample.

    Returns the start and whether it came from a subsample.
    """
    from .kernels.numba_ import NumbaLogKernel

    stride = _subsample_stride(*scores.shape)
    if stride == 1 or np.any(start):
        return start, False
    rows = np.ascontiguousarray(scores[::stride])
    sub_log_a = log_a[::stride] - np.log(np.sum(np.exp(log_a[::stride])))
    sub_kernel = NumbaLogKernel(rows, sub_log_a, options.epsilon, options.n_threads)
    sub_solved = solve(
        sub_kernel,
        log_b,
        options.epsilon,
        start,
        tol=SUBSAMPLE_TOL,
        max_iter=options.max_iter,
        omega=options.overrelaxation,
    )
    return sub_solved.potential, True


def _solve_stream(
    scores: ChunkedScores,
    log_a: np.ndarray,
    log_b: np.ndarray,
    start: np.ndarray,
    options: _Options,
) -> SolveOutput:
    """A stream runs the log-domain kernel block by block (Numba: from a subsample's start)."""
    if options.method == "scaling":
        raise ValueError(
            "method: 'scaling' stores exp(S/eps), as large as the matrix; ChunkedScores are "
            "solved in the log domain, use method='auto' or 'log'"
        )
    if options.backend == "numba":
        start, _ = _subsample_start(scores, log_a, log_b, start, options)
    return solve(
        _log_kernel(scores, log_a, options),
        log_b,
        options.epsilon,
        start,
        tol=options.tol,
        max_iter=options.max_iter,
        omega=options.overrelaxation,
    )


def _row_extremes(scores: np.ndarray, options: _Options) -> tuple[np.ndarray, np.ndarray]:
    """Row maxima and minima (one read, which also finds NaN and inf)."""
    if isinstance(scores, ChunkedScores):  # block by block, as the kernels read it
        rows = block_rows(scores.shape[1], scores.dtype.itemsize) * 64
        parts = [
            _row_extremes(scores[start : start + rows], options)
            for start in range(0, scores.shape[0], rows)
        ]
        xp = scores.namespace()
        return xp.concat([p[0] for p in parts]), xp.concat([p[1] for p in parts])
    if options.backend == "numba":
        from .kernels import numba_

        return numba_.row_extremes(scores)
    work, block_bytes = _work(scores, options)
    return row_extremes(scores, work, block_bytes=block_bytes)


#: Large problems solved cold start from a solve on about this many rows
#: (at least 20 per cluster), to this tolerance.  Its log-domain passes cost an
#: ``exp`` per element; the sparse stored kernel's passes that follow cost little,
#: so a subsample pays from twice its size on (measured here with
#: ``otlabel.sinkhorn`` on head scores at epsilon 0.04, from 4x to 2x its size:
#: 50 000 x 1 000 5.3 s -> 2.1 s, 200 000 x 3 000 45 s -> 15 s).
SUBSAMPLE_ROWS = 20_000
SUBSAMPLE_TOL = 3e-2


def _subsample_stride(n_samples: int, n_clusters: int) -> int:
    """1 (no subsample) unless the matrix has at least twice the subsample's rows."""
    rows = max(SUBSAMPLE_ROWS, 20 * n_clusters)
    return n_samples // rows if n_samples >= 2 * rows else 1


def _log_kernel(scores: Any, log_a: Any, options: _Options) -> Any:
    """The log-domain kernel of the chosen backend."""
    if options.backend == "numba":
        from .kernels.numba_ import NumbaLogKernel

        return NumbaLogKernel(scores, log_a, options.epsilon, options.n_threads)
    if options.backend == "triton":
        from .kernels.triton_ import TritonLogKernel

        return TritonLogKernel(scores, log_a, options.epsilon)
    work, block_bytes = _work(scores, options)
    return LogKernel(scores, log_a, options.epsilon, work, block_bytes=block_bytes)


def _writeable(scores: Any) -> bool:
    """Whether the solver may build its kernel in place of ``scores``."""
    if isinstance(scores, np.ndarray):
        return bool(scores.flags.writeable)
    return True  # Torch and CuPy arrays are writeable


def _assemble(
    outcomes: list[_HeadOutcome], layout: str, options: _Options, reference: Any
) -> Result:
    """One result in the library of ``reference``: per-head values, or stacked by head."""
    result = _assemble_host(outcomes, layout, options)
    arrays = ("labels", "counts", "potential", "row_potential")
    moved = {name: _like(getattr(result, name), reference) for name in arrays}
    return dataclasses.replace(result, **moved)


def _like(value: Any, reference: Any) -> Any:
    if isinstance(value, list):
        return [like(item, reference) for item in value]
    return like(value, reference)


def _assemble_host(outcomes: list[_HeadOutcome], layout: str, options: _Options) -> Result:
    """One result: per-head values as they are, or stacked along a head axis."""
    solved = [outcome.solved for outcome in outcomes]
    labels = [outcome.labels for outcome in outcomes]
    counts = [
        None if lab is None else np.bincount(lab, minlength=run.potential.size)
        for lab, run in zip(labels, solved, strict=True)
    ]
    labelled = options.rounding is not None
    balanced = options.rounding == "balanced"
    fields: dict[str, Any] = {
        "labels": labels,
        "counts": counts,
        "potential": [run.potential for run in solved],
        "row_potential": [run.row_potential for run in solved],
        "plan": [outcome.plan for outcome in outcomes],
    }
    if layout == "single":
        run, outcome = solved[0], outcomes[0]
        return Result(
            **{name: values[0] for name, values in fields.items()},
            n_iter=run.n_iter,
            error=run.error,
            converged=run.converged,
            backend=options.backend,
            method=run.method,
            epsilon=options.epsilon,
            cost=outcome.cost,
            gap=outcome.gap,
        )
    stacked = {name: _stack(values) for name, values in fields.items()}
    return Result(
        **stacked,
        n_iter=np.array([run.n_iter for run in solved]),
        error=np.array([run.error for run in solved]),
        converged=np.array([run.converged for run in solved]),
        backend=options.backend,
        method=tuple(run.method for run in solved),
        epsilon=options.epsilon,
        cost=np.array([outcome.cost for outcome in outcomes]) if labelled else None,
        gap=np.array([outcome.gap for outcome in outcomes]) if balanced else None,
    )


def _stack(values: list[Any]) -> Any:
    """Stack per-head arrays along a new first axis; a list if their shapes differ."""
    if values[0] is None:
        return None
    if len({tuple(value.shape) for value in values}) > 1:
        return values
    return array_namespace(values[0]).stack(values)


def _name(argument: str, head: int | None) -> str:
    return argument if head is None else f"{argument}[{head}]"
