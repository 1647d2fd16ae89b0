"""``preset: auto`` for data without a BARS preset: training settings derived from the data.

The BARS protocol (batch 4096, patience 2, LR x0.1 on every plateau, early stopping on validation
AUC, output bias starting at 0) was tuned on millions of rows. On a small or very imbalanced log it
fails quietly: 24k rows give 6 optimizer steps per epoch, a validation AUC measured on a few
hundred positives moves by +-0.02 from epoch to epoch, so two "plateaus" stop the run (and cut the
LR 100-fold) while every prediction is still near 0.5. :func:`derive` looks at the training data
(:class:`DataStats`) and returns the settings that avoid this, each with a one-line reason:

* ``trainer.batch_size``: the largest power of two in [64, 4096] that still gives at least
  :data:`MIN_STEPS_PER_EPOCH` steps per epoch.
  ``trainer.lr`` follows it by Adam's square-root rule (``1e-3 * sqrt(batch / 4096)``).
* ``model_params.embedding_regularizer``: L2 0.01 on the embedding tables on small data.
* ``trainer.monitor`` / ``trainer.patience`` / ``trainer.lr_decay_factor`` / ``trainer.min_epochs``:
  with fewer than :data:`FEW_VALID_POSITIVES` validation positives, early stopping watches the
  validation logloss (every row counts, so it is far less noisy than AUC on a few hundred
  positives, and it also stops a run that drifts out of calibration), waits longer and decays the
  LR gently.
* ``min_count``: on small data (under :data:`SMALL_DATA_ROWS` train rows) values seen once in train
  share the OOV embedding instead of each getting an embedding trained on a single row, when at
  least :data:`RARE_SHARE` of some field's values are such singletons; not with
  ``linear_warm_start``, whose L2-fitted first-order weights use those values (pooling them cost the
  fitted logistic regression 0.005 validation AUC on frappe_x1_subset cut to 5k rows).
* ``linear_warm_start`` / ``trainer.validate_start``: on small data, for a model with a first-order
  term (DeepFM, FM, Wide&Deep, xDeepFM, ...) and a validation split, that term starts at an L2
  logistic regression fitted on train (:mod:`ctrlab.train.linear_init`), and the starting weights
  are kept when no epoch beats them on validation; early stopping then waits :data:`WARM_PATIENCE`
  epochs without decaying the LR (the deep part overtakes the fitted start only gradually). Without it DeepFM ended below scikit-learn's
  LogisticRegression on criteo_head10k, frappe_x1_subset cut to 5k rows and movielens_1m_sample
  (its linear part was far from converged when the deep part had overfitted).
* ``small_numeric_init``: numeric fields' embedding vectors start at the embedding rows' scale
  (and divided by the field's root mean square) instead of Xavier's: on criteo_head10k's log counts
  the Xavier start gave DeepFM initial logits with standard deviation 18 (LR: 6), and the runs
  never recovered (test AUC 0.68 vs 0.73).
* ``init_output_bias``: the model's output bias starts at the train base rate's log-odds
  (``log(p / (1 - p))``), so the untrained model already predicts the base rate and its logloss
  starts at the constant predictor's instead of ``log 2``.

Settings the user gave explicitly are never changed (:func:`derive` skips them), and datasets of a
BARS family, and models with a shipped preset for the dataset, keep the BARS protocol exactly
(:func:`keeps_bars_protocol`). Pure functions, except
:func:`data_stats`, which reads encoded arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BARS_FAMILIES = ("frappe_x1", "movielenslatest_x1", "criteo_x1", "avazu_x1")
"""Benchmark families whose BARS protocol is kept exactly (their shipped presets were tuned under it)."""

MIN_STEPS_PER_EPOCH = 50
"""Fewer optimizer steps than this per epoch leave a model undertrained when early stopping looks."""
MIN_BATCH, MAX_BATCH = 64, 4096
BARS_LR = 1e-3
SMALL_DATA_EMBEDDING_L2 = 0.01
"""``embedding_regularizer`` on small data (below :data:`SMALL_DATA_ROWS`) unless a preset or the
user sets it (DeepFM, one seed, validation AUC over 0: criteo_head10k +0.004, avazu_head10k +0.002;
0.05 was no better)."""
FEW_VALID_POSITIVES = 2000
"""Below this many validation positives, validation AUC is too noisy to stop on after 2 epochs
(its standard error is about 0.5 / sqrt(positives): 0.02 at 600 positives)."""
SMALL_DATA_ROWS = 200_000
"""Train rows below which embeddings are regularised and single-occurrence values pooled."""
WARM_PATIENCE = 8
"""``trainer.patience`` with ``linear_warm_start`` (and no LR decay on plateaus)."""
RARE_SHARE = 0.2
"""Share of a field's train values seen only once that makes pooling them worthwhile."""


@dataclass
class FieldStats:
    name: str
    values: int
    """Distinct values seen in train (excluding padding / OOV)."""
    singletons: int
    """Of those, values seen exactly once in train."""


@dataclass
class DataStats:
    """What :func:`derive` looks at."""

    train_rows: int
    train_positives: int
    valid_rows: int = 0
    valid_positives: int = 0
    fields: list[FieldStats] = field(default_factory=list)
    numeric_rms: dict[str, float] = field(default_factory=dict)
    """Numeric field -> root mean square of its encoded train values."""

    @property
    def base_rate(self) -> float:
        return self.train_positives / max(self.train_rows, 1)


@dataclass
class AutoSetting:
    key: str
    """Flat setting name as in ``--set`` (``trainer.batch_size``, ``min_count``, ``init_output_bias``)."""
    value: Any
    reason: str


def keeps_bars_protocol(family: str, has_shipped_preset: bool, has_dataset_params: bool) -> bool:
    """Whether a run keeps the BARS protocol exactly instead of derived settings: a dataset of a BARS
    family (``frappe_x1_subset`` -> ``frappe_x1``), or a model with a preset shipped for the dataset
    (tuned under that protocol, e.g. DNN / DIN on ``movielens_100k``), unless ``dataset_params`` make
    it other data than the published split (e.g. ``train_rows``)."""
    return (family in BARS_FAMILIES or has_shipped_preset) and not has_dataset_params


def data_stats(splits: dict[str, Any], cat_names: list[str] | None = None,
               num_names: list[str] | None = None) -> DataStats:
    """:class:`DataStats` of encoded splits (``{"train": EncodedSplit, "valid": ...}``): rows and
    positives of the first label, and per categorical column the distinct train ids (ids 0/1 are
    padding / OOV) and how many of them occur once."""
    train = splits["train"].arrays
    labels = np.asarray(train["label"])[:, 0]
    fields: list[FieldStats] = []
    cat = train.get("cat")
    if cat is not None and cat.size:
        cat = np.asarray(cat)
        for j in range(cat.shape[1]):
            counts = np.bincount(cat[:, j].astype(np.int64))[2:]
            name = cat_names[j] if cat_names and j < len(cat_names) else f"cat[{j}]"
            fields.append(FieldStats(name, int((counts > 0).sum()), int((counts == 1).sum())))
    num = train.get("num")
    rms = {}
    if num is not None and num.size:
        values = np.sqrt((np.asarray(num, dtype=np.float64) ** 2).mean(axis=0))
        rms = {(num_names[j] if num_names and j < len(num_names) else f"num[{j}]"): float(v) for j, v in enumerate(values)}
    valid = splits.get("valid")
    vlab = np.asarray(valid.arrays["label"])[:, 0] if valid is not None and "label" in valid.arrays else np.zeros(0)
    return DataStats(train_rows=int(len(labels)), train_positives=int(round(float(labels.sum()))),
                     valid_rows=int(len(vlab)), valid_positives=int(round(float(vlab.sum()))), fields=fields,
                     numeric_rms=rms)


def _batch_size(rows: int) -> int:
    batch = MAX_BATCH
    while batch > MIN_BATCH and rows / batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def derive(stats: DataStats, explicit: set[str] = frozenset(), has_first_order: bool = False) -> list[AutoSetting]:
    """The settings for data with these statistics that differ from the BARS defaults, each with its
    reason; keys in ``explicit`` (flat names the user set) are left out. ``has_first_order``: the
    model has one first-order term (``LR(x)``, :func:`ctrlab.train.linear_init.first_order_module`)."""
    out: list[AutoSetting] = []

    def put(key: str, value: Any, reason: str) -> None:
        if key not in explicit:
            out.append(AutoSetting(key, value, reason))

    rows = stats.train_rows
    batch = _batch_size(rows)
    if batch != MAX_BATCH and "trainer.batch_size" not in explicit:
        put("trainer.batch_size", batch,
            f"{rows:,} train rows: {math.ceil(rows / batch)} steps per epoch; {MAX_BATCH} would give "
            f"{math.ceil(rows / MAX_BATCH)}")
        lr = float(f"{BARS_LR * math.sqrt(batch / MAX_BATCH):.3g}")
        put("trainer.lr", lr, f"batch {batch} instead of {MAX_BATCH}: Adam's square-root scaling rule, "
            f"{BARS_LR:g} x sqrt({batch}/{MAX_BATCH}) (1e-3 over {MAX_BATCH // batch}x more steps overfits within an epoch)")
    warm = 0 < rows < SMALL_DATA_ROWS and has_first_order and stats.valid_rows > 0 and "linear_warm_start" not in explicit
    # the minority class limits how precisely AUC / logloss are measured
    vpos = min(stats.valid_positives, stats.valid_rows - stats.valid_positives)
    few = stats.valid_rows and vpos < FEW_VALID_POSITIVES
    if few:
        noise = 0.5 / math.sqrt(max(vpos, 1))
        why = f"{vpos:,} validation positives (minority class): AUC noise about +-{noise:.3f} per epoch"
        put("trainer.monitor", "logloss", why + "; logloss uses every row and catches lost calibration")
        if not warm:
            put("trainer.patience", 4, why + "; 2 epochs without gain would stop on noise")
            put("trainer.lr_decay_factor", 0.5, why + "; x0.1 per noisy plateau would freeze the model early")
        put("trainer.min_epochs", 3, why + "; the first epochs always run")
    if warm:
        why = ("linear_warm_start: the deep part takes over from the fitted regression gradually, as the embedding L2 "
               "shrinks its weights (movielens_100k: validation AUC flat for 8 epochs, then 0.678 -> 0.696)")
        put("trainer.patience", WARM_PATIENCE, why + f"; {WARM_PATIENCE} epochs without gain before stopping")
        put("trainer.reduce_lr_on_plateau", False, why + "; a decayed LR froze it before it did")
    if 0 < rows < SMALL_DATA_ROWS and "trainer.sparse_embeddings" not in explicit:
        put("model_params.embedding_regularizer", SMALL_DATA_EMBEDDING_L2,
            f"{rows:,} train rows: embedding tables far larger than the data memorise it in an epoch or two; "
            f"L2 {SMALL_DATA_EMBEDDING_L2:g} on them")
    if 0 < rows < SMALL_DATA_ROWS and stats.fields and not warm:
        rare = max(stats.fields, key=lambda f: f.singletons / max(f.values, 1))
        share = rare.singletons / max(rare.values, 1)
        if share >= RARE_SHARE:
            put("min_count", 2,
                f"{rows:,} train rows; {rare.singletons:,} of {rare.values:,} values of {rare.name} ({share:.0%}) "
                "occur once: each would get an embedding trained on one row, they share the OOV one instead")
    if warm:
        put("linear_warm_start", True,
            f"{rows:,} train rows: the deep part overfits within a few epochs, long before the first-order "
            "weights converge at its learning rate; they start at an L2 logistic regression fitted on train "
            "(C picked on valid), values seen once included (the L2 shrinks their weights)")
        put("trainer.validate_start", True,
            "with linear_warm_start the starting weights are a fitted logistic regression: if no epoch beats "
            "them on validation they are kept, so the run never ends worse than that")
    if stats.numeric_rms:
        name, big = max(stats.numeric_rms.items(), key=lambda kv: kv[1])
        put("small_numeric_init", True,
            f"{len(stats.numeric_rms)} numeric fields (largest train root mean square: {name} {big:.3g}): "
            "Xavier-initialised numeric vectors would dominate the first logits; they start at the embedding "
            "rows' scale instead")
    p = stats.base_rate
    if 0 < p < 1:
        put("init_output_bias", True,
            f"train base rate {p:.4g}: output bias starts at log(p/(1-p)) = {math.log(p / (1 - p)):.3f}, "
            "so the untrained model predicts the base rate")
    return out


def describe(settings: list[AutoSetting]) -> dict[str, dict[str, Any]]:
    """``{key: {"value": ..., "reason": ...}}`` as metrics.json and run_config.yaml record it."""
    return {s.key: {"value": s.value, "reason": s.reason} for s in settings}
