"""The repair's least losses: per pair of clusters, the cheapest entry to move.

``move_cost[g, k]`` is the least loss of moving a unit of cluster ``g`` to
``k``; ``tie``/``first`` count the units that attain it, so that a least loss
stays valid while tied units leave, and is recomputed (marked stale) only when
its last unit has gone.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .entries import entry_amount, entry_row, entry_score
from .repair_candidates import arrive, depart, listed_least, refill, start_refill


@njit(cache=True)
def least_units(
    scores, virtual, giver, taker, least, rows, amount, members, first, size, candidates
):  # fmt: skip
    """The giver's units whose loss ``S_ig - S_it`` is ``least`` (its minimum), and the
    first entry of them in member order: from the candidate list where it decides
    them, else from a scan of the giver's entries, which refills the list."""
    listed, listed_loss, units, arg = listed_least(candidates, giver, taker)
    if listed and listed_loss == least:
        return units, arg
    start_refill(candidates, giver, taker)
    total, hit = 0, -1
    for j in range(size):
        e = members[first + j]
        i = entry_row(rows, e)
        loss = entry_score(scores, virtual, i, giver) - entry_score(scores, virtual, i, taker)
        refill(candidates, giver, taker, loss, e)
        if loss == least:
            total += entry_amount(amount, e)
            hit = e if hit < 0 else hit
    return total, hit


@njit(cache=True)
def move_entries(
    giver, taker, units, scores, virtual, rows, amount, n_entries, move_cost, tie, first_of,
    n_stale, members, start, count, moved, dropped, dropped_at, candidates,
):  # fmt: skip
    """Move ``units`` of the giver's entries of least loss towards ``taker`` (the first
    ones in member order; the last one split if it holds more), keeping the order
    of both lists, then bring both clusters' minima, their counts and their first
    entries up to date (a giver's minimum whose last unit left: stale)."""
    least = move_cost[giver, taker]
    first, size = start[giver], count[giver]
    read = 0  # the list up to ``read`` is done, ``kept`` entries of it stay
    if first_of[giver, taker] >= 0:  # the first of least loss is known: no scores read
        while read < size and members[first + read] != first_of[giver, taker]:
            read += 1
        read = 0 if read == size else read
    need, n_moved, kept = units, 0, read
    while need > 0:
        hit = read  # the next entry of least loss: a plain search (its loads overlap)
        while hit < size:
            i = entry_row(rows, members[first + hit])
            loss = entry_score(scores, virtual, i, giver) - entry_score(scores, virtual, i, taker)
            if loss == least:
                break
            hit += 1
        if hit == size:  # cannot happen: the units of least loss were counted
            break
        for j in range(read, hit):  # the entries in between stay, in order
            members[first + kept] = members[first + j]
            kept += 1
        e = members[first + hit]
        read = hit + 1
        if entry_amount(amount, e) <= need:  # the whole entry moves
            need -= entry_amount(amount, e)
            moved[n_moved] = e
            n_moved += 1
            continue
        split = n_entries[0]  # part of it moves, as a new entry
        n_entries[0] += 1
        rows[split], amount[split] = entry_row(rows, e), need
        amount[e] -= need  # (merged entries only)
        moved[n_moved] = split
        n_moved += 1
        need = 0
        members[first + kept] = e
        kept += 1
    if kept < read:  # entries left: the rest moves up
        for j in range(read, size):
            members[first + kept] = members[first + j]
            kept += 1
    else:
        kept = size
    count[giver] = kept
    n_dropped = 0  # the columns of ``dropped`` in use, listed in ``dropped_at``
    dense = units > 1 and n_stale[taker] == 0  # tied units: most columns change
    # the two clusters' rows (plain 1-D loops over them vectorise)
    least_t, tie_t, first_t = move_cost[taker], tie[taker], first_of[taker]
    least_g, tie_g, first_g = move_cost[giver], tie[giver], first_of[giver]
    n_real = scores.shape[1]
    for m in range(n_moved):
        e = moved[m]
        members[start[taker] + count[taker]] = e
        count[taker] += 1
        i, a = entry_row(rows, e), entry_amount(amount, e)
        row = scores[i]
        own, was = entry_score(scores, virtual, i, taker), entry_score(scores, virtual, i, giver)
        arrive(candidates, scores, virtual, taker, e)  # (one entry per sample)
        depart(candidates, scores, virtual, giver, e)
        if dense:  # every column updated: selects, plain stores, two loops (vectorised)
            for k in range(n_real):
                _take_dense(k, own - np.float64(row[k]), taker, e, a, least_t, tie_t, first_t)
            for k in range(n_real):
                _drop_dense(k, was - np.float64(row[k]), giver, e, a, least_g, tie_g, first_g,
                            dropped)  # fmt: skip
            if virtual.size > 0:
                _take_dense(n_real, own - virtual[i], taker, e, a, least_t, tie_t, first_t)
                _drop_dense(n_real, was - virtual[i], giver, e, a, least_g, tie_g, first_g,
                            dropped)  # fmt: skip
            continue
        # the taker's least losses: first those this entry attains too (rare on
        # untied scores, outside the taker's own column), then the new ones (this
        # entry alone); then the giver's that it takes away.  A stale bound that
        # the entry reaches is exact again (``fixed``)
        fixed = 0
        if _ties_any(scores, virtual, i, own, least_t, taker):
            for k in range(least_t.size):
                if own - entry_score(scores, virtual, i, k) == least_t[k] and k != taker:
                    fixed += _one_more(tie_t, first_t, k, e, a)
        for k in range(n_real):
            loss = own - np.float64(row[k])
            if loss < least_t[k]:
                fixed += tie_t[k] <= STALE
                least_t[k], tie_t[k], first_t[k] = loss, a, e
        if virtual.size > 0 and own - virtual[i] < least_t[n_real]:
            fixed += tie_t[n_real] <= STALE
            least_t[n_real], tie_t[n_real], first_t[n_real] = own - virtual[i], a, e
        for k in range(least_g.size):
            if was - entry_score(scores, virtual, i, k) == least_g[k]:
                n_dropped = _drop(k, giver, e, a, tie_g, first_g, dropped, dropped_at, n_dropped)
        n_stale[taker] -= fixed
    if dense:  # the columns dropped, listed
        for k in range(least_g.size):
            if dropped[k] > 0:
                dropped_at[n_dropped] = k
                n_dropped += 1
    if kept == 0:  # the giver's own column: 0 while it holds anything
        move_cost[giver, giver] = np.inf
    for d in range(n_dropped):  # the giver's minima the moved units attained
        k = dropped_at[d]
        if tie[giver, k] > dropped[k]:
            tie[giver, k] -= dropped[k]  # others attain it still
        else:  # the last of them left, or not counted yet: a lower bound now
            tie[giver, k] = STALE if tie[giver, k] == dropped[k] else STALE_UNCOUNTED
            first_of[giver, k] = -1
            n_stale[giver] += 1
        dropped[k] = 0


#: ``tie`` of a least loss whose last unit has left: a lower bound, to recompute...
STALE = -2


#: ... and of one that a unit left before its units were counted (others may attain it).
STALE_UNCOUNTED = -3


@njit(inline="always", cache=True)
def _take_dense(k, loss, taker, e, a, least_t, tie_t, first_t):
    """An arriving entry ``e`` (``a`` units) of loss ``loss`` towards ``k``, into the
    taker's row (no stale bound in it): a new least loss (this entry alone), or one
    more unit of it; selects and plain stores, bitwise tests (no branches)."""
    least, units = least_t[k], tie_t[k]
    lower = loss < least
    more = (loss == least) & (units >= 0) & (k != taker)
    least_t[k] = loss if lower else least
    tie_t[k] = a if lower else (units + a if more else units)
    first_t[k] = e if lower else first_t[k]


@njit(inline="always", cache=True)
def _drop_dense(k, loss, giver, e, a, least_g, tie_g, first_g, dropped):
    """A leaving entry ``e`` (``a`` units) of loss ``loss`` towards ``k``: its units in
    ``dropped`` where it attains the giver's least loss (outside its own column and
    stale minima); selects and plain stores, bitwise tests (no branches)."""
    leaves = (loss == least_g[k]) & (k != giver) & (tie_g[k] > STALE)
    dropped[k] += a if leaves else 0
    first = first_g[k]
    first_g[k] = -1 if leaves & (first == e) else first


@njit(inline="always", cache=True)
def _one_more(tie_t, first_t, k, e, a):
    """An arriving entry ``e`` (``a`` units) that attains the taker's least loss towards
    ``k`` (its row's units and first entries): ``a`` more units of it; a stale bound
    that it reaches is exact again, its units known (``e``'s alone: no other entry
    attains it) or not.  Returns 1 then."""
    if tie_t[k] >= 0:
        tie_t[k] += a
    elif tie_t[k] == STALE:
        tie_t[k], first_t[k] = a, e
        return 1
    elif tie_t[k] == STALE_UNCOUNTED:
        tie_t[k], first_t[k] = -1, -1
        return 1
    return 0


@njit(cache=True)
def _ties_any(scores, virtual, i, own, least, taker):
    """Whether ``own - S_ik`` equals ``least[k]`` for some ``k`` other than ``taker``
    (a reduction, vectorised)."""
    n_real, found = scores.shape[1], False
    for k in range(n_real):
        found |= (own - np.float64(scores[i, k]) == least[k]) and k != taker
    if virtual.size > 0:
        found |= (own - virtual[i] == least[n_real]) and n_real != taker
    return found


@njit(inline="always", cache=True)
def _drop(k, giver, e, a, tie_g, first_g, dropped, dropped_at, n_dropped):
    """A leaving entry of the giver's least loss towards ``k`` (its row's units and
    first entries): its units (outside the giver's own column and stale minima) in
    ``dropped``; returns the columns listed."""
    if k == giver or tie_g[k] <= STALE:
        return n_dropped
    if dropped[k] == 0:
        dropped_at[n_dropped] = k
        n_dropped += 1
    dropped[k] += a
    if first_g[k] == e:
        first_g[k] = -1
    return n_dropped


@njit(cache=True)
def refresh_losses(
    giver, scores, virtual, rows, amount, members, start, count, move_cost, tie, first_of,
    n_stale, columns, candidates,
):  # fmt: skip
    """Recompute the giver's stale minima (if any): from the candidate lists that
    decide them, the others in one read of its entries."""
    if n_stale[giver] == 0:
        return
    n_columns = 0
    for k in range(tie.shape[1]):
        if tie[giver, k] > STALE:
            continue
        listed, least, units, arg = listed_least(candidates, giver, k)
        if listed:
            move_cost[giver, k], tie[giver, k], first_of[giver, k] = least, units, arg
        else:
            columns[n_columns] = k
            n_columns += 1
    n_stale[giver] = 0
    if n_columns == 0:
        return
    _recompute_minima(
        scores, virtual, giver, columns, n_columns, rows, amount, members, start[giver],
        count[giver], move_cost, tie, first_of, candidates,
    )  # fmt: skip


#: Entries x columns above which a giver's whole row of minima is recomputed in
#: parallel (over blocks of columns).
PARALLEL_MINIMA = 1 << 18


#: Contiguous columns per block (a task when parallel) of a whole row's recomputation.
MINIMA_BLOCK = 256


@njit(cache=True)
def _recompute_minima(
    scores, virtual, giver, columns, n_columns, rows, amount, members, first, size,
    move_cost, tie, first_of, candidates,
):  # fmt: skip
    """``C[g, k]``, the units that attain it and the first entry that does, over the
    giver's entries, for the ``columns`` given.

    Column by column (the minimum in registers), as untied scores need it (a moved
    sample attained about K / size of its cluster's minima); for most of the
    columns (tied scores), the whole row at once (every value exact): the entries'
    rows read in order, by blocks of :data:`MINIMA_BLOCK` contiguous columns, in
    parallel over blocks when there is much to read (a collapsed start's large
    clusters).  A column scanned on its own refills its candidate list.
    """
    n_clusters, n_real = move_cost.shape[1], scores.shape[1]
    if 2 * n_columns > n_clusters:  # most of them: the whole row
        n_blocks = (n_real + MINIMA_BLOCK - 1) // MINIMA_BLOCK
        if n_clusters * size >= PARALLEL_MINIMA:
            _recompute_blocks_parallel(
                scores, virtual, giver, n_blocks, rows, amount, members, first, size,
                move_cost, tie, first_of,
            )  # fmt: skip
        else:
            for block in range(n_blocks):
                _recompute_block(
                    scores, virtual, giver, block, rows, amount, members, first, size,
                    move_cost, tie, first_of,
                )  # fmt: skip
        if n_clusters == n_real:
            return
        columns[0], n_columns = n_real, 1  # partial mass's virtual column, below
    for c in range(n_columns):
        k = columns[c]
        least, units, arg = np.inf, 0, -1
        start_refill(candidates, giver, k)
        for j in range(size):
            e = members[first + j]
            i = entry_row(rows, e)
            loss = entry_score(scores, virtual, i, giver) - entry_score(scores, virtual, i, k)
            refill(candidates, giver, k, loss, e)
            if loss < least:
                least, units, arg = loss, entry_amount(amount, e), e
            elif loss == least:
                units += entry_amount(amount, e)
        move_cost[giver, k], tie[giver, k], first_of[giver, k] = least, units, arg


@njit(parallel=True, cache=True)
def _recompute_blocks_parallel(
    scores, virtual, giver, n_blocks, rows, amount, members, first, size, move_cost, tie,
    first_of,
):  # fmt: skip
    """:func:`_recompute_block` for every block of columns, one task each."""
    for block in prange(n_blocks):
        _recompute_block(
            scores, virtual, giver, block, rows, amount, members, first, size, move_cost,
            tie, first_of,
        )  # fmt: skip


@njit(cache=True)
def _recompute_block(
    scores, virtual, giver, block, rows, amount, members, first, size, move_cost, tie,
    first_of,
):  # fmt: skip
    """The giver's minima towards the (real) columns of ``block``, their units and
    first entries: each entry's row read once, selects and plain stores (vectorised)."""
    low = block * MINIMA_BLOCK
    high = min(scores.shape[1], low + MINIMA_BLOCK)
    least = np.full(high - low, np.inf)
    units = np.zeros(high - low, np.int64)
    args = np.full(high - low, -1, np.int64)
    for j in range(size):
        e = members[first + j]
        i, a = entry_row(rows, e), entry_amount(amount, e)
        row = scores[i, low:high]
        own = entry_score(scores, virtual, i, giver)
        for c in range(high - low):
            loss = own - np.float64(row[c])
            lower, same = loss < least[c], loss == least[c]
            least[c] = loss if lower else least[c]
            units[c] = a if lower else (units[c] + a if same else units[c])
            args[c] = e if lower else args[c]
    move_cost[giver, low:high] = least
    tie[giver, low:high] = units
    first_of[giver, low:high] = args
