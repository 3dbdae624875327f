"""How balanced rounding scales: time against N*K, from a Sinkhorn potential and from zero.

    python benchmarks/rounding_scale.py     # the table in docs/guide.md

The Sinkhorn potential comes from a solve to tol=1e-3 (what a training loop would
pass on); "zero" starts from no potential at all (the worst start: every cluster's
excess must be moved). Times exclude the Sinkhorn solve.
"""

from __future__ import annotations

import time

import numpy as np

import otlabel
from otlabel.rounding import balanced_labels
from otlabel.solver import block_rows

SIZES = [(10_000, 100), (20_000, 200), (50_000, 500), (100_000, 1_000)]


def main() -> None:
    print("| N x K | start | samples moved | seconds | ns per N*K | certified gap |")
    print("|---|---|---|---|---|---|")
    for n, k in SIZES:
        scores = otlabel.make_scores(n, k, kind="sela", seed=0)
        solved = otlabel.sinkhorn(scores, 0.05, tol=1e-3)
        for start, potential in [("sinkhorn", solved.potential), ("zero", np.zeros(k))]:
            began = time.perf_counter()
            out = balanced_labels(
                scores, potential, np.full(k, 1 / k), rows_per_block=block_rows(k)
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
