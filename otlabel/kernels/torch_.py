"""The Torch backend: the reference iteration on Torch tensors, CPU or CUDA.

The Sinkhorn loop is the one of :mod:`otlabel.solver`, with the reference
kernels of :mod:`otlabel.kernels.reference` on the array-API namespace of
Torch; this module holds what is specific to Torch: block sizes per device,
the call's context, column sums that no global precision setting can change,
and the three passes of balanced rounding on the tensor's device, so that only
vectors of length N or K cross to the host.

Precision: the (n, K) temporaries of a block are float32 for float32, float16
and bfloat16 scores (float64 for float64 scores), read block by block, never
converted whole; row and column sums are accumulated in float32 within a
block and every potential, partial and error is float64.

Process-wide settings: the solve changes none, except Torch's intra-op thread
count when ``n_threads`` is given (``torch.set_num_threads`` is process-wide:
it applies to every thread for the duration of the call).  TF32 and
``torch.set_float32_matmul_precision`` are left as the caller set them: the
float32 column sums do not go through a matrix product, so they cannot lower
their precision, and the float64 products are not affected by them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .reference import LogKernel, ReferenceBackend

#: Bytes of the working precision per block of rows, by device type: CPU blocks
#: amortise Torch's per-operation overhead, GPU blocks its launch latency.
BLOCK_BYTES = {"cpu": 16 << 20, "cuda": 512 << 20}


class TorchBackend(ReferenceBackend):
    """Torch tensors: the reference kernels on the tensor's device."""

    name = "torch"

    def block_bytes_of(self, scores: Any) -> int:
        return BLOCK_BYTES.get(torch.device(scores.device).type, BLOCK_BYTES["cuda"])

    def work_dtype(self, scores: Any) -> torch.dtype:
        """float64 for float64 scores, else float32 (float16 and bfloat16 included)."""
        return torch.float64 if scores.dtype == torch.float64 else torch.float32

    def context(self, n_threads: int | None) -> Any:
        return solve_context(n_threads)

    def rounding_passes(self, scores: Any) -> tuple[Any, int]:
        return TorchPasses(), max(1, self.block_bytes_of(scores) // (scores.shape[1] * 8))


class TorchLogKernel(LogKernel):
    """The reference log kernel; float32 column sums without a matrix product."""

    @staticmethod
    def column_sums(row_scale: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if e.dtype == torch.float64:
            return row_scale @ e
        return torch.sum(e * row_scale[:, None], dim=0)  # TF32 cannot touch it


TorchBackend.log_kernel_type = TorchLogKernel


@contextlib.contextmanager
def solve_context(n_threads: int | None) -> Iterator[None]:
    """No autograd graph; Torch's thread count ``n_threads`` for the call (restored after)."""
    threads = torch.get_num_threads()
    try:
        if n_threads is not None:
            torch.set_num_threads(n_threads)
        with torch.no_grad():
            yield
    finally:
        if n_threads is not None:
            torch.set_num_threads(threads)


class TorchPasses:
    """The passes of balanced rounding on the block's device, float64 per element.

    Same arithmetic as :class:`otlabel.rounding.NumpyPasses`: maxima and minima
    are exact, so labels and move costs are identical to NumPy's on the same
    scores; only labels (n,) and per-cluster minima cross to the host.
    """

    name = "torch"

    @staticmethod
    def argmax(block: torch.Tensor, potential: np.ndarray) -> np.ndarray:
        shifted = block.to(torch.float64) + _on(potential, block)  # (n, K)
        return torch.argmax(shifted, dim=1).cpu().numpy()

    @staticmethod
    def move_costs(block: torch.Tensor, own: np.ndarray, move_cost: np.ndarray) -> None:
        """``C[k] = min(C[k], min_{i in k} S_ik - S_i)`` over the block's rows, in place."""
        rows = block.to(torch.float64)  # (n, K)
        own_t = torch.as_tensor(own, device=block.device)
        loss = rows.gather(1, own_t[:, None]) - rows  # (n, K)
        clusters, slot = torch.unique(own_t, return_inverse=True)
        shape = (clusters.numel(), rows.shape[1])
        block_min = torch.full(shape, torch.inf, dtype=rows.dtype, device=block.device)
        block_min.scatter_reduce_(0, slot[:, None].expand_as(loss), loss, "amin")
        present = clusters.cpu().numpy()
        move_cost[present] = np.minimum(move_cost[present], block_min.cpu().numpy())

    @staticmethod
    def row_gap(block: torch.Tensor, labels: np.ndarray, prices: np.ndarray) -> float:
        values = block.to(torch.float64) - _on(prices, block)  # (n, K)
        own = values.gather(1, torch.as_tensor(labels, device=block.device)[:, None])[:, 0]
        return float(torch.sum(values.max(dim=1).values - own))

    @staticmethod
    def gather(scores: Any, index: np.ndarray) -> torch.Tensor:
        """Rows ``index`` of the matrix as float64 (m, K) on its device: the repair's
        per-move arithmetic stays there, and only K-vectors cross to the host."""
        rows = scores[torch.as_tensor(index, device=scores.device)]
        return rows.to(torch.float64)


def _on(vector: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(vector, dtype=torch.float64, device=like.device)
