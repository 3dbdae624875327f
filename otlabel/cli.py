"""The ``otlabel`` command: ``otlabel assign`` and ``otlabel demo``."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import __version__
from .api import DEFAULT_MAX_ITER, DEFAULT_TOL, assign
from .bench import add_arguments as add_bench_arguments
from .bench import run_from_args as run_bench
from .datasets import KINDS, make_scores
from .result import Result

DESCRIPTION = """\
Balanced cluster labels from a matrix of model scores, by optimal transport
(Sinkhorn-Knopp), as in SeLa, SwAV and DeepCluster-v2.

  otlabel assign scores.npy -o labels.npy      label the rows of an (N, K) .npy
  otlabel demo                                 solve a built-in SeLa-like problem
  otlabel bench                                time it against peers and bandwidth
  otlabel train                                SeLa on digits against its baselines
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otlabel`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        print(f"otlabel {args.command}: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otlabel", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"otlabel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    label = commands.add_parser(
        "assign",
        help="label the rows of a score matrix stored as .npy",
        description="Label each row of an (N, K) score matrix (.npy) with one of K clusters.",
    )
    label.add_argument("scores", help="(N, K) or (H, N, K) float array in .npy format")
    label.add_argument("-o", "--output", help="where to write the labels (.npy, int64)")
    label.add_argument(
        "--cluster-weights", metavar="NPY", help="(K,) cluster proportions (.npy); default uniform"
    )
    label.add_argument(
        "--sample-weights", metavar="NPY", help="(N,) sample weights (.npy); default uniform"
    )
    label.add_argument(
        "--mmap", action="store_true", help="memory-map the scores instead of reading them"
    )
    _solver_options(label, epsilon=0.04)
    label.set_defaults(run=_assign)

    demo = commands.add_parser(
        "demo",
        help="solve a built-in SeLa-like problem and compare with plain argmax",
        description="Generate realistic scores, solve, and print what balanced labels change.",
    )
    demo.add_argument("--n-samples", type=int, default=50_000, metavar="N")
    demo.add_argument("--n-clusters", type=int, default=128, metavar="K")
    demo.add_argument("--kind", choices=KINDS, default="sela", help="score generator")
    demo.add_argument("--seed", type=int, default=0)
    _solver_options(demo, epsilon=0.1)
    demo.set_defaults(run=_demo)

    bench = commands.add_parser(
        "bench",
        help="time otlabel against peer solvers and the memory-bandwidth limit",
    )
    add_bench_arguments(bench)
    bench.set_defaults(run=run_bench)

    train = commands.add_parser(
        "train",
        help="the reference SeLa example: train on digits, compare with k-means and DeepCluster",
        description="Train a small network by self-labelling (SeLa) and by DeepCluster-style "
        "k-means labelling over several seeds, on balanced and imbalanced data, beside k-means "
        "baselines; write results.md, results.json and plots (needs otlabel[sela]).",
    )
    train.add_argument("--out", default="sela-results", help="output folder (resumes if present)")
    train.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    train.add_argument(
        "--imbalance",
        nargs="+",
        choices=("none", "light", "heavy"),
        default=["none", "light", "heavy"],
    )
    train.add_argument("--epochs", type=int, help="training epochs per run")
    train.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    train.add_argument("--data", metavar="DIR", help="CIFAR-10's cifar-10-batches-py folder")
    train.add_argument(
        "--prior",
        choices=("uniform", "true"),
        default="uniform",
        help="SeLa's cluster proportions on head 0: uniform, or the true class sizes",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)
    return parser


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .sela.train import TrainConfig, run_experiment

    base = TrainConfig(cluster_prior=args.prior)
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs, n_updates=args.epochs)
    summary = run_experiment(
        args.out,
        seeds=args.seeds,
        imbalances=args.imbalance,
        base=base,
        dataset=args.dataset,
        root=args.data,
        progress=not args.no_progress,
    )
    print(f"written {args.out}/results.md ({summary['seconds']:.0f} s)")
    return 0


def _solver_options(parser: argparse.ArgumentParser, *, epsilon: float) -> None:
    parser.add_argument(
        "--epsilon",
        type=float,
        default=epsilon,
        help=f"entropic regularisation, SeLa's 1/lambda (default {epsilon})",
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=DEFAULT_TOL,
        help=f"stop at this L1 marginal error (default {DEFAULT_TOL:g})",
    )
    parser.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER, metavar="N")
    parser.add_argument("--method", choices=("auto", "scaling", "log"), default="auto")
    parser.add_argument("--rounding", choices=("balanced", "argmax"), default="balanced")


def _assign(args: argparse.Namespace) -> int:
    scores = np.load(args.scores, mmap_mode="r" if args.mmap else None)
    weights = {
        "cluster_weights": None if args.cluster_weights is None else np.load(args.cluster_weights),
        "sample_weights": None if args.sample_weights is None else np.load(args.sample_weights),
    }
    result, seconds = _timed_assign(scores, args, **weights)
    print(f"scores     {args.scores}: {_shape(scores)} {scores.dtype}")
    print(summary(result, seconds))
    if args.output:
        np.save(args.output, np.asarray(result.labels))
        print(f"labels     written to {args.output}")
    return 0 if np.all(result.converged) else 3


def _demo(args: argparse.Namespace) -> int:
    print(
        f"Built-in problem: {args.n_samples} x {args.n_clusters} '{args.kind}' scores "
        f"(float32), epsilon={args.epsilon} (SeLa lambda={1 / args.epsilon:g})"
    )
    scores = make_scores(args.n_samples, args.n_clusters, kind=args.kind, seed=args.seed)
    result, seconds = _timed_assign(scores, args)
    print(summary(result, seconds))
    argmax = assign(scores, args.epsilon, init=result.potential, rounding="argmax")
    plain = np.bincount(np.argmax(scores, axis=1), minlength=args.n_clusters)
    print("cluster sizes, min..max (ideal", end=" ")
    print(f"{args.n_samples / args.n_clusters:g} each):")
    print(
        f"  argmax of the scores alone      {_range(plain)}  (empty clusters: {np.sum(plain == 0)})"
    )
    print(f"  SeLa's argmax of S + g          {_range(argmax.counts)}")
    print(f"  balanced (otlabel default)      {_range(result.counts)}")
    return 0 if result.converged else 3


def _timed_assign(
    scores: np.ndarray, args: argparse.Namespace, **weights: object
) -> tuple[Result, float]:
    """``assign`` with the command's solver options, and its wall time in seconds."""
    started = time.perf_counter()
    result = assign(
        scores,
        args.epsilon,
        tol=args.tol,
        max_iter=args.max_iter,
        method=args.method,
        rounding=args.rounding,
        **weights,  # type: ignore[arg-type]
    )
    return result, time.perf_counter() - started


def summary(result: Result, seconds: float) -> str:
    """A one-screen summary of a result."""
    lines = [
        f"method     {result.method} ({result.backend}), epsilon {result.epsilon:g}",
        f"iterations {result.n_iter}  error {_g(result.error)}  converged {result.converged}",
        f"time       {seconds:.2f} s",
    ]
    if result.counts is not None:
        lines.append(f"clusters   sizes {_range(result.counts)}  cost {_g(result.cost)}")
    if result.gap is not None:
        lines.append(f"optimality certified gap {_g(result.gap)} per sample (score units)")
    return "\n".join(lines)


def _shape(array: np.ndarray) -> str:
    return " x ".join(str(n) for n in array.shape)


def _range(counts: Any) -> str:
    counts = np.asarray(counts)
    return f"{int(counts.min())}..{int(counts.max())}"


def _g(value: object) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, separator=", ")
    return f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
