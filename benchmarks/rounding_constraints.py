"""Exact hard labels under each cluster-size constraint, timed in one run.

    python benchmarks/rounding_constraints.py --size 1281167x3000

For each constraint: the Sinkhorn potentials (``otlabel.sinkhorn``, not timed
here), then the exact labels alone from those potentials
(``otlabel.rounding.hard_labels``, the step ``otlabel.assign`` adds), timed;
each against the fixed-size (balanced) labels of the same run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import otlabel
from otlabel.problem import build_problem
from otlabel.rounding import hard_labels

CONSTRAINTS = {
    "fixed (balanced)": {},
    "bounded 0.5/K..2/K": {"min_size": 0.5, "max_size": 2.0},
    "relaxed tau=0.5": {"size_penalty": 0.5},
    "partial mass 0.9": {"mass": 0.9},
    "partial 0.9, relaxed 0.5": {"mass": 0.9, "size_penalty": 0.5},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200000x1000")
    parser.add_argument("--epsilon", type=float, default=0.04)
    args = parser.parse_args()
    n, k = (int(part) for part in args.size.split("x"))
    began = time.perf_counter()
    scores = otlabel.make_scores(n, k, kind="head", seed=0)
    print(f"scores {n} x {k} float32 in {time.perf_counter() - began:.0f} s", flush=True)
    print("| constraint | Sinkhorn s | labels s | labels / balanced | gap | sizes |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for name, given in CONSTRAINTS.items():
        kwargs = {
            key: value / k if key.endswith("_size") else value for key, value in given.items()
        }
        began = time.perf_counter()
        solved = otlabel.sinkhorn(scores, args.epsilon, **kwargs)
        solve_seconds = time.perf_counter() - began
        problem = build_problem(scores, args.epsilon, **kwargs)
        head, options = problem.heads[0], problem.options
        began = time.perf_counter()
        with options.backend.context(None):
            labels = hard_labels(
                head.scores,
                np.asarray(solved.potential),
                head.constraint,
                "balanced",
                options.backend,
                virtual=head.virtual,
                unassigned=solved.unassigned_potential,
            )
        seconds = time.perf_counter() - began
        baseline = baseline or seconds
        assert labels.labels is not None
        counts = np.bincount(labels.labels[labels.labels >= 0], minlength=k)
        print(
            f"| {name} | {solve_seconds:.1f} | {seconds:.1f} | {seconds / baseline:.2f} | "
            f"{labels.gap:.1e} | {counts.min()}..{counts.max()} "
            f"({np.sum(labels.labels < 0)} unassigned) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
