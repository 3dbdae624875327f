"""The ``otlabel`` command: ``otlabel assign``, ``predict``, ``cluster``, ``demo``, ``bench``
and ``train``.

``otlabel.bench`` (the benchmark runner), ``otlabel.sela`` and ``otlabel.kmeans``
(scikit-learn) are imported only when their subcommand runs, never by ``otlabel assign``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

import numpy as np

from . import __version__
from ._system import available_memory
from .api import DEFAULT_MAX_ITER, DEFAULT_TOL, assign, predict
from .datasets import KINDS, make_scores
from .result import Result
from .streaming import ChunkedScores

DESCRIPTION = """\
Balanced cluster labels from a matrix of model scores, by optimal transport
(Sinkhorn-Knopp), as in SeLa, SwAV and DeepCluster-v2.

  otlabel assign scores.npy -o labels.npy      label the rows of an (N, K) .npy
  otlabel predict new.npy --result r.npz -o labels.npy
                                               label new rows with a saved result
  otlabel cluster X.npy -k 50 -o labels.npy   size-constrained k-means of (N, d) features
  otlabel demo                                 solve a built-in SeLa-like problem
  otlabel bench                                time it against peers and bandwidth
  otlabel train                                SeLa on digits against its baselines
"""

#: A .npy whose data is larger than this fraction of the available memory is
#: streamed (``otlabel.ChunkedScores``: read block by block, never held whole).
STREAM_FRACTION = 0.5
#: The progress line appears once a solve has run this many seconds ...
PROGRESS_AFTER = 2.0
#: ... and is redrawn at most once per this many seconds.
PROGRESS_INTERVAL = 0.25

#: Backends of ``assign`` that run a NumPy array (what a .npy file is).
NPY_BACKENDS = ("auto", "numpy", "numba")
#: Every backend name of ``assign``; the others need Torch or CuPy input.
BACKENDS = (*NPY_BACKENDS, "torch", "triton", "cupy")

#: Python argument names in ``assign``'s messages -> the options that set them.
OPTION_OF = {
    "cluster_weights": "--cluster-weights",
    "sample_weights": "--sample-weights",
    "min_size": "--min-size",
    "max_size": "--max-size",
    "init": "--init",
    "n_threads": "--n-threads",
    "epsilon": "--epsilon",
    "tol": "--tol",
    "max_iter": "--max-iter",
    "method": "--method",
    "rounding": "--rounding",
    "size_penalty": "--size-penalty",
    "mass": "--mass",
    "known_labels": "--known-labels",
    "unassigned_scores": "--unassigned-scores",
}
#: The same for ``predict``'s messages: what it reads from the ``--result`` file.
PREDICT_OPTION_OF = {
    "potential": "--result (potential)",
    "epsilon": "--result (epsilon)",
    "unassigned": "--result (unassigned_potential)",
    "unassigned_scores": "--unassigned-scores",
}

_NPY_MAGIC = b"\x93NUMPY"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otlabel`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except (ValueError, TypeError, OSError, FloatingPointError) as error:
        message = _as_options(str(error), getattr(args, "option_of", OPTION_OF))
        print(f"otlabel {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # Ctrl-C: one line, the shell's status 130
        where = ""
        if isinstance(interrupt, Interrupted) and interrupt.n_iter:
            where = f" after {interrupt.n_iter} passes, error {interrupt.error:.3g}"
        print(f"otlabel {args.command}: interrupted{where}", file=sys.stderr)
        return INTERRUPTED


#: Exit status after Ctrl-C, as a shell reports a process ended by SIGINT.
INTERRUPTED = 130


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a solve, with how far it had come."""

    def __init__(self, n_iter: int, error: float) -> None:
        super().__init__(n_iter, error)
        self.n_iter, self.error = n_iter, error


def _as_options(message: str, option_of: dict[str, str] = OPTION_OF) -> str:
    """``min_size: ...`` (the Python argument) as ``--min-size: ...`` (the option)."""
    prefix = re.compile(r"^(" + "|".join(map(re.escape, option_of)) + r")(\[\d+\])?:")
    return prefix.sub(lambda m: option_of[m.group(1)] + (m.group(2) or "") + ":", message)


class _Parser(argparse.ArgumentParser):
    """An argument parser that can add its arguments on first use (``setup=``).

    A subcommand registered with ``setup`` imports its module only when that
    subcommand is parsed or its help is shown, not when the command line is built.
    """

    def __init__(
        self,
        *args: Any,
        setup: Callable[[argparse.ArgumentParser], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._setup = setup

    def _ready(self) -> None:
        if self._setup is not None:
            setup, self._setup = self._setup, None
            setup(self)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self._ready()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self._ready()
        return super().format_help()

    def format_usage(self) -> str:
        self._ready()
        return super().format_usage()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otlabel", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"otlabel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    label = commands.add_parser(
        "assign",
        help="label the rows of a score matrix stored as .npy",
        description="Label each row of an (N, K) score matrix (.npy) with one of K clusters.",
    )
    label.add_argument("scores", help="(N, K) or (H, N, K) float array in .npy format")
    label.add_argument("-o", "--output", help="where to write the labels (.npy, int64)")
    label.add_argument(
        "--save",
        metavar="NPZ",
        help="write the whole result (.npz: labels, counts, potential, row_potential, errors, "
        "gap, n_iter, error, converged, epsilon, method, backend, cost, unassigned_potential); "
        "otlabel predict labels new data with it",
    )
    label.add_argument(
        "--cluster-weights", metavar="NPY", help="(K,) cluster proportions (.npy); default uniform"
    )
    label.add_argument(
        "--sample-weights", metavar="NPY", help="(N,) sample weights (.npy); default uniform"
    )
    label.add_argument(
        "--min-size",
        metavar="X",
        help="bounded sizes: each cluster gets at least this fraction of N (a number, or a "
        ".npy of K fractions); not with --cluster-weights",
    )
    label.add_argument(
        "--max-size",
        metavar="X",
        help="bounded sizes: each cluster gets at most this fraction of N (a number, or a "
        ".npy of K fractions); not with --cluster-weights",
    )
    label.add_argument(
        "--size-penalty",
        metavar="TAU",
        help="relaxed sizes: a KL penalty tau > 0 (score units) pulling the cluster sizes "
        "toward --cluster-weights (a number, or a .npy of K values); not with "
        "--min-size/--max-size",
    )
    label.add_argument(
        "--mass",
        type=float,
        default=1.0,
        metavar="RHO",
        help="partial mass: label only this fraction of the samples, in (0, 1]; the others "
        "get label -1 (default 1)",
    )
    label.add_argument(
        "--known-labels",
        metavar="NPY",
        help="(N,) int labels (.npy; (H, N) for heads), -1 where unknown: known samples keep "
        "their label",
    )
    label.add_argument(
        "--unassigned-scores",
        metavar="NPY",
        help="with --mass < 1: (N,) scores of the 'unassigned' column (.npy); default each "
        "row's log-sum-exp",
    )
    label.add_argument(
        "--init",
        metavar="NPY",
        help="warm start: a previous potential (.npy, (K,) or (H, K)), or the word 'subsample'",
    )
    label.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="iteration backend; a .npy runs on auto, numpy or numba (default auto)",
    )
    label.add_argument("--n-threads", type=int, metavar="N", help="thread count of the kernels")
    _reading_options(label)
    _solver_options(label, epsilon=0.04)
    label.set_defaults(run=_assign, option_of=OPTION_OF)

    guess = commands.add_parser(
        "predict",
        help="label new rows with the potential of a result saved by `otlabel assign --save`",
        description="Label each row of an (N, K) score matrix (.npy) with argmax_k (S_ik + g_k), "
        "or write its soft codes softmax_k((S_ik + g_k) / epsilon), from the potential g (and "
        "epsilon, and partial mass's unassigned potential) of a saved result.",
    )
    guess.add_argument("scores", help="(N, K) float array in .npy format")
    guess.add_argument(
        "--result",
        required=True,
        metavar="NPZ",
        help="the .npz written by `otlabel assign --save` (its potential, epsilon and "
        "unassigned_potential)",
    )
    guess.add_argument(
        "-o",
        "--output",
        required=True,
        help="where to write the labels (.npy, int64, -1: unassigned), or with --soft the "
        "codes (.npy, float64, (N, K))",
    )
    guess.add_argument(
        "--soft",
        action="store_true",
        help="soft codes softmax((S + g) / epsilon) (N, K) instead of labels",
    )
    guess.add_argument(
        "--head",
        type=int,
        metavar="H",
        help="for a result of H heads (a potential (H, K)): the head whose potential to use",
    )
    guess.add_argument(
        "--unassigned-scores",
        metavar="NPY",
        help="for a result with --mass < 1: (N,) scores of the 'unassigned' column of the new "
        "rows (.npy); default each row's log-sum-exp",
    )
    guess.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="who reads the matrix; a .npy runs on auto, numpy or numba (default auto)",
    )
    _reading_options(guess)
    guess.set_defaults(run=_predict, option_of=PREDICT_OPTION_OF)

    _cluster_parser(commands)

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
        setup=_bench_arguments,  # imports otlabel.bench only for `otlabel bench`
    )
    bench.set_defaults(run=_bench)

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
        default=["none"],
        help="the clustering experiment's data: balanced (default, about 6 minutes), or "
        "imbalanced digits (light, heavy)",
    )
    train.add_argument("--epochs", type=int, help="training epochs per run")
    train.add_argument("--dataset", choices=("digits", "cifar10"), default="digits")
    train.add_argument("--data", metavar="DIR", help="CIFAR-10's cifar-10-batches-py folder")
    train.add_argument(
        "--prior",
        choices=("uniform", "true"),
        default="uniform",
        help="SeLa's cluster proportions on the heads with the first head's cluster count: "
        "uniform, or the true class sizes",
    )
    train.add_argument(
        "--experiments",
        nargs="+",
        choices=("clustering", "known", "holdout"),
        default=["clustering"],
        help="clustering: a table per --imbalance; known: a few labels known (balanced data); "
        "holdout: train on 80%%, label the other 20%% with predict",
    )
    train.add_argument(
        "--size-penalty",
        type=float,
        nargs="+",
        metavar="TAU",
        help="SeLa's relaxed-size rows on imbalanced data, one per tau (default: 1)",
    )
    train.add_argument(
        "--known-fraction",
        type=float,
        nargs="+",
        metavar="F",
        help="fractions of known labels of the 'known' experiment (default: 0.01 0.05)",
    )
    train.add_argument(
        "--known-weight",
        type=float,
        default=1.0,
        metavar="W",
        help="SeLa with known labels: weight of the cross-entropy on a batch of known samples "
        "added to every step (default 1; 0: the labelling step alone keeps them)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(run=_train)
    return parser


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .bench import add_arguments

    add_arguments(parser)


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_from_args

    return run_from_args(args)


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .sela.experiment import DEFAULT_SIZE_PENALTY, KNOWN_FRACTIONS, run_experiment
    from .sela.train import TrainConfig

    base = TrainConfig(cluster_prior=args.prior, known_weight=args.known_weight)
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs, n_updates=args.epochs)
    summary = run_experiment(
        args.out,
        seeds=args.seeds,
        imbalances=args.imbalance,
        experiments=args.experiments,
        size_penalties=args.size_penalty or (DEFAULT_SIZE_PENALTY,),
        known_fractions=args.known_fraction or KNOWN_FRACTIONS,
        base=base,
        command=shlex.join(["otlabel", *args.argv]),
        dataset=args.dataset,
        root=args.data,
        progress=not args.no_progress,
    )
    print(f"written {args.out}/results.md ({summary['seconds']:.0f} s)")
    return 0


def _reading_options(parser: argparse.ArgumentParser) -> None:
    reading = parser.add_mutually_exclusive_group()
    reading.add_argument(
        "--mmap",
        action="store_true",
        help="memory-map the scores and read them as an array (never streamed)",
    )
    reading.add_argument(
        "--stream",
        action="store_true",
        help="read the scores block by block (otlabel.ChunkedScores) whatever their size; "
        f"default: only when larger than {STREAM_FRACTION * 100:g}%% of the available memory",
    )


def _solver_options(parser: argparse.ArgumentParser, *, epsilon: float) -> None:
    parser.add_argument(
        "--epsilon",
        type=float,
        default=epsilon,
        help=f"entropic regularisation, SeLa's 1/lambda (default {epsilon}); 0: the "
        "unregularised problem's exact labels",
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
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help=f"no live progress line (shown on a terminal's stderr after {PROGRESS_AFTER:g} s)",
    )


# ---------------------------------------------------------------------------
# otlabel assign
# ---------------------------------------------------------------------------


def _assign(args: argparse.Namespace) -> int:
    _check_npy_backend(args.backend, "otlabel.assign")
    bounded = args.min_size is not None or args.max_size is not None
    if bounded and args.cluster_weights is not None:
        raise ValueError(
            "--cluster-weights: give either cluster proportions (fixed sizes) or "
            "--min-size/--max-size (bounded sizes), not both"
        )
    if bounded and args.size_penalty is not None:
        raise ValueError(
            "--size-penalty: relaxed sizes (a KL penalty toward --cluster-weights) and bounded "
            "sizes (--min-size/--max-size) are two different constraints; give one of them"
        )
    if args.unassigned_scores is not None and args.mass == 1.0:
        raise ValueError(
            "--unassigned-scores: scores of the 'unassigned' column are used only with partial "
            "mass; give --mass < 1 too"
        )
    written = None
    if args.save:
        written = args.save if args.save.endswith(".npz") else f"{args.save}.npz"
    _check_writable(args.output, "--output")
    _check_writable(written, "--save")
    scores, reading = _open_scores(
        args.scores, mmap=args.mmap, stream=args.stream, method=args.method
    )
    options: dict[str, Any] = {
        "cluster_weights": _optional_npy(args.cluster_weights, "--cluster-weights"),
        "sample_weights": _optional_npy(args.sample_weights, "--sample-weights"),
        "min_size": _number_or_npy(args.min_size, "--min-size", FRACTIONS),
        "max_size": _number_or_npy(args.max_size, "--max-size", FRACTIONS),
        "size_penalty": _number_or_npy(args.size_penalty, "--size-penalty", PENALTIES),
        "mass": args.mass,
        "known_labels": _optional_npy(args.known_labels, "--known-labels"),
        "unassigned_scores": _optional_npy(args.unassigned_scores, "--unassigned-scores"),
        "init": _initial(args.init),
        "backend": args.backend,
        "n_threads": args.n_threads,
    }
    print(f"scores     {args.scores}: {_shape(scores)} {np.dtype(scores.dtype)}")
    if reading:
        print(reading)
    result, seconds = _timed_assign(scores, args, **options)
    print(summary(result, seconds))
    if options["known_labels"] is not None:
        known = np.count_nonzero(np.asarray(options["known_labels"]) >= 0, axis=-1)
        print(f"known      {_n(known)} of {scores.shape[-2]} samples kept their given label")
    if args.output:
        with _writing(args.output, "--output") as handle:
            np.save(handle, np.asarray(result.labels))
        print(f"labels     written to {args.output}")
    if written is not None:
        arrays: dict[str, Any] = result_arrays(result)
        with _writing(written, "--save") as handle:
            np.savez(handle, **arrays)
        print(f"result     written to {written}")
    return 0 if np.all(result.converged) else 3


def _check_npy_backend(backend: str, function: str) -> None:
    if backend not in NPY_BACKENDS:
        raise ValueError(
            f"--backend: {backend!r} runs Torch or CuPy arrays, and a .npy file is read "
            f"as a NumPy array; use one of {', '.join(NPY_BACKENDS)} (or call "
            f"{function} from Python on a tensor)"
        )


def _check_writable(path: str | None, option: str) -> None:
    """Fail before the solve, not after it, when an output's folder does not exist."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OSError(f"{option}: cannot write {path}: no folder {folder}")
    if os.path.isdir(path):
        raise OSError(f"{option}: cannot write {path}: it is a folder")


@contextmanager
def _writing(path: str, option: str) -> Iterator[BinaryIO]:
    """A file beside ``path`` to write to, moved onto ``path`` once written whole (an
    interruption or an error leaves no partial file); OSErrors as messages naming
    ``option``."""
    folder, name = os.path.split(os.path.abspath(path))
    partial = os.path.join(folder, f".{name}.partial")
    try:
        with open(partial, "wb") as handle:
            yield handle
        os.replace(partial, path)
    except OSError as error:
        raise OSError(f"{option}: cannot write {path}: {error.strerror or error}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _open_scores(
    path: str, *, mmap: bool, stream: bool, method: str | None = None
) -> tuple[Any, str]:
    """The scores as an array, a memory map or a stream, and a line saying which (or "")."""
    shape, _, nbytes = _npy_header(path, "scores")
    if mmap:
        return np.load(path, mmap_mode="r"), ""
    available = available_memory()
    large = nbytes > STREAM_FRACTION * available
    if not (stream or large):
        return np.load(path), ""
    why = (
        "--stream"
        if stream
        else f"{_bytes(nbytes)} > {STREAM_FRACTION:.0%} of the {_bytes(available)} available"
    )
    if len(shape) != 2:
        # ChunkedScores holds one (N, K) matrix; a stack of heads is solved as an array.
        return np.load(path, mmap_mode="r"), (
            f"reading    memory-mapped ({why}; a stack of heads cannot be streamed)"
        )
    if method == "scaling":
        raise ValueError(
            f"--method: 'scaling' stores exp(S/eps), as large as the matrix, and these scores are "
            f"streamed ({why}); use --method auto or log, or --mmap"
        )
    return ChunkedScores(path), f"reading    streamed block by block from disk ({why})"


def _npy_header(path: str, option: str) -> tuple[tuple[int, ...], np.dtype[Any], int]:
    """Shape, dtype and data size (bytes) of a .npy file, read from its header alone.

    Anything that is not a plain .npy array of numbers (a text file, a pickle, a
    .npz archive, Python objects, a truncated file) raises naming ``option``.
    """
    try:
        with open(path, "rb") as file:
            start = file.read(len(_NPY_MAGIC))
            if start != _NPY_MAGIC:
                raise ValueError(
                    f"{option}: {path} is not a .npy array file ({_kind_of(start)}); "
                    "write the array with numpy.save"
                )
            file.seek(0)
            try:
                version = np.lib.format.read_magic(file)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(file)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(file)
            except ValueError as error:
                raise ValueError(
                    f"{option}: {path} is not a .npy array file (unreadable header: {error})"
                ) from None
            offset = file.tell()
            size = os.fstat(file.fileno()).st_size
    except OSError as error:
        raise OSError(f"{option}: cannot read {path}: {error.strerror or error}") from None
    if dtype.hasobject:
        raise ValueError(
            f"{option}: {path} holds Python objects (dtype {dtype}), which need pickle, not a "
            ".npy array of numbers; save a float array with numpy.save"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if size - offset < nbytes:
        raise ValueError(
            f"{option}: {path} is a truncated .npy file: its header announces "
            f"{_shape_of(shape)} {dtype} ({nbytes} bytes), but {size - offset} bytes follow"
        )
    return tuple(shape), dtype, nbytes


def _kind_of(start: bytes) -> str:
    """What a file that does not start with the .npy magic string seems to be."""
    if not start:
        return "it is empty"
    if start.startswith(b"PK"):
        return "it is a zip archive, e.g. a .npz of numpy.savez; save one of its arrays"
    if start.startswith(b"\x80"):
        return "it is a Python pickle"
    return "no .npy header; for a text table use numpy.loadtxt, then numpy.save"


def _load_npy(path: str, option: str) -> np.ndarray:
    _npy_header(path, option)
    return np.asarray(np.load(path))


def _optional_npy(path: str | None, option: str) -> np.ndarray | None:
    return None if path is None else _load_npy(path, option)


#: What ``--min-size`` / ``--max-size`` and ``--size-penalty`` take, for their messages.
FRACTIONS = "a fraction of N (e.g. 0.05) or a .npy file of K fractions"
PENALTIES = "a penalty tau > 0 in score units (e.g. 0.5) or a .npy file of K of them"


def _number_or_npy(text: str | None, option: str, expected: str) -> float | np.ndarray | None:
    """``--min-size``, ``--max-size``, ``--size-penalty``: a number, or a .npy path of K."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if text.endswith(".npy") or os.path.exists(text):
        return _load_npy(text, option)
    raise ValueError(f"{option}: expected {expected}, got {text!r}")


def _initial(text: str | None) -> str | np.ndarray | None:
    """``--init``: the word ``subsample``, or a .npy of a previous potential."""
    if text is None or text == "subsample":
        return text
    return _load_npy(text, "--init")


def result_arrays(result: Result) -> dict[str, np.ndarray]:
    """The arrays that ``--save`` writes to its .npz, one per field of the result.

    Scalars are 0-d arrays (for H heads: ``(H,)``); ``gap`` (None with argmax
    rounding), ``cost`` and ``unassigned_potential`` (None without partial mass)
    when None are stored as NaN; ``labels`` and ``counts`` are left out when None
    (no rounding, which the command never asks for).
    ``errors``: ``(n_iter,)``; for H heads ``(H, max n_iter)``, each row padded
    with NaN after its own passes.
    """
    stacked = isinstance(result.method, tuple)
    heads = len(result.method) if stacked else None
    arrays: dict[str, np.ndarray] = {
        "potential": np.asarray(result.potential, dtype=np.float64),
        "row_potential": np.asarray(result.row_potential, dtype=np.float64),
        "errors": _errors(result.errors, stacked),
        "gap": _floats(result.gap, heads),
        "n_iter": np.asarray(result.n_iter, dtype=np.int64),
        "error": np.asarray(result.error, dtype=np.float64),
        "converged": np.asarray(result.converged, dtype=np.bool_),
        "epsilon": np.asarray(result.epsilon, dtype=np.float64),
        "method": np.asarray(result.method, dtype=np.str_),
        "backend": np.asarray(result.backend, dtype=np.str_),
        "cost": _floats(result.cost, heads),
        "unassigned_potential": _floats(result.unassigned_potential, heads),
    }
    hard = {"labels": result.labels, "counts": result.counts}  # None without rounding
    return {**{name: np.asarray(v) for name, v in hard.items() if v is not None}, **arrays}


def _floats(value: Any, heads: int | None) -> np.ndarray:
    """A float64 array of ``value``; NaN (0-d, or ``(H,)``) where it is None."""
    if value is None:
        return np.full(() if heads is None else (heads,), np.nan)
    return np.asarray(value, dtype=np.float64)


def _errors(errors: Any, stacked: bool) -> np.ndarray:
    if not stacked:
        return np.asarray(errors, dtype=np.float64)
    longest = max((len(head) for head in errors), default=0)
    padded = np.full((len(errors), longest), np.nan)
    for h, head in enumerate(errors):
        padded[h, : len(head)] = head
    return padded


# ---------------------------------------------------------------------------
# otlabel predict
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """What ``otlabel predict`` takes from a ``--save`` file (one head's)."""

    potential: np.ndarray  # (K,) float64
    epsilon: float | None  # read for --soft only (labels do not need it), else None
    unassigned: float | None  # partial mass's g0; None without partial mass
    head: int | None  # the head picked from a stacked result, or None
    n_heads: int | None  # H of a stacked result, or None


def _predict(args: argparse.Namespace) -> int:
    _check_npy_backend(args.backend, "otlabel.predict")
    _check_writable(args.output, "--output")
    shape, _, _ = _npy_header(args.scores, "scores")
    if len(shape) != 2:
        raise ValueError(
            f"scores: {args.scores} holds {_shape_of(shape)}; otlabel predict labels one (N, K) "
            "matrix (for a stack of heads, save each head's scores and pick its potential with "
            "--head)"
        )
    saved = load_result(args.result, head=args.head, soft=args.soft)
    n_clusters = shape[1]
    if saved.potential.shape != (n_clusters,):
        raise ValueError(
            f"--result: {args.result} holds the potential of {saved.potential.size} clusters, "
            f"and the scores {args.scores} have K={n_clusters} columns"
        )
    unassigned_scores = _optional_npy(args.unassigned_scores, "--unassigned-scores")
    if unassigned_scores is not None and saved.unassigned is None:
        raise ValueError(
            f"--unassigned-scores: {args.result} has no unassigned potential (it was solved "
            "with all the mass, --mass 1), so no sample is left unassigned; drop this option"
        )
    scores, reading = _open_scores(args.scores, mmap=args.mmap, stream=args.stream)
    print(f"scores     {args.scores}: {_shape(scores)} {np.dtype(scores.dtype)}")
    if reading:
        print(reading)
    print(_saved_line(args.result, saved))
    started = time.perf_counter()
    predicted = np.asarray(
        predict(
            scores,
            saved.potential,
            soft=args.soft,
            epsilon=saved.epsilon,
            unassigned=saved.unassigned,
            unassigned_scores=unassigned_scores,
            backend=args.backend,
        )
    )
    seconds = time.perf_counter() - started
    print(f"time       {seconds:.2f} s")
    n_samples = predicted.shape[0]
    if args.soft:
        sums = predicted.sum(axis=1)
        print(
            f"codes      {_shape(predicted)} {predicted.dtype}, row sums "
            f"{_g(float(sums.min()))}..{_g(float(sums.max()))}"
        )
        if saved.unassigned is not None:
            # The unassigned column's share is what a row's codes lack; label -1 where it wins.
            share = 1.0 - sums
            left = int(np.count_nonzero(share > predicted.max(axis=1)))
            print(
                f"unassigned {left} of {n_samples} samples (label -1: their unassigned share "
                f"beats every cluster), mean share {_g(float(share.mean()))}"
            )
    else:
        predicted = predicted.astype(np.int64, copy=False)
        counts = np.bincount(predicted[predicted >= 0], minlength=n_clusters)
        print(f"clusters   sizes {_range(counts)}  counts {_list(counts)}")
        if saved.unassigned is not None:
            left = int(np.count_nonzero(predicted < 0))
            print(f"unassigned {left} of {n_samples} samples (label -1)")
    with _writing(args.output, "--output") as handle:
        np.save(handle, predicted)
    print(f"{'codes' if args.soft else 'labels':<10} written to {args.output}")
    return 0


def load_result(path: str, *, head: int | None = None, soft: bool = False) -> Saved:
    """The potential, epsilon and unassigned potential of a ``--save`` file (for
    H heads: of head ``head``); errors name ``--result`` (or ``--head``)."""
    try:
        with open(path, "rb") as file:
            start = file.read(len(_NPY_MAGIC))
    except OSError as error:
        raise OSError(f"--result: cannot read {path}: {error.strerror or error}") from None
    if not start.startswith(b"PK"):
        what = (
            "it is a .npy array; give the .npz of otlabel assign --save"
            if start == _NPY_MAGIC
            else _kind_of(start)
        )
        raise ValueError(f"--result: {path} is not a .npz archive ({what})")
    try:
        with open(path, "rb") as file, np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            if "potential" not in keys:
                raise ValueError(
                    f"--result: {path} has no 'potential' array (its arrays: "
                    f"{', '.join(sorted(keys)) or 'none'}); write it with otlabel assign --save"
                )
            arrays = {
                name: np.asarray(archive[name])
                for name in ("potential", "epsilon", "unassigned_potential")
                if name in keys
            }
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        if str(error).startswith("--result: "):
            raise
        raise ValueError(f"--result: cannot read {path}: {error}") from None
    potential = _numbers(arrays["potential"], path, "potential")
    stacked = potential.ndim == 2
    if potential.ndim not in (1, 2) or potential.shape[-1] == 0:
        raise ValueError(
            f"--result: {path}'s potential has shape {potential.shape}; expected (K,) or "
            "(H, K) for H heads"
        )
    n_heads = potential.shape[0] if stacked else None
    unassigned = arrays.get("unassigned_potential")
    if unassigned is not None:
        unassigned = _numbers(unassigned, path, "unassigned_potential")
        if unassigned.shape != (() if n_heads is None else (n_heads,)):
            raise ValueError(
                f"--result: {path}'s unassigned_potential has shape {unassigned.shape}, which "
                f"does not match its potential {potential.shape}"
            )
    if stacked:
        last = potential.shape[0] - 1
        if head is None:
            raise ValueError(
                f"--result: {path} holds the potentials of {last + 1} heads {potential.shape}; "
                f"pick one with --head (0..{last})"
            )
        if not 0 <= head <= last:
            raise ValueError(f"--head: expected a head in 0..{last}, got {head}")
        potential = potential[head]
        unassigned = None if unassigned is None else unassigned[head]
    elif head is not None:
        raise ValueError(
            f"--head: {path} holds one head's potential {potential.shape}; drop --head"
        )
    g0 = None if unassigned is None or np.isnan(unassigned) else float(unassigned)
    epsilon = None
    if soft:
        if "epsilon" not in arrays:
            raise ValueError(f"--result: {path} has no 'epsilon', which --soft codes need")
        value = _numbers(arrays["epsilon"], path, "epsilon")
        if value.shape != () or not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"--result: {path}'s epsilon is {value!r}; --soft codes need one number > 0"
            )
        epsilon = float(value)
    return Saved(potential.astype(np.float64), epsilon, g0, head, n_heads)


def _numbers(array: np.ndarray, path: str, name: str) -> np.ndarray:
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"--result: {path}'s {name} is not an array of numbers ({array.dtype})")
    return array


def _saved_line(path: str, saved: Saved) -> str:
    parts = [f"potential of {saved.potential.size} clusters"]
    if saved.head is not None:
        parts[0] += f" (head {saved.head} of {saved.n_heads})"
    if saved.epsilon is not None:
        parts.append(f"epsilon {saved.epsilon:g}")
    if saved.unassigned is not None:
        parts.append(f"unassigned potential {saved.unassigned:.6g}")
    return f"result     {path}: {', '.join(parts)}"


# ---------------------------------------------------------------------------
# otlabel cluster
# ---------------------------------------------------------------------------

#: Python argument names in ``KMeans``'s messages -> the options that set them.
CLUSTER_OPTION_OF = {
    "n_clusters": "-k",
    "min_size": "--min-size",
    "max_size": "--max-size",
    "size_penalty": "--size-penalty",
    "n_init": "--n-init",
    "max_iter": "--max-iter",
    "tol": "--tol",
    "X": "features",
}
#: What ``--min-size`` / ``--max-size`` take in ``otlabel cluster``.
SIZES = "a count of samples (an integer), a fraction of N (e.g. 0.05) or a .npy of K of them"


def _cluster_parser(commands: Any) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="size-constrained k-means of the rows of an (N, d) feature matrix (.npy)",
        description="k-means whose clusters have equal sizes (default) or sizes within "
        "bounds, every assignment step exact (otlabel.KMeans; needs otlabel[sklearn]).",
    )
    cluster.add_argument("features", help="(N, d) float array in .npy format")
    cluster.add_argument("-k", "--n-clusters", type=int, required=True, metavar="K")
    cluster.add_argument("--min-size", metavar="S", help=f"each cluster's least size: {SIZES}")
    cluster.add_argument("--max-size", metavar="S", help=f"each cluster's largest size: {SIZES}")
    cluster.add_argument(
        "--size-penalty",
        metavar="TAU",
        help="relaxed sizes: a KL penalty tau > 0 (squared-distance units) pulling the sizes "
        "toward equal ones; not with --min-size/--max-size",
    )
    cluster.add_argument("--n-init", type=int, default=1, metavar="N", help="runs (default 1)")
    cluster.add_argument("--max-iter", type=int, default=300, metavar="N")
    cluster.add_argument(
        "--tol", type=float, default=1e-4, help="scikit-learn's tol on the centre shift"
    )
    cluster.add_argument("--seed", type=int, default=0, help="seed of the k-means++ seeding")
    cluster.add_argument("-o", "--output", help="where to write the labels (.npy, int64)")
    cluster.add_argument("--centers", metavar="NPY", help="where to write the (K, d) centres")
    cluster.add_argument(
        "--mmap",
        action="store_true",
        help="memory-map the features: fitted block by block, the (N, K) scores never held "
        f"(default: only when larger than {STREAM_FRACTION * 100:g}%% of the available memory)",
    )
    cluster.add_argument(
        "--no-progress",
        action="store_true",
        help=f"no live progress line (shown on a terminal's stderr after {PROGRESS_AFTER:g} s)",
    )
    cluster.set_defaults(run=_cluster, option_of=CLUSTER_OPTION_OF)


def _cluster(args: argparse.Namespace) -> int:
    from .kmeans import KMeans

    _check_writable(args.output, "--output")
    _check_writable(args.centers, "--centers")
    shape, _, nbytes = _npy_header(args.features, "features")
    if len(shape) != 2:
        raise ValueError(f"features: {args.features} holds {_shape_of(shape)}; expected (N, d)")
    mapped = args.mmap or nbytes > STREAM_FRACTION * available_memory()
    features = np.load(args.features, mmap_mode="r" if mapped else None)
    print(f"features   {args.features}: {_shape(features)} {features.dtype}")
    if mapped:
        print("reading    memory-mapped, fitted block by block")
    progress = Progress(sys.stderr if _progress_wanted(args) else None, ("iteration", "shift"))
    model = KMeans(
        args.n_clusters,
        n_init=args.n_init,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=args.seed,
        min_size=_size_or_npy(args.min_size, "--min-size"),
        max_size=_size_or_npy(args.max_size, "--max-size"),
        size_penalty=_number_or_npy(args.size_penalty, "--size-penalty", PENALTIES),
        callback=lambda run, n_iter, shift: progress(n_iter, shift),
    )
    started = time.perf_counter()
    try:
        model.fit(features)
    except KeyboardInterrupt:
        raise Interrupted(progress.n_iter, progress.error) from None
    finally:
        progress.close()
    print(cluster_summary(model, time.perf_counter() - started))
    if args.output:
        with _writing(args.output, "--output") as handle:
            np.save(handle, np.asarray(model.labels_))
        print(f"labels     written to {args.output}")
    if args.centers:
        with _writing(args.centers, "--centers") as handle:
            np.save(handle, np.asarray(model.cluster_centers_))
        print(f"centres    written to {args.centers}")
    return 0


def _size_or_npy(text: str | None, option: str) -> int | float | np.ndarray | None:
    """``--min-size`` / ``--max-size`` of ``otlabel cluster``: an integer is a count."""
    if text is not None and re.fullmatch(r"[-+]?\d+", text.strip()):
        return int(text)
    return _number_or_npy(text, option, SIZES)


def cluster_summary(model: Any, seconds: float) -> str:
    """A one-screen summary of a fitted :class:`otlabel.KMeans`."""
    return "\n".join(
        [
            f"iterations {model.n_iter_}  inertia {_g(model.inertia_)}",
            f"time       {seconds:.2f} s",
            f"clusters   sizes {_range(model.counts_)}  counts {_list(model.counts_)}",
            f"optimality certified gap {_g(model.gap_)} per sample (squared-distance units) "
            "of the last assignment step",
        ]
    )


# ---------------------------------------------------------------------------
# otlabel demo, and what both share
# ---------------------------------------------------------------------------


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


def _timed_assign(scores: Any, args: argparse.Namespace, **options: Any) -> tuple[Result, float]:
    """``assign`` with the command's solver options, and its wall time in seconds.

    A live progress line goes to stderr while it runs (see :class:`Progress`).
    """
    progress = Progress(sys.stderr if _progress_wanted(args) else None)
    started = time.perf_counter()
    try:
        result = assign(
            scores,
            args.epsilon,
            tol=args.tol,
            max_iter=args.max_iter,
            method=args.method,
            rounding=args.rounding,
            callback=progress,
            **options,
        )
    except KeyboardInterrupt:
        raise Interrupted(progress.n_iter, progress.error) from None
    finally:
        progress.close()
    return result, time.perf_counter() - started


def _progress_wanted(args: argparse.Namespace) -> bool:
    return not args.no_progress and _is_terminal(sys.stderr)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """The ``callback`` of a solve: a ``pass N  error E  T s`` line on ``stream``.

    Silent for the first :data:`PROGRESS_AFTER` seconds, then redrawn in place
    (``\\r``) at most once per :data:`PROGRESS_INTERVAL`; :meth:`close` erases it.
    With no stream it only keeps the last pass and error (for an interruption's line).
    ``words``: what the two numbers are called on the line.
    """

    def __init__(self, stream: TextIO | None, words: tuple[str, str] = ("pass", "error")) -> None:
        self.stream = stream
        self.words = words
        self.started = time.perf_counter()
        self.shown = -math.inf
        self.width = 0
        self.n_iter, self.error = 0, math.nan

    def __call__(self, n_iter: int, error: float) -> None:
        self.n_iter, self.error = n_iter, error
        if self.stream is None:
            return
        now = time.perf_counter()
        if now - self.started < PROGRESS_AFTER or now - self.shown < PROGRESS_INTERVAL:
            return
        self.shown = now
        line = f"{self.words[0]} {n_iter}  {self.words[1]} {error:.3g}  {now - self.started:.0f} s"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = max(self.width, len(line))

    def close(self) -> None:
        """Erase the line (if one was drawn), leaving the cursor at its start."""
        if self.width and self.stream is not None:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def summary(result: Result, seconds: float) -> str:
    """A one-screen summary of a result."""
    lines = [
        f"method     {result.method} ({result.backend}), epsilon {result.epsilon:g}",
        f"iterations {result.n_iter}  error {_g(result.error)}  converged {result.converged}",
        f"time       {seconds:.2f} s",
    ]
    if result.counts is not None:
        lines.append(f"clusters   sizes {_range(result.counts)}  cost {_g(result.cost)}")
    if result.unassigned_potential is not None and result.labels is not None:
        labels = np.asarray(result.labels)
        left = np.count_nonzero(labels < 0, axis=-1)
        each = " per head" if labels.ndim == 2 else ""
        lines.append(f"unassigned {_n(left)} of {labels.shape[-1]} samples{each} (label -1)")
    if result.gap is not None:
        lines.append(f"optimality certified gap {_g(result.gap)} per sample (score units)")
    return "\n".join(lines)


def _shape(array: Any) -> str:
    return _shape_of(array.shape)


def _shape_of(shape: Sequence[int]) -> str:
    return " x ".join(str(n) for n in shape)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


def _range(counts: Any) -> str:
    counts = np.asarray(counts)
    return f"{int(counts.min())}..{int(counts.max())}"


def _n(counts: Any) -> str:
    """An int, or a list of ints for H heads."""
    counts = np.asarray(counts)
    return str(int(counts)) if counts.ndim == 0 else _list(counts)


def _list(counts: Any) -> str:
    """``[100, 98, 102]``; past 64 values, the first and last three around ``...``."""
    values = [str(int(c)) for c in np.asarray(counts)]
    if len(values) > 64:
        values = [*values[:3], "...", *values[-3:]]
    return f"[{', '.join(values)}]"


def _g(value: object) -> str:
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=3, separator=", ")
    return f"{value:.3g}"


if __name__ == "__main__":
    sys.exit(main())
