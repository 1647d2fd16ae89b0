"""Encoded splits as one flat table: what a GBDT (or any tabular estimator) is trained on.

:func:`tabular_split` reads the same :class:`~ctrlab.data.loader.EncodedSplit` the torch models read
(encoded with the run's feature map: vocabularies, normalisers and bucket edges fitted on the train
split only, so nothing of valid or test leaks into the columns), one column per value as follows,
fields in the feature map's order (:meth:`~ctrlab.data.feature_map.FeatureMap.field_names`):

==========================  ======================================================================
feature                     columns
==========================  ======================================================================
categorical (also crosses,  ``<name>``: its id (0 padding, 1 out-of-vocabulary, 2.. the train
bucketized numerics)        vocabulary), a **categorical** column
numeric                     ``<name>``: the encoded (normalised) value
dense vector of size d      ``<name>.0`` .. ``<name>.<d-1>``: one numeric column per dimension
id sequence                 ``<name>.length`` (numeric: the number of tokens) and ``<name>.last``
                            (**categorical**: the most recent token's id, the last one in the cell's
                            order; 0 when the sequence is empty)
number sequence             ``<name>.last``: the most recent value (0 when empty)
==========================  ======================================================================

A sequence becomes its length and its latest item because a tree cannot read a variable-length list:
the latest item is the strongest single signal of a behaviour history (what DIN's target attention
weighs most on recent-item data), and the length says how active the user is. Nothing else of the
history reaches the GBDT; this is a baseline's input, not a sequence model's.

Categorical ids are stored as float32 (exact up to 2^24); a vocabulary larger than that is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.errors import DataError
from ..data.feature_map import FeatureMap
from ..data.loader import EncodedSplit, RaggedArray

MAX_EXACT_ID = 1 << 24
"""Largest id a float32 column holds exactly."""
BLOCK_ROWS = 1 << 18
"""Rows converted at a time (memory-mapped arrays are read in pieces)."""


@dataclass
class TabularSplit:
    """One split as a flat table."""

    X: np.ndarray
    """(n, d) float32; categorical columns hold integer ids as floats."""
    y: np.ndarray | None
    """(n,) 0/1 labels (the chosen label column), None when unlabeled."""
    feature_names: list[str]
    """Column names (see the module docstring)."""
    categorical: list[int]
    """Column indices of the categorical (id) columns."""
    group: np.ndarray | None = None
    """(n,) group ids when the dataset has a ``group_field`` (for gAUC), else None."""

    def __len__(self) -> int:
        return len(self.X)

    def take(self, rows) -> "TabularSplit":
        """The selected rows (an index array or a slice)."""
        return TabularSplit(self.X[rows], None if self.y is None else self.y[rows], list(self.feature_names),
                            list(self.categorical), None if self.group is None else self.group[rows])


@dataclass(frozen=True)
class Column:
    name: str
    categorical: bool
    source: str
    """The encoded array key it is read from (``cat``, ``num``, ``seq:<name>``, ...)."""
    index: int | None = None
    """Its column in that array (``cat``, ``num``, ``dense:<name>``), None for a sequence summary."""
    summary: str | None = None
    """``length`` / ``last`` for a sequence's summary column."""


def tabular_columns(fmap: FeatureMap) -> list[Column]:
    """The columns :func:`tabular_split` builds from splits encoded with ``fmap``, in order."""
    cat = {f.name: j for j, f in enumerate(fmap.categorical)}
    num = {f.name: j for j, f in enumerate(fmap.numeric)}
    seqs = {f.name: f for f in fmap.sequences}
    dense = {f.name: f for f in fmap.dense}
    cols: list[Column] = []
    for name in fmap.field_names():
        if name in cat:
            _check_vocab(name, fmap.categorical[cat[name]].vocab_size)
            cols.append(Column(name, True, "cat", cat[name]))
        elif name in num:
            cols.append(Column(name, False, "num", num[name]))
        elif name in seqs:
            _check_vocab(name, seqs[name].vocab_size)
            cols.append(Column(f"{name}.length", False, f"seq:{name}", summary="length"))
            cols.append(Column(f"{name}.last", True, f"seq:{name}", summary="last"))
        elif name in dense:
            cols += [Column(f"{name}.{i}", False, f"dense:{name}", i) for i in range(dense[name].dim)]
    cols += [Column(f"{f.name}.last", False, f"numseq:{f.name}", summary="last") for f in fmap.numeric_sequences]
    names = [c.name for c in cols]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"the tabular columns {dup} would be named twice (a field named like another's "
                        "sequence or vector column)", fix="rename the feature in the dataset config")
    return cols


def _check_vocab(name: str, vocab_size: int) -> None:
    if vocab_size > MAX_EXACT_ID:
        raise DataError(f"field {name!r} has {vocab_size:,} ids, more than a float32 column holds exactly "
                        f"({MAX_EXACT_ID:,}), so a GBDT cannot read it as a category",
                        fix=f"raise the field's min_count or give it hash_buckets below {MAX_EXACT_ID:,}")


def tabular_split(fmap: FeatureMap, encoded_split: EncodedSplit, label_column: int = 0) -> TabularSplit:
    """``encoded_split`` (encoded with ``fmap``) as a :class:`TabularSplit`: columns as the module
    docstring lists, ``y`` the label column ``label_column`` (None when the split has no labels),
    ``group`` the split's group ids (None without a ``group_field``)."""
    arrays = encoded_split.arrays
    cols = tabular_columns(fmap)
    n = len(encoded_split)
    missing = sorted({c.source for c in cols} - set(arrays))
    if missing:
        raise DataError(f"the encoded split has no arrays {missing}, which its feature map "
                        f"{fmap.dataset!r} describes (keys: {sorted(arrays)})",
                        fix="encode the split with the run's own feature map (ctrlab prepares it)")
    X = np.empty((n, len(cols)), dtype=np.float32)
    padding = {f.name: (fmap.encoders.get(f.name) or {}).get("spec", {}).get("padding", "pre")
               for f in fmap.numeric_sequences}
    for source in dict.fromkeys(c.source for c in cols):
        mine = [(k, c) for k, c in enumerate(cols) if c.source == source]
        arr = arrays[source]
        if isinstance(arr, RaggedArray):
            lengths, last = _ragged_summary(arr)
            for k, c in mine:
                X[:, k] = lengths if c.summary == "length" else last
            continue
        for start in range(0, n, BLOCK_ROWS):
            block = np.asarray(arr[start:start + BLOCK_ROWS])
            stop = start + len(block)
            if source.startswith("seq:"):
                lengths, last = _padded_summary(block)
            elif source.startswith("numseq:"):
                pre = padding[source.split(":", 1)[1]] == "pre"
                lengths, last = (None, block[:, -1]) if pre else _padded_summary(block)
            for k, c in mine:
                if c.summary == "length":
                    X[start:stop, k] = lengths
                elif c.summary == "last":
                    X[start:stop, k] = last
                else:
                    X[start:stop, k] = block[:, c.index]
    labels = arrays.get("label")
    y = None if labels is None else np.asarray(labels[:, label_column], dtype=np.float32)
    group = arrays.get("group")
    return TabularSplit(X, y, [c.name for c in cols], [k for k, c in enumerate(cols) if c.categorical],
                        None if group is None else np.asarray(group))


def _ragged_summary(arr: RaggedArray) -> tuple[np.ndarray, np.ndarray]:
    """(number of tokens, last token or 0) per row of a ragged sequence (values in cell order)."""
    offsets = np.asarray(arr.offsets)
    lengths = np.diff(offsets)
    values = np.asarray(arr.values)
    last = np.zeros(len(lengths), dtype=values.dtype)
    some = lengths > 0
    last[some] = values[offsets[1:][some] - 1]
    return lengths, last


def _padded_summary(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(number of tokens, last token or 0) per row of a padded block: tokens are the non-zero entries,
    contiguous on the side away from the padding (pre or post), in cell order."""
    real = block != 0
    lengths = real.sum(axis=1)
    width = block.shape[1]
    last_pos = width - 1 - np.argmax(real[:, ::-1], axis=1)  # the rightmost token's position
    last = block[np.arange(len(block)), last_pos]
    return lengths, np.where(lengths > 0, last, 0)
