"""Unseen values per row: which fields of each row the training vocabularies do not know.

Tokens written in another form than in training (``"4:1"`` where the vocabulary holds ``"4"``,
``"10.0"`` for ``"10"``) all encode to the OOV id, and the model still returns a confident
probability. :class:`UnseenCheck` finds them from the encoded arrays with a few numpy comparisons
per batch (no Python per row), for the server's per-row ``unseen_fields`` and ``ctrlab predict``'s
per-field warning.

Which fields count (the *checked* fields):

* a categorical field is unseen in a row when its id is OOV and its raw cell is not missing
  (null, an empty string or NaN is a missing value, not an unseen one);
* a sequence field is unseen in a row when it has at least one token (after the cut to
  ``max_len``) and every one of them is OOV; an empty or missing history is not unseen;
* an item-vector field (a ``dense_vector`` with ``key``, :mod:`ctrlab.data.item_vectors`) is unseen
  in a row when its item cell is not missing and the row's vector is zeros (no vector in the table);
* hashed fields (``hash_buckets``) have no vocabulary, and numeric fields (bucketized too) no
  OOV id: they are not checked.

:mod:`ctrlab.data.oov` reports a whole split's OOV rates at training time; there a missing cell
that train never had counts as OOV too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from .feature_map import FeatureMap
from .schema import OOV_ID, PAD_ID

HIGH_UNSEEN_SHARE = 0.5
"""More than this share of unseen values is "mostly unseen": a served request (averaged over its rows
and checked fields) is logged, and ``ctrlab predict`` warns about a field of the file."""


@dataclass(frozen=True)
class CheckedField:
    """A field whose values can be unseen."""

    name: str
    column: str
    """The raw column it reads."""
    key: str
    """Its encoded array: ``cat`` (column ``index``), ``seq:<name>`` or ``dense:<name>`` (item vectors)."""
    index: int | None
    known: str | None
    """A value of the training vocabulary (the most frequent non-empty one; an item table's first id), to show
    the expected form."""


def _spec(fmap: FeatureMap, name: str) -> dict[str, Any]:
    return (fmap.encoders.get(name) or {}).get("spec", {})


def _known(fmap: FeatureMap, name: str) -> str | None:
    vocab = (fmap.encoders.get(name) or {}).get("vocab") or []
    return next((v for v in vocab if v != ""), None)


class UnseenCheck:
    """The checked fields of a feature map, and their unseen mask for encoded rows."""

    def __init__(self, fmap: FeatureMap):
        fields = []
        for j, f in enumerate(fmap.categorical):
            spec = _spec(fmap, f.name)
            if f.origin == "categorical" and spec and not spec.get("hash_buckets"):
                fields.append(CheckedField(f.name, _column(spec), "cat", j, _known(fmap, f.name)))
        for f in fmap.sequences:
            spec, vocab_of = _spec(fmap, f.name), f.shares or f.name
            if spec and not _spec(fmap, vocab_of).get("hash_buckets"):
                fields.append(CheckedField(f.name, _column(spec), f"seq:{f.name}", None, _known(fmap, vocab_of)))
        for f in fmap.dense:
            spec = _spec(fmap, f.name)
            if spec.get("key"):  # item vectors: the item has no vector in the fitted table
                keys = (fmap.encoders.get(f.name) or {}).get("keys") or []
                fields.append(CheckedField(f.name, spec["key"], f"dense:{f.name}", None, keys[0] if keys else None))
        self.fields = fields
        self.names = [f.name for f in fields]
        self._cat = [f for f in fields if f.key == "cat"]
        self._cat_index = [f.index for f in self._cat]

    def __len__(self) -> int:
        return len(self.fields)

    def mask(self, frame: pl.DataFrame, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Bool ``(rows, len(self))``: True where the row's field is unseen (rule in the module docstring).
        ``frame``: the raw columns the arrays were encoded from, row-aligned."""
        n = frame.height
        if not self._cat:
            out = np.zeros((n, len(self.fields)), dtype=bool)
        else:
            cat = np.asarray(arrays["cat"])
            # every categorical column checked, in order (no hashed or bucketized ones): no column copy
            oov = (cat if self._cat_index == list(range(cat.shape[1])) else cat[:, self._cat_index]) == OOV_ID
            if len(self._cat) == len(self.fields):
                out = oov
            else:
                out = np.zeros((n, len(self.fields)), dtype=bool)
                out[:, :len(self._cat)] = oov
            if oov.any():
                # only columns with an OOV id read the raw cells, in one Polars call (one per column cost
                # about 50 us each: 10% of a 1,024-row model call)
                cols = np.flatnonzero(oov.any(axis=0))
                missing = frame.select([_missing(frame.schema[self._cat[j].column], self._cat[j].column).alias(str(k))
                                        for k, j in enumerate(cols)]).to_numpy()
                out[:, cols] &= ~missing
        for j, f in enumerate(self.fields[len(self._cat):], start=len(self._cat)):
            if f.key.startswith("dense:"):  # zeros where the item (a present cell) has no vector
                out[:, j] = ~np.asarray(arrays[f.key]).any(axis=1)
                if out[:, j].any():
                    out[:, j] &= ~frame.select(_missing(frame.schema[f.column], f.column)).to_series().to_numpy()
                continue
            ids = np.asarray(arrays[f.key])
            tokens = (ids != PAD_ID).sum(axis=1)
            out[:, j] = (tokens > 0) & ((ids == OOV_ID).sum(axis=1) == tokens)
        return out

    def example(self, frame: pl.DataFrame, field: int, row: int) -> str:
        """The raw value of ``field`` (an index into :attr:`fields`) in ``row``, as text (a sequence's
        first token)."""
        value = frame[self.fields[field].column][row]
        if isinstance(value, pl.Series):
            value = value.to_list()
        if isinstance(value, list) and value:
            value = value[0]
        return str(value)

    def describe(self, field: int, example: str) -> str:
        """``field 'item': '4:1' not in the training vocabulary (known values look like '4')``."""
        f = self.fields[field]
        known = f" (known values look like {_short(f.known)})" if f.known is not None else ""
        if f.key.startswith("dense:"):
            return f"field {f.name!r}: item {_short(example)} has no vector in the item table{known}"
        return f"field {f.name!r}: {_short(example)} not in the training vocabulary{known}"


def _column(spec: dict[str, Any]) -> str:
    return spec.get("key") or spec.get("source") or spec["name"]


def _missing(dtype: pl.DataType, column: str) -> pl.Expr:
    """Cells that are missing values (null, ``""``, NaN): the encoders' empty token, not an unseen value."""
    raw = pl.col(column)
    if dtype == pl.String:
        missing = raw.is_null() | (raw == "")
    elif dtype.is_float():
        missing = raw.is_null() | raw.is_nan()
    else:
        missing = raw.is_null()
    return missing.fill_null(True)


def _short(value: str) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."



def high_unseen_fields(fmap: FeatureMap, frame: pl.DataFrame, arrays: dict[str, np.ndarray]) -> list[str]:
    """One message per checked field of which more than :data:`HIGH_UNSEEN_SHARE` of the rows are
    unseen (``ctrlab predict``'s warning; ``frame``: the raw rows ``arrays`` were encoded from)."""
    check = UnseenCheck(fmap)
    if not len(check) or not frame.height:
        return []
    mask = check.mask(frame, arrays)
    shares = mask.mean(axis=0)
    out = []
    for j in np.flatnonzero(shares > HIGH_UNSEEN_SHARE):
        example = check.example(frame, int(j), int(mask[:, j].argmax()))
        out.append(f"{shares[j]:.1%} of rows: {check.describe(int(j), example)}. Check that the file writes "
                   "this field's values as the training data does (e.g. '10' not '10.0', no 'field:value' form, "
                   "the same column)")
    return out
