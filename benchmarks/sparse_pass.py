"""The stored kernel's pass against one dense read of the scores, in one run.

    python benchmarks/sparse_pass.py --size 500000x1000 --epsilon 0.04

Builds Numba's stored kernel at the potential of a solve to the default
tolerance (sparse when at most 10% of the entries are kept, as ``assign`` does),
then times, interleaved, passes of that kernel and the read probe of
``otlabel bench`` over the scores themselves (a parallel sum of the float32
matrix).  Reports the medians, their paired ratio, and the pass's ns per kept
entry and per row and the bytes it reads.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import otlabel
from otlabel.bench import read_bandwidth
from otlabel.constraints import FixedSizes
from otlabel.kernels.numba import NumbaKernel, SparseKernel
from otlabel.solver import iterate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500000x1000")
    parser.add_argument("--epsilon", type=float, default=0.04)
    parser.add_argument("--kind", default="head")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    n, k = (int(part) for part in args.size.split("x"))
    scores = otlabel.make_scores(n, k, kind=args.kind, seed=0)
    solved = otlabel.sinkhorn(scores, args.epsilon)
    log_a = np.full(n, -np.log(n))
    kernel = NumbaKernel(scores, log_a, args.epsilon, None, store_at_start=True)
    constraint = FixedSizes(np.full(k, 1 / k))
    passes = iterate(kernel, constraint, args.epsilon, np.asarray(solved.potential))
    next(passes)  # builds the kernel
    pass_times, read_times = [], []
    for _ in range(args.repeats):
        began = time.perf_counter()
        next(passes)
        pass_times.append(time.perf_counter() - began)
        read_times.append(scores.nbytes / read_bandwidth(scores) / 1e9)
    stored = kernel.stored
    sparse = isinstance(stored, SparseKernel)
    kept = stored.values.size if sparse else scores.size
    read_bytes = (
        (stored.values.nbytes + stored.indices.nbytes + stored.indptr.nbytes)
        if sparse
        else stored.nbytes
    )
    per_pass = statistics.median(pass_times)
    ratios = [p / r for p, r in zip(pass_times, read_times, strict=True)]
    print(
        f"{n} x {k}, epsilon {args.epsilon}, {args.kind} scores; stored kernel "
        f"{'sparse' if sparse else 'dense'}: {kept} entries kept "
        f"({100 * kept / scores.size:.2f}%), "
        f"{read_bytes / 1e6:.0f} MB read per pass"
    )
    print(
        f"pass {1e3 * per_pass:.1f} ms (median of {args.repeats}); dense read of the "
        f"{scores.nbytes / 1e9:.2f} GB scores {1e3 * statistics.median(read_times):.1f} ms; "
        f"pass / read {statistics.median(ratios):.3f} (median of paired ratios)"
    )
    print(
        f"{1e9 * per_pass / kept:.2f} ns per kept entry, {1e9 * per_pass / n:.1f} ns per row, "
        f"{read_bytes / per_pass / 1e9:.1f} GB/s of its own bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
