"""ImageNet-scale labelling in memory: 1 281 167 x 3 000 float32 with overwrite_scores=True.

The matrix (15.4 GB) fits this 24 GB machine once; with ``overwrite_scores=True``
the solver builds its kernel in its place.  Prints the wall time of
``otlabel.assign`` (validation, Sinkhorn to the default tolerance, balanced
labels), the peak anonymous memory as a multiple of the matrix, and the labels'
sizes and certified gap.  (With the input left intact the stored kernel would
need a second 15.4 GB: it does not fit here.)

    python benchmarks/imagenet_inplace.py [--n 1281167] [--k 3000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import otlabel
from otlabel.bench import PeakAnonymousMemory, rss_anon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3_000)
    parser.add_argument("--kind", default="head")
    args = parser.parse_args()
    started = time.perf_counter()
    scores = otlabel.make_scores(args.n, args.k, kind=args.kind, seed=0)
    print(
        f"scores {args.n} x {args.k} float32 ({scores.nbytes / 1e9:.1f} GB) built in "
        f"{time.perf_counter() - started:.0f} s; RssAnon {rss_anon() / 1e9:.1f} GB"
    )
    with PeakAnonymousMemory() as memory:
        started = time.perf_counter()
        result = otlabel.assign(scores, 0.04, overwrite_scores=True)
        seconds = time.perf_counter() - started
    print(
        f"assign(overwrite_scores=True): {seconds:.1f} s wall, {result.n_iter} passes, "
        f"error {result.error:.2e}, converged {result.converged}, method {result.method}"
    )
    print(
        f"peak RssAnon {memory.peak / 1e9:.2f} GB = {memory.peak / scores.nbytes:.3f} x the matrix"
    )
    print(
        f"cluster sizes {int(result.counts.min())}..{int(result.counts.max())}, "
        f"certified gap {result.gap:.2e} per sample"
    )
    del scores
    assert np.all(result.counts.sum() == args.n)


if __name__ == "__main__":
    main()
