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

import sys
from dataclasses import replace
from typing import Any

import numpy as np

from ._arrays import device_of, from_host, namespace, to_numpy
from .api import solve_and_label
from .constraints import FixedSizes
from .problem import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Head,
    Problem,
    build_problem,
    check_known_counts,
    make_constraint,
)
from .result import Result, assemble
from .solver import ColumnPartial

__all__ = ["TorchCollective", "assign"]


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
    min_size: Any = None,
    max_size: Any = None,
    size_penalty: Any = None,
    mass: float = 1.0,
    known_labels: Any = None,
    unassigned_scores: Any = None,
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
    known_labels, unassigned_scores : array (N_r,) or None
        This rank's known labels (-1: unknown) and virtual-column scores; the
        known samples' counts and mass are summed over all ranks.
    cluster_weights, min_size, max_size, size_penalty, mass, init : as in :func:`otlabel.assign`
        The same on every rank (checked).
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
    shared = {
        "cluster_weights": cluster_weights,
        "min_size": min_size,
        "max_size": max_size,
        "size_penalty": size_penalty,
    }
    verdict: Exception | None = None
    problem: Problem | None = None
    try:
        problem = build_problem(
            local_scores,
            epsilon,
            cluster_weights=cluster_weights,
            sample_weights=sample_weights,
            tol=tol,
            max_iter=max_iter,
            method="log",
            backend=backend,
            rounding=rounding,
            init=init,
            n_threads=n_threads,
            overrelaxation=overrelaxation,
            min_size=min_size,
            max_size=max_size,
            size_penalty=size_penalty,
            mass=mass,
            known_labels=known_labels,
            unassigned_scores=unassigned_scores,
            n_samples=sys.maxsize,  # the count checks need the global N: after agreeing
            argument="local_scores",
        )
        if problem.layout != "single":
            raise ValueError(
                "local_scores: the distributed solve takes one (N_r, K) array per rank; "
                "solve several heads one after the other"
            )
    except Exception as error:  # every rank must hear of it, or the others wait forever
        verdict = error
    head, n_samples = collective.agree(verdict, problem, shared, mass, init)
    assert problem is not None
    options = problem.options
    with options.backend.context(options.n_threads):
        return _solve(head, options, collective, n_samples)


def _solve(head: Head, options: Any, collective: TorchCollective, n_samples: int) -> Result:
    """The shard's solve (the same steps on every rank), labels and global counts."""
    scores = head.scores
    fixed = isinstance(head.constraint, FixedSizes)
    if options.rounding == "balanced" and fixed and scores.shape[1] > n_samples:
        raise ValueError(
            f"local_scores: balanced rounding needs K <= N, got K={scores.shape[1]} "
            f"clusters for N={n_samples} samples over all ranks; use rounding='argmax'"
        )
    known = head.constraint.known_counts
    n_known = 0 if known is None else int(known.sum())  # over all ranks
    outcome = solve_and_label(head, options, collective=collective, n_free=n_samples - n_known)
    if outcome.labels is not None and outcome.counts is not None and outcome.cost is not None:
        local = outcome.counts.astype(np.float64)
        totals = collective.sum(np.append(local, outcome.cost * outcome.labels.size))
        outcome.counts = totals[:-1].astype(np.int64)
        outcome.cost = float(totals[-1]) / n_samples
    return assemble(
        [outcome],
        "single",
        backend=options.backend.name,
        epsilon=options.epsilon,
        tol=options.tol,
        reference=scores,
    )


def _shared_vector(arguments: dict[str, Any]) -> np.ndarray:
    """What every rank must pass alike, as one vector (each argument marked, None as NaN)."""
    parts: list[np.ndarray] = []
    for position, value in enumerate(arguments.values()):
        if isinstance(value, str):
            value = [float(sum(map(ord, value)))]
        if value is None:
            numbers = np.array([np.nan])
        else:
            numbers = np.ravel(to_numpy(value) if hasattr(value, "shape") else np.asarray(value))
        parts.append(np.concatenate([[float(position)], numbers.astype(np.float64)]))
    return np.concatenate(parts)


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

    def agree(
        self,
        verdict: Exception | None,
        problem: Problem | None,
        shared: dict[str, Any],
        mass: Any,
        init: Any,
    ) -> tuple[Head, int]:
        """Exchange verdicts and sizes; raise on every rank if any rank's input is bad.

        Returns this rank's head with its sample weights normalised over all
        ranks (and, with known labels, its constraint built from every rank's
        known samples), and the global number of samples.
        """
        messages: list[Any] = [None] * self.size
        own = None if verdict is None else (type(verdict).__name__, str(verdict))
        self.dist.all_gather_object(messages, own, group=self.group)
        for rank, message in enumerate(messages):
            if message is not None:
                kinds = {"TypeError": TypeError, "ValueError": ValueError}
                kind = kinds.get(message[0], RuntimeError)
                raise kind(f"rank {rank}: {message[1]}") from verdict
        assert problem is not None
        head = problem.heads[0]
        n_clusters = head.scores.shape[1]
        known = head.known
        counts = np.zeros(n_clusters) if known is None else known.counts
        raw_mass = np.zeros(n_clusters) if known is None else known.mass * head.weight_total
        sizes = [head.n_total, head.weight_total, n_clusters]
        mine = {
            "dtype": str(head.scores.dtype),
            "sizes": sizes,
            "shared": _shared_vector({**shared, "mass": mass, "init": init}),
            "known": np.concatenate([counts, raw_mass]),
        }
        everyone = self.gather_object(mine)
        self._check_alike(everyone)
        n_samples = int(sum(rank["sizes"][0] for rank in everyone))
        weight_total = float(sum(rank["sizes"][1] for rank in everyone))
        log_a = head.log_a + np.log(head.weight_total / weight_total)
        head = replace(head, log_a=log_a, weight_total=weight_total)
        if known is not None:
            head = self._with_global_known(head, everyone, shared, float(mass), n_samples)
        return head, n_samples

    @staticmethod
    def _check_alike(everyone: list[dict[str, Any]]) -> None:
        n_clusters = [int(rank["sizes"][2]) for rank in everyone]
        if len(set(n_clusters)) > 1:
            raise ValueError(f"local_scores: every rank needs the same K, got {n_clusters}")
        dtypes = [rank["dtype"] for rank in everyone]
        if len(set(dtypes)) > 1:
            raise ValueError(
                f"local_scores: every rank needs the same dtype (the solve takes the same "
                f"steps on every rank), got {dtypes}"
            )
        first = everyone[0]["shared"]
        if any(
            rank["shared"].shape != first.shape
            or not np.array_equal(rank["shared"], first, equal_nan=True)
            for rank in everyone
        ):
            raise ValueError(
                "cluster_weights, min_size, max_size, size_penalty, mass, init: every rank must "
                "pass the same values (the ranks differ)"
            )
        known = {rank["known"].size > 0 and bool(np.any(rank["known"])) for rank in everyone}
        del known  # a rank without known samples is fine

    def _with_global_known(
        self,
        head: Head,
        everyone: list[dict[str, Any]],
        shared: dict[str, Any],
        rho: float,
        n_samples: int,
    ) -> Head:
        """The constraint of this rank's free rows from every rank's known samples."""
        n_clusters = head.scores.shape[1]
        totals = np.sum([rank["known"] for rank in everyone], axis=0)
        counts = totals[:n_clusters].astype(np.int64)
        mass = totals[n_clusters:] / head.weight_total
        constraint = make_constraint(shared, n_clusters, rho, counts, mass)
        check_known_counts(constraint, counts, n_samples - int(counts.sum()))
        return replace(head, constraint=constraint)

    def reduce(self, columns: ColumnPartial, row_error: Any, f: Any) -> tuple[ColumnPartial, Any]:
        """All ranks' partials, combined in rank order: the same on every rank."""
        xp = namespace(columns.log_max)
        finite = bool(xp.all(xp.isfinite(f)))
        total, extras = self.combine(columns, [float(row_error), finite])
        error = float(extras[:, 0].sum()) if extras[:, 1].all() else float("nan")
        return total, error

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
        xp, where = namespace(columns.log_max), device_of(columns.log_max)
        log_max, scaled_sum = (from_host(v, xp, where) for v in (total.log_max, total.scaled_sum))
        return ColumnPartial(log_max, scaled_sum), gathered[:, 2 * n_clusters :]

    def gather_object(self, values: Any) -> list[Any]:
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
