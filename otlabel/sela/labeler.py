"""The self-labeler: one label per sample per head, recomputed by optimal transport.

SeLa alternates two steps on one objective: train the network on the current
labels (cross-entropy), then relabel the data set so as to maximise the model's
log-probabilities under equipartition.  :class:`SelfLabeler` holds the labels
and does the second step with :func:`otlabel.assign`, warm-started from the
last update's potentials.

>>> import torch
>>> from otlabel.sela import SelfLabeler
>>> labeler = SelfLabeler(n_samples=6, n_clusters=3, seed=0)
>>> labeler[torch.arange(6)].shape  # (heads, batch)
torch.Size([1, 6])
>>> torch.bincount(labeler.labels[0]).tolist()  # balanced random start
[2, 2, 2]
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..api import assign, predict
from ..result import ConvergenceWarning, Result

__all__ = ["SelfLabeler"]

MODES = ("train", "eval")
#: Balanced labels are the exact optimum of the assignment whatever the Sinkhorn
#: accuracy (the potential only warm-starts the rounding), so the labeler solves
#: loosely and does not warn when Sinkhorn stops early; any option can be overridden.
LABEL_SOLVE = {"rounding": "balanced", "tol": 1e-3, "max_iter": 200}
#: What the labeler expects of a loader's batches, for its error messages.
LOADER_FORMAT = (
    "a loader's batches must end with the sample indices, (inputs, ..., indices), and one "
    "pass must yield every index 0..N-1 exactly once (a data set that yields (x, y) needs "
    "its index added: (x, y, index))"
)


class SelfLabeler:
    """Balanced self-labels for H heads, updated from the model's scores.

    Parameters
    ----------
    n_samples : int
        Size N of the data set; samples are named by their index ``0..N-1``.
        Loaders yield batches ``(inputs, ..., indices)``: the last element
        holds the batch's sample indices, and a pass yields each index once.
    n_clusters : int or sequence of int
        Clusters per head (one int for all heads, or one per head).
    n_heads : int, default 1
        Number of heads H (ignored when ``n_clusters`` is a sequence).
    epsilon : float, default 0.1
        Entropic regularisation of the labelling step (SeLa's ``1/lambda``:
        ``lambda = 10`` on CIFAR, 25 on ImageNet).
    mode : {"train", "eval"}, default "train"
        The model's mode while its scores are collected.  SeLa labels in train
        mode (batch-norm in batch statistics) on augmented images; DeepCluster
        in eval mode on centre crops.  Augmentation is the loader's: pass a
        loader that augments, or one that does not.
    seed : int, default 0
        Seed of the balanced random start (SeLa: ``i % K``, shuffled).
    size_penalty, mass : as in :func:`otlabel.assign`
        Cluster sizes beyond equipartition: relaxed toward ``cluster_weights``
        with a KL weight ``tau`` (imbalanced or unknown class sizes), and a
        fraction ``1 - mass`` of the samples left unassigned (label -1: train
        with ``ignore_index=-1``).
    known_labels : array (N,) of int or None
        Samples whose label is known (-1: unknown): they keep it in every head,
        and count toward their cluster's size (semi-supervised SeLa).
    soft_targets : bool, default False
        Also keep each sample's soft code, the row of the transport plan
        ``softmax_k((log p_ik + g_k) / epsilon)`` (SwAV's targets), for
        :meth:`codes`; epsilon then sets how soft they are.  Costs ``N K``
        floats per head.  A sample left unassigned (label -1, partial mass)
        has a code of zeros, which :meth:`MultiHeadClassifier.loss
        <otlabel.sela.MultiHeadClassifier.loss>` leaves out as it leaves out
        label -1.
    **assign_options
        Passed to :func:`otlabel.assign` (``tol``, ``cluster_weights``,
        ``min_size``, ``max_size``, ``rounding``, ``backend``, ...).  Defaults:
        ``rounding="balanced"``, ``tol=1e-3``, ``max_iter=200``: balanced labels
        are the exact optimum of the assignment whatever the Sinkhorn accuracy (its potential only
        warm-starts the rounding; epsilon changes the speed, not the labels), so
        Sinkhorn stopping early is not warned about; ``last_result.converged``
        still tells.

    Attributes
    ----------
    labels : torch.LongTensor (H, N)
        Current labels, on the CPU; ``labeler[indices]`` gives ``(H, B)``.
    potentials : list of (K_h,) float64 arrays or None
        Cluster potentials of the last solve of each head, the next warm start
        (with partial mass, ``(K_h + 1,)``: the unassigned potential last).
    last_result : Result or None
        What the last :meth:`update` returned.
    """

    def __init__(
        self,
        n_samples: int,
        n_clusters: int | Sequence[int],
        n_heads: int = 1,
        *,
        epsilon: float = 0.1,
        mode: str = "train",
        seed: int = 0,
        size_penalty: Any = None,
        mass: float = 1.0,
        known_labels: Any = None,
        soft_targets: bool = False,
        **assign_options: Any,
    ) -> None:
        if isinstance(n_clusters, int | np.integer):
            n_clusters = [int(n_clusters)] * n_heads
        self.n_clusters = [int(k) for k in n_clusters]
        if n_samples < 1 or min(self.n_clusters, default=0) < 1:
            raise ValueError(
                f"n_samples and n_clusters must be positive; got {n_samples} and {n_clusters}"
            )
        if max(self.n_clusters) > n_samples:
            raise ValueError(
                f"n_clusters ({max(self.n_clusters)}) exceeds n_samples ({n_samples}): "
                "balanced labels need at least one sample per cluster"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        self.n_samples = int(n_samples)
        self.epsilon = float(epsilon)
        self.mode = mode
        constraints = {"size_penalty": size_penalty, "mass": mass, "known_labels": known_labels}
        given = {name: value for name, value in constraints.items() if value is not None}
        self.assign_options = {**LABEL_SOLVE, **given, **assign_options}
        self.labels = _balanced_random_labels(self.n_samples, self.n_clusters, seed)
        if known_labels is not None:
            known = torch.as_tensor(np.asarray(known_labels), dtype=torch.int64)
            if tuple(known.shape) != (self.n_samples,):
                raise ValueError(
                    f"known_labels: expected shape ({self.n_samples},), got {tuple(known.shape)}"
                )
            self.labels[:, known >= 0] = known[known >= 0]
        self.known = None if known_labels is None else torch.as_tensor(np.asarray(known_labels))
        self.soft_targets = bool(soft_targets)
        self.soft_codes: list[torch.Tensor] | None = None
        self.potentials: list[np.ndarray] | None = None
        self.last_result: Result | None = None

    @property
    def n_heads(self) -> int:
        """Number of heads H."""
        return len(self.n_clusters)

    def __getitem__(self, indices: Any) -> torch.Tensor:
        """Labels of samples ``indices`` for every head, ``(H, B)``."""
        return self.labels[:, indices]

    def update(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        heads: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        *,
        views: int = 1,
    ) -> Result:
        """Recompute the labels of ``heads`` (default all) from the model's scores.

        Collects the log-probabilities of every sample (:meth:`scores`), solves
        the heads together with :func:`otlabel.assign`, warm-started from the
        last potentials, and stores the new labels.  Returns the stacked result.
        ``views > 1`` iterates ``loader`` that many times and averages the
        log-probabilities (a loader that augments gives a new view each time):
        labels of the average view, less noisy than one view's.
        """
        heads = list(range(self.n_heads)) if heads is None else [int(h) for h in heads]
        if not heads or min(heads) < 0 or max(heads) >= self.n_heads:
            raise ValueError(f"heads must be indices in [0, {self.n_heads}); got {heads}")
        if views < 1:
            raise ValueError(f"views must be a positive number of passes; got {views}")
        log_p = self.scores(model, loader, device)
        for _ in range(views - 1):
            for total, view in zip(log_p, self.scores(model, loader, device), strict=True):
                total += view
        if views > 1:
            log_p = [total / views for total in log_p]
        init = None if self.potentials is None else [self.potentials[h] for h in heads]
        options = self._options_for(heads)
        with warnings.catch_warnings():
            if options["rounding"] == "balanced":  # exact labels regardless
                warnings.simplefilter("ignore", ConvergenceWarning)
            result = assign([log_p[h] for h in heads], self.epsilon, init=init, **options)
        potentials = list(self.potentials or [np.zeros(k) for k in self.n_clusters])
        assert result.labels is not None  # rounding is never None here
        for position, head in enumerate(heads):
            self.labels[head] = torch.as_tensor(np.asarray(result.labels[position]))
            potentials[head] = np.asarray(result.potential[position])
            if result.unassigned_potential is not None:  # partial mass: g0 comes last
                unassigned = np.asarray(result.unassigned_potential)[position]
                potentials[head] = np.append(potentials[head], unassigned)
        self.potentials = potentials
        self.last_result = result
        if self.soft_targets:
            self._store_codes(log_p, heads)
        return result

    def codes(self, indices: Any) -> list[torch.Tensor]:
        """Soft targets of samples ``indices``: one ``(B, K_h)`` tensor per head.

        Rows of the last update's transport plan over the K_h clusters, normalised
        (``soft_targets=True``); a known sample's code is its label, one-hot; a
        sample the update left unassigned (label -1) has a row of zeros, which the
        loss leaves out.  Before the first update: the one-hot of the start labels.
        """
        if not self.soft_targets:
            raise ValueError("codes: construct the labeler with soft_targets=True")
        if self.soft_codes is None:
            return [_one_hot(self.labels[h, indices], k) for h, k in enumerate(self.n_clusters)]
        return [codes[indices] for codes in self.soft_codes]

    def _store_codes(self, log_p: list[np.ndarray], heads: list[int]) -> None:
        """The updated heads' plan rows: one-hot for known samples, zeros for unassigned ones."""
        assert self.potentials is not None
        if self.soft_codes is None:
            self.soft_codes = [_one_hot(self.labels[h], k) for h, k in enumerate(self.n_clusters)]
        for head in heads:
            k = self.n_clusters[head]
            codes = predict(log_p[head], self.potentials[head][:k], soft=True, epsilon=self.epsilon)
            codes = torch.as_tensor(np.asarray(codes, dtype=np.float32))  # (N, K)
            codes = codes / codes.sum(1, keepdim=True).clamp(min=1e-30)
            if self.known is not None:
                is_known = self.known >= 0
                codes[is_known] = _one_hot(self.known[is_known], k)
            codes[self.labels[head] < 0] = 0.0  # unassigned: no target, as label -1
            self.soft_codes[head] = codes

    def _options_for(self, heads: list[int]) -> dict[str, Any]:
        """``assign`` options for a subset of heads: per-head weights are selected."""
        options = dict(self.assign_options)
        weights = options.get("cluster_weights")
        if weights is not None and (isinstance(weights, list | tuple) or np.ndim(weights) == 2):
            if len(weights) != self.n_heads:
                raise ValueError(
                    f"cluster_weights: one entry per head ({self.n_heads}), got {len(weights)}"
                )
            options["cluster_weights"] = [np.asarray(weights[h]) for h in heads]
        return options

    def predict(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        device: torch.device | str | None = None,
        *,
        n_samples: int | None = None,
        soft: bool = False,
    ) -> torch.Tensor:
        """Labels of data that was not in the training set, from the last update's
        potentials: ``argmax_k (log p_ik + g_k)`` per head (-1: unassigned, with
        partial mass), or the soft codes (``soft=True``).

        ``loader`` yields batches ``(inputs, ..., indices)`` over the new data,
        indices ``0..M-1``, each once (``n_samples=M``; default: the largest index + 1).
        Returns ``(H, M)`` labels, or a list of H ``(M, K_h)`` code tensors.
        """
        if self.potentials is None:
            raise ValueError("predict: no labels were computed yet; call update() first")
        batches, n_samples = self._collect(model, loader, device, n_samples)
        log_p = self._gathered(batches, n_samples)
        out = []
        for head, scores in enumerate(log_p):
            potential = self.potentials[head]
            n_clusters = self.n_clusters[head]
            unassigned = float(potential[n_clusters]) if potential.size > n_clusters else None
            out.append(
                predict(
                    scores,
                    potential[:n_clusters],
                    soft=soft,
                    epsilon=self.epsilon,
                    unassigned=unassigned,
                )
            )
        if soft:
            return [torch.as_tensor(codes) for codes in out]  # type: ignore[return-value]
        return torch.as_tensor(np.stack(out))

    @torch.no_grad()
    def scores(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        device: torch.device | str | None = None,
        *,
        n_samples: int | None = None,
    ) -> list[np.ndarray]:
        """Log-probabilities of every sample for every head: H arrays ``(N, K_h)`` float32.

        ``loader`` yields batches ``(inputs, ..., indices)``: the sample indices
        come last, and one pass yields every index ``0..N-1`` exactly once (a
        batch whose last element is not that, such as a data set's ``(x, y)``
        without its index, is refused).  ``model(inputs)`` returns the logits of
        the heads: a list of ``(B, K_h)`` tensors, a stack ``(H, B, K)``, or one
        ``(B, K)`` tensor.  The model's train/eval mode is set to ``mode`` and
        restored afterwards.  ``n_samples``: the size of the loader's data
        (default: the training set's).
        """
        size = self.n_samples if n_samples is None else n_samples
        batches, size = self._collect(model, loader, device, size)
        return self._gathered(batches, size)

    @torch.no_grad()
    def _collect(
        self,
        model: torch.nn.Module,
        loader: Iterable[Any],
        device: torch.device | str | None,
        n_samples: int | None,
    ) -> tuple[list[tuple[np.ndarray, list[np.ndarray]]], int]:
        """Each batch's indices and log-probabilities per head, in the labeler's mode,
        and the number of samples of the pass (``n_samples``, or if None the largest
        index + 1).  Every batch's indices are checked as it comes (:class:`_PassIndices`).
        """
        was_training = model.training
        model.train(self.mode == "train")
        batches: list[tuple[np.ndarray, list[np.ndarray]]] = []
        seen = _PassIndices(n_samples)
        try:
            for batch in loader:
                inputs, indices = batch[0], _batch_indices(batch)
                if device is not None:
                    inputs = inputs.to(device)
                heads = [
                    torch.log_softmax(logits.float(), dim=1).cpu().numpy()
                    for logits in self._heads_of(model(inputs))
                ]
                seen.add(indices, batch_size=heads[0].shape[0])
                batches.append((indices, heads))
        finally:
            model.train(was_training)
        return batches, seen.check_covered()

    def _gathered(
        self, batches: list[tuple[np.ndarray, list[np.ndarray]]], n_samples: int
    ) -> list[np.ndarray]:
        """The batches' log-probabilities in sample order (indices checked by ``_collect``)."""
        collected = [np.empty((n_samples, k), np.float32) for k in self.n_clusters]
        for indices, heads in batches:
            for head, log_p in enumerate(heads):
                collected[head][indices] = log_p
        return collected

    def _heads_of(self, output: Any) -> list[torch.Tensor]:
        if isinstance(output, torch.Tensor):
            output = [output] if output.ndim == 2 else list(output.unbind(0))
        output = list(output)
        if [o.shape[-1] for o in output] != self.n_clusters:
            raise ValueError(
                f"model returned heads of sizes {[o.shape[-1] for o in output]}; the labeler "
                f"has n_clusters {self.n_clusters}"
            )
        return output

    def state_dict(self) -> dict[str, Any]:
        """Labels, potentials and soft codes, for a checkpoint: tensors only.

        ``torch.save`` writes it and plain ``torch.load`` (``weights_only=True``)
        reads it back; the potentials are float64 tensors.
        """
        potentials = None
        if self.potentials is not None:
            potentials = [torch.tensor(p, dtype=torch.float64) for p in self.potentials]
        return {
            "labels": self.labels.clone(),
            "potentials": potentials,
            "soft_codes": None if self.soft_codes is None else [c.clone() for c in self.soft_codes],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (potentials as tensors, or as the NumPy
        arrays that earlier versions saved)."""
        labels = torch.as_tensor(state["labels"])
        if tuple(labels.shape) != tuple(self.labels.shape):
            raise ValueError(
                f"state labels have shape {tuple(labels.shape)}; this labeler has "
                f"{tuple(self.labels.shape)}"
            )
        self.labels = labels.clone()
        potentials = state["potentials"]
        self.potentials = None if potentials is None else [_float64_array(p) for p in potentials]
        codes = state.get("soft_codes")
        self.soft_codes = None if codes is None else [torch.as_tensor(c).clone() for c in codes]


def _balanced_random_labels(n_samples: int, n_clusters: list[int], seed: int) -> torch.Tensor:
    """SeLa's start: ``i % K`` for each head, shuffled; sizes differ by at most one."""
    generator = np.random.default_rng(seed)
    rows = [generator.permutation(np.arange(n_samples) % k) for k in n_clusters]
    return torch.as_tensor(np.stack(rows), dtype=torch.int64)


def _one_hot(labels: torch.Tensor, n_clusters: int) -> torch.Tensor:
    """Float one-hot rows of ``labels``; label -1 (unassigned) gives a row of zeros."""
    rows = torch.nn.functional.one_hot(labels.clamp(min=0), n_clusters).float()
    return rows * (labels >= 0).unsqueeze(-1)


def _float64_array(potential: Any) -> np.ndarray:
    """A saved potential (a tensor, or an earlier version's NumPy array) as float64."""
    if isinstance(potential, torch.Tensor):
        potential = potential.detach().cpu().numpy()
    return np.array(potential, dtype=np.float64)


def _batch_indices(batch: Any) -> np.ndarray:
    """The last element of a batch as sample indices: one-dimensional integers."""
    last = batch[-1]
    if isinstance(last, torch.Tensor):
        last = last.detach().cpu().numpy()
    indices = np.asarray(last)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"a batch's last element has shape {indices.shape} and dtype {indices.dtype}, "
            f"not one-dimensional integer sample indices; {LOADER_FORMAT}"
        )
    return indices.astype(np.int64, copy=False)


class _PassIndices:
    """The sample indices one pass over a loader has yielded, in a boolean seen-array.

    Each index must lie in ``[0, n_samples)`` and come once.  With
    ``n_samples=None`` (new data of unknown size) the size is the largest index
    + 1, and the seen-array grows with it.
    """

    def __init__(self, n_samples: int | None) -> None:
        self.n_samples = n_samples
        self.seen = np.zeros(0 if n_samples is None else n_samples, dtype=bool)
        self.count = 0  # indices yielded so far, all distinct
        self.largest = -1

    def add(self, indices: np.ndarray, batch_size: int) -> None:
        """Record one batch's indices; raise if they cannot be this pass's sample indices."""
        if indices.shape[0] != batch_size:
            raise ValueError(
                f"a batch of {batch_size} inputs came with {indices.shape[0]} indices; "
                f"{LOADER_FORMAT}"
            )
        if indices.size == 0:
            return
        self._check_range(indices)
        self._grow_to(int(indices.max()) + 1)
        repeated = _repeated_index(indices, self.seen)
        if repeated is not None:
            raise ValueError(f"sample index {repeated} came twice in one pass; {LOADER_FORMAT}")
        self.seen[indices] = True
        self.count += indices.size
        self.largest = max(self.largest, int(indices.max()))

    def _check_range(self, indices: np.ndarray) -> None:
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or (self.n_samples is not None and high >= self.n_samples):
            bad = low if low < 0 else high
            bound = "N" if self.n_samples is None else self.n_samples
            raise ValueError(f"sample index {bad} is outside [0, {bound}); {LOADER_FORMAT}")

    def _grow_to(self, size: int) -> None:
        """Room for indices below ``size`` (unknown size only), doubling."""
        if size > self.seen.size:
            grown = np.zeros(max(size, 2 * self.seen.size), dtype=bool)
            grown[: self.seen.size] = self.seen
            self.seen = grown

    def check_covered(self) -> int:
        """The pass's number of samples, once every index ``0..N-1`` came."""
        n_samples = self.largest + 1 if self.n_samples is None else self.n_samples
        if self.count < n_samples:
            first_missing = int(np.flatnonzero(~self.seen[:n_samples])[0])
            raise ValueError(
                f"loader covered {self.count} of {n_samples} samples (index {first_missing} "
                "never came); one pass must yield every sample index 0..N-1 once, as the last "
                "element of each batch (a loader that drops its last batch falls short)"
            )
        return n_samples


def _repeated_index(indices: np.ndarray, seen: np.ndarray) -> int | None:
    """An index of ``indices`` that came in an earlier batch or twice in this one, or None."""
    earlier = indices[seen[indices]]
    if earlier.size:
        return int(earlier[0])
    ordered = np.sort(indices)
    twice = ordered[1:][ordered[1:] == ordered[:-1]]
    return int(twice[0]) if twice.size else None
