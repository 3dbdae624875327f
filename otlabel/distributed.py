"""The solve with the samples sharded over the ranks of a ``torch.distributed`` group.

Each rank holds its own block of rows ``(N_r, K)``; the ranks run the one loop
of :mod:`otlabel.solver` on their blocks, and per iteration exchange one
column partial (a max and a sum per column, 2K + 2 numbers with the row error
and a finiteness flag), combined in rank order so that every rank holds the
same potential, takes the same steps and stops together.  Balanced rounding
runs the same shortest-path repair on every rank with global counts; a move
asks all ranks for their cheapest candidate.

Validation is agreed collectively: every rank checks its own input, then the
ranks exchange the verdicts, and a bad input on one rank raises on all of them
(naming the rank), instead of leaving the others waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from array_api_compat import array_namespace

from . import _validation as check
from ._arrays import device_of, from_host, like, to_numpy
from .api import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    _backend_context,
    _hard_labels,
    _log_kernel,
    _on_device,
    _Options,
    _options,
    _row_extremes,
)
from .result import Result, warn_not_converged
from .solver import BlockSweep, ColumnPartial, Relaxation, solve

#: Arguments of assign that are vectors, checked by _Problem.check itself.
_VECTORS = ("sample_weights", "cluster_weights", "init")

__all__ = ["assign"]


def assign(
    local_scores: Any,
    epsilon: float = 0.04,
    *,
    group: Any = None,
    cluster_weights: Any = None,
    sample_weights: Any = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    backend: str = "auto",
    rounding: str | None = "balanced",
    init: Any = None,
    n_threads: int | None = None,
    overrelaxation: float | str = "auto",
) -> Result:
    """:func:`otlabel.assign` with the samples sharded over a process group.

    Call it on every rank of ``group`` with that rank's rows.  The answer is the
    single-process solve of all rows stacked in rank order: the same potential
    (within float rounding of the reduction order), the same balanced labels.

    Parameters
    ----------
    local_scores : array (N_r, K)
        This rank's rows (NumPy, or a Torch tensor on CPU or on this rank's GPU).
        Ranks may hold different numbers of rows (at least one each); K must
        agree.
    group : torch.distributed.ProcessGroup or None
        The ranks that share the problem; None is the default group.  Gloo
        (CPU) and NCCL (CUDA; the exchange then runs on this rank's device).
    sample_weights : array (N_r,) or None
        This rank's sample weights; normalised over all ranks.
    cluster_weights, init : array (K,) or None
        As in :func:`otlabel.assign`; the same on every rank (checked).
    epsilon, tol, max_iter, backend, rounding, n_threads, overrelaxation
        As in :func:`otlabel.assign`.  The iteration runs in the log domain.

    Returns
    -------
    Result
        ``labels`` and ``row_potential``: this rank's ``(N_r,)``; ``counts``,
        ``potential``, ``n_iter``, ``error``, ``cost``, ``gap``: global, the same
        on every rank.

    Raises
    ------
    ValueError, TypeError
        On every rank, when any rank's input is invalid (the message names the
        rank and the argument).

    Examples
    --------
    Run ``torchrun --nproc-per-node 2 script.py`` with::

        import torch.distributed as dist
        import otlabel, otlabel.distributed
        dist.init_process_group("gloo")
        scores = otlabel.make_scores(1000, 10, seed=dist.get_rank())
        res = otlabel.distributed.assign(scores, epsilon=0.05)
        res.labels   # this rank's 1000 labels; res.counts: global, 200 each
    """
    collective = TorchCollective(group)
    arguments = {
        "epsilon": epsilon,
        "tol": tol,
        "max_iter": max_iter,
        "backend": backend,
        "rounding": rounding,
        "n_threads": n_threads,
        "overrelaxation": overrelaxation,
        "sample_weights": sample_weights,
        "cluster_weights": cluster_weights,
        "init": init,
    }
    verdict: Exception | None = None
    try:
        problem = _Problem.check(local_scores, arguments)
    except Exception as error:  # every rank must hear of it, or the others wait forever
        verdict = error
    problem = collective.agree(verdict, lambda: problem)
    with _backend_context(problem.options):
        return _solve(problem, collective)


@dataclass
class _Problem:
    """One rank's validated share of the problem, with the global sizes."""

    scores: Any  # (N_r, K)
    options: _Options
    local_weights: np.ndarray  # (N_r,) unnormalised
    cluster_weights: np.ndarray  # (K,) normalised
    start: np.ndarray  # (K,)
    n_samples: int = 0  # global N, from the agreement
    weight_total: float = 0.0

    @classmethod
    def check(cls, scores: Any, arguments: dict[str, Any]) -> _Problem:
        heads, layout = check.heads_of(scores)
        if layout != "single":
            raise ValueError(
                "local_scores: the distributed solve takes one (N_r, K) array per rank; "
                "solve several heads one after the other"
            )
        scores = heads[0]
        n_local, n_clusters = scores.shape
        options = _options(
            heads,
            **{k: v for k, v in arguments.items() if k not in _VECTORS},
            method="log",
            return_plan=False,
            overwrite_scores=False,
        )
        raw = arguments["sample_weights"]
        check.weights(raw, n_local, "sample_weights")  # finite, positive, right shape
        weights = np.ones(n_local) if raw is None else check._host(raw).astype(np.float64)
        cluster_w = check.weights(arguments["cluster_weights"], n_clusters, "cluster_weights")
        start = check.initial_potential(arguments["init"], n_clusters)
        row_max, row_min = _row_extremes(scores, options)
        check.check_finite_rows(row_max, row_min, "local_scores")
        return cls(scores, options, weights, cluster_w, start)

    def summary(self) -> np.ndarray:
        """What the ranks must agree on: N_r, weight sum, K, and the shared vectors."""
        shared = np.concatenate([self.cluster_weights, self.start])
        return np.concatenate(
            [[self.scores.shape[0], self.local_weights.sum(), self.scores.shape[1]], shared]
        )


def _solve(problem: _Problem, collective: TorchCollective) -> Result:
    options, scores = problem.options, problem.scores
    if options.rounding == "balanced" and scores.shape[1] > problem.n_samples:
        raise ValueError(
            f"local_scores: balanced rounding needs K <= N, got K={scores.shape[1]} clusters "
            f"for N={problem.n_samples} samples over all ranks; use rounding='argmax'"
        )
    log_a, log_b, start = _on_device(
        scores,
        options,
        np.log(problem.local_weights / problem.weight_total),
        np.log(problem.cluster_weights),
        problem.start,
    )
    shard = _Shard(_log_kernel(scores, log_a, options), collective)
    solved = solve(
        shard,
        log_b,
        options.epsilon,
        start,
        tol=options.tol,
        max_iter=options.max_iter,
        omega=options.overrelaxation,
    )
    if not solved.converged:
        warn_not_converged(None, solved.n_iter, solved.error, options.tol)
    potential = to_numpy(solved.potential)
    labels, gap, local_cost = _hard_labels(
        scores,
        potential,
        problem.cluster_weights,
        options,
        group=collective,
        n_samples=problem.n_samples,
    )
    counts, cost = None, None
    if labels is not None and local_cost is not None:
        local = np.bincount(labels, minlength=potential.size).astype(np.float64)
        totals = collective.sum(np.append(local, local_cost * labels.size))
        counts, cost = totals[:-1].astype(np.int64), float(totals[-1]) / problem.n_samples
    result = Result(
        labels=labels,
        counts=counts,
        potential=potential,
        row_potential=to_numpy(solved.row_potential),
        n_iter=solved.n_iter,
        error=solved.error,
        converged=solved.converged,
        backend=options.backend,
        method=solved.method,
        epsilon=options.epsilon,
        cost=cost,
        gap=gap,
    )
    arrays = ("labels", "counts", "potential", "row_potential")
    return replace(result, **{name: like(getattr(result, name), scores) for name in arrays})


class _Shard:
    """A rank's kernel, whose column partials are reduced over the group each pass."""

    def __init__(self, kernel: Any, collective: TorchCollective) -> None:
        self.kernel, self.collective = kernel, collective
        self.method = kernel.method

    def column_state(self, potential: Any) -> Any:
        return self.kernel.column_state(potential)

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        return self.kernel.blocks()

    def sweep(self, block: Any, rows: slice, state: Any, relax: Relaxation) -> BlockSweep:
        return self.kernel.sweep(block, rows, state, relax)

    def reduce(self, columns: ColumnPartial, row_error: Any, f: Any) -> tuple[ColumnPartial, Any]:
        """All ranks' partials, combined in rank order: the same on every rank."""
        xp = array_namespace(columns.log_max)
        finite = bool(xp.all(xp.isfinite(f)))
        total, extras = self.collective.combine(columns, [float(row_error), finite])
        error = float(extras[:, 0].sum()) if extras[:, 1].all() else float("nan")
        return total, error


class TorchCollective:
    """The collectives of the sharded solve over a ``torch.distributed`` group.

    Values travel as float64 tensors on the group's device (CUDA for NCCL);
    every method is called by every rank in the same order.
    """

    def __init__(self, group: Any) -> None:
        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "otlabel.distributed.assign needs an initialised torch.distributed process "
                "group: call torch.distributed.init_process_group first (or use otlabel.assign)"
            )
        self.dist, self.torch, self.group = dist, torch, group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu"

    def agree(self, verdict: Exception | None, problem: Any) -> _Problem:
        """Exchange verdicts and sizes; raise on every rank if any rank's input is bad."""
        messages: list[Any] = [None] * self.size
        own = None if verdict is None else (type(verdict).__name__, str(verdict))
        self.dist.all_gather_object(messages, own, group=self.group)
        for rank, message in enumerate(messages):
            if message is not None:
                kinds = {"TypeError": TypeError, "ValueError": ValueError}
                kind = kinds.get(message[0], RuntimeError)
                raise kind(f"rank {rank}: {message[1]}") from verdict
        mine = problem()
        summaries = self.gather_object(mine.summary())
        sizes = {len(summary) for summary in summaries}
        n_clusters = [int(summary[2]) for summary in summaries]
        if len(set(n_clusters)) > 1 or len(sizes) > 1:
            raise ValueError(f"local_scores: every rank needs the same K, got {n_clusters}")
        shared = np.stack([summary[3:] for summary in summaries])
        if not np.all(shared == shared[0]):
            raise ValueError(
                "cluster_weights, init: every rank must pass the same values (the ranks differ)"
            )
        mine.n_samples = int(sum(summary[0] for summary in summaries))
        mine.weight_total = float(sum(summary[1] for summary in summaries))
        return mine

    def combine(
        self, columns: ColumnPartial, extras: list[float]
    ) -> tuple[ColumnPartial, np.ndarray]:
        """Every rank's column partial combined in rank order (in ``columns``' namespace
        and device), and every rank's ``extras`` (ranks, len(extras)): one exchange."""
        packed = np.concatenate(
            [to_numpy(columns.log_max), to_numpy(columns.scaled_sum), np.asarray(extras, float)]
        )
        gathered = self.gather(packed)  # (ranks, 2K + len(extras))
        n_clusters = (gathered.shape[1] - len(extras)) // 2
        total: ColumnPartial | None = None
        for part in gathered:
            shard = ColumnPartial(part[:n_clusters], part[n_clusters : 2 * n_clusters])
            total = shard if total is None else total.combine(shard)
        assert total is not None
        xp, where = array_namespace(columns.log_max), device_of(columns.log_max)
        log_max, scaled_sum = (from_host(v, xp, where) for v in (total.log_max, total.scaled_sum))
        return ColumnPartial(log_max, scaled_sum), gathered[:, 2 * n_clusters :]

    def gather_object(self, values: np.ndarray) -> list[np.ndarray]:
        everyone: list[Any] = [None] * self.size
        self.dist.all_gather_object(everyone, values, group=self.group)
        return everyone

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's ``values`` (same length), stacked in rank order: (ranks, n)."""
        mine = self._tensor(values)
        everyone = [self.torch.empty_like(mine) for _ in range(self.size)]
        self.dist.all_gather(everyone, mine, group=self.group)
        return self.torch.stack(everyone).cpu().numpy()

    def sum(self, values: np.ndarray) -> np.ndarray:
        return self._all_reduce(values, self.dist.ReduceOp.SUM)

    def min(self, values: np.ndarray) -> np.ndarray:
        return self._all_reduce(values, self.dist.ReduceOp.MIN)

    def owner_of_min(self, value: float) -> int:
        return int(np.argmin(self.gather(np.array([value]))[:, 0]))  # first rank on ties

    def _all_reduce(self, values: np.ndarray, op: Any) -> np.ndarray:
        tensor = self._tensor(values)
        self.dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.cpu().numpy().astype(np.asarray(values).dtype)

    def _tensor(self, values: np.ndarray) -> Any:
        array = np.ascontiguousarray(values, dtype=np.float64)
        return self.torch.as_tensor(array, device=self.device)
