"""Time two checkouts of otlabel on the same inputs, interleaved: old against new.

    python benchmarks/compare_versions.py --old /path/to/old/checkout \
        --sizes 50000x1000 200000x3000 640000x3000 --repeats 3

Each measurement is one fresh process that imports otlabel from the given tree
(first on ``sys.path``, ahead of any editable install), loads the scores from a
``.npy`` (written once per size, from ``otlabel.make_scores(N, K, kind,
seed=0)``), solves a tiny problem first (so that compilation and Numba's cache
loading are not timed), then times one
public call: ``otlabel.sinkhorn`` (``--call sinkhorn``) or ``otlabel.assign``
with balanced labels (``--call assign``) at epsilon 0.04 and the default
tolerance.  Old and new alternate (old, new, old, new, ...), so that the
machine's minute-to-minute swings fall on both; the table reports each side's
median and the median of the paired ratios new / old.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RUNNER = r"""
import json, sys, time, warnings
tree, path, call, epsilon = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
# the tree's otlabel, not an editable install's (its finder precedes sys.path)
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
sys.path.insert(0, tree)
import numpy as np
import otlabel
otlabel.assign(otlabel.make_scores(3000, 30, kind="head", seed=1), epsilon)  # compile / load
scores = np.load(path)
solve = otlabel.assign if call == "assign" else otlabel.sinkhorn
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    began = time.perf_counter()
    result = solve(scores, epsilon)
    seconds = time.perf_counter() - began
print(json.dumps({
    "seconds": seconds,
    "n_iter": int(result.n_iter),
    "error": float(result.error),
    "method": str(result.method),
    "file": otlabel.__file__,
}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the old checkout (its root folder)")
    parser.add_argument("--new", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--sizes", nargs="+", default=["50000x1000", "200000x3000", "640000x3000"])
    parser.add_argument("--kind", default="head")
    parser.add_argument("--call", choices=("sinkhorn", "assign"), default="sinkhorn")
    parser.add_argument("--epsilon", type=float, default=0.04)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the raw measurements here")
    args = parser.parse_args(argv)
    rows, raw = [], []
    for size in args.sizes:
        n, k = (int(part) for part in size.split("x"))
        path = _scores_file(n, k, args.kind)
        pairs = []
        for _ in range(args.repeats):
            old = _measure(args.old, path, args.call, args.epsilon)
            new = _measure(args.new, path, args.call, args.epsilon)
            pairs.append((old, new))
            raw.append({"size": size, "old": old, "new": new})
            print(f"{size}: old {old['seconds']:.2f} s, new {new['seconds']:.2f} s", flush=True)
        rows.append(_row(size, pairs))
    print()
    scores = f"'{args.kind}' float32 scores"
    print(f"`otlabel.{args.call}` at epsilon {args.epsilon}, {scores}, ", end="")
    print(f"default tol, {args.repeats} interleaved pairs per size:")
    print()
    print("| N x K | old s (median) | new s (median) | new / old (median of pairs) |", end="")
    print(" old passes, error | new passes, error |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))
    return 0


def _scores_file(n: int, k: int, kind: str) -> Path:
    path = Path(tempfile.gettempdir()) / f"otlabel-compare-{kind}-{n}x{k}.npy"
    if not path.exists():
        import otlabel

        np_path = path.with_suffix(".partial.npy")
        import numpy as np

        np.save(np_path, otlabel.make_scores(n, k, kind=kind, seed=0))
        np_path.replace(path)
    return path


def _measure(tree: str, path: Path, call: str, epsilon: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, tree, str(path), call, str(epsilon)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(tree), (result["file"], tree)
    return result


def _row(size: str, pairs: list[tuple[dict, dict]]) -> str:
    old = statistics.median(o["seconds"] for o, _ in pairs)
    new = statistics.median(n["seconds"] for _, n in pairs)
    ratio = statistics.median(n["seconds"] / o["seconds"] for o, n in pairs)
    last_old, last_new = pairs[-1]
    return (
        f"| {size.replace('x', ' x ')} | {old:.2f} | {new:.2f} | {ratio:.2f} | "
        f"{last_old['n_iter']}, {last_old['error']:.2g} | "
        f"{last_new['n_iter']}, {last_new['error']:.2g} |"
    )


if __name__ == "__main__":
    sys.exit(main())
