"""Small epsilon and epsilon = 0 against SeLa's 0.04, on one matrix, in one run.

    python benchmarks/small_epsilon.py                       # 100 000 x 100 normal scores
    python benchmarks/small_epsilon.py --head 500000x1000    # + epsilon 0 on head scores

Each row: the time of ``otlabel.assign`` (balanced labels), its passes, where it
started (and the passes of that start's own solve), its marginal error and whether it converged;
the ratio is against the epsilon 0.04 row of the same matrix, timed in the same run
(best of ``--repeat``, after one call that compiles).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import otlabel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="100000x100", help="N x K of the normal scores")
    parser.add_argument("--head", default=None, help="N x K of make_scores for epsilon 0")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--extreme", action="store_true", help="also 1e-9 and scores x 1e30")
    args = parser.parse_args()
    n, k = (int(v) for v in args.size.split("x"))
    scores = np.random.default_rng(0).normal(size=(n, k)).astype(np.float32)
    print(
        "| scores | epsilon | time, s | / epsilon 0.04 | passes | start (its passes) "
        "| error | converged |"
    )
    print("|---|---|---|---|---|---|---|---|")
    cases = [(scores, 0.04), (scores, 0.01), (scores, 0.001), (scores, 0.0)]
    if args.extreme:
        wide = scores.astype(np.float64)
        cases += [(wide, 1e-9), (wide * 1e30, 0.04)]
    table(f"{n} x {k} normal", cases, args.repeat)
    if args.head:
        n, k = (int(v) for v in args.head.split("x"))
        head = otlabel.make_scores(n, k, seed=0)
        table(f"{n} x {k} make_scores", [(head, 0.04), (head, 0.0)], args.repeat)


def table(name: str, cases: list[tuple[np.ndarray, float]], repeat: int) -> None:
    reference = None
    for scores, epsilon in cases:
        otlabel.assign(scores[: 20 * scores.shape[1]], epsilon)  # compile
        best, res = np.inf, None
        for _ in range(repeat):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", otlabel.ConvergenceWarning)
                start = time.perf_counter()
                res = otlabel.assign(scores, epsilon)
                best = min(best, time.perf_counter() - start)
        reference = best if reference is None else reference
        scale = "x 1e30 " if np.abs(scores).max() > 1e20 else ""
        print(
            f"| {name} {scale}| {epsilon:g} | {best:.2f} | {best / reference:.2f} | "
            f"{res.n_iter} | {res.start} ({res.phases['start']}) | {res.error:.1e} | "
            f"{res.converged} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
