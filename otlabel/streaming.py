"""Score matrices that are never held whole: on disk, in chunks, or computed per block.

:class:`ChunkedScores` wraps a source of rows so that :func:`otlabel.assign`
reads it block by block, pass after pass: memory stays O(block·K + N + K)
however large N·K is.  Every kernel of the solver already works on row blocks,
so a stream runs the same iteration as an array and gives the same answer.

>>> import numpy as np, otlabel
>>> features = np.random.default_rng(0).normal(size=(600, 16)).astype(np.float32)
>>> head = np.random.default_rng(1).normal(size=(6, 16)).astype(np.float32)
>>> stream = otlabel.ChunkedScores(lambda i0, i1: features[i0:i1] @ head.T, n_samples=600)
>>> stream.shape
(600, 6)
>>> otlabel.assign(stream, epsilon=0.1).counts.tolist()
[100, 100, 100, 100, 100, 100]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._arrays import library_of, namespace, to_numpy

__all__ = ["ChunkedScores"]

#: Rows of a callable source computed at once when rows are gathered.
GATHER_ROWS = 8192


class ChunkedScores:
    """A score matrix ``(N, K)`` read in row blocks from a file, chunks or a function.

    Parameters
    ----------
    source : path, array, list of arrays, or callable
        - a path to a ``.npy`` file: memory-mapped read-only (its pages are
          the page cache's, not the process's);
        - a NumPy array or ``numpy.memmap`` ``(N, K)``, or a Torch tensor (for
          a GPU solve: a pinned CPU tensor, ``tensor.pin_memory()``);
        - a list of ``(n_c, K)`` arrays, the chunks in row order;
        - a callable ``source(i0, i1)`` returning rows ``i0:i1`` as an
          ``(i1 - i0, K)`` array for any ``0 <= i0 < i1 <= N``, e.g.
          ``lambda i0, i1: features[i0:i1] @ W.T + b``: recomputed on every
          pass, so only the features need to fit in memory.
    n_samples : int, optional
        N; required for a callable, checked against the others.
    n_clusters : int, optional
        K; read from the data when not given.
    device : str or torch.device, optional
        Deliver every block as a Torch tensor on this device (e.g. ``"cuda"``):
        the matrix can then be larger than GPU memory, held in (pinned) host
        memory, on disk, or computed per block on the GPU.  Torch sources (a
        tensor, a list of tensors, a callable returning tensors) are Torch
        streams on their own device without it.  The solve then runs on the
        Torch backend, and results come back as tensors on that device.

    Notes
    -----
    Every block is checked as it is read: shape ``(rows, K)``, one float dtype
    (float32 or float64) for all chunks, and finite values on the first pass
    (the validation pass of :func:`otlabel.assign`).  A callable that raises
    has its error re-raised with the rows it was asked for.

    What streams cannot do: ``return_plan=True`` (the plan is as large as the
    matrix) and ``method="scaling"`` (it stores ``exp(S/eps)``); streams run
    in the log domain.  Exact labels read the rows of the samples they move:
    a C-contiguous ``.npy`` file's or array's in place when the stream delivers
    NumPy rows (the compiled repair reads the file's pages, no copy; figures in
    docs/benchmarks-history.md); chunks' through gathers in Python; a callable's by
    recomputing the blocks that hold those rows.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | Any | Sequence[Any] | Callable[..., Any],
        *,
        n_samples: int | None = None,
        n_clusters: int | None = None,
        device: Any = None,
    ) -> None:
        if isinstance(source, str | os.PathLike):
            source = np.load(source, mmap_mode="r")
        self.device = device
        if library_of(source) is not None:
            self._reader: _Reader = _ArrayReader(source)
        elif isinstance(source, list | tuple):
            self._reader = _ChunkReader(list(source))
        elif callable(source):
            if n_samples is None:
                raise ValueError(
                    "n_samples: a callable source needs the number of rows, "
                    "ChunkedScores(fn, n_samples=N)"
                )
            self._reader = _CallableReader(source, int(n_samples), n_clusters)
        else:
            raise TypeError(
                "source: expected a .npy path, a NumPy array or memmap, a list of arrays or a "
                f"callable (i0, i1) -> rows; got {type(source).__name__}"
            )
        n, k = self._reader.shape
        if n_samples is not None and int(n_samples) != n:
            raise ValueError(f"n_samples: given {n_samples}, but the source has {n} rows")
        if n_clusters is not None and int(n_clusters) != k:
            raise ValueError(f"n_clusters: given {n_clusters}, but the source has {k} columns")
        if n == 0 or k == 0:
            raise ValueError(f"scores: needs at least one sample and one cluster, got {(n, k)}")
        self.shape: tuple[int, int] = (n, k)
        self.ndim = 2
        self.library = "torch" if device is not None else self._reader.library
        if self.library == "torch":
            self._torch_stream(device)
        else:
            self.dtype: Any = self._reader.dtype
            self.device = "cpu"

    def _torch_stream(self, device: Any) -> None:
        """Blocks as Torch tensors on ``device`` (default: the source's own)."""
        import torch

        dtype = self._reader.dtype
        if self._reader.library == "numpy":  # NumPy rows carried to the device
            dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
                np.dtype(dtype)
            ]
        self.dtype = dtype
        self.device = torch.device(device if device is not None else self._reader.device)

    def template(self) -> Any:
        """An empty array in the stream's library and on its device (results follow it)."""
        if self.library == "torch":
            import torch

            return torch.empty(0, dtype=self.dtype, device=self.device)
        return np.empty(0, self.dtype)

    def namespace(self) -> Any:
        """The array-API namespace of the stream's blocks."""
        return namespace(self.template())

    def numpy_source(self) -> np.ndarray | None:
        """The NumPy array (or ``.npy`` memmap, as an array over the same pages) that
        the stream reads, when its rows come from one, C-contiguous, and are
        delivered as NumPy rows (no ``device``); else None.  Row-by-row readers
        (the exact labels' repair) use it in place of gathers through the stream."""
        reader = self._reader
        if isinstance(reader, _ArrayReader) and reader.library == self.library == "numpy":
            array = np.asarray(reader.array)
            if array.flags.c_contiguous:  # else the compiled repair would copy it whole
                return array
        return None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        kind = type(self._reader).__name__.removeprefix("_").removesuffix("Reader").lower()
        return f"ChunkedScores({kind}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> Any:
        """Rows of the matrix: ``stream[i0:i1]`` (a block) or ``stream[indices]`` (a gather)."""
        if isinstance(key, tuple):
            if len(key) != 2 or key[1] is not Ellipsis:
                raise IndexError("ChunkedScores supports row selection only: stream[rows]")
            key = key[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                block = self._checked(self._reader.rows(start, max(start, stop)), start)
                return self._delivered(block)
            key = np.arange(start, stop, step)
        indices = to_numpy(key) if library_of(key) is not None else np.asarray(key)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise IndexError("ChunkedScores rows must be a slice or a 1-D integer array")
        return self._delivered(self._gather(indices.astype(np.int64)))

    def _gather(self, indices: np.ndarray) -> np.ndarray:
        if indices.size and (indices.min() < 0 or indices.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        out = np.empty((indices.size, self.shape[1]), _host_dtype(self._reader.dtype))
        position = 0
        while position < wanted.size:
            start = int(wanted[position])
            stop = min(start + GATHER_ROWS, self.shape[0])
            end = int(np.searchsorted(wanted, stop))
            if self._reader.computes:
                block = to_numpy(self._checked(self._reader.rows(start, stop), start))
                picked = wanted[position:end] - start
                out[order[position:end]] = block[picked]
            else:
                for i in range(position, end):
                    out[order[i]] = to_numpy(self._reader.row(int(wanted[i])))
            position = end
        return out  # host rows; _delivered moves them

    def _delivered(self, block: Any) -> Any:
        """A block in the stream's library, on its device."""
        if self.library != "torch":
            return block
        import torch

        if library_of(block) == "numpy":
            block = torch.from_numpy(np.ascontiguousarray(block))
        return block.to(self.device, non_blocking=True)

    def _checked(self, block: Any, start: int) -> np.ndarray:
        stop = start + (block.shape[0] if hasattr(block, "shape") else 0)
        where = f"scores rows {start}:{stop}"
        if library_of(block) != self._reader.library:
            raise TypeError(
                f"{where}: the source returned {type(block).__name__}, not a "
                f"{self._reader.library} array"
            )
        expected = (stop - start, self.shape[1])
        if block.ndim != 2 or block.shape[1] != self.shape[1]:
            raise ValueError(f"{where}: expected shape {expected}, got {tuple(block.shape)}")
        if block.dtype != self._reader.dtype:
            raise TypeError(
                f"{where}: dtype {block.dtype}, but the stream's is {self._reader.dtype}; "
                "return one float dtype from every chunk"
            )
        return block


# ---------------------------------------------------------------------------
# readers: one per kind of source
# ---------------------------------------------------------------------------


class _Reader:
    shape: tuple[int, int]
    dtype: Any  # NumPy's, or Torch's for Torch sources
    library = "numpy"
    device: Any = "cpu"
    computes = False  # True: rows cost a computation, gather them in blocks

    def _adopt(self, sample: Any, where: str) -> None:
        """Library, device and dtype of the source, from one of its arrays."""
        self.library = library_of(sample) or "numpy"
        if self.library == "torch":
            self.device = sample.device
            self.dtype = _torch_float_dtype(sample.dtype, where)
        else:
            self.dtype = _float_dtype(sample.dtype, where)

    def rows(self, start: int, stop: int) -> Any:
        raise NotImplementedError

    def row(self, index: int) -> np.ndarray:
        return self.rows(index, index + 1)[0]


def _float_dtype(dtype: np.dtype, where: str) -> np.dtype:
    if dtype not in (np.float32, np.float64):
        raise TypeError(
            f"{where}: expected float32 or float64 scores, got dtype {dtype}; "
            "convert with .astype(numpy.float32)"
        )
    return np.dtype(dtype)


def _torch_float_dtype(dtype: Any, where: str) -> Any:
    import torch

    if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{where}: expected floating-point scores, got dtype {dtype}")
    return dtype


def _host_dtype(dtype: Any) -> Any:
    """The NumPy dtype that holds rows of ``dtype`` (half precision: float32)."""
    if isinstance(dtype, np.dtype):
        return dtype
    import torch

    return np.float64 if dtype == torch.float64 else np.float32


class _ArrayReader(_Reader):
    def __init__(self, array: Any) -> None:
        if array.ndim != 2:
            raise ValueError(f"scores: expected a 2-D array (N, K), got shape {tuple(array.shape)}")
        self.array = array
        self.shape = (int(array.shape[0]), int(array.shape[1]))
        self._adopt(array, "scores")

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def row(self, index: int) -> np.ndarray:
        return self.array[index]


class _ChunkReader(_Reader):
    def __init__(self, chunks: list[np.ndarray]) -> None:
        if not chunks:
            raise ValueError("scores: an empty list of chunks; give at least one (n, K) array")
        for c, chunk in enumerate(chunks):
            if library_of(chunk) != library_of(chunks[0]) or chunk.ndim != 2:
                shape = getattr(chunk, "shape", type(chunk).__name__)
                raise ValueError(f"scores chunk {c}: expected a 2-D array (n, K), got {shape}")
            if chunk.shape[1] != chunks[0].shape[1]:
                raise ValueError(
                    f"scores chunk {c}: has {chunk.shape[1]} columns, chunk 0 has "
                    f"{chunks[0].shape[1]}; every chunk needs the same K"
                )
            if chunk.dtype != chunks[0].dtype:
                raise TypeError(
                    f"scores chunk {c}: dtype {chunk.dtype}, chunk 0 {chunks[0].dtype}; "
                    "give every chunk one float dtype"
                )
        self.chunks = chunks
        self.offsets = np.cumsum([0] + [chunk.shape[0] for chunk in chunks])
        self.shape = (int(self.offsets[-1]), int(chunks[0].shape[1]))
        self._adopt(chunks[0], "scores chunk 0")

    def rows(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop, side="left"))
        pieces = [
            self.chunks[c][max(start - self.offsets[c], 0) : stop - self.offsets[c]]
            for c in range(first, last)
        ]
        if len(pieces) == 1:
            return pieces[0]
        return namespace(pieces[0]).concat(pieces, axis=0)

    def row(self, index: int) -> np.ndarray:
        c = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.chunks[c][index - self.offsets[c]]


class _CallableReader(_Reader):
    computes = True

    def __init__(self, function: Callable[..., Any], n_samples: int, n_clusters: int | None):
        if n_samples < 1:
            raise ValueError(f"n_samples: expected a positive number of rows, got {n_samples}")
        self.function = function
        first = self.rows(0, 1)
        if library_of(first) is None or first.ndim != 2 or first.shape[0] != 1:
            shape = getattr(first, "shape", type(first).__name__)
            raise ValueError(
                f"scores rows 0:1: the callable must return a (1, K) array for (0, 1), got {shape}"
            )
        self.shape = (n_samples, int(first.shape[1]) if n_clusters is None else int(n_clusters))
        self._adopt(first, "scores rows 0:1")

    def rows(self, start: int, stop: int) -> Any:
        try:
            block = self.function(start, stop)
        except Exception as error:
            raise RuntimeError(
                f"scores rows {start}:{stop}: the source callable raised "
                f"{type(error).__name__}: {error}"
            ) from error
        if library_of(block) is not None and tuple(block.shape[:1]) != (stop - start,):
            raise ValueError(
                f"scores rows {start}:{stop}: the callable returned {block.shape[0]} rows "
                f"(shape {tuple(block.shape)}); it must return rows i0:i1"
            )
        return block
