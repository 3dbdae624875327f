"""The benchmark code runs (at a tiny size; no test times anything)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import otlabel
from otlabel import bench


@pytest.mark.parametrize("name", ["otlabel-numpy", "otlabel-numba", "sela-float64"])
def test_each_stepped_solver_reaches_tolerance_on_a_tiny_problem(name):
    row = bench.run_row(name, 300, 6, tol=1e-4, budget=60, repeats=2, kind="sela")
    assert row.status == "ok", row.status
    assert row.reached_tol and row.error <= 1e-4 and row.n_iter > 1
    assert row.cluster_min <= 50 <= row.cluster_max and row.ms_per_iter > 0
    if name.startswith("otlabel"):
        assert row.cluster_min == row.cluster_max == 50  # balanced labels


def test_otlabel_warms_up_on_the_first_rows_before_its_timed_solve(monkeypatch):
    """The warm-up makes the same call on the first WARMUP_ROWS rows (Numba's cache
    loaded outside the timing), and is said in the row's notes; not with known labels."""
    from otlabel import api

    calls = []
    assign = api.assign
    monkeypatch.setattr(
        api, "assign", lambda s, *a, **k: calls.append(s.shape) or assign(s, *a, **k)
    )
    monkeypatch.setattr(bench, "WARMUP_ROWS", 120)
    row = bench.run_row("otlabel-fixed", 300, 6, tol=1e-4, budget=60, repeats=1, kind="sela")
    assert row.status == "ok" and calls[:2] == [(120, 6), (300, 6)]
    assert any("warm-up call on the first 120 rows" in note for note in row.notes)
    calls.clear()
    row = bench.run_row("otlabel-known", 300, 6, tol=1e-4, budget=60, repeats=1, kind="sela")
    assert row.status == "ok" and calls == [(300, 6)]
    calls.clear()
    monkeypatch.setattr(bench, "WARMUP_ROWS", 4)  # fewer than K: K rows (balanced needs K <= N)
    row = bench.run_row("otlabel-fixed", 300, 6, tol=1e-4, budget=60, repeats=1, kind="sela")
    assert row.status == "ok" and calls[:2] == [(6, 6), (300, 6)]


def test_sela_in_float32_is_reported_as_overflowing():
    # the spec's measurement: SeLa's loop in float32 at lambda = 25 turns NaN
    row = bench.run_row("sela-float32", 300, 6, tol=1e-4, budget=60, repeats=2, kind="sela")
    assert row.status.startswith("cannot solve: float32") and row.ms_per_iter is None


def test_peers_that_cannot_solve_are_reported_not_timed():
    # SwAV's exp(S/eps) without a shift overflows on logits at eps 0.04
    pytest.importorskip("torch")
    row = bench.run_row("swav-torch", 300, 6, tol=1e-4, budget=60, repeats=2, kind="head")
    assert row.status.startswith("cannot solve") and row.ms_per_iter is None


def test_pot_runs_a_fixed_number_of_iterations():
    pytest.importorskip("ot")
    row = bench.run_row(
        "pot-sinkhorn-log",
        300,
        6,
        tol=1e-4,
        budget=60,
        repeats=1,
        kind="sela",
        fixed_iterations=40,
    )
    assert row.status == "ok" and row.n_iter == 40 and row.notes


def test_memory_too_small_is_reported(monkeypatch):
    monkeypatch.setattr(bench, "available_memory", lambda: 1000)
    row = bench.run_row("sela-float64", 300, 6, tol=1e-4, budget=60, repeats=1, kind="sela")
    assert row.status.startswith("out of memory")


def test_read_bandwidth_probe_reads_the_buffer():
    assert bench.read_bandwidth(np.ones(1 << 22, dtype=np.float32)) > 0.1  # GB/s


@pytest.mark.parametrize("parts", [0, 1, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_probe_sums_every_element_once(parts, dtype):
    """The probe's sum reads each of its parts' four ranges and the tail after the
    last whole part: every element once (a wrong range would miss or repeat one)."""
    size = parts * bench.READ_PART + 12_345
    values = np.random.default_rng(parts).integers(0, 1000, size=size).astype(dtype)
    assert bench._parallel_sum()(values) == values.sum(dtype=np.float64)  # integers: exact


def test_peak_anonymous_memory_sees_an_allocation():
    with bench.PeakAnonymousMemory() as memory:
        block = np.ones(50_000_000 // 8)  # 50 MB, touched
        block.sum()
    assert memory.peak >= 50_000_000


def test_runner_writes_table_json_and_plot(tmp_path):
    config = bench.BenchConfig(
        sizes=[(200, 4)], solvers=["otlabel-numpy", "sela-float32"], repeats=1, out=tmp_path
    )
    results = bench.run(config, progress=False)
    assert [r.status for r in results] == ["ok", "ok"]  # each ran in its own process
    table = (tmp_path / "bench.md").read_text()
    assert "| 200 x 4 | otlabel-numpy" in table and "sela-float32" in table
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["machine"]["tol"] == config.tol and len(data["rows"]) == 2
    assert (tmp_path / "bench.png").stat().st_size > 1000


@pytest.mark.parametrize("name", ["otlabel-stream", "otlabel-stream-cold"])
def test_stream_rows_read_the_matrix_from_disk(name, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    row = bench.run_row(name, 300, 6, tol=1e-4, budget=60, repeats=2, kind="sela")
    assert row.status == "ok", row.status
    assert row.reached_tol and row.cluster_min == row.cluster_max == 50
    assert any("balanced rounding" in note for note in row.notes)
    (kept,) = [note for note in row.notes if "sparse kernel keeps" in note]
    assert 0 < float(kept.split("keeps ")[1].split("%")[0]) <= 100
    saved = list(tmp_path.glob("otlabel-bench-sela-300x6-seed0.npy"))
    assert len(saved) == 1
    np.testing.assert_array_equal(
        np.load(saved[0]), otlabel.make_scores(300, 6, kind="sela", seed=0)
    )


def test_kept_fraction_counts_what_the_sparse_kernel_keeps(monkeypatch):
    """The streams' reported density: the share of entries that the Numba backend's
    sparse kernel built at the same potential holds (to float32 rounding at the
    flush threshold)."""
    from otlabel.kernels.numba import NumbaKernel, SparseKernel, sparse

    monkeypatch.setattr(sparse, "SPARSE_DENSITY", 1.0)
    scores = otlabel.make_scores(3000, 40, kind="sela", seed=2)
    potential = otlabel.sinkhorn(scores, 0.04, tol=1e-3).potential
    kernel = NumbaKernel(scores, np.full(3000, -np.log(3000)), 0.04, None, store_at_start=True)
    kernel.column_state(potential)
    assert isinstance(kernel.stored, SparseKernel)
    share = bench.kept_fraction(scores.astype(np.float64), potential, 0.04)
    assert 0.0 < share < 0.5
    assert abs(share * scores.size - kernel.stored.values.size) <= 1e-3 * kernel.stored.values.size


def test_stream_rows_are_opt_in():
    assert "otlabel-stream" not in bench.DEFAULT_SOLVERS
    parser = bench.add_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).solvers == bench.DEFAULT_SOLVERS
    assert parser.parse_args(["--stream"]).stream
