"""How balanced rounding scales: time against N*K, from a Sinkhorn potential and from zero.

    python benchmarks/rounding_scale.py                   # NumPy passes and repair
    python benchmarks/rounding_scale.py --backend numba   # Numba passes and repair

The Sinkhorn potential comes from a solve to tol=1e-3 (what a training loop would
pass on); "zero" starts from no potential at all (the worst start: every cluster's
excess must be moved). Times exclude the Sinkhorn solve.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import otlabel
from otlabel.rounding import balanced_labels
from otlabel.solver import block_rows

SIZES = [(10_000, 100), (20_000, 200), (50_000, 500), (100_000, 1_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description="balanced rounding against N*K")
    parser.add_argument("--backend", choices=("numpy", "numba"), default="numpy")
    args = parser.parse_args()
    if args.backend == "numba":
        from otlabel.kernels.numba import CHUNK_BYTES
        from otlabel.kernels.numba.rounding import NumbaPasses

        passes, rows = NumbaPasses(), lambda k: CHUNK_BYTES // (4 * k)
        warm_up = otlabel.make_scores(500, 5, kind="sela", seed=1)  # compile or load first
        bounds = otlabel.count_bounds(500, np.full(5, 0.2))
        balanced_labels(warm_up, np.zeros(5), bounds, rows_per_block=100, passes=passes)
    else:
        passes, rows = None, block_rows
    print("| N x K | start | samples moved | seconds | ns per N*K | certified gap |")
    print("|---|---|---|---|---|---|")
    for n, k in SIZES:
        scores = otlabel.make_scores(n, k, kind="sela", seed=0)
        solved = otlabel.sinkhorn(scores, 0.05, tol=1e-3)
        for start, potential in [("sinkhorn", solved.potential), ("zero", np.zeros(k))]:
            began = time.perf_counter()
            out = balanced_labels(
                scores,
                potential,
                otlabel.count_bounds(n, np.full(k, 1 / k)),
                rows_per_block=rows(k),
                passes=passes,
            )
            seconds = time.perf_counter() - began
            assert np.all(np.bincount(out.labels, minlength=k) == n // k)
            print(
                f"| {n} x {k} | {start} | {out.n_moves} | {seconds:.2f} | "
                f"{seconds / (n * k) * 1e9:.1f} | {out.gap:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
