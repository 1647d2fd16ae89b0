"""Evaluation metrics for binary CTR prediction: AUC, logloss, group (ranking) metrics and calibration.

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
  weights. :func:`gauc_mean` averages the same per-group AUCs plainly (each group counts once:
  the MIND benchmark's convention).
* Ranking within a group (an impression, a user): :func:`mrr` (reciprocal rank of the group's
  best-ranked positive) and :func:`ndcg` (nDCG@k with binary gains), averaged over the groups that
  hold at least one positive (the others have nothing to rank and are skipped). Rows are ranked by
  score, highest first; tied scores are resolved by averaging over every order of the tied rows
  (the expected value under a uniformly random tie-break), the rule by which AUC counts a tied
  pair 1/2 and ``sklearn.metrics.ndcg_score`` (``ignore_ties=False``) averages tied gains.
* Calibration: :func:`normalized_entropy` (logloss over the logloss of always predicting the
  labels' own rate, He et al. 2014: below 1 = better than the base rate), :func:`calibration_ratio`
  (mean prediction over the observed rate) and :func:`expected_calibration_error` (the
  row-weighted gap between mean prediction and observed rate over equal-width probability bins);
  :func:`reliability` gives those bins (the reliability diagram).

Every run evaluates its final valid and test predictions on :func:`final_metric_names`: the
trainer's configured metrics (per epoch: AUC and logloss, the BARS protocol), the calibration
metrics, and the group metrics when the split has group ids.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["METRIC_NAMES", "GROUP_METRICS", "CALIBRATION_METRICS", "LOWER_IS_BETTER", "auc", "logloss", "gauc",
           "gauc_mean", "mrr", "ndcg", "evaluate_metrics", "final_metric_names", "task_metric", "normalized_entropy",
           "calibration_ratio", "expected_calibration_error", "reliability"]

GROUP_METRICS = ("gAUC", "gAUC_mean", "MRR", "nDCG@5", "nDCG@10")
"""Metrics computed within groups (they need the split's group ids, the dataset's ``group_field``)."""
CALIBRATION_METRICS = ("NE", "calibration", "ECE")
"""Metrics of the probabilities' calibration, in every run's final evaluation."""
METRIC_NAMES = ("AUC", "logloss", *GROUP_METRICS, *CALIBRATION_METRICS)
"""Metric names understood by :func:`evaluate_metrics`."""
LOWER_IS_BETTER = frozenset({"logloss", "NE", "ECE"})
"""Metrics that improve downwards. ``calibration`` is best at 1 (neither direction): not monitorable."""


def task_metric(name: str) -> tuple[str | None, str]:
    """``"cvr_AUC"`` -> ``("cvr", "AUC")``, ``"AUC"`` -> ``(None, "AUC")``, ``"ctr_gAUC_mean"`` ->
    ``("ctr", "gAUC_mean")``. A multi-task model's metrics are named ``<task>_<metric>`` (its first
    task's also plainly, ``AUC``); the metric is the longest known name the string ends with (after
    an underscore). Raises ValueError for a name that is neither."""
    name = str(name)
    if name in METRIC_NAMES:
        return None, name
    for metric in sorted(METRIC_NAMES, key=len, reverse=True):
        task = name[: -len(metric) - 1]
        if task and name.endswith("_" + metric):
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


def _grouped(y_true, y_score, group, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(labels, scores, group ids)`` of a group metric."""
    y = _labels(y_true)
    s = _scores(y_score, len(y))
    if group is None:
        raise ValueError(f"{what} needs group ids (one per row; the dataset's group_field)")
    g = np.asarray(group).reshape(-1)
    if len(g) != len(y):
        raise ValueError(f"group has {len(g)} values but y_true has {len(y)}")
    if len(y) == 0:
        raise ValueError(f"{what} of an empty set is undefined")
    if not np.issubdtype(g.dtype, np.integer):
        g = np.unique(g, return_inverse=True)[1].reshape(-1)
    return y, s, g


def _group_score_order(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Row order sorted by (group, score), both ascending."""
    order = np.argsort(s, kind="stable")
    return order[np.argsort(g[order], kind="stable")]


class _Blocks:
    """Rows sorted by group, then by score (ascending, or descending with ``descending``), cut into
    blocks of equal score within a group. Per block: ``start`` (its first sorted row), ``size``,
    ``pos`` (positives); per group: ``first_block`` (index of its first block) and ``start`` /
    ``size`` in rows. No Python loop over groups: millions of rows take one sort (shared by the
    group metrics of one :func:`evaluate_metrics` call: the descending blocks reverse the same order)."""

    def __init__(self, y: np.ndarray, s: np.ndarray, g: np.ndarray, descending: bool = False,
                 order: np.ndarray | None = None):
        n = len(y)
        if order is None:
            order = _group_score_order(s, g)
        self.order = order  # ascending, whichever direction the blocks run
        if descending:  # (group, score) both descending: the order groups come in does not matter
            order = order[::-1]
        gs, ss, yy = g[order], s[order], y[order]
        new_group = np.empty(n, dtype=bool)
        new_group[0] = True
        new_group[1:] = gs[1:] != gs[:-1]
        new_block = new_group.copy()
        new_block[1:] |= ss[1:] != ss[:-1]
        self.n = n
        self.start = np.flatnonzero(new_block)
        self.size = np.diff(np.append(self.start, n))
        self.pos = np.add.reduceat(yy.astype(np.int64), self.start)
        self.neg = self.size - self.pos
        self.first_block = np.flatnonzero(new_group[self.start])
        self.group_start = self.start[self.first_block]
        self.group_size = np.diff(np.append(self.group_start, n))
        self.group_pos = np.add.reduceat(self.pos, self.first_block)

    def group_sum(self, per_block: np.ndarray) -> np.ndarray:
        return np.add.reduceat(per_block, self.first_block)

    def rank_in_group(self) -> np.ndarray:
        """0-based position of every sorted row within its group."""
        return np.arange(self.n) - np.repeat(self.group_start, self.group_size)


def _group_aucs(b: _Blocks, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(AUC, rows)`` of every group holding both classes (ties count 1/2, as in :func:`auc`), from
    ascending blocks."""
    # negatives below each block within its group (blocks are sorted by ascending score)
    neg_cum = np.cumsum(b.neg)
    block_group = np.repeat(np.arange(len(b.first_block)), np.diff(np.append(b.first_block, len(b.start))))
    neg_below = neg_cum - b.neg - (neg_cum - b.neg)[b.first_block][block_group]
    twice = b.group_sum(2 * b.pos * neg_below + b.pos * b.neg)
    p_g = b.group_pos
    n_g = b.group_size - p_g
    valid = (p_g > 0) & (n_g > 0)
    if not np.any(valid):
        raise ValueError(f"{what} is undefined: no group has both positive and negative rows")
    auc_g = twice[valid] / (2.0 * p_g[valid].astype(np.float64) * n_g[valid].astype(np.float64))
    return auc_g, b.group_size[valid].astype(np.float64)


def gauc(y_true, y_score, group) -> float:
    """Group AUC: per-group AUC averaged with weights = group size (DIN / FuxiCTR ``gAUC``).

    Groups whose rows all share one label have no AUC; like FuxiCTR they are skipped, i.e.
    they contribute neither to the weighted sum nor to the total weight.

    Raises:
        ValueError: no group has both classes, or lengths differ.
    """
    return _gauc(_Blocks(*_grouped(y_true, y_score, group, "gAUC")))


def _gauc(b: _Blocks) -> float:
    auc_g, size = _group_aucs(b, "gAUC")
    return float(np.sum(auc_g * size) / np.sum(size))


def gauc_mean(y_true, y_score, group) -> float:
    """Plain mean of the per-group AUC over the groups holding both classes (each group counts
    once, whatever its size: the MIND benchmark's ``AUC`` over impressions). :func:`gauc` weights
    the same AUCs by group size. Raises ValueError when no group has both classes."""
    return _gauc_mean(_Blocks(*_grouped(y_true, y_score, group, "gAUC_mean")))


def _gauc_mean(b: _Blocks) -> float:
    return float(np.mean(_group_aucs(b, "gAUC_mean")[0]))


def mrr(y_true, y_score, group) -> float:
    """Mean reciprocal rank: per group, ``1 / rank`` of its best-ranked positive (rows ranked by
    score, highest first, rank 1 the top), averaged over the groups holding at least one positive.

    Ties: the expected reciprocal rank over a uniformly random order of tied rows. When the first
    tied block holding a positive starts after ``a`` rows and has ``m`` rows, ``p`` of them positive,
    the first positive's place ``K`` within it has ``P(K = k) = C(m-k, p-1) / C(m, p)``, and the
    group scores ``E[1 / (a + K)]`` (a block of one row: ``1 / (a + 1)``).

    Raises:
        ValueError: no group has a positive, or lengths differ.
    """
    return _mrr(_Blocks(*_grouped(y_true, y_score, group, "MRR"), descending=True))


def _mrr(b: _Blocks) -> float:
    from scipy.special import gammaln

    nb = len(b.start)
    first = np.minimum.reduceat(np.where(b.pos > 0, np.arange(nb), nb), b.first_block)
    has = first < nb
    if not np.any(has):
        raise ValueError("MRR is undefined: no group has a positive row")
    f = first[has]
    above = (b.start[f] - b.group_start[has]).astype(np.float64)
    m, p = b.size[f], b.pos[f]
    places = m - p + 1  # K runs over 1 .. m - p + 1
    seg = np.repeat(np.arange(len(f)), places)
    k = np.arange(len(seg)) - np.repeat(np.cumsum(places) - places, places) + 1
    m, p = m[seg].astype(np.float64), p[seg].astype(np.float64)
    log_prob = (gammaln(m - k + 1) - gammaln(p) - gammaln(m - k - p + 2)  # log C(m-k, p-1)
                - gammaln(m + 1) + gammaln(p + 1) + gammaln(m - p + 1))  # - log C(m, p)
    rr = np.bincount(seg, np.exp(log_prob) / (above[seg] + k), minlength=len(f))
    return float(np.mean(rr))


def ndcg(y_true, y_score, group, k: int = 10) -> float:
    """nDCG@k with binary gains, averaged over the groups holding at least one positive.

    Per group, rows ranked by score (highest first): ``DCG@k = Σ_{i<k} y_i / log2(i + 2)`` over the
    0-based places ``i``, divided by the ideal DCG@k (the positives ranked first). Tied scores share
    their block's places: each row of a block of tied rows gets the block's mean gain, i.e. the
    expected DCG over a random order of the ties, as ``sklearn.metrics.ndcg_score`` computes it with
    ``ignore_ties=False`` (which scores a group without positives 0 where this skips it).

    Raises:
        ValueError: ``k`` < 1, no group has a positive, or lengths differ.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"nDCG's k must be a whole number >= 1, got {k}")
    return _ndcg(_Blocks(*_grouped(y_true, y_score, group, f"nDCG@{k}"), descending=True), int(k))


def _ndcg(b: _Blocks, k: int) -> float:
    has = b.group_pos > 0
    if not np.any(has):
        raise ValueError(f"nDCG@{k} is undefined: no group has a positive row")
    place = b.rank_in_group()
    discount = np.where(place < k, 1.0 / np.log2(np.minimum(place, k) + 2.0), 0.0)
    block_discount = np.add.reduceat(discount, b.start)
    dcg = b.group_sum(b.pos * block_discount / b.size)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])  # ideal[j]: j positives on top
    idcg = ideal[np.minimum(b.group_pos, k)]
    return float(np.mean(dcg[has] / idcg[has]))


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


def _bin_sums(y_true, y_prob, bins: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of ``[0, 1]`` (the last one includes 1): rows, sum of p, sum of y."""
    y = _labels(y_true).astype(np.float64)
    p = _scores(y_prob, len(y), "y_prob").astype(np.float64)
    if not len(y):
        raise ValueError(f"{what} of an empty set is undefined")
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins}")
    bins = int(bins)
    if p.min() < 0.0 or p.max() > 1.0:
        raise ValueError(f"{what} needs probabilities in [0, 1]; y_prob holds values from {p.min():g} to {p.max():g}")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    return np.bincount(index, minlength=bins), np.bincount(index, p, bins), np.bincount(index, y, bins)


def expected_calibration_error(y_true, y_prob, bins: int = 10) -> float:
    """``Σ_b (n_b / n)·|mean(p) − mean(y)|`` over ``bins`` equal-width bins of the probability
    ``[0, 1]`` (the last bin includes 1); empty bins count 0."""
    count, p_sum, y_sum = _bin_sums(y_true, y_prob, bins, "expected calibration error")
    return float(np.abs(p_sum - y_sum).sum() / count.sum())  # per bin: n_b·|mean p − mean y|


def reliability(y_true, y_prob, bins: int = 10) -> dict:
    """The reliability diagram's data, on the bins of :func:`expected_calibration_error`:
    ``{"bins": bins, "count": [rows per bin], "mean_prediction": [...], "observed_rate": [...]}``,
    lists of length ``bins`` (bin ``b`` covers ``[b/bins, (b+1)/bins)``, the last one includes 1),
    ``None`` for an empty bin's mean and rate. Plain Python values: it goes into metrics.json."""
    count, p_sum, y_sum = _bin_sums(y_true, y_prob, bins, "reliability")
    return {
        "bins": int(bins),
        "count": [int(c) for c in count],
        "mean_prediction": [float(s / c) if c else None for s, c in zip(p_sum, count)],
        "observed_rate": [float(s / c) if c else None for s, c in zip(y_sum, count)],
    }


def final_metric_names(configured: Sequence[str], has_group: bool) -> list[str]:
    """The metrics of a run's final valid/test evaluation: the ``configured`` ones (``trainer.metrics``,
    also validated every epoch), then :data:`CALIBRATION_METRICS`, then :data:`GROUP_METRICS` when
    the split has group ids (``has_group``), each once, in that order."""
    for name in configured:
        if name not in METRIC_NAMES:
            raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
    extra = [*CALIBRATION_METRICS, *(GROUP_METRICS if has_group else ())]
    return list(dict.fromkeys([*configured, *extra]))


def evaluate_metrics(y_true, y_prob, names: Sequence[str], group=None) -> dict[str, float]:
    """Compute the named metrics (:data:`METRIC_NAMES`) in the given order.

    ``group`` (one id per row) is required for :data:`GROUP_METRICS` (``gAUC``, ``gAUC_mean``,
    ``MRR``, ``nDCG@5``, ``nDCG@10``).
    """
    out: dict[str, float] = {}
    blocks: dict[bool, _Blocks] = {}  # the group metrics share one sort: ascending and its reverse

    def grouped(name: str, descending: bool) -> _Blocks:
        if descending not in blocks:
            y, s, g = _grouped(y_true, y_prob, group, name)
            order = next(iter(blocks.values())).order if blocks else None
            blocks[descending] = _Blocks(y, s, g, descending, order)
        return blocks[descending]

    for name in names:
        if name in GROUP_METRICS and group is None:
            raise ValueError(f"{name} needs group ids (batch key 'group'; set the dataset's group_field)")
        if name == "AUC":
            out[name] = auc(y_true, y_prob)
        elif name == "logloss":
            out[name] = logloss(y_true, y_prob)
        elif name == "gAUC":
            out[name] = _gauc(grouped(name, False))
        elif name == "gAUC_mean":
            out[name] = _gauc_mean(grouped(name, False))
        elif name == "MRR":
            out[name] = _mrr(grouped(name, True))
        elif name in ("nDCG@5", "nDCG@10"):
            out[name] = _ndcg(grouped(name, True), int(name.partition("@")[2]))
        elif name == "NE":
            out[name] = normalized_entropy(y_true, y_prob)
        elif name == "calibration":
            out[name] = calibration_ratio(y_true, y_prob)
        elif name == "ECE":
            out[name] = expected_calibration_error(y_true, y_prob)
        else:
            raise ValueError(f"unknown metric {name!r}; choose from {list(METRIC_NAMES)}")
    return out
