"""The repair's searches: Dijkstra over clusters from an over-full one to room.

Distances are least losses reduced by the prices (never negative); a search
settles clusters nearest first, stops at the first with room, and the path's
units move (:func:`move_path`) as many as its ends allow.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .._fastmath import order_key
from .entries import entry_score
from .repair_losses import refresh_losses


@njit(cache=True)
def start_search(source, distance, parent, by_dummy, unsettled):
    """A Dijkstra from ``source``: only it reached, at distance 0."""
    distance[:] = np.inf
    distance[source] = 0.0
    unsettled[:] = np.inf
    unsettled[source] = 0.0
    parent[:] = -1
    by_dummy[:] = False


@njit(cache=True)
def nearest_room(
    prices, upper, spare, dummies, occupancy, move_cost, distance, parent, by_dummy,
    unsettled, full, scores, virtual, rows, amount, members, start, count, tie, first_of,
    n_stale, columns, candidates,
):  # fmt: skip
    """Dijkstra on, from where it stands, to the nearest cluster with room (-1: none).

    Of the clusters nearest, one with room ends the path (the first; else the
    first of all): on tied scores many clusters are at the same distance, and
    settling the full ones first would cost O(K^2) per path.  ``unsettled`` holds
    the distances of the clusters not yet settled (inf for the others), so that
    the next node is a plain first minimum; ``full`` is inf for a cluster without
    room, else 0.  A cluster's stale minima are recomputed before it is settled.
    """
    while True:
        node = _first_nearest(unsettled, full)
        if unsettled[node] == np.inf:
            return -1
        if occupancy[node] < upper[node]:
            return node
        refresh_losses(
            node, scores, virtual, rows, amount, members, start, count, move_cost, tie,
            first_of, n_stale, columns, candidates,
        )  # fmt: skip
        settle(node, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled)


@njit(cache=True)
def _first_nearest(unsettled, full):
    """The first cluster with room among the nearest unsettled ones, else the first of
    them (as numpy.argmin).  ``full`` is inf for a cluster without room, else 0.

    Two passes: both smallest :func:`order_key` values, of all and of those with
    room (vectorised), then the first index that reaches the one chosen."""
    smallest = order_key(unsettled[0])
    with_room = order_key(unsettled[0] + full[0])
    for k in range(unsettled.size):
        key, room_key = order_key(unsettled[k]), order_key(unsettled[k] + full[k])
        smallest = key if key < smallest else smallest
        with_room = room_key if room_key < with_room else with_room
    if with_room == smallest:
        for k in range(unsettled.size):
            if order_key(unsettled[k] + full[k]) == smallest:
                return k
    for k in range(unsettled.size):
        if order_key(unsettled[k]) == smallest:
            return k
    return 0


@njit(cache=True)
def settle(node, prices, spare, dummies, move_cost, distance, parent, by_dummy, unsettled):
    """Settle ``node``: relax its edges, sample and dummy.

    The relaxation is branch-free (selects, vectorised): a settled cluster is
    never improved, as its distance is at most the settling node's and edges are
    clipped at 0.  Same steps as the branchy form (4.98 -> 3.78 s for the 3 073
    paths of an ImageNet-size repair, identical labels and prices).
    """
    unsettled[node] = np.inf
    reached, price = distance[node], prices[node]
    has_dummies = dummies[node] > 0
    for k in range(prices.size):
        edge = (move_cost[node, k] - price) + prices[k]
        dummy_edge = prices[k] - price if has_dummies and dummies[k] < spare[k] else np.inf
        shorter = dummy_edge if dummy_edge < edge else edge
        reach = reached + (0.0 if shorter < 0.0 else shorter)
        better = reach < distance[k]
        distance[k] = reach if better else distance[k]
        unsettled[k] = reach if better else unsettled[k]
        parent[k] = node if better else parent[k]
        by_dummy[k] = (dummy_edge < edge) if better else by_dummy[k]


@njit(cache=True)
def tight_sample_path(
    source, end, parent, by_dummy, distance, prices, move_cost, scores, virtual, rows,
    amount, members, start, count, tie, first_of, n_stale, columns, candidates,
):  # fmt: skip
    """Whether the path to ``end`` has sample edges only, each still as cheap as when
    it was relaxed (a giver's least loss only grows, when its last unit of least
    loss has left)."""
    node = end
    while node != source:
        giver = parent[node]
        if by_dummy[node]:
            return False
        refresh_losses(
            giver, scores, virtual, rows, amount, members, start, count, move_cost, tie,
            first_of, n_stale, columns, candidates,
        )  # fmt: skip
        edge = (move_cost[giver, node] - prices[giver]) + prices[node]
        if distance[giver] + (0.0 if edge < 0.0 else edge) != distance[node]:
            return False
        node = giver
    return True


@njit(cache=True)
def move_path(
    giver, taker, dummy, amount, scores, virtual, labels, dummies, occupancy, move_cost,
    move_arg, members, start, count,
):  # fmt: skip
    """Move ``amount`` dummies, or the member of ``giver`` that loses least, to ``taker``."""
    occupancy[giver] -= amount
    occupancy[taker] += amount
    if dummy:
        dummies[giver] -= amount
        dummies[taker] += amount
        return
    first, size = start[giver], count[giver]
    pick, least = 0, np.inf
    for j in range(size):
        i = members[first + j]
        loss = entry_score(scores, virtual, i, giver) - entry_score(scores, virtual, i, taker)
        if loss < least:
            pick, least = j, loss
    sample = members[first + pick]
    for j in range(pick, size - 1):  # remove, keeping the order
        members[first + j] = members[first + j + 1]
    count[giver] = size - 1
    members[start[taker] + count[taker]] = sample
    count[taker] += 1
    labels[sample] = taker
    n_clusters = move_cost.shape[1]
    for k in range(n_clusters):  # the minima the moved sample attained: over the others
        if move_arg[giver, k] != sample:
            continue
        move_cost[giver, k], move_arg[giver, k] = np.inf, -1
        for j in range(size - 1):
            i = members[first + j]
            loss = entry_score(scores, virtual, i, giver) - entry_score(scores, virtual, i, k)
            if loss < move_cost[giver, k]:
                move_cost[giver, k], move_arg[giver, k] = loss, i
    own = entry_score(scores, virtual, sample, taker)
    for k in range(n_clusters):
        loss = own - entry_score(scores, virtual, sample, k)
        if loss < move_cost[taker, k]:
            move_cost[taker, k], move_arg[taker, k] = loss, sample
