"""When to recompute the self-labels, and which heads.

SeLa recomputes its labels at times spread over training: quadratically on
ImageNet (``linspace(0, 1, n)**2`` over the epochs: frequent early, when the
network changes fast, rare late), and once per epoch on CIFAR (linear).  Times
are in epochs and may fall inside an epoch; a training loop asks after each batch
which updates fell due.

>>> schedule = LabelSchedule(n_epochs=10, n_updates=5)
>>> schedule.times.tolist()
[0.0, 0.4, 1.6, 3.6, 6.4]
>>> schedule.due(0.0, 1.0)
[0, 1]
>>> LabelSchedule(n_epochs=4, n_updates=4, spacing="linear").update_epochs().tolist()
[0, 1, 2, 3]
"""

from __future__ import annotations

import numpy as np

__all__ = ["LabelSchedule"]

SPACINGS = ("quadratic", "linear")
HEAD_ORDERS = ("all", "rotate")


class LabelSchedule:
    """Label-update times over training, and the heads each update solves.

    Parameters
    ----------
    n_epochs : int
        Length of training in epochs.
    n_updates : int
        Number of label updates (SeLa: about 80-100 on ImageNet; one per epoch on
        CIFAR).  The first is at time 0, before any training; none falls at the end.
    spacing : {"quadratic", "linear"}
        Update ``u`` of ``n`` happens at ``n_epochs * (u / n)**2`` (quadratic,
        SeLa on ImageNet) or ``n_epochs * u / n`` (linear; ``n_updates =
        n_epochs`` is once at the start of every epoch, SeLa on CIFAR).
    heads : {"all", "rotate"}
        Every update solves all heads, or one head per update in turn
        (update ``u`` solves head ``u % n_heads``).
    n_heads : int
        Number of heads, for ``heads="rotate"``.
    """

    def __init__(
        self,
        n_epochs: int,
        n_updates: int,
        *,
        spacing: str = "quadratic",
        heads: str = "all",
        n_heads: int = 1,
    ) -> None:
        for name, value in (("n_epochs", n_epochs), ("n_updates", n_updates), ("n_heads", n_heads)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}; got {spacing!r}")
        if heads not in HEAD_ORDERS:
            raise ValueError(f"heads must be one of {HEAD_ORDERS}; got {heads!r}")
        self.n_epochs = int(n_epochs)
        self.n_heads = int(n_heads)
        self.heads = heads
        fraction = np.arange(n_updates) / n_updates
        if spacing == "quadratic":
            fraction = fraction**2
        #: Update times in epochs, ascending, in ``[0, n_epochs)``.
        self.times = np.round(n_epochs * fraction, 12)

    def due(self, start: float, stop: float) -> list[int]:
        """Indices of the updates with ``start <= time < stop`` (epochs, fractions allowed)."""
        return np.flatnonzero((self.times >= start) & (self.times < stop)).tolist()

    def heads_for(self, update: int) -> list[int]:
        """The heads that update number ``update`` solves."""
        if self.heads == "all":
            return list(range(self.n_heads))
        return [update % self.n_heads]

    def update_epochs(self) -> np.ndarray:
        """The epoch in which each update falls (``floor`` of its time)."""
        return np.floor(self.times).astype(np.int64)
