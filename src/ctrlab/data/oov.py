"""Out-of-vocabulary rates: how much of each split the train vocabularies do not know.

A field whose values are written differently in one split (``10.0`` for ``10``, other ids, another
column) encodes to the OOV id (1) there, and the model then sees one value for the whole split:
a wrong number with no error. ``prepare()`` logs every split's rates and warns when one is high.

* categorical field: the share of the split's rows whose id is OOV;
* sequence field: the share of its tokens (padding excluded) that are OOV;
* item-vector field (a ``dense_vector`` with ``key``, :mod:`ctrlab.data.item_vectors`): the share of
  rows whose item has no vector (zeros: not in the table, or no fitted term in its text).

Hashed fields (``hash_buckets``) have no vocabulary and bucketized numerics no OOV id: they are
not reported.

A split's rate warns (:class:`~ctrlab.data.errors.DataWarning`) when it is at least
:data:`HIGH_OOV_RATE` and at least :data:`OOV_RATE_JUMP` above the train split's own rate for
the field. A mismatch (a float column's ``10.0`` against train's ``10``, other ids, a shifted
column) leaves almost nothing known: close to 100%. Cold start is legitimately high but leaves
some values known: the shipped datasets' valid/test splits reach 85.8% (movielens_100k
``user_id``, a global time split: most later ratings come from new users; train 0%) and 79%
(avazu_head10k ``device_ip``, train 65%), so the threshold sits above them. Train's own rate is
what ``min_count`` makes OOV on purpose; the jump keeps a field that is rare everywhere quiet.
Every rate is logged, warned or not.

A sequence field also warns when its rate on the train split is above
:data:`HIGH_SEQUENCE_OOV_RATE`: a history whose tokens are mostly unknown even in the split the
vocabulary was fitted on means the vocabulary does not cover it (a shared vocabulary fitted on another column, a wrong ``splitter`` that makes
each whole cell one rare token, a ``min_count`` too high for the history's tokens), and the
model sees almost nothing but the OOV id there. Other splits keep the rule above: later
histories legitimately hold many items train never saw (taobao_head's test split: 53.8% of its
history tokens, train 0%).
"""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from .errors import DataWarning
from .feature_map import FeatureMap
from .loader import EncodedSplit, RaggedArray
from .schema import OOV_ID, PAD_ID

HIGH_OOV_RATE = 0.9
"""A split's OOV rate for a field at or above this may warn (see :data:`OOV_RATE_JUMP`)."""
OOV_RATE_JUMP = 0.25
"""... when it is also at least this much above the train split's rate for the field."""
HIGH_SEQUENCE_OOV_RATE = 0.5
"""A sequence field whose share of OOV tokens on the train split is above this warns."""
CHUNK_ROWS = 1 << 20
"""Rows counted at a time (memory-mapped splits are read in pieces)."""


def _hashed(fmap: FeatureMap, name: str) -> bool:
    return bool((fmap.encoders.get(name) or {}).get("spec", {}).get("hash_buckets"))


def oov_rates(fmap: FeatureMap, split: EncodedSplit) -> dict[str, float]:
    """Field name -> the split's OOV rate (rows for categorical fields, tokens for sequences), in
    the feature map's field order, rounded to 6 decimals."""
    rates: dict[str, float] = {}
    n = len(split)
    cols = [j for j, f in enumerate(fmap.categorical) if f.origin == "categorical" and not _hashed(fmap, f.name)]
    if cols and n:
        counts = np.zeros(len(cols), dtype=np.int64)
        cat = split.arrays["cat"]
        for start in range(0, n, CHUNK_ROWS):
            counts += (np.asarray(cat[start:start + CHUNK_ROWS])[:, cols] == OOV_ID).sum(axis=0)
        for j, c in zip(cols, counts):
            rates[fmap.categorical[j].name] = round(float(c) / n, 6)
    for f in fmap.sequences:
        if _hashed(fmap, f.shares or f.name):
            continue
        seq = split.arrays[f"seq:{f.name}"]
        oov = tokens = 0
        if isinstance(seq, RaggedArray):  # stored ragged: the values are exactly the real tokens
            for start in range(0, len(seq.values), CHUNK_ROWS * 64):
                oov += int((np.asarray(seq.values[start:start + CHUNK_ROWS * 64]) == OOV_ID).sum())
            tokens = len(seq.values)
        for start in range(0, n if not isinstance(seq, RaggedArray) else 0, CHUNK_ROWS):
            part = np.asarray(seq[start:start + CHUNK_ROWS])
            oov += int((part == OOV_ID).sum())
            tokens += int((part != PAD_ID).sum())
        rates[f.name] = round(oov / tokens, 6) if tokens else 0.0
    for f in fmap.dense:
        if not (fmap.encoders.get(f.name) or {}).get("spec", {}).get("key"):
            continue  # a vector column: nothing is looked up
        vecs, none = split.arrays[f"dense:{f.name}"], 0
        for start in range(0, n, CHUNK_ROWS):
            none += int((~np.asarray(vecs[start:start + CHUNK_ROWS]).any(axis=1)).sum())
        rates[f.name] = round(none / n, 6) if n else 0.0
    return rates


def high_oov_fields(rates: dict[str, dict[str, float]], train: str = "train") -> list[tuple[str, str, float, float]]:
    """``(split, field, rate, train rate)`` for each field whose rate is high by the rule in the
    module docstring."""
    base = rates.get(train, {})
    out = []
    for split, fields in rates.items():
        if split == train:
            continue
        for name, rate in fields.items():
            ref = base.get(name, 0.0)
            if rate >= HIGH_OOV_RATE and rate - ref >= OOV_RATE_JUMP:
                out.append((split, name, rate, ref))
    return out


def high_oov_fix(split: str) -> str:
    """What to change when a field of ``split`` is mostly out of the train vocabulary."""
    return (f"check that the {split} file writes this field's values as train does "
            "(e.g. '10.0' vs '10', other ids, another column)")


def high_oov(rates: dict[str, dict[str, float]], train: str = "train") -> list[str]:
    """One message per (split, field) whose rate is high by the rule in the module docstring."""
    out = []
    for split, name, rate, ref in high_oov_fields(rates, train):
        fix = high_oov_fix(split)
        out.append(f"{split} split, field {name!r}: {rate:.1%} of rows (or sequence tokens) are out of the "
                   f"train vocabulary (train {ref:.1%}). {fix[0].upper()}{fix[1:]}")
    return out


def high_sequence_oov(rates: dict[str, dict[str, float]], sequences: list[str],
                      train: str = "train") -> list[str]:
    """One message per sequence field whose train split rate is above :data:`HIGH_SEQUENCE_OOV_RATE`."""
    out = []
    fields = rates.get(train, {})
    for name in sequences:
        rate = fields.get(name)
        if rate is not None and rate > HIGH_SEQUENCE_OOV_RATE:
            out.append(f"{train} split, sequence field {name!r}: {rate:.1%} of its tokens are out of the train "
                       f"vocabulary. Fix: check its splitter (the tokens it gives), give it the vocabulary of "
                       f"the field its ids belong to (share_vocab_with, fitted on that column and the sequence), "
                       f"or lower min_count")
    return out


def report_oov(rates: dict[str, dict[str, float]], log: Callable[[str], None],
               sequences: list[str] = ()) -> None:
    """Log each split's rates and warn (log line and :class:`DataWarning`) about high ones
    (``sequences``: the sequence fields, which also warn by :func:`high_sequence_oov`)."""
    for split, fields in rates.items():
        if fields:
            log(f"[ctrlab]   {split} OOV rate: " + ", ".join(f"{k} {v:.1%}" for k, v in fields.items()))
    for message in high_oov(rates) + high_sequence_oov(rates, list(sequences)):
        log(f"[ctrlab] WARNING: {message}")
        warnings.warn(message, DataWarning, stacklevel=3)
