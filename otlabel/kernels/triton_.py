"""A fused Triton kernel for the log-domain sweep on CUDA tensors (``backend="triton"``).

The reference sweep (:class:`otlabel.solver.LogKernel`) runs about ten Torch
operations over every block, each a trip through GPU memory.  This kernel does
the same arithmetic in one launch per block of rows: each program takes a
contiguous range of rows and, per tile of ``BLOCK_M`` rows, reads the tile once
for the row log-sum-exp (an online maximum and sum over column tiles) and once
more, from cache, for the column masses of the new plan, which it adds into
its own row of a ``(programs, K)`` partial; the partials are then reduced in a
fixed order (deterministic, no atomics).

Same contract and same answer as the reference kernel: row potentials, row
error and every partial in float64 outside the tile loops; inside, float32
(float16/bfloat16 scores are read as float32).  Each program adds a tile's
column sums (float32, over ``BLOCK_M`` rows) into float32 partials that are
flushed into its float64 partials every ``FLUSH_TILES`` tiles, so that no
float32 sum runs over more than ``BLOCK_M * FLUSH_TILES`` rows however many
rows a program handles.  Starved columns follow the one rule of
:func:`otlabel.solver.column_partial`.

Opt-in: ``backend="auto"`` keeps the reference Torch kernels until
``benchmarks/gpu_check.py`` has measured this one faster on a GPU.  The tests
run it on the CPU in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
import triton
import triton.language as tl

from ..solver import BlockSweep, Kernel, RowUpdate, block_rows, column_partial, row_blocks
from .torch_ import TorchBackend

#: Rows per tile (read twice: the second time from cache) and columns per tile.
BLOCK_M = 4
BLOCK_K = 256
#: Tiles whose float32 column sums are added up before they go into float64.
FLUSH_TILES = 16
#: Programs per streaming multiprocessor: each owns one row of partials.
PROGRAMS_PER_SM = 4
#: log of float32's smallest normal number, rounded up.
FLOAT32_FLOOR = -87.0


class TritonBackend(TorchBackend):
    """CUDA tensors: the log-domain pass fused in one Triton kernel (opt-in)."""

    name = "triton"

    def scaling_is_safe(self, head: Any, options: Any) -> bool:
        return False  # the fused kernel is the log domain's: "auto" takes it

    def log_kernel(self, scores: Any, log_a: Any, options: Any, *, precise: bool = False) -> Kernel:
        if precise:  # the exact finish: the reference kernel in float64
            return super().log_kernel(scores, log_a, options, precise=True)
        return TritonLogKernel(scores, log_a, options.epsilon, self.block_bytes_of(scores))


class TritonLogKernel(Kernel):
    """The log-domain kernel of :mod:`otlabel.kernels.reference`, fused in Triton."""

    exact = False  # float32 arithmetic
    floor = 2e-6

    def __init__(self, scores: Any, log_a: torch.Tensor, epsilon: float, block_bytes: int) -> None:
        self.scores = scores  # (N, K)
        self.log_a = log_a  # (N,) float64
        self.epsilon = epsilon
        self.rows_per_block = block_rows(scores.shape[1], 4, block_bytes)
        self.n_programs = _programs(log_a.device)

    def column_state(self, potential: torch.Tensor) -> torch.Tensor:
        return (potential / self.epsilon).to(torch.float32).contiguous()  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        return row_blocks(self.scores, self.rows_per_block)

    def sweep(
        self, block: torch.Tensor, rows: slice, state: torch.Tensor, update: RowUpdate
    ) -> BlockSweep:
        block = block if block.stride(-1) == 1 else block.contiguous()
        n_rows, n_cols = block.shape
        per_program = BLOCK_M * math.ceil(n_rows / (BLOCK_M * self.n_programs))
        programs = math.ceil(n_rows / per_program)
        device = block.device
        part_sum = torch.zeros(programs, n_cols, dtype=torch.float64, device=device)
        part_run = torch.zeros(programs, n_cols, dtype=torch.float32, device=device)
        part_max = torch.full((programs, n_cols), -math.inf, dtype=torch.float32, device=device)
        part_scale = torch.full((programs,), -math.inf, dtype=torch.float64, device=device)
        row_potential = torch.empty(n_rows, dtype=torch.float64, device=device)
        row_error = torch.zeros(n_rows, dtype=torch.float64, device=device)
        previous = update.rows(rows)
        virtual = update.virtual_rows(rows)  # (n,) float64, partial mass's column
        _sweep[(programs,)](
            block,
            block.stride(0),
            state,
            self.log_a[rows].contiguous(),
            row_potential if previous is None else previous.contiguous(),
            row_potential if virtual is None else virtual.contiguous(),
            row_potential,
            row_error,
            part_sum,
            part_run,
            part_max,
            part_scale,
            n_rows,
            n_cols,
            per_program,
            1.0 / self.epsilon,
            self.epsilon,
            float(update.omega),
            RELAX=previous is not None,
            VIRTUAL=virtual is not None,
            BLOCK_M=BLOCK_M,
            BLOCK_K=BLOCK_K,
            FLUSH_TILES=FLUSH_TILES,
        )
        columns = column_partial(
            part_sum.sum(dim=0),  # (K,) fixed order
            part_max.amax(dim=0).to(torch.float64),
            exp_floor=FLOAT32_FLOOR,
            log_rows=math.log(n_rows),
            log_max_scale=part_scale.max(),
        )
        return BlockSweep(row_potential, columns, row_error.sum())


@triton.jit
def _sweep(
    scores,
    row_stride,
    state,
    log_a,
    previous,
    virtual,
    row_potential,
    row_error,
    part_sum,
    part_run,
    part_max,
    part_scale,
    n_rows,
    n_cols,
    rows_per_program,
    inv_eps,
    eps: tl.float64,  # a Python float is passed as float32 unless annotated
    omega: tl.float64,
    RELAX: tl.constexpr,
    VIRTUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    FLUSH_TILES: tl.constexpr,
):
    """One program: rows [pid * rows_per_program, +rows_per_program), all columns.

    Column sums go tile by tile into float32 ``part_run``, which is added into
    float64 ``part_sum`` every FLUSH_TILES tiles; ``part_scale`` gets the largest
    log row factor.
    """
    pid = tl.program_id(0)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    scale_peak = tl.full([BLOCK_M], -float("inf"), tl.float64)  # one type through the loops
    for group in range(first, last, BLOCK_M * FLUSH_TILES):
        group_end = tl.minimum(group + BLOCK_M * FLUSH_TILES, last)
        for tile in range(group, group_end, BLOCK_M):
            rows = tile + tl.arange(0, BLOCK_M)
            row_ok = rows < last
            log_scale, row_max = _row_update(
                scores, row_stride, state, log_a, previous, virtual, row_potential, row_error,
                rows, row_ok, n_cols, inv_eps, eps, omega, RELAX, VIRTUAL, BLOCK_M, BLOCK_K,
            )  # fmt: skip
            scale_peak = tl.maximum(scale_peak, tl.where(row_ok, log_scale, -float("inf")))
            # the tile again, from cache: column masses of the new plan
            offset = (log_scale - row_max.to(tl.float64)).to(tl.float32)
            for k0 in range(0, n_cols, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                col_ok = cols < n_cols
                x = _tile(scores, row_stride, state, rows, cols, row_ok, n_cols, inv_eps)
                log_plan = tl.where(row_ok[:, None], x + offset[:, None], -float("inf"))
                slot = pid * n_cols + cols
                run = tl.load(part_run + slot, mask=col_ok, other=0.0)
                tl.store(part_run + slot, run + tl.sum(tl.exp(log_plan), axis=0), mask=col_ok)
                largest = tl.load(part_max + slot, mask=col_ok, other=-float("inf"))
                peak = tl.maximum(largest, tl.max(log_plan, axis=0))
                tl.store(part_max + slot, peak, mask=col_ok)
        for k0 in range(0, n_cols, BLOCK_K):  # flush the group's float32 sums into float64
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < n_cols
            slot = pid * n_cols + cols
            run = tl.load(part_run + slot, mask=col_ok, other=0.0)
            total = tl.load(part_sum + slot, mask=col_ok, other=0.0)
            tl.store(part_sum + slot, total + run.to(tl.float64), mask=col_ok)
            tl.store(part_run + slot, tl.zeros([BLOCK_K], tl.float32), mask=col_ok)
    tl.store(part_scale + pid, tl.max(scale_peak, axis=0))


@triton.jit
def _row_update(
    scores, row_stride, state, log_a, previous, virtual, row_potential, row_error,
    rows, row_ok, n_cols, inv_eps, eps, omega,
    RELAX: tl.constexpr, VIRTUAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """A tile's row update: the online log-sum-exp over its columns (with ``VIRTUAL``,
    and partial mass's virtual entry ``exp(virtual_i)`` relative to the same frame),
    then ``f = eps (log a - log sum - max)`` in float64, over-relaxed with ``RELAX``.

    Stores f and the row error; returns the log row factor (on ``exp(x - max)``)
    and the row maxima.
    """
    row_max = tl.full([BLOCK_M], -float("inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    for k0 in range(0, n_cols, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = _tile(scores, row_stride, state, rows, cols, row_ok, n_cols, inv_eps)
        new_max = tl.maximum(row_max, tl.max(x, axis=1))
        scaled = tl.sum(tl.exp(x - new_max[:, None]), axis=1)
        row_sum = row_sum * tl.exp(row_max - new_max) + scaled
        row_max = new_max
    own_log_a = tl.load(log_a + rows, mask=row_ok, other=0.0).to(tl.float64)
    log_sum = tl.log(row_sum.to(tl.float64))
    if VIRTUAL:
        extra = tl.load(virtual + rows, mask=row_ok, other=0.0) - row_max.to(tl.float64)
        high, low = tl.maximum(log_sum, extra), tl.minimum(log_sum, extra)
        log_sum = high + tl.log(1.0 + tl.exp(low - high))
    log_scale = own_log_a - log_sum
    exact = eps * (log_scale - row_max.to(tl.float64))
    if RELAX:
        before = tl.load(previous + rows, mask=row_ok, other=0.0)
        relaxed = (1.0 - omega) * before + omega * exact
        shift = (relaxed - exact) / eps
        error = tl.exp(own_log_a) * tl.abs(tl.exp(shift) - 1.0)
        tl.store(row_error + rows, error, mask=row_ok)
        tl.store(row_potential + rows, relaxed, mask=row_ok)
        log_scale = log_scale + shift
    else:
        tl.store(row_potential + rows, exact, mask=row_ok)
    return log_scale, row_max


@triton.jit
def _tile(scores, row_stride, state, rows, cols, row_ok, n_cols, inv_eps):
    """(S + g) / eps on a tile, float32; -inf past the last column, 0 past the last row."""
    col_ok = cols < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    values = tl.load(scores + rows[:, None] * row_stride + cols[None, :], mask=mask, other=0.0)
    shift = tl.load(state + cols, mask=col_ok, other=0.0)
    x = values.to(tl.float32) * inv_eps + shift[None, :]
    return tl.where(col_ok[None, :], x, -float("inf"))


def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # Triton's interpreter on the CPU (tests)
