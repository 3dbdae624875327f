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
(float16/bfloat16 scores are read as float32).  A column whose plan mass would
underflow float32 in a block reports its largest log term instead, a lower
bound (the reference kernel's rule for starved columns).

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

from ..solver import BlockSweep, ColumnPartial, Relaxation, _row_blocks, block_rows
from .torch_ import block_bytes

#: Rows per tile (read twice: the second time from cache) and columns per tile.
BLOCK_M = 4
BLOCK_K = 256
#: Programs per streaming multiprocessor: each owns one row of partials.
PROGRAMS_PER_SM = 4
#: log of float32's smallest normal number, rounded up.
FLOAT32_FLOOR = -87.0


class TritonLogKernel:
    """The log-domain kernel of :mod:`otlabel.solver`, fused in Triton."""

    method = "log"

    def __init__(self, scores: Any, log_a: torch.Tensor, epsilon: float) -> None:
        self.scores = scores  # (N, K)
        self.log_a = log_a  # (N,) float64
        self.epsilon = epsilon
        self.rows_per_block = block_rows(scores.shape[1], 4, block_bytes(scores))
        self.n_programs = _programs(log_a.device)

    def column_state(self, potential: torch.Tensor) -> torch.Tensor:
        return (potential / self.epsilon).to(torch.float32).contiguous()  # (K,) g / eps

    def blocks(self) -> Iterator[tuple[slice, Any]]:
        return _row_blocks(self.scores, self.rows_per_block)

    def sweep(
        self, block: torch.Tensor, rows: slice, state: torch.Tensor, relax: Relaxation
    ) -> BlockSweep:
        block = block if block.stride(-1) == 1 else block.contiguous()
        n_rows, n_cols = block.shape
        per_program = BLOCK_M * math.ceil(n_rows / (BLOCK_M * self.n_programs))
        programs = math.ceil(n_rows / per_program)
        device = block.device
        part_sum = torch.zeros(programs, n_cols, dtype=torch.float32, device=device)
        part_max = torch.full((programs, n_cols), -math.inf, dtype=torch.float32, device=device)
        row_potential = torch.empty(n_rows, dtype=torch.float64, device=device)
        row_error = torch.zeros(n_rows, dtype=torch.float64, device=device)
        previous = relax.rows(rows)
        _sweep[(programs,)](
            block,
            block.stride(0),
            state,
            self.log_a[rows].contiguous(),
            row_potential if previous is None else previous.contiguous(),
            row_potential,
            row_error,
            part_sum,
            part_max,
            n_rows,
            n_cols,
            per_program,
            1.0 / self.epsilon,
            self.epsilon,
            float(relax.omega),
            RELAX=previous is not None,
            BLOCK_M=BLOCK_M,
            BLOCK_K=BLOCK_K,
        )
        col_sum = part_sum.sum(dim=0, dtype=torch.float64)  # (K,) fixed order
        col_log_max = part_max.amax(dim=0).to(torch.float64)  # (K,)
        # Where the largest term is far inside float32's range the sum is accurate;
        # elsewhere (a starved column) report the largest term, a lower bound.
        reliable = col_log_max > FLOAT32_FLOOR + math.log(n_rows) + 37.0
        columns = ColumnPartial(
            torch.where(reliable, torch.zeros_like(col_log_max), col_log_max),
            torch.where(reliable, col_sum, torch.ones_like(col_sum)),
        )
        return BlockSweep(row_potential, columns, row_error.sum())


@triton.jit
def _sweep(
    scores,
    row_stride,
    state,
    log_a,
    previous,
    row_potential,
    row_error,
    part_sum,
    part_max,
    n_rows,
    n_cols,
    rows_per_program,
    inv_eps,
    eps,
    omega,
    RELAX: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One program: rows [pid * rows_per_program, +rows_per_program), all columns."""
    pid = tl.program_id(0)
    first = pid * rows_per_program
    last = tl.minimum(first + rows_per_program, n_rows)
    for tile in range(first, last, BLOCK_M):
        rows = tile + tl.arange(0, BLOCK_M)
        row_ok = rows < last
        # pass 1: online max and sum of exp over the row's columns
        row_max = tl.full([BLOCK_M], -float("inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, n_cols, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = _tile(scores, row_stride, state, rows, cols, row_ok, n_cols, inv_eps)
            new_max = tl.maximum(row_max, tl.max(x, axis=1))
            scaled = tl.sum(tl.exp(x - new_max[:, None]), axis=1)
            row_sum = row_sum * tl.exp(row_max - new_max) + scaled
            row_max = new_max
        # row potential in float64: f = eps (log a - log sum - max)
        own_log_a = tl.load(log_a + rows, mask=row_ok, other=0.0).to(tl.float64)
        log_scale = own_log_a - tl.log(row_sum.to(tl.float64))
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
        # pass 2 (the tile again, from cache): column masses of the new plan
        offset = (log_scale - row_max.to(tl.float64)).to(tl.float32)
        for k0 in range(0, n_cols, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < n_cols
            x = _tile(scores, row_stride, state, rows, cols, row_ok, n_cols, inv_eps)
            log_plan = tl.where(row_ok[:, None], x + offset[:, None], -float("inf"))
            slot = pid * n_cols + cols
            total = tl.load(part_sum + slot, mask=col_ok, other=0.0)
            tl.store(part_sum + slot, total + tl.sum(tl.exp(log_plan), axis=0), mask=col_ok)
            largest = tl.load(part_max + slot, mask=col_ok, other=-float("inf"))
            tl.store(part_max + slot, tl.maximum(largest, tl.max(log_plan, axis=0)), mask=col_ok)


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
