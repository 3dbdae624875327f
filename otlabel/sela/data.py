"""Data for the reference example: digits, CIFAR-10 from disk, imbalance, augmentation.

Nothing here downloads.  ``load_digits`` reads the 1 797 8x8 digit images that
ship with scikit-learn; ``load_cifar10`` reads CIFAR-10's python-pickle batch
files from a directory the user gives.

>>> images, targets = load_digits()
>>> images.shape, images.dtype, int(targets.max())
((1797, 1, 8, 8), dtype('float32'), 9)
>>> keep = imbalanced_indices(targets, "heavy", seed=0)
>>> np.bincount(targets[keep]).tolist()
[178, 141, 106, 85, 65, 51, 39, 30, 22, 18]
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IMBALANCE",
    "augment",
    "imbalanced_indices",
    "known_label_sample",
    "load_cifar10",
    "load_digits",
]

#: Fraction of each class kept, class c of C: "light" falls linearly from 100% to
#: 50%, "heavy" geometrically from 100% to 10% (ratio 10 between the largest and
#: the smallest class).
IMBALANCE = {
    "none": lambda c, n: 1.0,
    "light": lambda c, n: 1.0 - 0.5 * c / (n - 1),
    "heavy": lambda c, n: 0.1 ** (c / (n - 1)),
}

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as images ``(1797, 1, 8, 8)`` float32 in [0, 1], and targets."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    return images, digits.target.astype(np.int64)


def load_cifar10(root: str | Path, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from its python-pickle batches in ``root``: images ``(N, 3, 32, 32)`` uint8.

    ``root`` is the folder ``cifar-10-batches-py`` of the official archive
    (``data_batch_1`` ... ``data_batch_5`` for ``train=True``, ``test_batch``
    otherwise).  Nothing is downloaded.
    """
    root = Path(root)
    images, labels = [], []
    for name in CIFAR_TRAIN if train else CIFAR_TEST:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: root must be the folder 'cifar-10-batches-py' of the "
                "CIFAR-10 python archive (otlabel does not download it)"
            )
        with path.open("rb") as file:
            batch = pickle.load(file, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{path}: data must be (n, 3072) uint8; got shape {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        if labels[-1].shape[0] != data.shape[0]:
            raise ValueError(f"{path}: {data.shape[0]} images but {labels[-1].shape[0]} labels")
    return np.concatenate(images), np.concatenate(labels)


def imbalanced_indices(targets: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-imbalanced subset (see :data:`IMBALANCE`).

    Class ``c`` keeps ``round(fraction(c) * count_c)`` samples drawn without
    replacement; ``kind="none"`` keeps everything.
    """
    if kind not in IMBALANCE:
        raise ValueError(f"kind must be one of {sorted(IMBALANCE)}; got {kind!r}")
    generator = np.random.default_rng(seed)
    classes = np.unique(targets)
    kept = []
    for c, label in enumerate(classes):
        members = np.flatnonzero(targets == label)
        n_keep = round(IMBALANCE[kind](c, len(classes)) * members.size)
        kept.append(generator.choice(members, size=max(n_keep, 1), replace=False))
    return np.sort(np.concatenate(kept))


def known_label_sample(targets: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Known labels for a stratified sample: ``(N,)`` with -1 where the label is unknown.

    Each class keeps ``round(fraction * count)`` known samples (at least one),
    drawn without replacement from ``seed``; ``fraction=0`` knows none.

    >>> known = known_label_sample(np.repeat(np.arange(3), 10), 0.2, seed=0)
    >>> np.bincount(known[known >= 0]).tolist()
    [2, 2, 2]
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1); got {fraction}")
    known = np.full(targets.shape[0], -1, dtype=np.int64)
    if fraction == 0.0:
        return known
    generator = np.random.default_rng(seed)
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        n_known = max(round(fraction * members.size), 1)
        known[generator.choice(members, size=n_known, replace=False)] = label
    return known


def augment(
    images: torch.Tensor,
    generator: torch.Generator,
    *,
    max_shift: float = 0.15,
    max_rotation: float = 15.0,
    scale: tuple[float, float] = (0.85, 1.15),
    noise: float = 0.05,
) -> torch.Tensor:
    """A random affine warp (shift, rotation, zoom) and pixel noise, per image.

    ``images`` ``(B, C, H, W)`` float; ``max_shift`` is a fraction of the image
    side, ``max_rotation`` in degrees.  All randomness comes from ``generator``,
    so a run is reproducible.
    """
    batch = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    angle = torch.deg2rad(uniform(-max_rotation, max_rotation))
    zoom = uniform(*scale)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    shift_x, shift_y = (
        uniform(-2 * max_shift, 2 * max_shift),
        uniform(-2 * max_shift, 2 * max_shift),
    )
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    warped = torch.nn.functional.grid_sample(images, grid, align_corners=False)
    return warped + noise * torch.randn(warped.shape, generator=generator)
