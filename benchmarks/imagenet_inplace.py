"""ImageNet-scale labelling in memory: 1 281 167 x 3 000 float32 with overwrite_scores=True.

The matrix (15.4 GB) fits this 24 GB machine once; with ``overwrite_scores=True``
the solver may build a dense kernel in its place (at SeLa's epsilon the kernel is
sparse and sits beside the scores either way).  Prints the wall time of
``otlabel.assign`` (validation, Sinkhorn to the default tolerance, balanced
labels), the peak anonymous memory as a multiple of the matrix, and the labels'
sizes and certified gap.  ``--keep-input`` solves with the input left intact
instead (the Numba backend's stored kernel is then sparse, beside the scores, when at
most ``SPARSE_DENSITY`` of the entries are kept; a dense one would need a second 15.4
GB, which does not fit, so the solve would stay in the log domain).

``--repeats R`` solves R times in the same process (a fresh matrix before each
solve with ``overwrite_scores=True``, the same one otherwise), each after a read
probe of the matrix (``otlabel.bench.read_bandwidth``), and prints the median.

    python benchmarks/imagenet_inplace.py [--n 1281167] [--k 3000] [--keep-input]
        [--kind head|sela] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

import otlabel
from otlabel.bench import PeakAnonymousMemory, read_bandwidth, rss_anon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3_000)
    parser.add_argument("--kind", default="head")
    parser.add_argument("--keep-input", action="store_true", help="overwrite_scores=False")
    parser.add_argument(
        "--profile", action="store_true", help="also print where the time goes (cProfile)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="solves; the median is printed")
    args = parser.parse_args()
    overwrite = not args.keep_input
    scores, seconds = None, []
    for repeat in range(args.repeats):
        if scores is None or overwrite:  # a kernel built in place changed the last one
            del scores
            scores = _scores(args)
        seconds.append(_solve(scores, overwrite, args.profile and repeat == 0))
    print(
        f"median of {len(seconds)}: {statistics.median(seconds):.1f} s "
        f"({', '.join(f'{s:.1f}' for s in seconds)})"
    )


def _scores(args: argparse.Namespace) -> np.ndarray:
    started = time.perf_counter()
    scores = otlabel.make_scores(args.n, args.k, kind=args.kind, seed=0)
    print(
        f"scores {args.n} x {args.k} '{args.kind}' float32 ({scores.nbytes / 1e9:.1f} GB) built "
        f"in {time.perf_counter() - started:.0f} s; RssAnon {rss_anon() / 1e9:.1f} GB"
    )
    return scores


def _solve(scores: np.ndarray, overwrite: bool, profile: bool) -> float:
    """One timed ``assign`` after a read probe of the scores; returns its seconds."""
    print(f"read probe of the matrix: {read_bandwidth(scores):.1f} GB/s")
    profiler = cProfile.Profile() if profile else None
    with PeakAnonymousMemory() as memory:
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = otlabel.assign(scores, 0.04, overwrite_scores=overwrite)
        seconds = time.perf_counter() - started
    if profiler is not None:
        profiler.disable()
        _print_stages(profiler)
    print(
        f"assign(overwrite_scores={overwrite}): {seconds:.1f} s wall, {result.n_iter} passes "
        f"{result.phases}, error {result.error:.2e}, converged {result.converged}, "
        f"method {result.method}"
    )
    print(
        f"peak RssAnon {memory.peak / 1e9:.2f} GB = {memory.peak / scores.nbytes:.3f} x the matrix"
    )
    print(
        f"cluster sizes {int(result.counts.min())}..{int(result.counts.max())}, "
        f"certified gap {result.gap:.2e} per sample"
    )
    assert result.counts.sum() == scores.shape[0]
    return seconds


#: The stages of assign, by the function that runs each (cumulative seconds).
STAGES = [
    ("validation (finite scores)", "validate"),
    ("subsample start", "subsample_start"),
    ("Sinkhorn solves (all)", "solve"),
    ("  sparse kernel builds", "_sparse"),
    ("kernel restored to scores", "restore"),
    ("balanced labels, all", "balanced_labels"),
    ("  move-cost pass", "_move_costs"),
    ("  shortest-path repair", "balance"),
    ("  certified gap", "gap_from_move_costs"),
    ("label cost", "mean_label_score"),
]


def _print_stages(profiler: cProfile.Profile) -> None:
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for label, name in STAGES:
        times = [row[3] for (_, _, function), row in stats.items() if function == name]
        # the subsample's solves and the main one are separate calls, and so are the
        # kernel builds: add them; other names may be a wrapper and what it wraps
        # (the outer one is taken)
        seconds = sum(times) if name in ("solve", "_sparse") else max(times, default=0.0)
        print(f"  {label:30s} {seconds:7.1f} s")


if __name__ == "__main__":
    main()
