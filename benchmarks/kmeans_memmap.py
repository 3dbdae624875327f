"""otlabel.KMeans on a memmap larger than the memory it may take: resident memory.

    python benchmarks/kmeans_memmap.py                        # 10 000 000 x 64, K = 100
    python benchmarks/kmeans_memmap.py --rows 1000000 --max-iter 3

Writes standard normal float32 rows to a ``.npy`` file (``--path``, 2.6 GB at the
default size; deleted at the end unless ``--keep``), maps it read-only and fits
``otlabel.KMeans`` (equal sizes) block by block: the (N, K) scores are never held,
each block computed from the mapped rows when the solve reads it.  Printed: the
fit's time, iterations, cluster sizes and certificate, and its resident anonymous
memory (RssAnon: the process's own memory, not the page cache that holds the
file's pages) before the fit and at its peak (sampled every 5 ms).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

import otlabel
from otlabel._system import rss_anon
from otlabel.bench import PeakAnonymousMemory

#: Rows written at a time.
WRITE_ROWS = 1_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--max-iter", type=int, default=2)
    parser.add_argument("--path", default="/tmp/otlabel_kmeans_memmap.npy")
    parser.add_argument("--keep", action="store_true", help="keep the file")
    args = parser.parse_args()
    path = Path(args.path)
    try:
        write_rows(path, args.rows, args.features)
        fit(path, args.clusters, args.max_iter)
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


def write_rows(path: Path, n_rows: int, n_features: int) -> None:
    """Standard normal float32 rows into a ``.npy`` file, a block at a time."""
    began = time.perf_counter()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_features))
    rng = np.random.default_rng(0)
    for start in range(0, n_rows, WRITE_ROWS):
        stop = min(start + WRITE_ROWS, n_rows)
        out[start:stop] = rng.standard_normal((stop - start, n_features), dtype=np.float32)
    out.flush()
    del out
    size = path.stat().st_size / 1e9
    print(f"wrote {path} ({size:.2f} GB) in {time.perf_counter() - began:.1f} s")


def fit(path: Path, n_clusters: int, max_iter: int) -> None:
    X = np.load(path, mmap_mode="r")
    before = rss_anon()
    peak = PeakAnonymousMemory()
    began = time.perf_counter()
    with peak:
        model = otlabel.KMeans(n_clusters, max_iter=max_iter, random_state=0).fit(X)
    seconds = time.perf_counter() - began
    counts = np.asarray(model.counts_)
    print(
        f"{X.shape[0]} x {X.shape[1]} {X.dtype} memmap, K = {n_clusters}: fit {seconds:.1f} s, "
        f"{model.n_iter_} iterations, sizes {counts.min()}..{counts.max()}, gap {model.gap_:.1e}"
    )
    print(
        f"RssAnon: {before / 2**20:.0f} MiB before the fit, peak {peak.peak / 2**20:.0f} MiB "
        f"during it (load average {' '.join(f'{v:.2f}' for v in os.getloadavg())})"
    )


if __name__ == "__main__":
    main()
