"""Hard labels from the Sinkhorn duals: argmax, and exact under count bounds.

Exact labels solve the bounded transportation problem

    max_y  sum_i S_{i, y_i}   subject to   lower_k <= #{i : y_i = k} <= upper_k,

with the bounds of the problem's column constraint
(:meth:`~otlabel.constraints.FixedSizes.count_bounds`: ``floor(N b_k)`` and
``ceil(N b_k)`` for fixed sizes, ``floor(N lo_k)`` and ``ceil(N hi_k)`` for
bounded ones).  Its LP relaxation has an integral optimum, and its dual is a
function of one price per cluster::

    D(pi) = sum_i max_k (S_ik + pi_k) - sum_k n_k(pi_k) pi_k,
    n_k(t) = lower_k if t > 0 else upper_k,

an upper bound on the objective of every feasible labelling.  ``D(pi) - P(y)``,
divided by N, is the certified gap reported as ``res.gap``.

The solver is successive shortest paths on the graph of the K clusters
(few nodes, however large N is).  It starts from ``argmax_k S_ik + g_k`` with the
Sinkhorn potential ``g``: every sample is at its best cluster at prices
``p = -g``, and only the clusters that came out over-full must give samples
away.  Moving a sample from cluster k to cluster l costs it
``(S_ik - p_k) - (S_il - p_l) >= 0``; the cheapest such move is
``C[k, l] - p_k + p_l`` with ``C[k, l] = min_{i in k} (S_ik - S_il)``.  Each step
runs Dijkstra from an over-full cluster to the nearest cluster with room,
lowers the prices of the clusters it did not settle so that the path costs
nothing, and moves samples of least loss along each edge of the path.  Every
sample stays at a best cluster at the current prices, so the labels are optimal
when the counts are feasible, and ``-prices`` is an optimal dual: the
certificate is exact up to rounding.  The lower bounds enter through
``sum_k upper_k - N`` placeholder "dummies" that score nothing anywhere: cluster
k holds at most ``upper_k - lower_k`` of them, so a cluster holding ``d_k``
dummies ends with ``upper_k - d_k >= lower_k`` samples.  Dummies start in the
cheapest clusters (where they are at their best).

A path carries at once as many units as its ends (the source's excess, the
end's room), its dummy edges (the givers' dummies, the takers' room for them)
and its sample edges allow: on an edge k -> l, every sample of k whose loss is
``C[k, l]`` moves at no reduced cost, so ties move together (the first ones in
k's member order).  Untied scores have one such sample per edge: one unit per
path, as moving one sample each was.  Tied scores, what a collapsed network
gives (all rows equal, rows drawn from a few vectors, small integers), put
almost every sample in a few clusters at the start and have many samples of
least loss: a path moves up to a cluster's room at once, and after a path with
tied samples the same Dijkstra goes on to the next cluster with room, for as
long as its paths stay tight (sample edges only, each as cheap as when it was
relaxed, since a giver's least loss only grows when its last unit of it
leaves), the prices lowered once at the end by the last end's distance.  Among
clusters at the same distance, one with room ends the path.  So the repair
costs about one Dijkstra per source and per filled cluster instead of one per
sample.  The compiled repair (:func:`otlabel.kernels.numba.repair.repair`) also
holds identical rows as one entry with an amount, split as paths require,
when the start leaves a large excess, and counts the units of each least
loss instead of rescanning members.

The work is one pass over the matrix for ``argmax`` (none when the solve's sparse
kernel gives it exactly: ``argmax=``), one for ``C``, one for the
certificate, and one Dijkstra on K nodes per path (stopped at the nearest
cluster with room); on untied scores there is one path per unit of excess,
which is small when ``g`` comes from Sinkhorn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from array_api_compat import device

from ._arrays import device_of, from_host, namespace, to_numpy
from ._labels import cluster_order, place_dummies


@dataclass
class HardLabels:
    """A head's hard labels, their certified gap and their mean score."""

    labels: np.ndarray | None  # (N,) int64 (this shard's rows when sharded)
    gap: float | None  # certified (optimum - achieved) / N (exact labels only)
    cost: float | None  # mean_i S[i, y_i] over these rows
    #: (K,) or (K + 1,) exact labels only: the cluster potential of the certificate, an
    #: optimal dual of the unregularised problem (samples maximise ``S_ik + g_k``)
    dual: np.ndarray | None = None


def hard_labels(
    scores: Any,
    potential: np.ndarray,
    constraint: Any,
    rounding: str | None,
    backend: Any,
    *,
    virtual: Any = None,
    unassigned: float | None = None,
    group: Collective | None = None,
    n_samples: int | None = None,
    argmax: np.ndarray | None = None,
) -> HardLabels:
    """``rounding``'s labels of ``scores`` (N, K) from the cluster potential ``g``.

    ``"balanced"``: the exact labels under the constraint (count bounds, or the
    relaxed objective), with a certified gap; ``"argmax"``: ``argmax_k (S_ik +
    g_k)``; None: no labels.  ``virtual`` (N,) and ``unassigned``: the scores and
    the potential of partial mass's virtual column, which takes part as a
    (K + 1)-th column, never stored; its samples get label -1.  ``backend`` says
    who reads the matrix; ``group`` and ``n_samples``: for one shard of a
    sharded problem, the counts' bounds and the certificate are global.
    ``argmax`` (N,): ``argmax_k (S_ik + g_k)`` if the solve already knows it
    exactly (from its sparse kernel's entries), which saves a read of the scores.
    """
    if rounding is None:
        return HardLabels(None, None, None)
    scores = _random_access(scores)
    if virtual is not None:
        scores = WithColumn(scores, virtual)
        potential = np.append(potential, 0.0 if unassigned is None else unassigned)
        argmax = None  # over K columns, not K + 1
    passes, rows_per_block = backend.rounding_passes(scores)
    total = scores.shape[0] if n_samples is None else n_samples
    gap = None
    if rounding == "argmax":
        labels = argmax_labels(scores, potential, rows_per_block, passes, argmax)
        dual = None
    elif constraint.counts_bounded:
        bounds = constraint.count_bounds(total)
        exact = balanced_labels(
            scores,
            potential,
            bounds,
            rows_per_block=rows_per_block,
            passes=passes,
            group=group,
            argmax=argmax,
        )
        labels, gap = exact.labels, exact.gap
        dual = exact.potential
    else:
        concave = concave_labels(
            scores, potential, constraint, total, rows_per_block, passes, group, argmax
        )
        labels, gap, dual = concave.labels, concave.gap, -concave.prices
    cost = mean_label_score(scores, labels, rows_per_block)
    if virtual is not None:
        labels = np.where(labels == potential.size - 1, -1, labels)
    return HardLabels(labels, gap, cost, dual)


def predicted(
    scores: Any,
    potential: np.ndarray,
    virtual: np.ndarray | None,
    soft: bool,
    epsilon: float | None,
    backend: Any,
) -> Any:
    """``argmax_k (S_ik + g_k)`` (N,) (-1 for the virtual column), or the codes
    ``softmax_k((S_ik + g_k)/eps)`` (N, K) without the virtual column's share."""
    n_clusters = scores.shape[1]
    if virtual is not None:
        scores = WithColumn(scores, virtual)
    passes, rows_per_block = backend.rounding_passes(scores)
    if not soft:
        labels = argmax_labels(scores, potential, rows_per_block, passes)
        return np.where(labels == n_clusters, -1, labels) if virtual is not None else labels
    assert epsilon is not None
    blocks = []
    for start in range(0, scores.shape[0], rows_per_block):
        block = scores[start : start + rows_per_block]
        if isinstance(block, WithColumn):
            block = np.asarray(block)  # (n, K + 1): the codes' softmax includes the column
        xp, where = namespace(block), device_of(block)
        x = (xp.astype(block, xp.float64) + from_host(potential, xp, where)) / epsilon
        x = x - xp.max(x, axis=1, keepdims=True)
        e = xp.exp(x)
        blocks.append((e / xp.sum(e, axis=1, keepdims=True))[:, :n_clusters])
    codes = namespace(blocks[0]).concat(blocks, axis=0)
    return codes


def _random_access(scores: Any) -> Any:
    """A stream of a NumPy array or ``.npy`` file as that array (read in place: the
    file's pages, no copy), so that the compiled repairs read its rows where they
    are instead of gathering them through the stream; anything else unchanged."""
    source = getattr(scores, "numpy_source", None)
    array = source() if source is not None else None
    return scores if array is None else array


def _in_memory(scores: Any) -> bool:
    """A NumPy matrix (with or without an appended column): compiled repairs read it;
    a stream's rows are gathered in NumPy."""
    return isinstance(getattr(scores, "scores", scores), np.ndarray)


class WithColumn:
    """Scores ``(N, K)`` read as ``(N, K + 1)``: a last column appended block by block,
    never stored whole (partial mass's virtual column in the rounding passes).

    A block of NumPy rows is a :class:`WithColumn` too (its rows and their column
    values): the compiled passes read it in place, and ``numpy.asarray`` gives the
    ``(n, K + 1)`` float64 array that the NumPy passes read.
    """

    def __init__(self, scores: Any, column: Any) -> None:
        self.scores, self.column = scores, column  # (N, K), (N,)
        self.shape = (scores.shape[0], scores.shape[1] + 1)
        self.dtype = np.dtype(np.float64)
        self.device = getattr(scores, "device", "cpu")

    def __getitem__(self, rows: Any) -> Any:
        block = self.scores[rows]
        column = np.asarray(to_numpy(self.column)[_host_rows(rows)], dtype=np.float64)
        if isinstance(block, np.ndarray):
            return WithColumn(block, column)
        xp, where = namespace(block), device_of(block)
        values = xp.astype(from_host(column, xp, where), xp.float64)[:, None]
        return xp.concat([xp.astype(block, xp.float64), values], axis=1)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = np.column_stack([np.asarray(self.scores, np.float64), self.column])
        return whole if dtype is None else whole.astype(dtype)


def _host_rows(rows: Any) -> Any:
    return rows if isinstance(rows, slice) else to_numpy(rows)


def mean_label_score(scores: Any, labels: np.ndarray, rows_per_block: int) -> float:
    """``mean_i S[i, labels_i]``: N entries gathered, block by block."""
    return float(np.sum(label_scores(scores, labels, rows_per_block))) / max(labels.size, 1)


def label_scores(scores: Any, labels: np.ndarray, rows_per_block: int) -> np.ndarray:
    """``S[i, labels_i]`` (N,) float64 on the host, block by block (label K: the
    virtual column of partial mass, where ``scores`` has one)."""
    parts = []
    for start in range(0, labels.size, rows_per_block):
        block = scores[start : start + rows_per_block]
        own = labels[start : start + rows_per_block]
        if isinstance(block, WithColumn):  # the virtual column's score where it was chosen
            n_clusters = block.scores.shape[1]
            rows = np.arange(own.size)
            real = np.asarray(block.scores[rows, np.minimum(own, n_clusters - 1)], np.float64)
            parts.append(np.where(own == n_clusters, block.column, real))
            continue
        xp, where = namespace(block), device_of(block)
        rows = from_host(np.arange(own.size), xp, where)
        picked = block[rows, from_host(own, xp, where)]  # (n,)
        parts.append(to_numpy(xp.astype(picked, xp.float64)))
    return np.concatenate([np.zeros(0), *parts])


@dataclass
class BalancedLabels:
    """Exactly balanced labels and their certificate."""

    labels: np.ndarray  # (N,) int64
    gap: float  # certified (optimum - achieved) / N, score units
    prices: np.ndarray  # (K,) cluster prices p of the certificate (pi = -p + level)
    n_moves: int  # units (samples or dummies) moved by shortest paths
    n_paths: int = 0  # the paths they took (tied samples move together)
    potential: np.ndarray | None = None  # (K,) pi = level - p: the optimal dual itself


class Passes(Protocol):
    """The three reads of the matrix, per block of rows (NumPy here, Numba in kernels/)."""

    def argmax(self, block: np.ndarray, potential: np.ndarray) -> np.ndarray: ...

    def move_costs(self, block: np.ndarray, own: np.ndarray, move_cost: np.ndarray) -> None: ...

    def row_gap(self, block: np.ndarray, labels: np.ndarray, prices: np.ndarray) -> float: ...

    def gather(self, scores: Any, index: np.ndarray) -> Any:
        """Rows ``index`` of the matrix as float64 (m, K), NumPy or on the scores' device."""


class Collective(Protocol):
    """How the shards of a sharded problem agree (:mod:`otlabel.distributed`).

    Every method is called by every shard in the same order; one process is
    the trivial case (:class:`Alone`).
    """

    rank: int

    def sum(self, values: np.ndarray) -> np.ndarray: ...

    def min(self, values: np.ndarray) -> np.ndarray: ...

    def owner_of_min(self, value: float) -> int:
        """The rank with the smallest ``value`` (the lowest such rank on ties)."""


class Alone:
    """The collective of a problem held whole by one process."""

    rank = 0

    @staticmethod
    def sum(values: np.ndarray) -> np.ndarray:
        return values

    @staticmethod
    def min(values: np.ndarray) -> np.ndarray:
        return values

    @staticmethod
    def owner_of_min(value: float) -> int:
        return 0


class NumpyPasses:
    """The passes in NumPy, on float64 copies of each block."""

    name = "numpy"

    @staticmethod
    def argmax(block: np.ndarray, potential: np.ndarray) -> np.ndarray:
        """``argmax_k (S_ik + g_k)`` per row of the block."""
        return np.argmax(np.asarray(block, np.float64) + potential, axis=1)

    @staticmethod
    def move_costs(block: np.ndarray, own: np.ndarray, move_cost: np.ndarray) -> None:
        """``C[k] = min(C[k], min_{i in k} S_ik - S_i)`` over the block's rows, in place."""
        order = cluster_order(own)  # rows of a cluster made contiguous
        own, rows = own[order], np.asarray(block, np.float64)[order]
        loss = rows[np.arange(own.size), own][:, None] - rows  # (n, K)
        clusters, first = np.unique(own, return_index=True)
        block_min = np.minimum.reduceat(loss, first, axis=0)  # (clusters in block, K)
        move_cost[clusters] = np.minimum(move_cost[clusters], block_min)

    @staticmethod
    def row_gap(block: np.ndarray, labels: np.ndarray, prices: np.ndarray) -> float:
        """Sum over the block of ``max_k (S_ik - p_k) - (S_iy - p_y)``."""
        values = np.asarray(block, np.float64) - prices  # (n, K)
        own = values[np.arange(labels.size), labels]
        return float(np.sum(values.max(axis=1) - own))

    @staticmethod
    def gather(scores: Any, index: np.ndarray) -> np.ndarray:
        """Rows ``index`` as float64 (m, K); a stream gathers them through its source."""
        return np.asarray(scores[index], np.float64)


class HostPasses(NumpyPasses):
    """The NumPy passes on host copies of each block: any array library (e.g. CuPy)."""

    name = "host"

    @staticmethod
    def argmax(block: Any, potential: np.ndarray) -> np.ndarray:
        return NumpyPasses.argmax(to_numpy(block), potential)

    @staticmethod
    def move_costs(block: Any, own: np.ndarray, move_cost: np.ndarray) -> None:
        NumpyPasses.move_costs(to_numpy(block), own, move_cost)

    @staticmethod
    def row_gap(block: Any, labels: np.ndarray, prices: np.ndarray) -> float:
        return NumpyPasses.row_gap(to_numpy(block), labels, prices)

    @staticmethod
    def gather(scores: Any, index: np.ndarray) -> np.ndarray:
        xp = namespace(scores)
        rows = scores[xp.asarray(index, device=device(scores))]
        return to_numpy(rows).astype(np.float64)


def argmax_labels(
    scores: np.ndarray,
    potential: np.ndarray,
    rows_per_block: int,
    passes: Passes | None = None,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """``argmax_k (S_ik + g_k)`` for every row, block by block: (N,) int64
    (``known``: these labels, already known exactly; a copy, since they are moved)."""
    if known is not None:
        return np.array(known, dtype=np.int64)
    passes = passes or NumpyPasses()
    potential = np.asarray(potential, dtype=np.float64)
    labels = np.empty(scores.shape[0], dtype=np.int64)
    for start in range(0, scores.shape[0], rows_per_block):
        block = scores[start : start + rows_per_block]
        labels[start : start + rows_per_block] = passes.argmax(block, potential)
    return labels


def balanced_labels(
    scores: np.ndarray,
    potential: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    *,
    rows_per_block: int,
    passes: Passes | None = None,
    group: Collective | None = None,
    argmax: np.ndarray | None = None,
    compiled: bool | None = None,
    merge_rows: bool | None = None,
) -> BalancedLabels:
    """Exact labels under count bounds, optimal with a dual certificate; see the
    module docstring.

    Parameters
    ----------
    scores : (N, K) array
    potential : (K,) array
        Cluster potential ``g`` to start from (score units), e.g. from Sinkhorn.
        Any finite vector gives the optimum; a good one gives it fast.
    bounds : ((K,), (K,)) int arrays
        ``lower_k <= n_k <= upper_k`` (global counts when sharded), with
        ``sum lower <= N <= sum upper``.
    rows_per_block : int
        Rows per block for the passes over the whole matrix.
    passes : NumpyPasses (default), NumbaPasses, TorchPasses or HostPasses
        Who runs the three passes over the matrix.
    group : Collective or None
        For one shard of a problem sharded over processes: how the shards agree
        (``scores`` holds this shard's rows, the labels returned are its own, the
        bounds and the certificate are global).  None: the whole problem.
    argmax : (N,) int array or None
        ``argmax_k (S_ik + g_k)`` at ``potential``, if already known exactly.
    compiled : bool or None
        Repair in Numba (:func:`otlabel.kernels.numba.repair.repair`) where it
        can: a NumPy matrix (or ``.npy`` pages) held whole by one process, whoever
        the passes are; None: there, where it pays too (its machine code at hand,
        or a large excess: :func:`otlabel.kernels.numba.repair.pays`).  False: in
        Python (:class:`_Transfers`), as streams and sharded problems always are;
        the same paths on one entry per sample.
    merge_rows : bool or None
        The compiled repair's identical rows as one entry each: None when the
        start leaves a large excess, or always (True) or never (False).
    """
    passes = passes or NumpyPasses()
    group = group or Alone()
    lower, upper = (np.asarray(bound, dtype=np.int64) for bound in bounds)
    prices = -np.asarray(potential, dtype=np.float64)
    labels = argmax_labels(scores, -prices, rows_per_block, passes, argmax)
    repair = _compiled_repair(scores, group, compiled, labels, upper)
    if repair is not None:
        prices, move_cost, n_moves, n_paths = repair(
            scores, labels, prices, (lower, upper), rows_per_block, passes, merge_rows
        )
    else:
        transfers = _Transfers(
            scores, labels, prices, (lower, upper), rows_per_block, passes, group
        )
        n_moves = transfers.balance()
        prices, move_cost, n_paths = transfers.prices, transfers.move_cost, transfers.n_paths
    counts = group.sum(np.bincount(labels, minlength=prices.size))
    gap = gap_from_move_costs(move_cost, counts, prices, lower, upper)
    potential = dual_level(counts, prices, lower, upper) - prices
    return BalancedLabels(labels, gap, prices, n_moves, n_paths, potential)


def _compiled_repair(
    scores: Any, group: Collective, compiled: bool | None, labels: np.ndarray, upper: np.ndarray
) -> Any:
    """The Numba repair where it applies (an in-memory NumPy matrix, one process) and
    is asked for (``compiled`` True) or pays (None), else None."""
    if compiled is False or not (_in_memory(scores) and isinstance(group, Alone)):
        return None
    try:
        from .kernels.numba.repair import pays, repair
    except ImportError:  # pragma: no cover - Numba is a dependency
        return None
    return repair if compiled or pays(scores, labels, upper) else None


def gap_from_move_costs(
    move_cost: np.ndarray,
    counts: np.ndarray,
    prices: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> float:
    """The certified gap of :func:`certified_gap`, its row terms bounded from the move
    costs instead of a read of the matrix.

    Sample i in cluster k loses ``max_l (S_il - p_l) - (S_ik - p_k) = max_l (p_k - p_l
    - (S_ik - S_il))``, at most ``max_l (p_k - p_l - C[k, l])`` with ``C[k, l] = min_{i
    in k} (S_ik - S_il)`` (exact, kept exact through every move), and 0 when every
    reduced cost is non-negative, as the repair keeps them.  So ``sum_k n_k
    max(0, max_l (p_k - p_l - C[k, l]))`` bounds the row terms.
    """
    with np.errstate(invalid="ignore"):
        excess = prices[:, None] - prices[None, :] - move_cost  # (K, K)
    worst = np.max(np.where(np.isnan(excess), -np.inf, excess), axis=1)  # -inf: empty
    row_terms = float(np.sum(counts * np.maximum(worst, 0.0)))
    return _gap(row_terms, counts, prices, lower, upper)


def certified_gap(
    scores: np.ndarray,
    labels: np.ndarray,
    prices: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    rows_per_block: int,
    passes: Passes | None = None,
    group: Collective | None = None,
) -> float:
    """``(D(pi) - P(y)) / N`` with ``pi = level - prices``, the level chosen optimally.

    Both terms are sums of non-negative quantities, so no large numbers cancel:
    the row terms ``max_k (S_ik - p_k) - (S_iy - p_y)`` and the price term
    ``sum_k (n_k - bound_k) pi_k`` (``bound = lower`` where ``pi > 0``, else
    ``upper``), with ``n_k`` the label counts.
    """
    passes = passes or NumpyPasses()
    group = group or Alone()
    n_local = labels.size
    row_terms = 0.0
    for start in range(0, n_local, rows_per_block):
        stop = min(start + rows_per_block, n_local)
        row_terms += passes.row_gap(scores[start:stop], labels[start:stop], prices)
    counts = np.bincount(labels, minlength=prices.size)
    totals = group.sum(np.append(counts, row_terms).astype(np.float64))
    counts, row_terms = totals[:-1].astype(np.int64), float(totals[-1])
    return _gap(row_terms, counts, prices, lower, upper)


def _gap(
    row_terms: float, counts: np.ndarray, prices: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> float:
    """``(row terms + price term) / N``, the level of the dual chosen optimally."""
    n_samples = int(counts.sum())
    shift = dual_level(counts, prices, lower, upper) - prices  # pi_k
    bound = np.where(shift > 0, lower, upper)
    price_term = float(np.sum((counts - bound) * shift))
    return max(0.0, (row_terms + price_term) / n_samples)


def dual_level(
    counts: np.ndarray, prices: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> float:
    """The level of the optimal dual ``pi = level - prices`` of count bounds.

    It minimises ``N level - sum_k bound_k(level - p_k) (level - p_k)``: the slope
    turns non-negative once the optional slots of the clusters cheaper than the
    level cover the ``sum_k upper_k - N`` slots left empty."""
    order = np.argsort(prices, kind="stable")
    optional_below = np.cumsum((upper - lower)[order])
    n_empty = int(upper.sum()) - int(counts.sum())
    return float(prices[order[min(int(np.searchsorted(optional_below, n_empty)), order.size - 1)]])


class _Transfers:
    """Successive shortest paths on the cluster graph; mutates ``labels`` in place."""

    def __init__(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        prices: np.ndarray,
        bounds: tuple[np.ndarray, np.ndarray],
        rows_per_block: int,
        passes: Passes,
        group: Collective,
    ) -> None:
        """``labels`` are this shard's (all of them for one process); the rest is global."""
        self.scores, self.labels, self.prices = scores, labels, prices.copy()
        self.passes, self.group = passes, group
        lower, upper = bounds
        self.upper = upper
        self.spare = upper - lower  # (K,) dummies a cluster may hold
        n_clusters = upper.size
        by_cluster = cluster_order(labels)
        sizes = np.bincount(labels, minlength=n_clusters)
        self.members = [part.tolist() for part in np.split(by_cluster, np.cumsum(sizes)[:-1])]
        counts = group.sum(sizes)  # (K,) over all shards
        n_dummies = int(upper.sum()) - int(counts.sum())
        self.dummies = place_dummies(self.prices, self.spare, upper - counts, n_dummies)
        self.occupancy = counts + self.dummies
        self.move_cost = group.min(self._move_costs(rows_per_block))  # (K, K) C
        self.n_paths = 0  # paths taken by :meth:`balance`

    def _move_costs(self, rows_per_block: int) -> np.ndarray:
        """``C[k, l] = min_{i in k} (S_ik - S_il)``; ``inf`` for an empty cluster k.

        Passes that can (Numba) also record in :attr:`move_arg` a sample that
        attains each minimum, so that a move recomputes only the minima it took.
        """
        n_clusters = self.upper.size
        move_cost = np.full((n_clusters, n_clusters), np.inf)
        with_args = getattr(self.passes, "move_costs_with_args", None)
        self.move_arg = np.full((n_clusters, n_clusters), -1, dtype=np.int64)
        for start in range(0, self.labels.size, rows_per_block):
            block = self.scores[start : start + rows_per_block]
            own = self.labels[start : start + rows_per_block]
            if with_args is not None:
                with_args(block, own, move_cost, self.move_arg, start)
            else:
                self.passes.move_costs(block, own, move_cost)
        return move_cost

    def balance(self) -> int:
        """Move along shortest paths until no cluster is over-full; returns the units moved.

        One Dijkstra per path, except after a path that moved tied samples in
        bulk: the same Dijkstra then goes on to the next cluster with room, as
        long as its paths stay tight (see the module docstring).
        """
        n_moves = self.n_paths = 0
        while True:
            over_full = np.flatnonzero(self.occupancy > self.upper)
            if over_full.size == 0:
                return n_moves
            source = int(over_full[0])
            search = _Search(source, self.upper.size)
            limit = None  # the distance of the last path's end
            while True:
                end = self._nearest_room(search)
                if end < 0:
                    if limit is None:
                        raise RuntimeError("exact labels: no cluster with room (infeasible bounds)")
                    break
                path = search.path(end)
                if limit is not None and not self._tight_sample_path(search, path):
                    break
                rows: dict[int, Any] = {}
                amount, tied = self._capacity(source, path, rows)
                for giver, taker, by_dummy in path:
                    self._move(giver, taker, by_dummy, amount, rows.get(giver))
                n_moves += amount
                self.n_paths += 1
                limit = float(search.distance[end])
                samples_only = not any(by_dummy for _, _, by_dummy in path)
                if not (tied and samples_only) or self.occupancy[source] <= self.upper[source]:
                    break
                if self.occupancy[end] < self.upper[end]:
                    break
                self._settle(search, end)
            # every path's edges cost nothing now, and every edge at least zero
            self.prices = self.prices - np.minimum(search.distance, limit)

    def _capacity(
        self, source: int, path: list[tuple[int, int, bool]], rows: dict
    ) -> tuple[int, bool]:
        """Units that can follow ``path`` at once (listed last edge first), and whether
        a sample edge of it has tied samples (more than one of least loss).

        The source's excess and the end's room bound them; on a dummy edge, the
        giver's dummies and, unless the taker passes dummies on, its room for
        more; on a sample edge, the giver's samples of least loss towards the
        taker (each moves at no reduced cost: ties of the scores move together),
        one when sharded.  So one unit on untied scores, as many dummies as fit
        on a path of dummy edges.  ``rows`` gets each sample edge's giver's rows
        (for :meth:`_move`).
        """
        end = path[0][1]
        amount = min(
            int(self.occupancy[source] - self.upper[source]),
            int(self.upper[end] - self.occupancy[end]),
        )
        passes_dummies, tied = False, False  # the end passes nothing on
        for giver, taker, by_dummy in path:
            if by_dummy:
                amount = min(amount, int(self.dummies[giver]))
                if not passes_dummies:
                    amount = min(amount, int(self.spare[taker] - self.dummies[taker]))
            else:
                units = self._least_loss_units(giver, taker, rows)
                amount, tied = min(amount, units), tied or units > 1
            passes_dummies = by_dummy
        return max(1, amount), tied

    def _least_loss_units(self, giver: int, taker: int, rows: dict) -> int:
        """The giver's samples whose loss towards ``taker`` is least (1 when sharded:
        samples move one at a time there); keeps the giver's rows in ``rows``."""
        if not isinstance(self.group, Alone):
            return 1
        members = np.asarray(self.members[giver], dtype=np.int64)
        rows[giver] = gathered = self.passes.gather(self.scores, members)
        xp = namespace(gathered)
        loss = gathered[:, giver] - gathered[:, taker]
        return int(xp.sum(xp.astype(loss == xp.min(loss), xp.int64)))

    def _nearest_room(self, search: _Search) -> int:
        """Dijkstra on, from where ``search`` stands, to the nearest cluster with room
        (-1: none); of the clusters nearest, the first with room, so that tied scores
        do not settle every full cluster at the same distance first.

        From one source at a time: starting from all over-full clusters at once
        would settle them all.
        """
        distance, settled = search.distance, search.settled
        while True:
            node = int(np.argmin(np.where(settled, np.inf, distance)))
            if not np.isfinite(distance[node]):
                return -1
            if self.occupancy[node] >= self.upper[node]:  # one with room as near ends it
                near = ~settled & (distance == distance[node]) & (self.occupancy < self.upper)
                node = int(np.flatnonzero(near)[0]) if near.any() else node
            if self.occupancy[node] < self.upper[node]:
                return node
            self._settle(search, node)

    def _settle(self, search: _Search, node: int) -> None:
        """Settle ``node``: relax its edges, sample and dummy, at the current prices."""
        prices, n_clusters = self.prices, self.upper.size
        distance, settled = search.distance, search.settled
        settled[node] = True
        edge = self.move_cost[node] - prices[node] + prices  # (K,) reduced costs
        dummy_edge = np.full(n_clusters, np.inf)
        if self.dummies[node] > 0:
            room = self.dummies < self.spare
            dummy_edge[room] = prices[room] - prices[node]
        use_dummy = dummy_edge < edge
        reach = distance[node] + np.maximum(np.minimum(edge, dummy_edge), 0.0)
        better = (reach < distance) & ~settled
        distance[better] = reach[better]
        search.parent[better] = node
        search.by_dummy[better] = use_dummy[better]

    def _tight_sample_path(self, search: _Search, path: list[tuple[int, int, bool]]) -> bool:
        """Whether ``path`` has sample edges only, each still as cheap as when it was
        relaxed (a giver's least loss only grows, when its last sample of least loss
        has left)."""
        prices, distance = self.prices, search.distance
        for giver, taker, by_dummy in path:
            edge = self.move_cost[giver, taker] - prices[giver] + prices[taker]
            if by_dummy or distance[giver] + max(edge, 0.0) != distance[taker]:
                return False
        return True

    def _move(self, giver: int, taker: int, by_dummy: bool, amount: int, rows: Any = None) -> None:
        """Move ``amount`` dummies, or the ``amount`` samples that lose least (the first
        ones in member order), from ``giver`` to ``taker`` (``rows``: the giver's, if
        already gathered)."""
        self.occupancy[giver] -= amount
        self.occupancy[taker] += amount
        if by_dummy:
            self.dummies[giver] -= amount
            self.dummies[taker] += amount
            return
        n_clusters = self.upper.size
        members = np.asarray(self.members[giver], dtype=np.int64)  # this shard's
        # the members' rows (m, K), float64, where the passes keep them (Torch: the device)
        if rows is None and members.size:
            rows = self.passes.gather(self.scores, members)
        if amount > 1:  # tied samples (one process only)
            self._move_tied(giver, taker, members, rows, amount)
            return
        best, pick = np.inf, -1
        if rows is not None:
            xp = namespace(rows)
            loss = rows[:, giver] - rows[:, taker]  # (m,)
            pick = int(xp.argmin(loss))  # the first on ties, in NumPy and Torch alike
            best = float(loss[pick])
        mine = self.group.owner_of_min(best) == self.group.rank
        moved_cost = np.full(n_clusters, np.inf)  # (K,) the moved sample's costs, or inf
        if mine and rows is not None:
            sample = int(members[pick])
            self.members[giver].remove(sample)
            self.members[taker].append(sample)
            self.labels[sample] = taker
            moved_cost = to_numpy(rows[pick, taker] - rows[pick, :])
            rows = xp.concat([rows[:pick, :], rows[pick + 1 :, :]], axis=0)
        remaining = np.full(n_clusters, np.inf)  # (K,) the giver's cheapest moves left here
        if rows is not None and rows.shape[0]:
            remaining = to_numpy(xp.min(rows[:, giver][:, None] - rows, axis=0))
        both = self.group.min(np.concatenate([remaining, moved_cost]))  # one reduction
        self.move_cost[giver] = both[:n_clusters]
        self.move_cost[taker] = np.minimum(self.move_cost[taker], both[n_clusters:])

    def _move_tied(
        self, giver: int, taker: int, members: np.ndarray, rows: Any, amount: int
    ) -> None:
        """:meth:`_move` of ``amount`` samples, the first of least loss in member order."""
        xp, where = namespace(rows), device_of(rows)
        loss = rows[:, giver] - rows[:, taker]  # (m,)
        picks = np.flatnonzero(to_numpy(loss == xp.min(loss)))[:amount]
        keep = np.ones(members.size, dtype=bool)
        keep[picks] = False
        moved = members[picks]
        self.members[giver] = members[keep].tolist()
        self.members[taker].extend(moved.tolist())
        self.labels[moved] = taker
        taken = xp.take(rows, from_host(picks, xp, where), axis=0)  # (amount, K)
        moved_cost = to_numpy(xp.min(taken[:, taker][:, None] - taken, axis=0))
        left = rows[from_host(keep, xp, where)]
        remaining = np.full(self.upper.size, np.inf)
        if left.shape[0]:
            remaining = to_numpy(xp.min(left[:, giver][:, None] - left, axis=0))
        self.move_cost[giver] = remaining
        self.move_cost[taker] = np.minimum(self.move_cost[taker], moved_cost)


class _Search:
    """The state of one Dijkstra on the cluster graph from ``source``."""

    def __init__(self, source: int, n_clusters: int) -> None:
        self.source = source
        self.distance = np.full(n_clusters, np.inf)
        self.distance[source] = 0.0
        self.parent = np.full(n_clusters, -1)
        self.by_dummy = np.zeros(n_clusters, dtype=bool)
        self.settled = np.zeros(n_clusters, dtype=bool)

    def path(self, end: int) -> list[tuple[int, int, bool]]:
        """The edges ``(giver, taker, by dummy)`` from the source to ``end``, last first."""
        path, node = [], end
        while node != self.source:
            path.append((int(self.parent[node]), node, bool(self.by_dummy[node])))
            node = int(self.parent[node])
        return path


@dataclass
class ConcaveLabels:
    """Labels that maximise ``sum_i S_{i,y_i} + sum_k h_k(n_k)`` (``h_k`` concave),
    with their certificate."""

    labels: np.ndarray  # (N,) int64
    gap: float  # certified (optimum - achieved) / N
    prices: np.ndarray  # (K,) the certificate's prices p (samples maximise S_ik - p_k)
    n_moves: int  # single-sample exchanges made


def concave_labels(
    scores: Any,
    potential: np.ndarray,
    constraint: Any,
    n_samples: int,
    rows_per_block: int,
    passes: Passes | None = None,
    group: Collective | None = None,
    argmax: np.ndarray | None = None,
) -> ConcaveLabels:
    """Exact labels under a separable concave reward on the counts (relaxed sizes).

    Maximises ``sum_i S_{i, y_i} + sum_k h_k(n_k)``, the reward of a cluster's
    ``n``-th sample being ``c_k(n) = h_k(n) - h_k(n - 1)``, decreasing in ``n``
    (``constraint.slot_values``; infinite values hold a column's count within its
    bounds).  The LP with one variable per sample and cluster and one per
    cluster slot is integral, and its dual is a function of one price per
    cluster, so exchanges suffice (the objective is M-natural concave in the
    counts): from a feasible start (the exact labels under the constraint's count
    bounds, from Sinkhorn's potential), each step runs one multi-source Dijkstra
    on the cluster graph (a source ``l`` starts at ``p_l + c_l(n_l)``: what giving
    up its last sample returns), picks the target ``k`` with the largest gain
    ``p_k + c_k(n_k + 1) - D(k)``, moves one sample along each edge of its path,
    and lowers the prices as successive shortest paths do, until no exchange
    gains.  The last Dijkstra's distances give the optimal dual prices
    ``P_k = D(k) - p_k``: the certificate.
    """
    passes = passes or NumpyPasses()
    group = group or Alone()
    labels = argmax_labels(scores, potential, rows_per_block, passes, argmax)
    prices = -np.asarray(potential, dtype=np.float64)
    bounds = _start_bounds(constraint, group.sum(np.bincount(labels, minlength=prices.size)))
    if bounds is not None:  # fixed-count columns (partial mass's) outside their bounds
        start = balanced_labels(  # from the argmax labels above: no second read
            scores, potential, bounds, rows_per_block=rows_per_block, passes=passes,
            group=group, argmax=labels,
        )  # fmt: skip
        labels, prices = start.labels, start.prices
    exchanges = _Exchanges(scores, labels, prices, rows_per_block, passes, group)
    fast_improve = getattr(passes, "improve", None)
    if fast_improve is not None and _in_memory(scores) and isinstance(group, Alone):
        n_moves = fast_improve(exchanges, constraint, n_samples)
    else:
        n_moves = exchanges.improve(lambda counts: constraint.slot_values(n_samples, counts))
    dual = exchanges.dual_prices(lambda counts: constraint.slot_values(n_samples, counts))
    gap = _concave_gap(scores, labels, dual, exchanges, constraint, n_samples, rows_per_block)
    return ConcaveLabels(labels, gap, dual, n_moves)


def _start_bounds(constraint: Any, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Count bounds that bring the fixed-count columns within theirs and move the
    relaxed ones as little as that takes (None: the argmax labels are feasible).

    The argmax labels of Sinkhorn's potential are a good start for the exchanges;
    only a column of fixed count (partial mass's) may be outside its bounds.
    Widening the relaxed columns' bounds further would let the repair drift
    toward the plain argmax of the scores, which the exchanges would then undo.
    """
    n_total = int(counts.sum())
    lower, upper = constraint.count_bounds(n_total)
    relaxed = (lower == 0) & (upper == n_total)
    wanted = int(np.sum(np.maximum(lower - counts, 0)))  # the fixed columns must receive
    surplus = int(np.sum(np.maximum(counts - upper, 0)))  # ... and give
    if wanted == 0 and surplus == 0:
        return None
    lower = np.where(relaxed, np.maximum(counts - wanted, 0), lower)
    upper = np.where(relaxed, counts + surplus, upper)
    return lower, upper


class _Exchanges(_Transfers):
    """Single-sample exchanges between clusters along shortest paths."""

    def __init__(
        self,
        scores: Any,
        labels: np.ndarray,
        prices: np.ndarray,
        rows_per_block: int,
        passes: Passes,
        group: Collective,
    ) -> None:
        counts = group.sum(np.bincount(labels, minlength=prices.size))
        super().__init__(scores, labels, prices, (counts, counts), rows_per_block, passes, group)
        self.counts = self.occupancy  # no dummies here: occupancy is the counts

    def improve(self, slot_values: Any) -> int:
        """Move samples along the best exchange while it gains; returns the moves."""
        n_moves = 0
        floor = self.gain_floor(slot_values)
        while True:
            distance, parent, target, gain = self._best_exchange(slot_values, prune=True)
            if target < 0 or gain <= floor:
                return n_moves
            self.prices = self.prices - np.minimum(distance, distance[target])
            node = target
            while parent[node] >= 0:
                self._move(int(parent[node]), node, False, 1)
                node = int(parent[node])
            n_moves += 1

    def gain_floor(self, slot_values: Any) -> float:
        """The gain an exchange must beat: its rounding level, :data:`_GAIN_TOLERANCE`
        times the largest finite price, slot value or move cost (in the scores'
        units, whatever they are: 1e-10 as well as 1e10)."""
        with np.errstate(invalid="ignore"):
            terms = [self.prices, slot_values(self.counts), self.move_cost.ravel()]
        finite = [np.abs(t[np.isfinite(t)]) for t in terms]
        largest = max((float(t.max()) for t in finite if t.size), default=0.0)
        return _GAIN_TOLERANCE * largest

    def dual_prices(self, slot_values: Any) -> np.ndarray:
        """The certificate's prices ``p_k - D(k)``, from a full Dijkstra at the end."""
        distance, _, _, _ = self._best_exchange(slot_values, prune=False)
        return self.prices - distance

    def _best_exchange(
        self, slot_values: Any, *, prune: bool
    ) -> tuple[np.ndarray, np.ndarray, int, float]:
        """Multi-source Dijkstra: distances, parents (-1 at a source), the best target
        and its gain; with ``prune``, stops once no unsettled cluster can gain more."""
        prices, n_clusters = self.prices, self.prices.size
        with np.errstate(invalid="ignore"):
            distance = prices + slot_values(self.counts)  # giving up the last sample
            reward = prices + slot_values(self.counts + 1)  # taking one more
        distance = np.where(np.isnan(distance), np.inf, distance)
        reward = np.where(np.isnan(reward), -np.inf, reward)
        fast = getattr(self.passes, "exchange_paths", None)
        if fast is not None:  # the same Dijkstra, compiled
            return fast(self.move_cost, prices, distance, reward, prune)
        parent = np.full(n_clusters, -1)
        settled = np.zeros(n_clusters, dtype=bool)
        bound = float(np.max(reward))
        best, target = 0.0, -1
        while not settled.all():
            unsettled = np.where(settled, np.inf, distance)  # (K,)
            node = int(np.argmin(unsettled))  # all inf: a settled node, which stops here
            if not np.isfinite(unsettled[node]) or (prune and distance[node] >= bound - best):
                break
            settled[node] = True
            gain = reward[node] - distance[node]
            if parent[node] >= 0 and gain > best:
                best, target = float(gain), node
            edge = self.move_cost[node] - prices[node] + prices  # (K,) reduced costs
            reach = distance[node] + np.maximum(edge, 0.0)
            better = (reach < distance) & ~settled
            distance[better] = reach[better]
            parent[better] = node
        return distance, parent, target, best


#: An exchange must gain more than this, relative to the prices, slot values and move
#: costs, to be made.
_GAIN_TOLERANCE = 1e-12


def _concave_gap(
    scores: Any,
    labels: np.ndarray,
    dual: np.ndarray,
    exchanges: _Exchanges,
    constraint: Any,
    n_samples: int,
    rows_per_block: int,
) -> float:
    """``(D(P) - F(y)) / N``: the row terms ``max_k (S_ik - p_k) - (S_iy - p_y)`` with
    the dual prices (bounded from the move costs, as :func:`gap_from_move_costs`
    does), plus each cluster's slot term ``max_n [h(n) - P n] - [h(n_k) - P n_k]``
    (``P = -p``), walked from ``n_k`` over the slots that would gain."""
    counts, price = exchanges.counts.copy(), -dual
    with np.errstate(invalid="ignore"):
        excess = dual[:, None] - dual[None, :] - exchanges.move_cost  # (K, K)
    worst = np.max(np.where(np.isnan(excess), -np.inf, excess), axis=1)
    row_terms = float(np.sum(counts * np.maximum(worst, 0.0)))
    slot_terms = 0.0
    for direction in (+1, -1):
        n = counts.copy()
        while True:
            with np.errstate(invalid="ignore"):  # inf - inf: a cluster nobody may join
                if direction > 0:
                    step = constraint.slot_values(n_samples, n + 1) - price  # add a sample
                else:
                    step = price - constraint.slot_values(n_samples, n)  # remove one
            step = np.where(np.isnan(step), -np.inf, step)
            step[(n + direction < 0) | (n + direction > n_samples)] = -np.inf
            gains = step > 0
            if not gains.any():
                break
            slot_terms += float(np.sum(step[gains]))
            n = n + direction * gains
    return max(0.0, (row_terms + slot_terms) / n_samples)
