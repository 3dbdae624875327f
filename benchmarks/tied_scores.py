"""Exactly balanced labels on tied scores, against random scores of the same shape.

    python benchmarks/tied_scores.py                              # 200 000 x 1 000
    python benchmarks/tied_scores.py --sizes 1000000x1000
    python benchmarks/tied_scores.py --sizes 20000x100 --backend numpy

A collapsed network gives tied scores: every row the same (all zeros, or one
random row repeated), rows drawn from a few distinct vectors, or small integers.
Each input is float32 and is timed through ``otlabel.assign(scores, 0.05)``
(Sinkhorn and the exact labels under equal sizes) and through the same call with
``rounding="argmax"``: the difference is what the exact labels cost.  The ratio
is the balanced time over the random scores' balanced time.  One input is held
in memory at a time (4 GB at 1 000 000 x 1 000).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import numpy as np

import otlabel

#: The inputs, each made from a generator, N and K (float32).
INPUTS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "random (normal)": lambda rng, n, k: rng.standard_normal((n, k), dtype=np.float32),
    "all-equal rows (zeros)": lambda rng, n, k: np.zeros((n, k), dtype=np.float32),
    "identical rows (one random row)": lambda rng, n, k: np.tile(
        rng.standard_normal(k, dtype=np.float32), (n, 1)
    ),
    "rows from 5 distinct vectors": lambda rng, n, k: rng.standard_normal((5, k), dtype=np.float32)[
        rng.integers(0, 5, n)
    ],
    "integers 0..4 (distinct rows)": lambda rng, n, k: rng.integers(
        0, 5, (n, k), dtype=np.int8
    ).astype(np.float32),
}


def timed(scores: np.ndarray, backend: str, rounding: str) -> tuple[float, otlabel.Result]:
    began = time.perf_counter()
    result = otlabel.assign(scores, 0.05, rounding=rounding, backend=backend)
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description="balanced labels on tied scores")
    parser.add_argument(
        "--sizes", nargs="+", default=["200000x1000"], help="N x K, e.g. 1000000x1000"
    )
    parser.add_argument("--backend", default="auto", help="otlabel backend (auto, numba, numpy)")
    parser.add_argument("--only", nargs="*", help="run only the inputs whose name starts so")
    args = parser.parse_args()
    otlabel.compile(dtypes=["float32"])  # every kernel compiled, or loaded from the cache
    for make in INPUTS.values():  # and each input's path taken once
        timed(make(np.random.default_rng(1), 2_000, 20), args.backend, "balanced")
    print("| N x K | input | balanced, s | / random | argmax, s | exact labels, s | gap |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n, k = (int(part) for part in size.lower().split("x"))
        reference = None
        for name, make in INPUTS.items():
            if args.only and name != "random (normal)" and not name.startswith(tuple(args.only)):
                continue
            scores = make(np.random.default_rng(0), n, k)
            balanced, result = timed(scores, args.backend, "balanced")
            assert result.labels is not None
            counts = np.bincount(result.labels, minlength=k)
            balanced_counts = (counts.min(), counts.max())
            assert counts.min() >= n // k and counts.max() <= -(-n // k), balanced_counts
            argmax, _ = timed(scores, args.backend, "argmax")
            reference = balanced if reference is None else reference
            print(
                f"| {n} x {k} | {name} | {balanced:.2f} | {balanced / reference:.2f} | "
                f"{argmax:.2f} | {balanced - argmax:.2f} | {result.gap:.1e} |",
                flush=True,
            )
            del scores, result
            gc.collect()


if __name__ == "__main__":
    main()
