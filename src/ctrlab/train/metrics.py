"""Evaluation metrics for binary CTR prediction: AUC, logloss and group AUC.

All functions take numpy-compatible 1-D arrays and return Python floats.

* :func:`auc` is the Mann-Whitney form of the ROC AUC: the probability that a random
  positive scores above a random negative, a tie counting 1/2. It equals
  ``sklearn.metrics.roc_auc_score`` (which integrates the ROC curve with the trapezoid
  rule, collapsing tied scores into one point) but needs only one sort and integer sums.
* :func:`logloss` is the mean binary cross-entropy of probabilities clipped to
  ``[eps, 1 - eps]`` with ``eps`` the float64 machine epsilon, as ``sklearn.metrics.log_loss``
  (for float64 input) and FuxiCTR compute it.
* :func:`gauc` is the group AUC of the DIN paper as FuxiCTR computes it: the AUC within each
  group (e.g. user), averaged with the group's number of rows as weight; groups whose rows
  are all positive or all negative have no AUC and are left out of both the sum and the
  weights.
* Calibration: :func:`normalized_entropy` (logloss over the logloss of always predicting the
  labels' own rate, He et al. 2014: below 1 = better than the base rate), :func:`calibration_ratio`
  (mean prediction over the observed rate) and :func:`expected_calibration_error` (the
  row-weighted gap between mean prediction and observed rate over equal-width probability bins).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["METRIC_NAMES", "auc", "logloss", "gauc", "evaluate_metrics", "task_metric", "normalized_entropy",
           "calibration_ratio", "expected_calibration_error"]

METRIC_NAMES = ("AUC", "logloss", "gAUC")
"""Metric names understood by :func:`evaluate_metrics`."""


def task_metric(name: str) -> tuple[str | None, str]:
    """``"cvr_AUC"`` -> ``("cvr", "AUC")``, ``"AUC"`` -> ``(None, "AUC")``. A multi-task model's
    metrics are named ``<task>_<metric>`` (its first task's also plainly, ``AUC``); raises
    ValueError for a name that is neither."""
    if name in METRIC_NAMES:
        return None, name
    task, sep, metric = str(name).rpartition("_")
    if sep and task and metric in METRIC_NAMES:
        return task, metric
    raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}, or <task>_<metric> for a "
                     "task of a multi-task model (e.g. cvr_AUC)")


def _labels(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        y = y.reshape(-1)
    if y.dtype == bool:
        return y
    if y.size and not np.all((y == 0) | (y == 1)):
        bad = np.unique(y[(y != 0) & (y != 1)])[:5]
        raise ValueError(f"{name} must hold binary labels 0/1; found other values such as {bad.tolist()}")
    return y == 1


def _scores(y_score, n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(y_score)
    if s.ndim != 1:
        s = s.reshape(-1)
    if len(s) != n:
        raise ValueError(f"{name} has {len(s)} values but y_true has {n}")
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real numbers, got dtype {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contains NaN or infinite values (did training diverge?)")
    return s


def auc(y_true, y_score) -> float:
    """ROC AUC of ``y_score`` against binary labels ``y_true`` (0/1 or bool).

    Equal to ``sklearn.metrics.roc_auc_score`` including ties (a tied positive/negative pair
    counts 1/2). One O(n log n) sort, then exact integer arithmetic.

    Raises:
        ValueError: only one class is present, the labels are not 0/1, lengths differ, or
            a score is NaN/infinite.
    """
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    n = len(y)
    n_pos = int(np.count_nonzero(y))
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"AUC is undefined when only one class is present in y_true ({n_pos} positives, {n_neg} negatives)"
        )
    order = np.argsort(s)
    ss = s[order]
    yy = y[order]
    # Last index of every block of equal scores.
    ends = np.append(np.flatnonzero(ss[1:] != ss[:-1]), n - 1)
    pos_upto = np.cumsum(yy, dtype=np.int64)[ends]
    pos_b = np.diff(pos_upto, prepend=np.int64(0))
    neg_b = np.diff(ends + 1, prepend=0).astype(np.int64) - pos_b
    neg_below = np.cumsum(neg_b) - neg_b
    # 2 * (pairs ranked correctly) + (tied pairs), all exact in int64.
    twice = 2 * int(np.dot(pos_b, neg_below)) + int(np.dot(pos_b, neg_b))
    return twice / (2.0 * n_pos * n_neg)


def logloss(y_true, y_prob, eps: float = float(np.finfo(np.float64).eps)) -> float:
    """Mean binary cross-entropy of probabilities ``y_prob`` clipped to ``[eps, 1 - eps]``.

    Equals ``sklearn.metrics.log_loss`` (and FuxiCTR's logloss, which calls it) on float64
    probabilities: ``eps`` is the float64 epsilon (2.2e-16), so a confidently wrong prediction
    costs up to 36.0, not the 16.1 of a 1e-7 clip. Probabilities are converted to float64 before
    clipping, also float32 ones (sklearn would clip those at the float32 epsilon).
    """
    y = _labels(y_true).astype(np.float64)
    p = _scores(y_prob, len(y), "y_prob").astype(np.float64)
    if len(y) == 0:
        raise ValueError("logloss of an empty set is undefined")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def gauc(y_true, y_score, group) -> float:
    """Group AUC: per-group AUC averaged with weights = group size (DIN / FuxiCTR ``gAUC``).

    Groups whose rows all share one label have no AUC; like FuxiCTR they are skipped, i.e.
    they contribute neither to the weighted sum nor to the total weight.

    Raises:
        ValueError: no group has both classes, or lengths differ.
    """
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    g = np.asarray(group).reshape(-1)
    if len(g) != len(y):
        raise ValueError(f"group has {len(g)} values but y_true has {len(y)}")
    if len(y) == 0:
        raise ValueError("gAUC of an empty set is undefined")
    if not np.issubdtype(g.dtype, np.integer):
        g = np.unique(g, return_inverse=True)[1].reshape(-1)
    n = len(y)
    order = np.argsort(s)  # by score, then (stable) by group: sorted by (group, score)
    order = order[np.argsort(g[order], kind="stable")]
    gs, ss, yy = g[order], s[order], y[order]
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    new_group[1:] = gs[1:] != gs[:-1]
    new_block = new_group.copy()
    new_block[1:] |= ss[1:] != ss[:-1]
    block_start = np.flatnonzero(new_block)
    block_ends = np.append(block_start[1:], n) - 1
    pos_upto = np.cumsum(yy, dtype=np.int64)[block_ends]
    pos_b = np.diff(pos_upto, prepend=np.int64(0))
    neg_b = (block_ends - block_start + 1).astype(np.int64) - pos_b
    # Group of each block, as an index 0..G-1, and negatives below the block within its group.
    block_group = np.cumsum(new_group[block_start]) - 1
    group_first_block = np.flatnonzero(new_group[block_start])
    neg_cum = np.cumsum(neg_b)
    neg_before_group = (neg_cum - neg_b)[group_first_block]
    neg_below = neg_cum - neg_b - neg_before_group[block_group]
    twice = np.add.reduceat(2 * pos_b * neg_below + pos_b * neg_b, group_first_block)
    p_g = np.add.reduceat(pos_b, group_first_block)
    n_g = np.add.reduceat(neg_b, group_first_block)
    valid = (p_g > 0) & (n_g > 0)
    if not np.any(valid):
        raise ValueError("gAUC is undefined: no group has both positive and negative rows")
    size = (p_g + n_g)[valid].astype(np.float64)
    auc_g = twice[valid] / (2.0 * p_g[valid].astype(np.float64) * n_g[valid].astype(np.float64))
    return float(np.sum(auc_g * size) / np.sum(size))


def normalized_entropy(y_true, y_prob) -> float:
    """Logloss divided by the logloss of the constant prediction ``p̄ = mean(y)`` (the labels' own
    rate). Raises ValueError when the labels hold one class (the constant's logloss is 0)."""
    y = _labels(y_true).astype(np.float64)
    rate = float(y.mean()) if len(y) else float("nan")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"normalized entropy needs both classes in y_true (rate {rate})")
    return logloss(y, y_prob) / logloss(y, np.full(len(y), rate))


def calibration_ratio(y_true, y_prob) -> float:
    """``mean(y_prob) / mean(y_true)``: 1 when the predictions add up to the observed clicks (above 1:
    over-prediction). Raises ValueError when there is no positive."""
    y = _labels(y_true).astype(np.float64)
    p = _scores(y_prob, len(y), "y_prob").astype(np.float64)
    if not len(y) or y.sum() == 0:
        raise ValueError("calibration ratio needs at least one positive in y_true")
    return float(p.mean() / y.mean())


def expected_calibration_error(y_true, y_prob, bins: int = 10) -> float:
    """``Σ_b (n_b / n)·|mean(p) − mean(y)|`` over ``bins`` equal-width bins of the probability
    ``[0, 1]`` (the last bin includes 1); empty bins count 0."""
    y = _labels(y_true).astype(np.float64)
    p = _scores(y_prob, len(y), "y_prob").astype(np.float64)
    if not len(y):
        raise ValueError("expected calibration error of an empty set is undefined")
    if int(bins) < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, p, bins) - np.bincount(index, y, bins))  # per bin: n_b·|mean p − mean y|
    return float(gap.sum() / count.sum())


def evaluate_metrics(y_true, y_prob, names: Sequence[str], group=None) -> dict[str, float]:
    """Compute the named metrics (``"AUC"``, ``"logloss"``, ``"gAUC"``) in the given order.

    ``group`` (one id per row) is required for ``"gAUC"``.
    """
    out: dict[str, float] = {}
    for name in names:
        if name == "AUC":
            out[name] = auc(y_true, y_prob)
        elif name == "logloss":
            out[name] = logloss(y_true, y_prob)
        elif name == "gAUC":
            if group is None:
                raise ValueError("gAUC needs group ids (batch key 'group'; set the dataset's group_field)")
            out[name] = gauc(y_true, y_prob, group)
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
    return out
