"""Labels and soft codes for new samples from a solve's cluster potential.

Below both the front door (:mod:`otlabel.api`, which re-exports :func:`predict`)
and the result (:meth:`otlabel.Result.predict` calls it): it imports neither, and
knows a result by what it holds (``potential``, ``epsilon``,
``unassigned_potential``, ``n_iter``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._arrays import like, to_numpy
from ._validation import finite_vector, initial_potential
from .problem import build_problem
from .rounding import predicted

__all__ = ["predict"]


def predict(
    scores: Any,
    potential: Any,
    *,
    soft: bool = False,
    epsilon: float | None = None,
    unassigned: float | None = None,
    unassigned_scores: Any = None,
    backend: str = "auto",
    head: int | None = None,
) -> Any:
    r"""Labels, or soft codes, for samples that were not in the solved problem.

    A solve's cluster potential ``g`` is all it takes: ``argmax_k (S_ik + g_k)``
    (the argmax labels of the training samples themselves), or the codes
    ``softmax_k((S_ik + g_k) / epsilon)`` (SwAV's codes for new data).  With
    partial mass, the virtual "unassigned" column takes part with its score
    ``s0_i`` (each row's log-sum-exp unless given) and potential ``g0``: a
    sample whose ``s0_i + g0`` beats every cluster gets label -1.

    Parameters
    ----------
    scores : array (N, K) or ChunkedScores
        The new samples' scores (NumPy, Torch or CuPy; read block by block).
    potential : array (K,) or Result
        A solve's ``potential``, or the result itself (then ``epsilon`` and the
        unassigned potential come from it).
    soft : bool, default False
        Soft codes (N, K) instead of labels: rows sum to 1 (with partial mass, to
        1 less the row's unassigned share).
    epsilon : float or None
        The regularisation of the codes (``soft=True``); default: the result's.
    unassigned, unassigned_scores : float, array (N,) or None
        Partial mass's ``g0`` (default: the result's) and ``s0``.
    backend : str, default "auto"
        Who reads the matrix (as in :func:`assign`).
    head : int or None
        Which head of a several-head solve (a stack or a list) the scores belong
        to: its potential (and unassigned potential) is used.  Required for a
        several-head result or potential, refused for a one-head one.

    Returns
    -------
    array (N,) int64 or (N, K)
        Labels (-1: unassigned) or codes, in the library and on the device of
        ``scores`` (NumPy for a stream).

    Examples
    --------
    >>> import otlabel
    >>> train, new = otlabel.make_scores(1000, 10, seed=0), otlabel.make_scores(200, 10, seed=1)
    >>> res = otlabel.assign(train, 0.05, rounding="argmax")
    >>> bool((otlabel.predict(train, res) == res.labels).all())
    True
    >>> codes = res.predict(new, soft=True)
    >>> codes.shape, bool(abs(codes.sum(axis=1) - 1).max() < 1e-5)
    ((200, 10), True)
    >>> heads = otlabel.assign([train, train[:, :5]], 0.05)  # two heads
    >>> otlabel.predict(new[:, :5], heads, head=1).shape
    (200,)
    """
    if _is_result(potential):
        epsilon = potential.epsilon if epsilon is None else epsilon
        potential, result_unassigned = _one_head(potential, head)
        unassigned = result_unassigned if unassigned is None else unassigned
    elif head is not None or _several_heads(potential):
        potential = _head_of(potential, head, _count_heads(potential))
    if soft and epsilon == 0:
        raise ValueError(
            "epsilon: soft codes need epsilon > 0 (the result was solved with epsilon=0, "
            "the unregularised problem); pass epsilon= for the codes' temperature"
        )
    problem = build_problem(
        scores,
        epsilon or 1.0,  # the check's placeholder where hard labels need none
        backend=backend,
        rounding=None,
        check_plan=False,
    )
    if problem.layout != "single":
        raise ValueError("scores: predict takes one (N, K) matrix; call it once per head")
    matrix = problem.heads[0]
    n_clusters = matrix.scores.shape[1]
    g = initial_potential(potential, n_clusters, "potential")
    if soft and epsilon is None:
        raise ValueError("epsilon: soft codes need the solve's epsilon (or pass its Result)")
    virtual = None
    if unassigned is None and unassigned_scores is not None:
        raise ValueError(
            "unassigned_scores: the potential has no unassigned column (it was solved with "
            "all the mass, mass=1), so no sample is left unassigned; drop this argument"
        )
    if unassigned is not None:
        s0 = unassigned_scores
        if s0 is None:
            s0 = to_numpy(problem.options.backend.row_logsumexp(matrix.scores))
        virtual = finite_vector(s0, matrix.scores.shape[0], "unassigned_scores")
        g = np.append(g, float(unassigned))
    codes_or_labels = predicted(matrix.scores, g, virtual, soft, epsilon, problem.options.backend)
    return codes_or_labels if soft else like(codes_or_labels, problem.reference)


def _is_result(value: Any) -> bool:
    """Whether ``value`` is a solve's result (an :class:`otlabel.Result`)."""
    return all(
        hasattr(value, name) for name in ("potential", "epsilon", "unassigned_potential", "n_iter")
    )


def _one_head(result: Any, head: int | None) -> tuple[Any, Any]:
    """The potential and unassigned potential of head ``head`` of ``result``."""
    potential, unassigned = result.potential, result.unassigned_potential
    if np.ndim(result.n_iter) == 0:  # one head
        if head is not None:
            raise ValueError(f"head: the result has one head, so no head= is needed; got {head!r}")
        return potential, unassigned
    n_heads = len(result.n_iter)
    chosen = _head_of(potential, head, n_heads)
    return chosen, None if unassigned is None else _head_of(unassigned, head, n_heads)


def _several_heads(potential: Any) -> bool:
    """Whether a potential given as an array or list holds several heads' potentials."""
    return isinstance(potential, (list, tuple)) or len(getattr(potential, "shape", ())) == 2


def _count_heads(potential: Any) -> int:
    return len(potential) if isinstance(potential, (list, tuple)) else int(potential.shape[0])


def _head_of(values: Any, head: int | None, n_heads: int) -> Any:
    """``values[head]``, with ``head`` checked against ``n_heads``."""
    if head is None:
        raise ValueError(
            f"head: the potential holds {n_heads} heads; pass head=0..{n_heads - 1} "
            "with the scores of that head (one matrix per call)"
        )
    if isinstance(head, bool) or not isinstance(head, (int, np.integer)):
        raise TypeError(f"head: expected an integer, got {type(head).__name__}")
    if not 0 <= int(head) < n_heads:
        raise ValueError(f"head: expected 0..{n_heads - 1}, got {head}")
    return values[int(head)]
