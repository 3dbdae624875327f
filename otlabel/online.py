"""SwAV-style online codes: :func:`soft_assign`.

SwAV (Caron et al., 2020) and DeepCluster-v2 compute, for every minibatch,
soft codes ``Q`` (B, K) with equipartitioned clusters by a few Sinkhorn-Knopp
iterations on ``exp(scores / epsilon)``; SwAV's copy of the loop overflows to
``inf``/NaN once ``scores / epsilon`` exceeds about 88 in float32 (scores that are
not cosine similarities, a small epsilon) and divides by zero when a cluster's
column underflows.  :func:`soft_assign` takes the same steps in the log domain
(the one loop of :mod:`otlabel.solver`): the same codes where SwAV's are
finite, finite codes everywhere.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from . import _validation as check
from ._arrays import library_of, namespace, to_numpy
from .problem import Options, Problem, build_problem
from .solver import ColumnPartial, iterate, plan_of

__all__ = ["soft_assign"]


def soft_assign(
    scores: Any,
    epsilon: float = 0.05,
    *,
    n_iter: int = 3,
    tol: float | None = None,
    queue: Any = None,
    cluster_weights: Any = None,
    size_penalty: Any = None,
    group: Any = None,
) -> Any:
    """Soft codes of a minibatch: rows summing to 1, clusters equipartitioned.

    SwAV's ``distributed_sinkhorn``, in the log domain: starting from
    ``exp(scores / epsilon)``, each iteration scales every cluster's column to
    its share, then every sample's row to 1.  A drop-in for SwAV and
    DeepCluster-v2 training loops: ``q = otlabel.soft_assign(scores)``.

    Parameters
    ----------
    scores : array (B, K)
        The minibatch's scores (e.g. cosine similarities to the prototypes), NumPy,
        Torch (CPU or CUDA; float16 and bfloat16 read in float32) or CuPy.  No
        gradient flows through the codes.  ``-inf`` forbids a sample-cluster pair
        (its code is 0); a row or a cluster that is ``-inf`` throughout is an error.
    epsilon : float, default 0.05
        Entropic regularisation in score units (SwAV: 0.05).
    n_iter : int, default 3
        Iterations (SwAV: 3).  With ``tol``, the most iterations.
    tol : float or None
        Stop earlier, once the L1 marginal error of the codes' plan is at most
        ``tol``; None runs exactly ``n_iter`` iterations, as SwAV does.
    queue : array (Q, K) or None
        Scores of earlier samples (SwAV's queue), same library: they take part
        in the equipartition, and only the batch's codes are returned.
    cluster_weights : array (K,) or None
        Cluster proportions (positive, normalised); None is uniform, as SwAV.
    size_penalty : float, array (K,) or None
        Relaxed sizes (SwAV with an imbalanced prior): the column update pulls
        the clusters' mass toward ``cluster_weights`` with the KL weight ``tau``
        instead of fixing it (see :func:`otlabel.assign`).
    group : torch.distributed.ProcessGroup or None
        Share the equipartition over the ranks of a group (SwAV's
        ``world_size > 1``): each rank passes its own batch and gets its own
        codes, computed as for all ranks' batches together.  The scores' library,
        K and dtype, ``epsilon``, ``n_iter``, ``tol``, ``cluster_weights`` and
        ``size_penalty`` must be the same on every rank; a difference, or a bad
        argument on any rank, raises the same error on every rank.  None: this
        process.

    Returns
    -------
    array (B, K)
        In the library, device and dtype of ``scores`` (NumPy's float16 too, solved
        in float32); every row sums to 1.

    Examples
    --------
    >>> import numpy as np
    >>> import otlabel
    >>> scores = np.random.default_rng(0).uniform(-1, 1, size=(256, 8))
    >>> codes = otlabel.soft_assign(scores, epsilon=0.05)
    >>> bool(np.allclose(codes.sum(axis=1), 1)), codes.shape
    (True, (256, 8))
    >>> huge = scores * 1000  # SwAV's own loop returns NaN here
    >>> bool(np.isfinite(otlabel.soft_assign(huge)).all())
    True
    """
    collective = _collective(group)
    try:
        given = _validated(
            scores, epsilon, n_iter, tol, queue, cluster_weights, size_penalty,
            local=collective is None,
        )  # fmt: skip
        report = None if collective is None else _report(given, cluster_weights, size_penalty)
    except Exception as error:
        if collective is None:
            raise
        collective.agree(error, None)  # raises this rank's error on every rank
        raise  # pragma: no cover (agree raised)
    n_total = given.rows.shape[0]
    if collective is not None:  # every rank's verdict and arguments, compared
        n_total = sum(other.n_rows for other in collective.agree(None, report))
    problem = given.problem
    with _quiet(given.batch), problem.options.backend.context(None):
        codes = _codes(
            problem.heads[0],
            problem.options,
            given.batch.shape[0],
            given.n_iter,
            given.tol,
            collective,
            n_total,
        )
    return _in_dtype_of(codes, scores)


class _Given(NamedTuple):
    """soft_assign's validated arguments."""

    n_iter: int
    tol: float | None
    batch: Any  # (B, K) the scores, as the solve reads them
    rows: Any  # (Q + B, K) the queue's rows, then the batch's
    problem: Problem  # of ``rows``


def _validated(
    scores: Any,
    epsilon: float,
    n_iter: int,
    tol: float | None,
    queue: Any,
    cluster_weights: Any,
    size_penalty: Any,
    *,
    local: bool = True,
) -> _Given:
    """Every check of :func:`soft_assign`'s arguments (each error names its argument).
    ``local``: the rows are all the rows, so forbidden pairs are checked to admit a
    plan here (over ranks, a cluster forbidden to every row of every rank is an
    error after the column masses are combined: :func:`_check_reachable`)."""
    n_iter = check.positive_int(n_iter, "n_iter")  # type: ignore[assignment]
    if tol is not None:
        tol = check.positive_float(tol, "tol")
    batch = _scores(scores, "scores")
    rows = _with_queue(batch, queue)
    problem = build_problem(
        rows,
        epsilon,
        cluster_weights=cluster_weights,
        size_penalty=size_penalty,
        method="log",
        rounding=None,
        check_plan=local,
    )  # the one validation path: finite scores, weights, epsilon, sizes
    return _Given(n_iter, tol, batch, rows, problem)


def _report(given: _Given, cluster_weights: Any, size_penalty: Any) -> Any:
    """What this rank tells the others: its number of rows, and the arguments that
    must be the same on every rank (they set the steps and the answer)."""
    from .distributed import Report, fingerprint

    compared = {
        "epsilon": given.problem.options.epsilon,
        "n_iter": given.n_iter,
        "tol": given.tol,
        "cluster_weights": cluster_weights,
        "size_penalty": size_penalty,
    }
    rows = given.rows
    return Report(fingerprint(rows, rows.shape[1], "scores", compared), rows.shape[0])


def _codes(
    head: Any,
    options: Options,
    n_batch: int,
    n_iter: int,
    tol: float | None,
    collective: Any,
    n_total: int,
) -> Any:
    """The codes of the batch (the last ``n_batch`` rows); ``n_total``: every rank's rows."""
    rows, epsilon = head.scores, options.epsilon
    n_local = rows.shape[0]
    backend = options.backend
    # float64 throughout (a precise kernel): a minibatch is small, and rows then sum
    # to 1 to the last bit of the output precision however large scores / eps is
    (log_a,) = backend.vectors(rows, np.full(n_local, -np.log(n_total)))
    kernel = backend.log_kernel(rows, log_a, options, precise=True)
    constraint = head.constraint.to(log_a)
    # SwAV's first step scales the columns of exp(S / eps): that is the start g.
    log_mass = _column_log_mass(rows, epsilon, collective)
    xp = namespace(log_a)
    _check_reachable(log_mass)
    start = epsilon * (xp.log(constraint.target) - log_mass)
    if constraint.kind == "relaxed":  # the relaxed column step from exp(S / eps)
        start = start / (1.0 + epsilon / constraint.penalty)
    passes = iterate(kernel, constraint, epsilon, start, omega=1.0, reducer=collective)
    for current in passes:
        if current.n_iter == n_iter or (tol is not None and current.error <= tol):
            break
    # rows of the plan sum to 1/N_total; codes are N_total times the plan
    row_potential = current.row_potential + epsilon * float(np.log(n_total))
    codes = plan_of(rows, row_potential, current.potential, epsilon)
    return codes[n_local - n_batch :, ...]


def _column_log_mass(rows: Any, epsilon: float, collective: Any) -> Any:
    """``log sum_i exp(S_ik / eps)`` (K,), over every rank's rows."""
    xp = namespace(rows)
    x = xp.astype(rows, xp.float64) / epsilon  # (n, K)
    col_max = xp.max(x, axis=0)  # (K,) -inf: a column forbidden to every row here
    shift = xp.where(col_max == -math.inf, xp.zeros_like(col_max), col_max)
    scaled = xp.sum(xp.exp(x - shift), axis=0)
    columns = ColumnPartial(xp.astype(col_max, xp.float64), xp.astype(scaled, xp.float64))
    if collective is not None:
        columns, _ = collective.combine(columns, [])
    return columns.log_mass()


def _check_reachable(log_mass: Any) -> None:
    """Raise naming the clusters that are ``-inf`` for every row (of every rank): no
    code can give them their share."""
    unreachable = np.flatnonzero(~np.isfinite(to_numpy(log_mass)))
    if unreachable.size:
        listed = ", ".join(str(int(k)) for k in unreachable[:5])
        more = ", ..." if unreachable.size > 5 else ""
        raise ValueError(
            f"scores: cluster(s) {listed}{more} are -inf for every sample (and every "
            "queued one): no code can give them their share; give them a finite score "
            "for some sample, or leave those clusters out"
        )


def _scores(value: Any, name: str) -> Any:
    if library_of(value) is None:
        raise TypeError(
            f"{name}: expected an array (B, K) (NumPy, Torch or CuPy), got {type(value).__name__}"
        )
    matrix = check.matrix(value, name)
    xp = namespace(matrix)
    if bool(xp.any(xp.isnan(matrix) | (matrix == math.inf))):
        raise ValueError(
            f"{name}: contains NaN or +inf; scores must be finite, or -inf for a "
            "sample-cluster pair that is forbidden (its code is 0)"
        )
    return matrix


def _with_queue(batch: Any, queue: Any) -> Any:
    """The queue's rows, then the batch's (SwAV's order), in one array."""
    if queue is None:
        return batch
    rows = _scores(queue, "queue")
    if library_of(rows) != library_of(batch) or rows.shape[1] != batch.shape[1]:
        raise ValueError(
            f"queue: expected a ({batch.shape[1]},)-column array of the scores' library, got "
            f"{type(queue).__name__} of shape {tuple(rows.shape)}"
        )
    xp = namespace(batch)
    return xp.concat([xp.astype(rows, batch.dtype), batch], axis=0)


def _collective(group: Any) -> Any:
    if group is None:
        return None
    if isinstance(group, numbers.Number | str):
        raise TypeError(
            "group: expected a torch.distributed process group (e.g. "
            "torch.distributed.group.WORLD) or None"
        )
    from .distributed import TorchCollective

    return TorchCollective(group)


def _in_dtype_of(codes: Any, scores: Any) -> Any:
    """NumPy codes in the dtype of NumPy ``scores`` (float16 is solved in float32);
    other libraries keep their dtype themselves."""
    if library_of(scores) != "numpy" or not np.issubdtype(scores.dtype, np.floating):
        return codes
    return codes.astype(scores.dtype.type, copy=False)  # native byte order


def _quiet(batch: Any) -> Any:
    """NumPy: exp's underflow to 0 is expected (the backend's context does the rest)."""
    return np.errstate(all="ignore") if library_of(batch) == "numpy" else contextlib.nullcontext()
