"""The solve with the samples sharded over the ranks of a ``torch.distributed`` group.

Each rank holds its own block of rows ``(N_r, K)``; the ranks run the one loop
of :mod:`otlabel.solver` on their blocks, and per iteration exchange one
column partial (a max and a sum per column, 2K + 3 numbers with the row error,
a finiteness flag and whether the rank has rows to add), combined in rank order
so that every rank holds the same potential, takes the same steps and stops
together.  Balanced rounding runs the same shortest-path repair on every rank
with global counts; a move asks all ranks for their cheapest candidate.

Validation is agreed collectively, in one exchange before any other: every
rank checks its own input and sends its verdict with a :class:`Report` (its
sizes, its known samples' counts, and the fingerprint of every argument that
must be the same on every rank).  A bad input on one rank raises on all of them
(naming the rank), and arguments that differ between ranks raise on all of them
(naming the argument and each rank's value), instead of leaving the others
waiting in a collective or solving different problems.  The checks that concern
the whole problem (known samples filling a cluster, every label known, K <= N)
are made on the group's sums, identically on every rank.

A rank whose samples all have known labels has no row to iterate: it takes the
group's steps on a stand-in row whose every contribution to the exchanges is
empty (:meth:`TorchCollective.standing_in`), and returns its known labels.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import _validation as check
from ._arrays import device_of, from_host, library_of, namespace, to_numpy
from .api import solve_and_label
from .constraints import ColumnConstraint, FixedSizes
from .feasibility import (
    Patterns,
    allowed_patterns,
    check_feasible,
    merge_patterns,
    unreachable_columns,
)
from .problem import (
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    Head,
    KnownLabels,
    Options,
    Problem,
    build_problem,
    check_known_counts,
    known_label_scores,
    known_score_sum,
    make_constraint,
    rows_of,
)
from .result import HeadOutcome, Result, assemble, with_known_rows
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
        Ranks may hold different numbers of rows (at least one each); the array
        library, K and dtype must agree.
    group : torch.distributed.ProcessGroup or None
        The ranks that share the problem; None is the default group.  Gloo
        (CPU) and NCCL (CUDA; the exchange then runs on this rank's device).
    sample_weights : array (N_r,) or None
        This rank's sample weights; normalised over all ranks.
    known_labels, unassigned_scores : array (N_r,) or None
        This rank's known labels (-1: unknown) and virtual-column scores; the
        known samples' counts and mass are summed over all ranks.  A rank may
        hold known samples only (or pass None: none known), as long as some
        rank holds a sample to solve.
    cluster_weights, min_size, max_size, size_penalty, mass, init : as in :func:`otlabel.assign`
        The same on every rank (checked).
    epsilon, tol, max_iter, backend, rounding, overrelaxation : as in :func:`otlabel.assign`
        The same on every rank (checked; ``backend``: the one it resolves to).
        The iteration runs in the log domain.
    n_threads : int or None
        As in :func:`otlabel.assign`; may differ between ranks.

    Returns
    -------
    Result
        ``labels`` and ``row_potential``: this rank's ``(N_r,)``; ``counts``,
        ``potential``, ``n_iter``, ``error``, ``cost``, ``gap``: global, the same
        on every rank.

    Raises
    ------
    ValueError, TypeError
        On every rank, the same error: when any rank's input is invalid (the
        message names the rank and the argument), when an argument that must
        agree differs between ranks (it names the argument and each rank's
        value), or when the problem of all ranks together is (every label
        known, known samples that fill a cluster, ``K > N`` with balanced
        rounding).

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
        "cluster_weights": cluster_weights,
        "sample_weights": sample_weights,
        "tol": tol,
        "max_iter": max_iter,
        "backend": backend,
        "rounding": rounding,
        "init": init,
        "n_threads": n_threads,
        "overrelaxation": overrelaxation,
        "min_size": min_size,
        "max_size": max_size,
        "size_penalty": size_penalty,
        "mass": mass,
        "unassigned_scores": unassigned_scores,
    }
    verdict: Exception | None = None
    shard: _Shard | None = None
    try:
        shard = _local_shard(local_scores, arguments, known_labels)
    except Exception as error:  # every rank must hear of it, or the others wait forever
        verdict = error
    reports = collective.agree(verdict, None if shard is None else shard.report)
    assert shard is not None  # agree() raised on every rank otherwise
    head, n_samples = _group_head(shard, reports, arguments)
    options = shard.problem.options
    with options.backend.context(options.n_threads):
        return _solve(head, options, collective, n_samples)


#: The arguments that shape the constraint or the start: the same on every rank.
SHARED = ("cluster_weights", "min_size", "max_size", "size_penalty", "mass", "init")


@dataclass
class Report:
    """What a rank tells the others before the solve (:meth:`TorchCollective.agree`)."""

    fingerprint: list[tuple[str, str, Any]]  # (argument, what, value): alike on every rank
    n_rows: int = 0
    weight_total: float = 0.0  # the sum of the rank's raw sample weights
    known: np.ndarray | None = None  # (2K,) known samples per cluster, then their raw weight
    #: The free rows grouped by allowed clusters (masses: raw weights), where a score is
    #: -inf; checked with every rank's for a plan (:func:`_check_forbidden`).
    patterns: Patterns | None = None


@dataclass
class _Shard:
    """This rank's validated input: its problem (every row) and its known labels."""

    problem: Problem
    labels: np.ndarray | None  # (N_r,) known labels, -1 where unknown; None: none given
    report: Report


def _local_shard(local_scores: Any, arguments: dict[str, Any], known_labels: Any) -> _Shard:
    """This rank's checks: everything but what needs the group's sums.

    Known labels are checked and counted here, but what they imply for the
    problem (the mass they take from each cluster, whether any sample is left
    to solve) depends on every rank's: it is checked in :func:`_group_head`.
    """
    problem = build_problem(
        local_scores,
        method="log",
        n_samples=sys.maxsize,  # the count checks need the global N: after agreeing
        argument="local_scores",
        check_plan=False,  # forbidden pairs: checked on every rank's rows (_group_head)
        **arguments,
    )
    if problem.layout != "single":
        raise ValueError(
            "local_scores: the distributed solve takes one (N_r, K) array per rank; "
            "solve several heads one after the other"
        )
    head = problem.heads[0]
    n_clusters = head.scores.shape[1]
    labels = None
    if known_labels is not None:
        labels = check.known_labels(known_labels, head.n_total, n_clusters, "known_labels")
    options = problem.options
    compared = {
        "epsilon": options.epsilon,
        "tol": options.tol,
        "max_iter": options.max_iter,
        "backend": options.backend.name,
        "rounding": options.rounding,
        "overrelaxation": options.overrelaxation,
        **{name: arguments[name] for name in SHARED},
    }
    report = Report(
        fingerprint(problem.reference, n_clusters, "local_scores", compared),
        head.n_total,
        head.weight_total,
        None if labels is None else _known_sums(labels, head),
        _local_patterns(head, labels) if head.forbidden else None,
    )
    return _Shard(problem, labels, report)


def _local_patterns(head: Head, labels: np.ndarray | None) -> Patterns:
    """This rank's free rows grouped by allowed clusters, their masses in raw weights;
    a known label on a forbidden pair raises here, before the ranks agree."""
    free = np.arange(head.n_total)
    if labels is not None:
        known_label_scores(head.scores, labels)
        free = np.flatnonzero(labels < 0)
    return allowed_patterns(
        rows_of(head.scores, free),
        head.log_a[free] + np.log(head.weight_total),
        unassigned=head.virtual is not None,
        row_ids=free,
    )


def _known_sums(labels: np.ndarray, head: Head) -> np.ndarray:
    """(2K,) this rank's known samples per cluster, then their raw weight per cluster."""
    n_clusters = head.scores.shape[1]
    is_known = labels >= 0
    raw_weights = np.exp(head.log_a[is_known]) * head.weight_total
    counts = np.bincount(labels[is_known], minlength=n_clusters)
    weights = np.bincount(labels[is_known], weights=raw_weights, minlength=n_clusters)
    return np.concatenate([counts.astype(np.float64), weights])


def _group_head(
    shard: _Shard, reports: list[Report], arguments: dict[str, Any]
) -> tuple[Head, int]:
    """This rank's head with its sample weights normalised over all ranks and, with
    known labels on any rank, the constraint of every rank's known samples; and the
    global number of samples.  The same checks on every rank (the group's sums)."""
    head = shard.problem.heads[0]
    n_samples = sum(report.n_rows for report in reports)
    weight_total = float(sum(report.weight_total for report in reports))
    log_a = head.log_a + np.log(head.weight_total / weight_total)
    head = replace(head, log_a=log_a, weight_total=weight_total)
    known = [report.known for report in reports if report.known is not None]
    if known:
        constraint = _known_constraint(np.sum(known, axis=0), arguments, head, n_samples)
        head = replace(head, constraint=constraint)
    _check_forbidden(head, reports, shard.problem.options.rounding)
    if known and shard.labels is not None:
        head = _free_rows(head, shard.labels)
    return head, n_samples


def _check_forbidden(head: Head, reports: list[Report], rounding: str | None) -> None:
    """Where any rank's scores hold -inf: whether every rank's free rows together admit a
    plan (the same check, and the same error, on every rank)."""
    if all(report.patterns is None for report in reports):
        return
    offsets = np.cumsum([0] + [report.n_rows for report in reports])[:-1]
    like = next(report.patterns for report in reports if report.patterns is not None)
    parts = [
        _all_allowed(report, like) if report.patterns is None else report.patterns
        for report in reports
    ]
    patterns = merge_patterns(parts, [int(offset) for offset in offsets])
    patterns.mass = patterns.mass / head.weight_total
    n_free = int(patterns.count.sum())
    counts = head.constraint.count_bounds(n_free) if rounding == "balanced" else None
    check_feasible(patterns, head.constraint.mass_bounds(), counts, "local_scores")
    head.constraint = head.constraint.reaching(unreachable_columns(patterns, head.scores.shape[1]))


def _known_constraint(
    sums: np.ndarray, arguments: dict[str, Any], head: Head, n_samples: int
) -> ColumnConstraint:
    """The constraint of the free rows, from the known samples of every rank (``sums``:
    the ranks' :func:`_known_sums`, added)."""
    n_clusters = head.scores.shape[1]
    counts = sums[:n_clusters].astype(np.int64)
    mass = sums[n_clusters:] / head.weight_total
    n_free = n_samples - int(counts.sum())
    if n_free == 0:
        raise ValueError(
            "known_labels: every sample's label is given, on every rank; there is nothing to solve"
        )
    constraint = make_constraint(arguments, n_clusters, float(arguments["mass"]), counts, mass)
    check_known_counts(constraint, counts, n_free)
    return constraint


def _free_rows(head: Head, labels: np.ndarray) -> Head:
    """The head of the rows to iterate: the free ones; a rank without free rows keeps
    its first row as a stand-in (:meth:`TorchCollective.standing_in`)."""
    n_clusters = head.scores.shape[1]
    free = np.flatnonzero(labels < 0)
    is_known = labels >= 0
    known = KnownLabels(
        labels,
        free,
        np.bincount(labels[is_known], minlength=n_clusters).astype(np.int64),
        np.bincount(labels[is_known], weights=np.exp(head.log_a[is_known]), minlength=n_clusters),
        head.log_a,
    )
    known.score_sum = known_score_sum(head.scores, known)
    rows = free if free.size else np.arange(1)
    return replace(
        head,
        scores=rows_of(head.scores, rows),
        log_a=head.log_a[rows],
        row_max=_take(head.row_max, rows),
        row_min=_take(head.row_min, rows),
        virtual=None if head.virtual is None else head.virtual[rows],
        known=known,
    )


def _all_allowed(report: Report, like: Patterns) -> Patterns:
    """A rank without -inf: its free rows are one group, every cluster allowed (their
    count and raw weight from its report: all rows less the known ones)."""
    n_clusters = (report.known.size // 2) if report.known is not None else 0
    known_count = 0 if report.known is None else int(report.known[:n_clusters].sum())
    known_weight = 0.0 if report.known is None else float(report.known[n_clusters:].sum())
    return Patterns(
        np.ones((1, like.allowed.shape[1]), dtype=bool),
        np.array([report.n_rows - known_count], np.int64),
        np.array([report.weight_total - known_weight]),
        [np.zeros(0, np.int64)],
        like.unassigned,
    )


def _take(values: Any, rows: np.ndarray) -> Any:
    """``values[rows]`` for a vector of any library (None stays None)."""
    if values is None:
        return None
    return values[from_host(rows, namespace(values), device_of(values))]


def _solve(head: Head, options: Options, collective: TorchCollective, n_samples: int) -> Result:
    """The shard's solve (the same steps on every rank), labels and global counts."""
    scores = head.scores
    fixed = isinstance(head.constraint, FixedSizes) and head.virtual is None
    if options.rounding == "balanced" and fixed and scores.shape[1] > n_samples:
        raise ValueError(
            f"local_scores: balanced rounding needs K <= N, got K={scores.shape[1]} "
            f"clusters for N={n_samples} samples over all ranks; use rounding='argmax'"
        )
    known = head.constraint.known_counts
    n_free = n_samples - (0 if known is None else int(known.sum()))  # over all ranks
    if head.known is not None and head.known.free.size == 0:
        outcome = _stand_in(head, options, collective, n_free)
    else:
        outcome = solve_and_label(head, options, collective=collective, n_free=n_free)
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


def _stand_in(
    head: Head, options: Options, collective: TorchCollective, n_free: int
) -> HeadOutcome:
    """A rank whose every sample's label is known: the group's steps on its stand-in
    row, which adds nothing to the exchanges, then its own rows with their labels."""
    assert head.known is not None
    with collective.standing_in():
        outcome = solve_and_label(
            replace(head, known=None), options, collective=collective, n_free=n_free
        )
    outcome.solved.row_potential = outcome.solved.row_potential[:0]  # no free row
    if outcome.labels is not None:
        outcome.labels = outcome.labels[:0]
    outcome = with_known_rows(outcome, head.known, head.scores)
    if outcome.labels is not None:
        outcome.counts = np.bincount(outcome.labels, minlength=head.scores.shape[1])
    return outcome


def fingerprint(
    scores: Any, n_clusters: int, name: str, arguments: dict[str, Any]
) -> list[tuple[str, str, Any]]:
    """What every rank must pass alike, as ``(argument, what, value)`` entries: the
    scores' array library, K and dtype, then each of ``arguments`` (validated values,
    arrays as float64 NumPy arrays)."""
    entries: list[tuple[str, str, Any]] = [
        (name, "array library", library_of(scores)),
        (name, "K", int(n_clusters)),
        (name, "dtype", str(scores.dtype).removeprefix("torch.")),
    ]
    entries += [(argument, "value", _comparable(value)) for argument, value in arguments.items()]
    return entries


def _comparable(value: Any) -> Any:
    """``value`` in a form that compares across ranks (a NumPy array for any array)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return np.asarray(check.as_host(value), dtype=np.float64)


def _check_alike(fingerprints: list[list[tuple[str, str, Any]]]) -> None:
    """Raise, naming each argument that differs and every rank's value of it."""
    differences = []
    for entries in zip(*fingerprints, strict=True):
        values = [value for _, _, value in entries]
        if all(_same(value, values[0]) for value in values[1:]):
            continue
        argument, what, _ = entries[0]
        given = ", ".join(f"{_shown(value)} on rank {rank}" for rank, value in enumerate(values))
        differences.append(f"{argument}: every rank needs the same {what}, got {given}")
    if differences:
        raise ValueError("; ".join(differences))


def _same(first: Any, second: Any) -> bool:
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        return (
            isinstance(first, np.ndarray)
            and isinstance(second, np.ndarray)
            and first.shape == second.shape
            and np.array_equal(first, second, equal_nan=True)
        )
    return bool(first == second)


def _shown(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=6, separator=", ", threshold=8, edgeitems=3)
    return repr(value)


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
        self.stand_in = False  # see standing_in()

    def agree(self, verdict: Exception | None, report: Report | None) -> list[Report]:
        """Every rank's verdict on its own input and its report, in one exchange.

        Raises on every rank, the same error, if any rank's input is bad (naming
        the rank) or if the ranks' fingerprints differ (naming the argument and
        each rank's value); else returns every rank's report, in rank order.
        """
        own = None if verdict is None else (type(verdict).__name__, str(verdict))
        everyone = self.gather_object((own, report))
        for rank, (message, _) in enumerate(everyone):
            if message is not None:
                kinds = {"TypeError": TypeError, "ValueError": ValueError}
                kind = kinds.get(message[0], RuntimeError)
                raise kind(f"rank {rank}: {message[1]}") from verdict
        reports = [report for _, report in everyone]
        _check_alike([report.fingerprint for report in reports])
        return reports

    @contextlib.contextmanager
    def standing_in(self) -> Iterator[None]:
        """Within: this rank has no row of its own and iterates a stand-in row, whose
        contributions are replaced by empty ones (0 to sums, +inf to minima, no
        column partial, no row error), so that it takes the group's steps, in the
        group's collectives, without changing what they compute."""
        self.stand_in = True
        try:
            yield
        finally:
            self.stand_in = False

    def reduce(self, columns: ColumnPartial, row_error: Any, f: Any) -> tuple[ColumnPartial, Any]:
        """All ranks' partials, combined in rank order: the same on every rank."""
        xp = namespace(columns.log_max)
        finite = bool(xp.all(xp.isfinite(f)))
        if self.stand_in:
            row_error, finite = 0.0, True
        total, extras = self.combine(columns, [float(row_error), finite])
        error = float(extras[:, 0].sum()) if extras[:, 1].all() else float("nan")
        return total, error

    def combine(
        self, columns: ColumnPartial, extras: list[float]
    ) -> tuple[ColumnPartial, np.ndarray]:
        """Every rank's column partial combined in rank order (in ``columns``' namespace
        and device), and every rank's ``extras`` (ranks, len(extras)): one exchange.
        A rank standing in adds no partial."""
        packed = np.concatenate(
            [
                to_numpy(columns.log_max),
                to_numpy(columns.scaled_sum),
                np.asarray(extras, float),
                [0.0 if self.stand_in else 1.0],
            ]
        )
        gathered = self.gather(packed)  # (ranks, 2K + len(extras) + 1)
        n_clusters = (gathered.shape[1] - len(extras) - 1) // 2
        total: ColumnPartial | None = None
        for part in gathered[gathered[:, -1] == 1.0]:
            shard = ColumnPartial(part[:n_clusters], part[n_clusters : 2 * n_clusters])
            total = shard if total is None else total.combine(shard)
        assert total is not None  # a group without free rows is refused before the solve
        xp, where = namespace(columns.log_max), device_of(columns.log_max)
        log_max, scaled_sum = (from_host(v, xp, where) for v in (total.log_max, total.scaled_sum))
        return ColumnPartial(log_max, scaled_sum), gathered[:, 2 * n_clusters : -1]

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
        """The sum over the ranks (a rank standing in adds 0)."""
        return self._all_reduce(values, self.dist.ReduceOp.SUM, empty=0.0)

    def min(self, values: np.ndarray) -> np.ndarray:
        """The minimum over the ranks (a rank standing in gives +inf)."""
        return self._all_reduce(values, self.dist.ReduceOp.MIN, empty=np.inf)

    def owner_of_min(self, value: float) -> int:
        own = np.array([np.inf if self.stand_in else value])
        return int(np.argmin(self.gather(own)[:, 0]))  # first rank on ties

    def _all_reduce(self, values: np.ndarray, op: Any, *, empty: float) -> np.ndarray:
        own = np.full(np.shape(values), empty) if self.stand_in else values
        tensor = self._tensor(own)
        self.dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.cpu().numpy().astype(np.asarray(values).dtype)

    def _tensor(self, values: np.ndarray) -> Any:
        array = np.ascontiguousarray(values, dtype=np.float64)
        return self.torch.as_tensor(array, device=self.device)
