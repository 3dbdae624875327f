"""Evidence for the default tolerance: argmax-label agreement with a converged solve.

For each problem, solves at a sequence of tolerances (each warm-started from the
previous, which does not change the fixed point), then continues to tol=1e-9 as the
reference, and prints the share of samples whose argmax label agrees with it.

    python benchmarks/tol_study.py            # the table in docs/guide.md
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

import otlabel

PROBLEMS = [  # kind, N, K, epsilon
    ("head", 20_000, 200, 0.05),
    ("head", 20_000, 500, 0.04),
    ("sela", 20_000, 200, 0.1),
    ("sela", 20_000, 200, 0.04),
]
TOLS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4]


def study(kind: str, n: int, k: int, epsilon: float, seed: int) -> list[str]:
    scores = otlabel.make_scores(n, k, kind=kind, seed=seed)
    runs, potential, started = [], None, time.perf_counter()
    for tol in TOLS:
        res = otlabel.assign(
            scores, epsilon, tol=tol, max_iter=100_000, init=potential, rounding="argmax"
        )
        runs.append((tol, res))
        potential = res.potential
    reference = otlabel.assign(
        scores, epsilon, tol=1e-9, max_iter=200_000, init=potential, rounding="argmax"
    )
    total = sum(res.n_iter for _, res in runs)
    cells = []
    for tol, _ in runs:
        cold = otlabel.assign(scores, epsilon, tol=tol, max_iter=100_000, rounding="argmax")
        agree = 100 * float(np.mean(cold.labels == reference.labels))
        cells.append(f"{agree:.3f}% ({cold.n_iter})")
    seconds = time.perf_counter() - started
    head = f"| {kind} {n} x {k}, eps {epsilon} | {total + reference.n_iter} | "
    print(head + " | ".join(cells) + " |", flush=True)
    print(f"  ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("error", otlabel.ConvergenceWarning)
    print("| problem | passes to 1e-9 | " + " | ".join(f"tol {t:g}" for t in TOLS) + " |")
    print("|---|---|" + "---|" * len(TOLS))
    for kind, n, k, epsilon in PROBLEMS:
        study(kind, n, k, epsilon, args.seed)


if __name__ == "__main__":
    main()
