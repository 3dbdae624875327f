"""The repair's candidates: per pair of clusters, the few entries that lose least.

For a giver ``g`` and a column ``k`` the list ``(g, k)`` holds up to ``depth``
of ``g``'s entries of least loss ``S_ig - S_ik``, ordered by loss and, on equal
losses, by member order; every entry of ``g`` outside the list loses at least
its bound (``inf``: the list holds them all).  A move takes its entry out of the
giver's lists and puts it in the taker's where it loses less than the bound, so
that when the last unit of a least loss leaves, the next least loss, its units
and its first entry are read from the list instead of from a rescan of the
giver's members (thousands of rows scattered over the matrix).  A list emptied
while entries remain outside it is invalid (count -1) until a rescan refills it.

The lists are a cache of the scans: a value read from a list is the one the
scan would give (``decisive``: the list holds every entry of its least loss),
else the scan runs and refills the list.  One entry per sample only (the
merged entries of identical rows have amounts and split: depth 0 there).

The four arrays travel together as one tuple ``candidates``: ``loss`` (G, C,
depth) float64, ``entry`` (G, C, depth) int64, ``count`` (G, C) int64 and
``bound`` (G, C) float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .entries import entry_score
from .tasks import task_kernel

#: The fewest and the most entries per list: about the excess per cluster, so that
#: a list seldom runs dry before the repair ends ...
FEWEST_CANDIDATES = 8
CANDIDATES = 64


#: ... and the most entries of all the lists together (``C^2 depth``: 64 MB).
CANDIDATE_SLOTS = 1 << 22


def candidate_lists(n_columns: int, depth: int) -> tuple[np.ndarray, ...]:
    """Empty lists for ``n_columns`` clusters (with partial mass's column), ``depth``
    entries each (0: no lists, every one invalid)."""
    shape = (n_columns, n_columns)
    loss = np.empty((*shape, depth))
    entry = np.empty((*shape, depth), np.int64)
    count = np.full(shape, 0 if depth else -1, np.int64)
    return loss, entry, count, np.full(shape, np.inf)


#: The rows per column below which there are no lists: a giver's members are then
#: about as few as a list's entries, every member enters every list, and a scan
#: costs little.  Exact steps from a Sinkhorn potential (32-feature scores, equal
#: sizes, this machine): 1 000 x 100 1.6 ms without lists, 6.2 with; 10 000 x 100
#: 7.3 against 18.6; 100 000 x 100 244 against 42; 2 000 x 10 the same.
LIST_MEMBERS = 128


def candidate_depth(n_columns: int, excess: int, n_rows: int) -> int:
    """Entries per list for ``n_columns`` columns, ``n_rows`` rows and ``excess``
    units to move: the excess per column, within :data:`FEWEST_CANDIDATES` ..
    :data:`CANDIDATES`, fewer where the lists would take more than
    :data:`CANDIDATE_SLOTS` entries together (none past 2 048 columns), none below
    :data:`LIST_MEMBERS` rows per column."""
    if n_rows < LIST_MEMBERS * n_columns:
        return 0
    wanted = min(CANDIDATES, max(FEWEST_CANDIDATES, excess // max(n_columns, 1)))
    return int(min(wanted, CANDIDATE_SLOTS // max(n_columns * n_columns, 1)))


@task_kernel()
def fill_candidates(
    scores, virtual, members, start, count, candidates, move_cost, first_of, first_task,
    last_task,
):  # fmt: skip
    """The lists of the givers ``first_task .. last_task - 1`` (one task each) from
    their members, and each giver's least losses and their first entries
    (``move_cost``, ``first_of``: inf and -1 where it has no entry), one read of
    each member's row."""
    n_real, n_columns = scores.shape[1], move_cost.shape[1]
    list_count, bound = candidates[2], candidates[3]
    losses = np.empty(n_columns)
    for g in range(first_task, last_task):
        list_count[g, :] = 0
        bound[g, :] = np.inf
        below = bound[g]
        for j in range(count[g]):
            e = members[start[g] + j]
            own = entry_score(scores, virtual, e, g)
            row = scores[e]
            any_below = False  # the common case: below no bound (vectorised)
            for k in range(n_real):
                losses[k] = own - np.float64(row[k])
                any_below |= losses[k] < below[k]
            if n_columns > n_real:
                losses[n_real] = own - virtual[e]
                any_below |= losses[n_real] < below[n_real]
            if not any_below:
                continue
            for k in range(n_columns):
                if losses[k] < below[k]:
                    insert(candidates, g, k, losses[k], e)
        for k in range(n_columns):
            has = list_count[g, k] > 0
            move_cost[g, k] = candidates[0][g, k, 0] if has else np.inf
            first_of[g, k] = candidates[1][g, k, 0] if has else -1


@njit(cache=True)
def insert(candidates, g, k, loss, e):
    """Entry ``e`` of loss ``loss`` (below the bound) into the list ``(g, k)``, after
    the entries of equal loss (it comes last in member order); on a full list the
    last entry (or ``e`` itself) leaves it, its loss the new bound."""
    losses, entries, list_count, bound = candidates
    depth, n = losses.shape[2], list_count[g, k]
    if n == depth:
        if loss >= losses[g, k, depth - 1]:  # e itself stays out
            bound[g, k] = loss
            return
        bound[g, k] = losses[g, k, depth - 1]
        n -= 1
    p = n
    while p > 0 and losses[g, k, p - 1] > loss:
        losses[g, k, p] = losses[g, k, p - 1]
        entries[g, k, p] = entries[g, k, p - 1]
        p -= 1
    losses[g, k, p] = loss
    entries[g, k, p] = e
    list_count[g, k] = n + 1


@njit(cache=True)
def arrive(candidates, scores, virtual, taker, e):
    """Entry ``e`` joins ``taker`` (last in its member order): into each valid list of
    the taker where it loses less than the bound."""
    losses, _, list_count, bound = candidates
    if losses.shape[2] == 0:
        return
    own = entry_score(scores, virtual, e, taker)
    for k in range(list_count.shape[1]):
        loss = own - entry_score(scores, virtual, e, k)
        if list_count[taker, k] >= 0 and loss < bound[taker, k]:
            insert(candidates, taker, k, loss, e)


@njit(cache=True)
def depart(candidates, scores, virtual, giver, e):
    """Entry ``e`` leaves ``giver``: out of each of the giver's lists that holds it."""
    if candidates[0].shape[2] > 0:
        was = entry_score(scores, virtual, e, giver)
        for k in range(candidates[2].shape[1]):
            _take_out(candidates, giver, k, e, was - entry_score(scores, virtual, e, k))


@njit(inline="always", cache=True)
def _take_out(candidates, g, k, e, loss):
    """Entry ``e`` (of loss ``loss``) out of the list ``(g, k)`` if it is there; a list
    emptied while entries remain outside it becomes invalid."""
    losses, entries, list_count, bound = candidates
    n = list_count[g, k]
    if n <= 0 or loss > losses[g, k, n - 1]:
        return
    p = 0
    while p < n and entries[g, k, p] != e:
        p += 1
    if p == n:
        return
    for q in range(p, n - 1):
        losses[g, k, q] = losses[g, k, q + 1]
        entries[g, k, q] = entries[g, k, q + 1]
    n -= 1
    list_count[g, k] = n if n > 0 or bound[g, k] == np.inf else -1


@njit(cache=True)
def listed_least(candidates, g, k):
    """The least loss of ``(g, k)``, its units and its first entry from the list, when
    the list decides them (it holds an entry, and every entry of that loss);
    ``(False, inf, 0, -1)`` when a scan must."""
    losses, entries, list_count, bound = candidates
    n = list_count[g, k]
    if n <= 0:
        return False, np.inf, 0, -1
    least = losses[g, k, 0]
    units = 1
    while units < n and losses[g, k, units] == least:
        units += 1
    if units == n and not least < bound[g, k]:
        return False, np.inf, 0, -1
    return True, least, units, entries[g, k, 0]


@njit(cache=True)
def start_refill(candidates, g, k):
    """Empty the list ``(g, k)`` before a scan of the giver's members refills it (with
    :func:`refill`, member by member); nothing without lists."""
    if candidates[0].shape[2] > 0:
        candidates[2][g, k] = 0
        candidates[3][g, k] = np.inf


@njit(inline="always", cache=True)
def refill(candidates, g, k, loss, e):
    """One member of a scan into the list ``(g, k)`` (see :func:`start_refill`)."""
    if candidates[0].shape[2] > 0 and loss < candidates[3][g, k]:
        insert(candidates, g, k, loss, e)
