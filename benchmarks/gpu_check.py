"""Every GPU check in one run: the GPU tests, then the GPU benchmark rows, written to a file.

Made for a short loan of a GPU machine: it runs the tests marked ``gpu`` (Torch
CUDA and CuPy), then times, on the GPU, per backend:

- ms per Sinkhorn pass at (640 000, 3 000) and ImageNet scale (1 281 167, 3 000)
  float32, and that pass's effective bandwidth (bytes of the matrix per pass
  over the time) as a fraction of a read probe on the same GPU (a sum over
  4 GiB, timed alternately with the passes; medians of paired ratios);
- ImageNet-scale ``otlabel.assign`` to the default tolerance with balanced
  labels: in GPU memory, and streamed from pinned host memory
  (``ChunkedScores(pinned, device="cuda")``);
- ``otlabel.soft_assign`` on a SwAV-sized batch (4 096 x 3 000).

Results go to ``--out`` (JSON and Markdown).  ``--device cpu --tiny`` runs the
same code on small sizes on the CPU in seconds (the test suite does, so this
script cannot rot while no GPU is at hand); its figures mean nothing.

    python benchmarks/gpu_check.py --out gpu-results            # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import otlabel
from otlabel.kernels import BACKENDS, installed
from otlabel.solver import iterate

FULL_SIZES = [(640_000, 3_000), (1_281_167, 3_000)]
TINY_SIZES = [(20_000, 300), (30_000, 300)]
PROBE_BYTES = {"full": 4 << 30, "tiny": 64 << 20}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for --tiny")
    parser.add_argument("--tiny", action="store_true", help="small sizes: checks the script")
    parser.add_argument("--skip-tests", action="store_true", help="only the benchmark rows")
    parser.add_argument("--passes", type=int, default=10, help="timed passes per row")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: run on the GPU machine, or --device cpu --tiny")
    device = torch.device(args.device)
    sizes = TINY_SIZES if args.tiny else FULL_SIZES
    report: dict[str, Any] = {"machine": _machine(device), "command": sys.argv, "rows": []}
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_tests:
        report["tests"] = _gpu_tests(args.out)
    probe = PROBE_BYTES["tiny" if args.tiny else "full"]
    for n_samples, n_clusters in sizes:
        scores = head_scores(n_samples, n_clusters, device)
        for backend in _backends(device):
            report["rows"].append(
                _pass_row(scores, backend, probe, args.passes) | {"N": n_samples, "K": n_clusters}
            )
        _save(report, args.out)
    n_samples, n_clusters = sizes[-1]
    report["imagenet"] = _imagenet_rows(n_samples, n_clusters, device)
    report["soft_assign"] = _soft_assign_row(device, tiny=args.tiny)
    _save(report, args.out)
    return report


def head_scores(n_samples: int, n_clusters: int, device: torch.device) -> torch.Tensor:
    """``otlabel.make_scores(kind="head")``'s recipe, built on the device in blocks."""
    generator = torch.Generator(device=device).manual_seed(0)
    weights = torch.randn(n_clusters, 64, generator=generator, device=device) / 8.0
    scores = torch.empty(n_samples, n_clusters, device=device)
    for start in range(0, n_samples, 65_536):
        stop = min(start + 65_536, n_samples)
        features = torch.randn(stop - start, 64, generator=generator, device=device)
        scores[start:stop] = 4.0 * features @ weights.T
    return scores


def _backends(device: torch.device) -> list[str]:
    """The backends that run the device's tensors: the reference kernels, and fused ones."""
    fused = [name for name in ("triton",) if name in BACKENDS and installed(name)]
    return ["torch", *fused] if device.type == "cuda" else ["torch"]


def _pass_row(scores: torch.Tensor, backend: str, probe_bytes: int, passes: int) -> dict:
    """Median ms per log-domain pass, and its fraction of the paired read probe."""
    from otlabel.problem import build_problem

    problem = build_problem(scores, 0.04, backend=backend, method="log", rounding=None)
    head, options = problem.heads[0], problem.options
    log_a, start = options.backend.vectors(scores, head.log_a, np.zeros(scores.shape[1]))
    kernel = options.backend.log_kernel(scores, log_a, options)
    buffer = torch.ones(probe_bytes // 4, device=scores.device)
    steps = iterate(kernel, head.constraint.to(start), 0.04, start, omega=1.0)
    next(steps)  # compile, warm caches
    seconds, ratios, probes = [], [], []
    for _ in range(passes):
        elapsed = _timed(lambda: next(steps), scores.device)
        probe = buffer.numel() * 4 / _timed(lambda: buffer.sum(), scores.device)
        achieved = scores.numel() * scores.element_size() / elapsed
        seconds.append(elapsed)
        probes.append(probe)
        ratios.append(achieved / probe)
    return {
        "backend": backend,
        "ms_per_pass": 1e3 * statistics.median(seconds),
        "probe_GBps": statistics.median(probes) / 1e9,
        "bandwidth_fraction": statistics.median(ratios),
    }


def _imagenet_rows(n_samples: int, n_clusters: int, device: torch.device) -> list[dict]:
    """assign to the default tolerance with balanced labels: in memory, then streamed."""
    rows = []
    scores = head_scores(n_samples, n_clusters, device)
    for backend in _backends(device):
        solve = lambda b=backend, s=scores: otlabel.assign(s, backend=b)  # noqa: E731
        elapsed, result = _timed_result(solve, device)
        rows.append(_assign_row("in GPU memory", backend, elapsed, result))
    pinned = scores.cpu()
    del scores
    if device.type == "cuda":
        pinned = pinned.pin_memory()
        torch.cuda.empty_cache()
    stream = otlabel.ChunkedScores(pinned, device=device)
    elapsed, result = _timed_result(lambda: otlabel.assign(stream), device)
    rows.append(_assign_row("streamed from pinned host memory", "torch", elapsed, result))
    return rows


def _assign_row(where: str, backend: str, seconds: float, result: Any) -> dict:
    counts = result.counts.cpu().numpy()
    return {
        "where": where,
        "backend": backend,
        "seconds": seconds,
        "n_iter": int(result.n_iter),
        "error": float(result.error),
        "converged": bool(result.converged),
        "sizes": f"{counts.min()}..{counts.max()}",
        "gap": float(result.gap),
    }


def _soft_assign_row(device: torch.device, *, tiny: bool) -> dict:
    batch = (512, 300) if tiny else (4_096, 3_000)
    scores = torch.nn.functional.normalize(torch.randn(*batch, device=device), dim=1)
    otlabel.soft_assign(scores)  # warm
    elapsed = statistics.median(
        _timed(lambda: otlabel.soft_assign(scores), device) for _ in range(5)
    )
    return {"batch": list(batch), "ms": 1e3 * elapsed, "n_iter": 3}


def _gpu_tests(out: Path) -> dict:
    """The tests marked gpu, run by pytest in a child process."""
    root = Path(__file__).resolve().parents[1]
    log = out / "gpu-tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", str(root / "tests")]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=root, check=False)
    log.write_text(completed.stdout + completed.stderr)
    summary = (completed.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": completed.returncode, "summary": summary, "seconds": _since(started)}


def _timed(step: Callable[[], Any], device: torch.device) -> float:
    return _timed_result(step, device)[0]


def _timed_result(run: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _synchronize(device)
    started = time.perf_counter()
    result = run()
    _synchronize(device)
    return time.perf_counter() - started, result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _since(started: float) -> float:
    return time.perf_counter() - started


def _machine(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": str(device),
        "name": name,
        "torch": torch.__version__,
        "otlabel": otlabel.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def _save(report: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    lines = [f"# GPU check: {report['machine']['name']} ({report['machine']['date']})", ""]
    if "tests" in report:
        lines += [f"Tests marked gpu: {report['tests']['summary']}", ""]
    lines += ["| N x K | backend | ms/pass | of probe | probe GB/s |", "|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(
            f"| {row['N']} x {row['K']} | {row['backend']} | {row['ms_per_pass']:.2f} | "
            f"{row['bandwidth_fraction']:.0%} | {row['probe_GBps']:.0f} |"
        )
    for row in report.get("imagenet", []):
        lines.append(
            f"\nassign {row['where']} ({row['backend']}): {row['seconds']:.2f} s, "
            f"{row['n_iter']} passes, sizes {row['sizes']}, gap {row['gap']:.1e}"
        )
    if "soft_assign" in report:
        soft = report["soft_assign"]
        lines.append(f"\nsoft_assign {soft['batch']}: {soft['ms']:.2f} ms")
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
