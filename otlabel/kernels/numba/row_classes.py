"""Identical rows as one entry: a hashing pass, a sort and one exact comparison.

Rows whose bits (and virtual score) are equal are one class; the repair moves
a class's samples together (an entry with an amount) and expands them back to
per-sample labels at the end.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..._labels import cluster_order
from .entries import entry_amount, entry_row


def row_classes(matrix: np.ndarray, virtual: np.ndarray) -> tuple[np.ndarray, ...]:
    """The classes of identical rows (bit for bit, with the virtual column if any).

    One parallel pass hashes every row, a sort of the hashes groups equal ones,
    and one parallel pass compares each row with the first of its group exactly
    (a row that differs, a hash collision, is a class of its own).  Returns the
    first sample of each class, in row order (U,), its size (U,), and each
    sample's class (N,).
    """
    n_samples = matrix.shape[0]
    bits = matrix.view(np.dtype(f"u{matrix.dtype.itemsize}"))
    extra = virtual.view(np.uint64) if virtual.size else np.zeros(0, np.uint64)
    hashes = np.empty(n_samples, np.uint64)
    _row_hashes(bits, extra, hashes)
    first = np.empty(n_samples, np.int64)
    _first_of_runs(hashes, np.argsort(hashes), first)
    _verify_classes(bits, extra, first)
    reps = np.flatnonzero(first == np.arange(n_samples))
    index = np.empty(n_samples, np.int64)
    index[reps] = np.arange(reps.size)
    class_of = index[first]
    sizes = np.bincount(class_of, minlength=reps.size).astype(np.int64)
    return reps.astype(np.int64), sizes, class_of


def entry_table(
    entry_cluster: np.ndarray, counts: np.ndarray, dummies: np.ndarray, upper: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Each cluster's entries (in entry order) in one array, with room for its largest
    possible size.

    A cluster's occupancy (units plus dummies) only grows at the end of a path,
    to at most ``upper``; it holds at most as many entries as units, so
    ``max(units + dummies, upper)`` slots suffice.
    """
    order = cluster_order(entry_cluster)
    n_clusters = upper.size
    sizes = np.bincount(entry_cluster, minlength=n_clusters).astype(np.int64)
    capacity = np.maximum(counts + dummies, upper).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int64)
    members = np.empty(int(capacity.sum()), dtype=np.int64)
    firsts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sorted_clusters = entry_cluster[order]
    positions = start[sorted_clusters] + np.arange(order.size) - firsts[sorted_clusters]
    members[positions] = order
    return members, start, sizes


@njit(cache=True)
def expand_labels(
    labels, members, start, count, rows, amount, class_of, class_start, class_samples
):
    """Every sample's label from the clusters' entries: an entry's sample, or the next
    ``amount`` samples of its class of identical rows (in row order)."""
    cursor = class_start[: max(class_start.size - 1, 0)].copy()
    for k in range(count.size):
        for j in range(count[k]):
            e = members[start[k] + j]
            if class_of.size == 0:
                labels[entry_row(rows, e)] = k
                continue
            u = class_of[entry_row(rows, e)]
            for _ in range(entry_amount(amount, e)):
                labels[class_samples[cursor[u]]] = k
                cursor[u] += 1


@njit(cache=True)
def fill_class_samples(class_of, class_start, class_samples):
    """The samples of each class together, in row order (a counting sort)."""
    cursor = class_start[:-1].copy()
    for i in range(class_of.size):
        u = class_of[i]
        class_samples[cursor[u]] = i
        cursor[u] += 1


_HASH_SEED = np.uint64(0x9E3779B97F4A7C15)


_HASH_PRIME = np.uint64(0x100000001B3)


_HASH_MIX1 = np.uint64(0xFF51AFD7ED558CCD)


_HASH_MIX2 = np.uint64(0xC4CEB9FE1A85EC53)


_ROTATE = np.uint64(23)


_ROTATE_BACK = np.uint64(41)


_SHIFT = np.uint64(33)


@njit(inline="always", cache=True)
def _hash_step(h, word):
    """One word into a running hash: rotate (high bits reach the low ones), xor,
    multiply."""
    return (((h << _ROTATE) | (h >> _ROTATE_BACK)) ^ np.uint64(word)) * _HASH_PRIME


@njit(inline="always", cache=True)
def _hash_finish(h):
    """Murmur3's 64-bit finaliser."""
    h ^= h >> _SHIFT
    h *= _HASH_MIX1
    h ^= h >> _SHIFT
    h *= _HASH_MIX2
    return h ^ (h >> _SHIFT)


@njit(parallel=True, cache=True)
def _row_hashes(bits, extra, hashes):
    """A 64-bit hash of each row's bits (and of its ``extra`` word, if any): four
    independent chains over the row, for instruction-level parallelism."""
    n_words = bits.shape[1]
    for i in prange(bits.shape[0]):
        row = bits[i]
        h0, h1 = _HASH_SEED, _HASH_SEED ^ _HASH_MIX1
        h2, h3 = _HASH_SEED ^ _HASH_MIX2, _HASH_SEED ^ _HASH_PRIME
        k = 0
        while k + 4 <= n_words:
            h0 = _hash_step(h0, row[k])
            h1 = _hash_step(h1, row[k + 1])
            h2 = _hash_step(h2, row[k + 2])
            h3 = _hash_step(h3, row[k + 3])
            k += 4
        while k < n_words:
            h0 = _hash_step(h0, row[k])
            k += 1
        if extra.size > 0:
            h1 = _hash_step(h1, extra[i])
        h = _hash_step(_hash_step(_hash_step(h0, h1), h2), h3)
        hashes[i] = _hash_finish(h ^ np.uint64(n_words))


@njit(cache=True)
def _first_of_runs(hashes, order, first):
    """``first[i]``: the smallest sample with the hash of sample ``i`` (``order`` sorts
    the hashes)."""
    n = order.size
    j = 0
    while j < n:
        value, smallest, m = hashes[order[j]], order[j], j
        while m < n and hashes[order[m]] == value:
            smallest = min(smallest, order[m])
            m += 1
        for r in range(j, m):
            first[order[r]] = smallest
        j = m


@njit(parallel=True, cache=True)
def _verify_classes(bits, extra, first):
    """A row that is not bit for bit its class's first row becomes a class of its own."""
    n_words = bits.shape[1]
    for i in prange(bits.shape[0]):
        r = first[i]
        if r == i:
            continue
        same = extra.size == 0 or extra[i] == extra[r]
        for k in range(n_words):
            if bits[i, k] != bits[r, k]:
                same = False
                break
        if not same:
            first[i] = i
