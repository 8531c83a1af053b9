"""Continual-learning metrics: pure functions over an explicit score matrix.

``R[t][i]`` is the score on task ``i`` after training on task ``t`` (``t, i = 0 .. T-1``): row ``t``
is one evaluation of every task, taken after training step ``t``. Every function accepts any
array-like (nested lists, numpy arrays) and returns Python floats or float64 arrays.

Direction is explicit. The formulas are written for scores where higher is better (accuracy); for
lower-is-better scores (perplexity, loss) pass ``higher_is_better=False`` and the matrix is negated
first, so the sign always reads the same way: positive backward/forward transfer means *helped*,
positive forgetting means *got worse*. ``average_accuracy`` is the raw mean and needs no direction.

Missing evaluations are ``NaN``. Averages skip terms that involve a ``NaN`` and average the rest;
with no term left (or ``T = 1``) they return ``NaN``, never raise, never warn.

Scores of one capability before and after fine-tuning (no matrix) are in
:mod:`retain.metrics_capability`, re-exported here: :func:`degradation`, :class:`Degradation`,
:func:`perplexity_ratio`.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from retain.errors import RetainError
from retain.metrics_capability import Degradation, degradation, perplexity_ratio

__all__ = [
    "Degradation",
    "average_accuracy",
    "average_forgetting",
    "average_forgetting_first_last",
    "backward_transfer",
    "degradation",
    "forgetting",
    "forgetting_first_last",
    "forward_transfer",
    "perplexity_ratio",
]

_LAYOUT = "R[t][i] = score on task i after training task t"


def _as_matrix(scores: ArrayLike) -> NDArray[np.float64]:
    """``scores`` as a float64 ``T x T`` array, or a :class:`RetainError` saying what is wrong."""
    try:
        matrix = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RetainError(
            f"score matrix must be a numeric T x T array ({_LAYOUT}) with rows of equal "
            f"length; could not read it as floats: {err}"
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise RetainError(
            f"score matrix must be square T x T ({_LAYOUT}); got shape {matrix.shape}"
        )
    if matrix.shape[0] == 0:
        raise RetainError(f"score matrix is empty; it needs at least one task ({_LAYOUT})")
    return matrix


def _oriented(matrix: NDArray[np.float64], higher_is_better: bool) -> NDArray[np.float64]:
    """``matrix`` negated when lower is better, so that larger always means better."""
    if not isinstance(higher_is_better, (bool, np.bool_)):
        raise RetainError(
            f"higher_is_better must be True (accuracy-like) or False (perplexity/loss-like); "
            f"got {higher_is_better!r}"
        )
    return matrix if higher_is_better else -matrix


def _nanmean(values: NDArray[np.float64]) -> float:
    """Mean of the non-NaN ``values``; NaN (and no RuntimeWarning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


def average_accuracy(scores: ArrayLike) -> float:
    """Average final score ``ACC = 1/T * sum_i R[T-1, i]`` (Lopez-Paz & Ranzato 2017, "ACC").

    The mean of the last row: every task scored after training on all of them. ``NaN`` entries are
    skipped; an all-``NaN`` last row gives ``NaN``. Direction does not matter: it is the raw mean.

    Paper: D. Lopez-Paz, M. Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017.

    Worked example (accuracies in %):

    >>> R = [[80, 10, 20],
    ...      [60, 90, 30],
    ...      [70, 50, 70]]
    >>> round(average_accuracy(R), 4)  # (70 + 50 + 70) / 3
    63.3333
    """
    matrix = _as_matrix(scores)
    return _nanmean(matrix[-1])


def backward_transfer(scores: ArrayLike, *, higher_is_better: bool = True) -> float:
    """Backward transfer ``BWT = 1/(T-1) * sum_{i<T-1} (R[T-1, i] - R[i, i])`` (GEM, 2017).

    How training on later tasks changed each earlier task, measured from the score right after that
    task was learned (the diagonal) to the final score. Negative BWT is forgetting; positive BWT
    means later tasks helped. With ``higher_is_better=False`` the matrix is negated first, so a
    perplexity that rose still gives a negative BWT.

    ``T = 1`` gives ``NaN``; terms with a ``NaN`` on either side are skipped.

    Paper: D. Lopez-Paz, M. Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017.

    Worked example: the final row minus the diagonal, for the tasks before the last:

    >>> R = [[80, 10, 20],
    ...      [60, 90, 30],
    ...      [70, 50, 70]]
    >>> backward_transfer(R)  # ((70 - 80) + (50 - 90)) / 2
    -25.0
    >>> backward_transfer([[3.0, 9.0], [4.5, 2.0]], higher_is_better=False)  # perplexity 3 -> 4.5
    -1.5
    """
    matrix = _oriented(_as_matrix(scores), higher_is_better)
    n_tasks = matrix.shape[0]
    earlier = np.arange(n_tasks - 1)
    return _nanmean(matrix[-1, earlier] - matrix[earlier, earlier])


def forward_transfer(
    scores: ArrayLike, baseline: ArrayLike, *, higher_is_better: bool = True
) -> float:
    """Forward transfer ``FWT = 1/(T-1) * sum_{i>=1} (R[i-1, i] - b[i])`` (GEM, 2017).

    How much training on tasks ``0 .. i-1`` helped task ``i`` before it was trained on, compared
    with ``b[i]``, the score of the starting (pretrained) model on task ``i``. ``baseline`` has one
    entry per task; ``b[0]`` is unused (no task precedes task 0) and may be ``NaN``. Positive FWT
    means the earlier tasks helped; with ``higher_is_better=False`` both ``R`` and ``b`` are
    negated first.

    ``T = 1`` gives ``NaN``; terms with a ``NaN`` on either side are skipped.

    Paper: D. Lopez-Paz, M. Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017.

    Worked example: the entries just above the diagonal minus the starting model's scores:

    >>> R = [[80, 10, 20],
    ...      [60, 90, 30],
    ...      [70, 50, 70]]
    >>> b = [float("nan"), 20, 10]
    >>> forward_transfer(R, b)  # ((R[0,1] - b[1]) + (R[1,2] - b[2])) / 2 = ((10-20) + (30-10)) / 2
    5.0
    """
    matrix = _as_matrix(scores)
    n_tasks = matrix.shape[0]
    try:
        start = np.asarray(baseline, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise RetainError(
            f"baseline b must be numeric, one starting-model score per task; got {err}"
        ) from None
    if start.shape != (n_tasks,):
        raise RetainError(
            f"baseline b must have one starting-model score per task (length T = {n_tasks}, "
            f"b[0] unused); got shape {start.shape}"
        )
    matrix = _oriented(matrix, higher_is_better)
    start = start if higher_is_better else -start
    later = np.arange(1, n_tasks)
    return _nanmean(matrix[later - 1, later] - start[later])


def forgetting(
    scores: ArrayLike, *, since_learned: bool = False, higher_is_better: bool = True
) -> NDArray[np.float64]:
    """Per-task forgetting ``F_i = max_{t<T-1} R[t, i] - R[T-1, i]``, ``i < T-1`` (Chaudhry 2018).

    The drop from the best score the model ever had on task ``i`` (before the final step) to its
    final score. Positive means worse; with ``higher_is_better=False`` the best is the lowest
    perplexity/loss and ``F_i = R[T-1, i] - min_t R[t, i]``. The last task is not included (it
    cannot have been forgotten yet), so the result has ``T - 1`` entries (empty for ``T = 1``).

    ``since_learned=False`` (default, as in the paper's formula) takes the max over every
    ``t in 0 .. T-2``, including evaluations *before* task ``i`` was trained (zero-shot scores of a
    pretrained model). ``since_learned=True`` takes it over ``t in i .. T-2`` only: a pretrained
    model's high zero-shot score on task ``i`` that training on task ``i`` itself lowered is then
    not counted as forgetting. Pick one and report which.

    ``NaN`` entries are skipped in the max; ``F_i`` is ``NaN`` when ``R[T-1, i]`` is ``NaN`` or
    every candidate for the max is.

    Paper: A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr, "Riemannian Walk for Incremental
    Learning: Understanding Forgetting and Intransigence", ECCV 2018.

    Worked example where the two windows differ (and differ from :func:`forgetting_first_last`):
    task 1 scored 95 zero-shot, 90 after training on it, 60 at the end.

    >>> R = [[80, 95, 10],
    ...      [85, 90, 20],
    ...      [70, 60, 75]]
    >>> forgetting(R)  # [max(80, 85) - 70, max(95, 90) - 60]
    array([15., 35.])
    >>> forgetting(R, since_learned=True)  # [max(80, 85) - 70, max(90) - 60]
    array([15., 30.])
    >>> forgetting_first_last(R)  # [80 - 70, 90 - 60]
    array([10., 30.])
    """
    matrix = _oriented(_as_matrix(scores), higher_is_better)
    n_tasks = matrix.shape[0]
    result = np.full(n_tasks - 1, np.nan, dtype=np.float64)
    final = matrix[-1]
    for task in range(n_tasks - 1):
        first_step = task if since_learned else 0
        history = matrix[first_step : n_tasks - 1, task]
        history = history[~np.isnan(history)]
        if history.size and not np.isnan(final[task]):
            result[task] = history.max() - final[task]
    return result


def average_forgetting(
    scores: ArrayLike, *, since_learned: bool = False, higher_is_better: bool = True
) -> float:
    """Average forgetting ``1/(T-1) * sum_{i<T-1} F_i`` with ``F_i`` from :func:`forgetting`.

    ``NaN`` values of ``F_i`` are skipped; ``T = 1`` (nothing to forget) gives ``NaN``.

    Paper: Chaudhry et al., "Riemannian Walk for Incremental Learning", ECCV 2018.

    >>> R = [[80, 95, 10],
    ...      [85, 90, 20],
    ...      [70, 60, 75]]
    >>> average_forgetting(R)  # (15 + 35) / 2
    25.0
    """
    return _nanmean(
        forgetting(scores, since_learned=since_learned, higher_is_better=higher_is_better)
    )


def forgetting_first_last(
    scores: ArrayLike, *, higher_is_better: bool = True
) -> NDArray[np.float64]:
    """Per-task first-minus-last forgetting ``F_i = R[i, i] - R[T-1, i]`` for ``i < T-1``.

    The drop from the score right after task ``i`` was learned to the final score, ignoring any
    higher score seen at another step. This is the variant Avalanche's ``ExperienceForgetting`` /
    ``StreamForgetting`` report (metric after first training on an experience minus its last
    value); it is *not* Chaudhry et al.'s max-based :func:`forgetting`, which is ``>=`` it entry by
    entry whenever both are defined. Positive means worse; ``higher_is_better=False`` negates first.
    A ``NaN`` on either side gives ``NaN``; ``T = 1`` gives an empty array.

    >>> forgetting_first_last([[80, 10, 20], [60, 90, 30], [70, 50, 70]])  # [80 - 70, 90 - 50]
    array([10., 40.])
    """
    matrix = _oriented(_as_matrix(scores), higher_is_better)
    earlier = np.arange(matrix.shape[0] - 1)
    result: NDArray[np.float64] = matrix[earlier, earlier] - matrix[-1, earlier]
    return result


def average_forgetting_first_last(scores: ArrayLike, *, higher_is_better: bool = True) -> float:
    """Mean of :func:`forgetting_first_last` over ``i < T-1``; exactly ``-backward_transfer(R)``.

    Each term is the negated BWT term and a term is ``NaN`` for both or for neither, so both skip
    the same tasks: the equality holds for every matrix, with or without ``NaN`` entries, and for
    either direction. It differs from :func:`average_forgetting`, which uses the best score.

    >>> R = [[80, 10, 20],
    ...      [60, 90, 30],
    ...      [70, 50, 70]]
    >>> average_forgetting_first_last(R), backward_transfer(R)  # (10 + 40) / 2 and its negative
    (25.0, -25.0)
    """
    return _nanmean(forgetting_first_last(scores, higher_is_better=higher_is_better))
