"""Forbidden pairs: whether a pattern of ``-inf`` scores admits a plan, and labels.

A score of ``-inf`` forbids its sample-cluster pair: the plan is zero there and
no label uses it.  The pattern may leave no plan at all (a cluster whose share
cannot be filled from the samples allowed to it, samples allowed only to
clusters too small for them), and Sinkhorn's potentials would then drift
forever.  :func:`check_feasible` decides before any pass, exactly, by two
maximum flows on the bipartite graph of allowed pairs (rows with the same
allowed clusters are one node): one that routes every sample's mass within the
clusters' upper bounds, one that fills their lower bounds.  Both together
suffice (the linkage theorem of Mendelsohn and Dulmage: a flow that covers the
samples and one that covers the lower bounds give one that covers both).  The
same two flows on counts check that exact hard labels exist under the count
bounds.  An infeasible pattern raises a ValueError that names the samples or
clusters of the minimum cut: a set of samples allowed only to clusters too
small for them, or clusters whose required size exceeds the samples allowed to
them.

>>> import numpy as np
>>> scores = np.zeros((4, 2))
>>> scores[:3, 1] = -np.inf  # three of four samples may not go to cluster 1
>>> patterns = allowed_patterns(scores, np.zeros(4))
>>> patterns.allowed.tolist(), patterns.count.tolist()
([[True, False], [True, True]], [3, 1])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from ._arrays import namespace, to_numpy
from .solver import block_rows, row_blocks

__all__ = ["Patterns", "allowed_patterns", "check_feasible", "check_head", "merge_patterns"]

#: Capacities of the mass flow are integers (SciPy's maximum flow): masses are scaled
#: so that the whole mass is this many units (int32 capacities, with room to spare).
MASS_UNITS = 1 << 29


def check_head(
    head: Any, rounding: str | None, patterns: Patterns | None = None, *, shares: bool = True
) -> Patterns:
    """Raise if a head's forbidden pairs admit no plan or, with ``rounding="balanced"``,
    no hard labels under its count bounds (``patterns``: its rows', if already read;
    ``shares=False``: the labels only, as ``epsilon=0`` needs); returns the patterns."""
    if patterns is None:
        unassigned = head.virtual is not None
        row_ids = None if head.known is None else head.known.free
        patterns = allowed_patterns(head.scores, head.log_a, unassigned=unassigned, row_ids=row_ids)
    n_rows = int(patterns.count.sum())
    counts = head.constraint.count_bounds(n_rows) if rounding == "balanced" else None
    masses = head.constraint.mass_bounds() if shares else None
    check_feasible(patterns, masses, counts, head.name)
    return patterns


def unreachable_columns(patterns: Patterns, n_clusters: int) -> np.ndarray:
    """(K,) bool: the clusters that no row's pattern allows."""
    return ~np.any(patterns.allowed[:, :n_clusters], axis=0)


@dataclass
class Patterns:
    """The rows grouped by the clusters allowed to them (P groups)."""

    allowed: np.ndarray  # (P, C) bool: the clusters (and the unassigned column) allowed
    count: np.ndarray  # (P,) rows in each group
    mass: np.ndarray  # (P,) their sample weight (of the whole mass 1)
    first_rows: list[np.ndarray]  # (P,) a few of each group's rows, for messages
    unassigned: bool = False  # the last column is partial mass's unassigned column


def allowed_patterns(
    scores: Any,
    log_a: np.ndarray,
    *,
    unassigned: bool = False,
    row_ids: np.ndarray | None = None,
) -> Patterns:
    """Group the rows of ``scores`` (N, K) by their allowed clusters (``> -inf``), one
    read of the matrix in blocks; ``log_a`` (N,): the rows' log weights;
    ``unassigned``: partial mass's column, allowed to every row, is column K;
    ``row_ids`` (N,): how messages number the rows (None: 0..N-1)."""
    index: dict[bytes, int] = {}
    allowed: list[np.ndarray] = []
    count: list[int] = []
    mass: list[float] = []
    first: list[list[int]] = []
    weights = np.exp(np.asarray(log_a, dtype=np.float64))
    for rows, block in row_blocks(scores, block_rows(scores.shape[1], 8)):
        xp = block.namespace() if hasattr(block, "namespace") else namespace(block)
        mask = to_numpy(block > -xp.inf)  # (n, K)
        keys, first_of, inverse = np.unique(
            np.packbits(mask, axis=1), axis=0, return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
        block_mass = np.bincount(inverse, weights=weights[rows], minlength=len(keys))
        block_count = np.bincount(inverse, minlength=len(keys))
        members = np.argsort(inverse, kind="stable")  # each group's rows, in order
        starts = np.concatenate([[0], np.cumsum(block_count)[:-1]])
        for u in range(len(keys)):
            g = index.setdefault(keys[u].tobytes(), len(allowed))
            if g == len(allowed):
                allowed.append(mask[first_of[u]])
                count.append(0)
                mass.append(0.0)
                first.append([])
            count[g] += int(block_count[u])
            mass[g] += float(block_mass[u])
            room = min(SHOWN - len(first[g]), int(block_count[u]))
            for row in rows.start + members[starts[u] : starts[u] + room]:
                first[g].append(int(row) if row_ids is None else int(row_ids[row]))
    table = np.array(allowed, dtype=bool).reshape(len(allowed), scores.shape[1])
    if unassigned:
        table = np.concatenate([table, np.ones((len(allowed), 1), dtype=bool)], axis=1)
    return Patterns(
        table,
        np.array(count, np.int64),
        np.array(mass),
        [np.array(f, np.int64) for f in first],
        unassigned,
    )


def merge_patterns(parts: list[Patterns], offsets: list[int]) -> Patterns:
    """The groups of several shards' rows, numbered from each shard's ``offset``."""
    merged: dict[bytes, int] = {}
    allowed: list[np.ndarray] = []
    count: list[int] = []
    mass: list[float] = []
    first: list[np.ndarray] = []
    for part, offset in zip(parts, offsets, strict=True):
        for p in range(part.count.size):
            key = np.packbits(part.allowed[p]).tobytes()
            g = merged.setdefault(key, len(allowed))
            if g == len(allowed):
                allowed.append(part.allowed[p])
                count.append(0)
                mass.append(0.0)
                first.append(np.zeros(0, np.int64))
            count[g] += int(part.count[p])
            mass[g] += float(part.mass[p])
            first[g] = np.concatenate([first[g], offset + part.first_rows[p]])[:SHOWN]
    width = parts[0].allowed.shape[1]
    return Patterns(
        np.array(allowed, dtype=bool).reshape(-1, width),
        np.array(count, np.int64),
        np.array(mass),
        first,
        parts[0].unassigned,
    )


#: Rows named per group (and in all) by an error message.
SHOWN = 5


def check_feasible(
    patterns: Patterns,
    mass_bounds: tuple[np.ndarray, np.ndarray] | None,
    count_bounds: tuple[np.ndarray, np.ndarray] | None,
    name: str,
) -> None:
    """Raise a ValueError, naming samples or clusters, if no plan meets the clusters'
    ``mass_bounds`` (lower, upper (C,), of the rows' mass; ``inf``: none; None: not
    checked) on the allowed pairs, or, with ``count_bounds``, if no hard labels meet
    those."""
    if mass_bounds is not None:
        scale = MASS_UNITS  # masses are fractions of the whole mass 1
        free_mass = float(patterns.mass.sum())
        lower, upper = mass_bounds
        supply = np.rint(patterns.mass * scale).astype(np.int64)
        slack = patterns.count.size + lower.size  # rounding: one unit per node
        _check_flows(
            patterns,
            supply,
            np.floor(np.asarray(lower) * scale),
            np.ceil(np.minimum(np.asarray(upper), 2 * free_mass) * scale),
            slack,
            "mass",
            name,
        )
    if count_bounds is not None:
        low, high = count_bounds
        _check_flows(patterns, patterns.count, np.asarray(low), np.asarray(high), 0, "count", name)


def _check_flows(
    patterns: Patterns,
    supply: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    slack: int,
    units: str,
    name: str,
) -> None:
    """The two flows: ``lower`` filled; every row's ``supply`` within ``upper``."""
    lower = lower.astype(np.int64)
    flow, reached = _max_flow(patterns.allowed, supply, lower)
    if flow < int(lower.sum()) - slack:
        clusters = np.flatnonzero(~reached[patterns.count.size :])
        groups = np.asarray(patterns.allowed[:, clusters].any(axis=1))
        one = clusters.size == 1
        held = supply[groups].sum()
        raise ValueError(
            f"{name}: {_what(units)} with the forbidden (-inf) pairs: "
            f"{_clusters(clusters, patterns)} need{'s' if one else ''} at least "
            f"{_amount(lower[clusters].sum(), units)}, but "
            f"{_held(patterns, groups, held, units, 'it' if one else 'them')}; allow more samples "
            f"to {'that cluster' if one else 'those clusters'}, or lower "
            f"{'its size' if one else 'their sizes'}{_hint(units)}"
        )
    total = int(supply.sum())
    upper = np.minimum(upper, total).astype(np.int64)
    flow, reached = _max_flow(patterns.allowed, supply, upper)
    if flow < total - slack:
        groups = reached[: patterns.count.size]
        clusters = np.flatnonzero(reached[patterns.count.size :])
        raise ValueError(
            f"{name}: {_what(units)} with the forbidden (-inf) pairs: "
            f"{_samples(patterns, groups)}, holding "
            f"{_amount(supply[groups].sum(), units)}, may go only to "
            f"{_clusters(clusters, patterns)}, which take at most "
            f"{_amount(upper[clusters].sum(), units)}; allow those samples more clusters, "
            f"or raise those clusters' sizes{_hint(units)}"
        )


def _held(patterns: Patterns, groups: np.ndarray, held: float, units: str, them: str) -> str:
    """``3 samples (rows ...) allowed to them hold only 0.1 of the mass``, or none."""
    n = int(patterns.count[groups].sum())
    if n == 0:
        return f"no sample is allowed to {them}"
    verb = "holds" if n == 1 else "hold"
    return f"{_samples(patterns, groups)} allowed to {them} {verb} only {_amount(held, units)}"


def _what(units: str) -> str:
    """What is missing: a plan (the shares of the mass) or hard labels (counts)."""
    return (
        "no plan meets the cluster sizes"
        if units == "mass"
        else "no hard labels meet the count bounds"
    )


def _hint(units: str) -> str:
    return "" if units == "mass" else " (or take rounding='argmax')"


def _max_flow(
    allowed: np.ndarray, supply: np.ndarray, capacity: np.ndarray
) -> tuple[int, np.ndarray]:
    """The maximum flow source -> groups (``supply``) -> allowed clusters -> sink
    (``capacity``), and the nodes (groups, then clusters) reachable from the source in
    its residual graph: the source side of a minimum cut."""
    n_groups, n_columns = allowed.shape
    source, sink = n_groups + n_columns, n_groups + n_columns + 1
    group_of, column_of = np.nonzero(allowed)
    heads = np.concatenate([np.full(n_groups, source), group_of, n_groups + np.arange(n_columns)])
    tails = np.concatenate([np.arange(n_groups), n_groups + column_of, np.full(n_columns, sink)])
    caps = np.concatenate([supply, supply[group_of], capacity]).astype(np.int32)
    graph = csr_array((caps, (heads, tails)), shape=(sink + 1, sink + 1))
    result = maximum_flow(graph, source, sink)
    residual = graph - result.flow  # (nodes, nodes): forward room and the way back
    residual = csr_array(residual > 0, dtype=np.int8)
    reached = np.zeros(sink + 1, dtype=bool)
    reached[breadth_first_order(residual, source, return_predecessors=False)] = True
    return int(result.flow_value), reached[:source]


def _samples(patterns: Patterns, groups: np.ndarray) -> str:
    """``12 samples (rows 3, 8, ...)`` for the rows of ``groups`` (a mask over P)."""
    picked = [patterns.first_rows[p] for p in np.flatnonzero(groups)]
    rows = np.sort(np.concatenate([np.zeros(0, np.int64), *picked]))
    n = int(patterns.count[groups].sum())
    if n == 0:
        return "no sample"
    listed = ", ".join(str(int(r)) for r in rows[:SHOWN])
    more = ", ..." if n > min(SHOWN, rows.size) else ""
    if not listed:  # rows of ranks that hold no -inf are not numbered
        return f"{n} sample{'s' if n != 1 else ''}"
    return f"{n} sample{'s' if n != 1 else ''} (row{'s' if n != 1 else ''} {listed}{more})"


def _clusters(columns: np.ndarray, patterns: Patterns) -> str:
    """``clusters [0, 4]`` (the unassigned column named as such)."""
    last = patterns.allowed.shape[1] - 1
    names = [
        "unassigned" if patterns.unassigned and c == last else str(int(c)) for c in columns[:20]
    ]
    if columns.size > 20:
        names.append("...")
    return f"cluster{'s' if columns.size != 1 else ''} [{', '.join(names)}]"


def _amount(value: float, units: str) -> str:
    """A count, or a mass as a fraction of the whole (``0.25 of the mass``)."""
    if units == "count":
        return f"{int(value)} sample{'s' if value != 1 else ''}"
    return f"{value / MASS_UNITS:.4g} of the mass"
