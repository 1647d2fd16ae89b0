"""Checks that catch a bad run: each returns structured warnings that say what to change.

A run can finish, write its metrics and still be wrong or wasted. These checks run once at the end
of ``ctrlab train`` (after the test evaluation); their warnings are printed, written to ``train.log``
and stored in ``metrics.json`` under ``"warnings"`` (an empty list when none fired). Each warning is
a :class:`RunWarning`: a stable ``code``, a ``message`` with the numbers, and the ``fix``.

============================  ===============================================================
code                          fires when
============================  ===============================================================
``few_steps_per_epoch``       an epoch takes fewer than :data:`MIN_STEPS_PER_EPOCH` optimizer steps
``logloss_above_base_rate``   a split's logloss is at or above the constant base-rate predictor's
``epoch_cap_while_improving`` ``trainer.epochs`` ran out while the last epoch still improved
``high_oov_rate``             a split's OOV rate for a field is high (the rule of :mod:`ctrlab.data.oov`)
``likely_label_leak``         one feature alone reaches a validation AUC of :data:`LEAK_AUC` or more
============================  ===============================================================

All checks read the encoded arrays with vectorised numpy; the leak check fits on at most
:data:`LEAK_TRAIN_ROWS` train rows and scores at most :data:`LEAK_VALID_ROWS` validation rows.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..data.feature_map import FeatureMap
from ..data.loader import EncodedSplit
from ..data.oov import high_oov_fields, high_oov_fix
from .metrics import auc, logloss

__all__ = [
    "RunWarning", "MIN_STEPS_PER_EPOCH", "LEAK_AUC", "LEAK_TRAIN_ROWS", "LEAK_VALID_ROWS", "LEAK_SMOOTHING",
    "few_steps_per_epoch", "logloss_above_base_rate", "epoch_cap_while_improving", "high_oov_rate",
    "likely_label_leak", "base_rate", "run_checks", "report_warnings",
]

MIN_STEPS_PER_EPOCH = 10
"""Fewer optimizer steps per epoch warn. With few steps an epoch moves the weights little, so
early stopping (patience 2, LR x0.1 per plateau) ends a run after a few dozen updates, and
BatchNorm's running statistics lag behind the weights. Issue 15's 24k-row log (batch 4096: 6 steps)
stopped every model at chance level; ``frappe_x1_subset`` at the default batch (12 steps) trains well."""
LEAK_AUC = 0.99
"""A single feature whose validation AUC alone reaches this is reported as a likely label leak.
The highest single-feature validation AUC on the shipped real datasets is far below it (see
docs/training.md, "Warnings")."""
LEAK_TRAIN_ROWS = 1_000_000
"""The leak check fits each categorical field's per-value click rate on at most this many
(first) train rows."""
LEAK_VALID_ROWS = 200_000
"""... and scores at most this many (first) validation rows."""
LEAK_SMOOTHING = 10.0
"""A value's click rate in the leak check is ``(clicks + s * base rate) / (rows + s)`` with this
``s``, so a value seen once or twice does not score as a certain click or non-click."""
CHUNK_ROWS = 1 << 18
"""Rows read at a time from (possibly memory-mapped) arrays."""


@dataclass(frozen=True)
class RunWarning:
    """One warning about a finished run: ``code`` (stable, for programs), ``message`` (what was
    seen, with the numbers) and ``fix`` (what to change)."""

    code: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# ---- the checks ---------------------------------------------------------------------------------
def few_steps_per_epoch(steps: int, train_rows: int, batch_size: int) -> list[RunWarning]:
    """An epoch of ``steps`` optimizer steps (``train_rows`` rows, ``batch_size`` per step)."""
    if steps >= MIN_STEPS_PER_EPOCH:
        return []
    most = max(train_rows // MIN_STEPS_PER_EPOCH, 1)
    suggest = 1 << (most.bit_length() - 1)  # the largest power of two that gives enough steps
    return [RunWarning(
        "few_steps_per_epoch",
        f"each epoch took only {steps} optimizer steps ({train_rows:,} train rows, trainer.batch_size "
        f"{batch_size}), fewer than {MIN_STEPS_PER_EPOCH}: early stopping may end the run after too few updates",
        f"lower trainer.batch_size to {suggest} or below (at most {most} gives {MIN_STEPS_PER_EPOCH} steps per epoch)",
    )]


def base_rate(labels: np.ndarray) -> float:
    """The click rate of a label column (read in pieces: it may be memory-mapped)."""
    n = len(labels)
    clicks = sum(float(np.asarray(labels[i:i + CHUNK_ROWS], dtype=np.float64).sum()) for i in range(0, n, CHUNK_ROWS))
    return clicks / n if n else math.nan


def logloss_above_base_rate(split_logloss: Mapping[str, float], rate: float,
                            split_labels: Mapping[str, np.ndarray], monitor_has_logloss: bool = False
                            ) -> list[RunWarning]:
    """Each split whose logloss is at or above that of always predicting the train click ``rate``
    (computed with :func:`ctrlab.train.metrics.logloss` on the split's labels)."""
    fix = ("raise trainer.patience or trainer.min_epochs, or lower trainer.lr; a model that cannot beat a "
           "constant may also need more data per field (min_count) or fewer parameters")
    if not monitor_has_logloss:
        fix = ("early stopping on AUC can end before the model is calibrated: monitor logloss too "
               "(trainer.monitor=AUC-logloss), " + fix)
    out = []
    for split, value in split_logloss.items():
        y = split_labels.get(split)
        if y is None or len(y) == 0 or not math.isfinite(rate):
            continue
        base = logloss(y, np.full(len(y), rate))
        if value >= base:
            out.append(RunWarning(
                "logloss_above_base_rate",
                f"{split} logloss {value:.6f} is no better than always predicting the train click rate "
                f"{rate:.4%} (logloss {base:.6f}): the probabilities are worse calibrated than a constant",
                fix[0].upper() + fix[1:],
            ))
    return out


def epoch_cap_while_improving(history: Sequence[Mapping[str, Any]], epochs: int, stopped_early: bool,
                              monitor_name: str = "monitor", run_dir: str = "RUN") -> list[RunWarning]:
    """The run used all ``epochs`` (``trainer.epochs``) and its last epoch still improved the
    monitored validation value."""
    if stopped_early or not history or len(history) < epochs or not history[-1].get("improved"):
        return []
    last = history[-1]
    prev = history[-2]["best_metric"] if len(history) > 1 else None
    trend = f" (best {prev:.6f} -> {last['monitor']:.6f})" if prev is not None and math.isfinite(prev) else ""
    return [RunWarning(
        "epoch_cap_while_improving",
        f"training stopped at the epoch cap (trainer.epochs={epochs}) while validation {monitor_name} was still "
        f"improving in the last epoch{trend}: the model is likely undertrained",
        f"raise trainer.epochs (e.g. to {2 * epochs}); a finished run continues from its last checkpoint with "
        f"`ctrlab train --output {run_dir} --resume --epochs {2 * epochs}`",
    )]


def high_oov_rate(rates: Mapping[str, Mapping[str, float]] | None) -> list[RunWarning]:
    """Fields whose OOV rate in a split is high by :func:`ctrlab.data.oov.high_oov_fields`."""
    return [RunWarning(
        "high_oov_rate",
        f"{split} split, field {name!r}: {rate:.1%} of rows (or sequence tokens) are out of the train "
        f"vocabulary (train {ref:.1%}); the model sees one value for almost all of the split",
        high_oov_fix(split),
    ) for split, name, rate, ref in high_oov_fields(dict(rates or {}))]


def _label(split: EncodedSplit, stop: int, start: int = 0, column: int = 0) -> np.ndarray:
    return np.asarray(split.arrays["label"][start:stop, column], dtype=np.float64)


def single_feature_aucs(fmap: FeatureMap, train: EncodedSplit, valid: EncodedSplit) -> dict[str, float]:
    """Feature name -> the validation AUC of that feature alone (at most the first
    :data:`LEAK_TRAIN_ROWS` / :data:`LEAK_VALID_ROWS` rows): a categorical field scores each row
    with its value's smoothed train click rate; a numeric field with its value, in whichever
    direction ranks better. Empty when the validation rows hold one class only."""
    n_train, n_valid = min(len(train), LEAK_TRAIN_ROWS), min(len(valid), LEAK_VALID_ROWS)
    y_valid = _label(valid, n_valid)
    if n_train == 0 or y_valid.min(initial=1) == y_valid.max(initial=0):
        return {}
    out: dict[str, float] = {}
    if fmap.categorical and "cat" in train.arrays:
        sizes = [f.vocab_size for f in fmap.categorical]
        counts = [np.zeros(v, dtype=np.float64) for v in sizes]
        clicks = [np.zeros(v, dtype=np.float64) for v in sizes]
        for start in range(0, n_train, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n_train)
            part = np.asarray(train.arrays["cat"][start:stop])
            y = _label(train, stop, start)
            for j, v in enumerate(sizes):
                counts[j] += np.bincount(part[:, j], minlength=v)[:v]
                clicks[j] += np.bincount(part[:, j], weights=y, minlength=v)[:v]
        prior = base_rate(train.arrays["label"][:n_train, 0])
        cat_valid = np.asarray(valid.arrays["cat"][:n_valid])
        for j, f in enumerate(fmap.categorical):
            rate = (clicks[j] + LEAK_SMOOTHING * prior) / (counts[j] + LEAK_SMOOTHING)
            ids = np.clip(cat_valid[:, j], 0, sizes[j] - 1)
            out[f.name] = auc(y_valid, rate[ids])
    if fmap.numeric and "num" in valid.arrays:
        num_valid = np.asarray(valid.arrays["num"][:n_valid], dtype=np.float64)
        for j, f in enumerate(fmap.numeric):
            a = auc(y_valid, num_valid[:, j])
            out[f.name] = max(a, 1.0 - a)
    return out


def likely_label_leak(fmap: FeatureMap, train: EncodedSplit, valid: EncodedSplit) -> list[RunWarning]:
    """Each feature that alone reaches a validation AUC of :data:`LEAK_AUC` or more."""
    return [RunWarning(
        "likely_label_leak",
        f"feature {name!r} alone reaches validation AUC {value:.4f} (>= {LEAK_AUC}): it likely encodes the "
        "label (e.g. recorded after the click, or derived from it)",
        f"remove {name!r} from the dataset config's features unless its value is known before the click "
        "at prediction time",
    ) for name, value in single_feature_aucs(fmap, train, valid).items() if value >= LEAK_AUC]


# ---- all of them, and reporting -----------------------------------------------------------------
def run_checks(*, fmap: FeatureMap, splits: Mapping[str, EncodedSplit], metrics: Mapping[str, Mapping[str, float]],
               history: Sequence[Mapping[str, Any]], epochs: int, stopped_early: bool, steps_per_epoch: int,
               batch_size: int, oov_rates: Mapping[str, Mapping[str, float]] | None = None,
               monitor: Mapping[str, float] | None = None, run_dir: str = "RUN",
               main_label: int = 0) -> list[RunWarning]:
    """Every check on a finished run: ``splits`` the encoded splits (``train``, and ``valid`` /
    ``test`` when present), ``metrics`` split -> metric -> value as evaluated at the end, ``history``
    the trainer's per-epoch records, ``epochs`` the cap (``trainer.epochs``), ``monitor`` the monitored
    metrics' weights (``{"AUC": 1.0}``), ``run_dir`` the run folder (named in a fix), ``main_label``
    the label column the plain metrics are of (a multi-task model's main task: ``main_label_column``)."""
    monitor = dict(monitor or {"AUC": 1.0})
    monitor_name = "+".join(f"{w:g}*{k}" for k, w in monitor.items()).replace("+-", "-")
    if len(monitor) == 1 and next(iter(monitor.values())) == 1.0:
        monitor_name = next(iter(monitor))
    train = splits["train"]
    out = few_steps_per_epoch(steps_per_epoch, len(train), batch_size)
    split_logloss = {s: m["logloss"] for s, m in metrics.items() if "logloss" in m and s in splits}
    if split_logloss:
        labels = {s: _label(splits[s], len(splits[s]), column=main_label) for s in split_logloss}
        out += logloss_above_base_rate(split_logloss, base_rate(train.arrays["label"][:, main_label]), labels,
                                       monitor_has_logloss=bool(monitor.get("logloss")))
    out += epoch_cap_while_improving(history, epochs, stopped_early, monitor_name, run_dir)
    out += high_oov_rate(oov_rates)
    if "valid" in splits and "label" in splits["valid"].arrays:
        out += likely_label_leak(fmap, train, splits["valid"])
    return out


def report_warnings(warnings: Sequence[RunWarning], *logs: Callable[[str], None]) -> None:
    """Write each warning and its fix to every ``log`` (the console, ``train.log``)."""
    for w in warnings:
        for log in logs:
            log(f"[ctrlab] WARNING: {w.message}")
            log(f"[ctrlab]   fix: {w.fix}")
