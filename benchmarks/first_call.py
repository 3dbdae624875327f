"""The first call of a new user: a wheel installed into a fresh virtual environment,
then ``otlabel.assign`` on 100 000 x 100 float32 scores, in a first process (Numba's
cache cold) and in a later one; and ``make demo`` on a fresh clone.

    python benchmarks/first_call.py                 # wheel, fresh venv, two processes
    python benchmarks/first_call.py --demo          # and make demo on a fresh clone
    python benchmarks/first_call.py --later 3       # three later processes

Each process is timed whole (its wall time, from the shell's point of view) and
the ``assign`` call inside it alone.  The environment is built in a temporary
folder (removed unless ``--keep``), with ``pip install -c constraints.txt``; the
processes run without ``NUMBA_CACHE_DIR``, so that Numba caches beside the
installed package, as it does for a user.  Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The first-call script: the import, the scores, then the call timed alone.
FIRST_CALL = """
import json, time
began = time.perf_counter()
import numpy as np
import otlabel
imported = time.perf_counter()
scores = otlabel.make_scores(100_000, 100).astype(np.float32)
made = time.perf_counter()
result = otlabel.assign(scores)
done = time.perf_counter()
print(json.dumps({"import": imported - began, "scores": made - imported,
                  "assign": done - made, "error": float(result.error),
                  "gap": float(result.gap)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="a new user's first call, timed")
    parser.add_argument("--later", type=int, default=1, help="later processes to time")
    parser.add_argument("--demo", action="store_true", help="also make demo on a fresh clone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="otlabel-first-call-"))
    try:
        python = fresh_environment(folder)
        rows = [timed_process(python, "first process (cache cold)")]
        rows += [timed_process(python, f"later process {i + 1}") for i in range(args.later)]
        if args.demo:
            rows.append(make_demo(folder / "clone"))
        print_table(rows)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def fresh_environment(folder: Path) -> Path:
    """A wheel of this checkout installed into a new virtual environment; its python."""
    wheels = folder / "wheel"
    run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)])
    run([sys.executable, "-m", "venv", str(folder / "venv")])
    python = folder / "venv" / "bin" / "python"
    wheel = next(wheels.glob("otlabel-*.whl"))
    constraints = str(ROOT / "constraints.txt")
    run([str(python), "-m", "pip", "install", "-q", "-c", constraints, str(wheel)])
    return python


def timed_process(python: Path, what: str) -> dict[str, object]:
    """The first-call script in a new process of ``python``: its wall time and the
    script's own timings."""
    began = time.perf_counter()
    out = run([str(python), "-c", FIRST_CALL], cwd=python.parent)  # not this checkout
    wall = time.perf_counter() - began
    inner = json.loads(out.strip().splitlines()[-1])
    return {"what": what, "wall": wall, **inner}


def make_demo(clone: Path) -> dict[str, object]:
    """``make demo`` on a fresh clone of this checkout's HEAD: its wall time (the
    venv's set-up included) and the solve time it prints."""
    run(["git", "clone", "-q", str(ROOT), str(clone)])
    began = time.perf_counter()
    out = run(["make", "demo"], cwd=clone)
    wall = time.perf_counter() - began
    solve = re.search(r"^time\s+([\d.]+) s", out, re.MULTILINE)  # the summary's line
    assert solve is not None, out
    return {"what": "make demo, fresh clone", "wall": wall, "assign": float(solve.group(1))}


def run(command: list[str], cwd: Path | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def print_table(rows: list[dict[str, object]]) -> None:
    print("| process | wall, s | import, s | assign, s | error |")
    print("|---|---|---|---|---|")
    for row in rows:
        seconds = [_seconds(row.get(key)) for key in ("wall", "import", "assign")]
        error = row.get("error")
        shown = f"{error:.1e}" if isinstance(error, float) else ""
        print(f"| {row['what']} | {' | '.join(seconds)} | {shown} |")


def _seconds(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ""


if __name__ == "__main__":
    main()
