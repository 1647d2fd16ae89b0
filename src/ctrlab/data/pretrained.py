"""Pretrained embedding vectors for a field's vocabulary, read from a file keyed by token.

Formats (the key/value layout of FuxiCTR's ``pretrained_emb`` files, plus safetensors):

* ``.parquet``: a ``key`` column (tokens) and a ``value`` column (list of floats);
* ``.npz``: arrays ``key`` (tokens, strings or integers; no pickled objects) and ``value``
  (``(n, dim)`` floats);
* ``.safetensors``: one ``(dim,)`` tensor per token, named by the token.

Keys are matched to the vocabulary as the encoders turn raw cells into tokens
(:func:`~ctrlab.data.encoders.categorical_tokens`: an integer key 10, and a float key 10.0, match
the token ``"10"``). Item-vector features (:mod:`ctrlab.data.item_vectors`) read their tables with
:func:`read_vectors` too, with key / value columns of any name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from .errors import DataError
from .encoders import FIRST_ID, categorical_tokens

FORMATS = (".parquet", ".npz", ".safetensors")


def _read(path: Path, field: str, key: str = "key", value: str = "value",
          fix: str = "") -> tuple[list[str], np.ndarray]:
    """(keys as tokens, ``(n, dim)`` float32 values) of a vectors file; ``key`` / ``value``: the
    Parquet columns or npz arrays holding them; ``fix``: what to do when they are missing."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path)
        missing = [c for c in (key, value) if c not in df.columns]
        if missing:
            raise DataError(f"{path}: pretrained embeddings of {field!r} need columns {key!r} and {value!r}; "
                            f"missing {missing} (columns: {df.columns}){fix}")
        keys = categorical_tokens(df[key]).to_list()
        cells = df[value]
        if not isinstance(cells.dtype, (pl.List, pl.Array)):
            raise DataError(f"{path}: column {value!r} of {field!r} must hold lists of floats, got {cells.dtype}")
        lens = cells.cast(pl.List(pl.Float64)).list.len()
        odd = lens.is_null() | (lens != (lens.max() or 0))
        if odd.any():
            i = int(odd.arg_max())
            raise DataError(f"{path}: vector of key {keys[i]!r} ({field!r}) is "
                            f"{'missing' if lens[i] is None else f'{lens[i]} long'}; every key needs a vector of "
                            f"the same length ({lens.max()})")
        values = np.asarray(cells.cast(pl.List(pl.Float64)).to_list(), dtype=np.float32).reshape(len(keys), -1)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (key, value) if k not in npz.files]
            if missing:
                raise DataError(f"{path}: pretrained embeddings of {field!r} need arrays {key!r} and {value!r}; "
                                f"missing {missing} (arrays: {npz.files}){fix}")
            try:
                raw_keys = npz[key]
            except ValueError as exc:  # an object array needs pickle, which is never used
                raise DataError(f"{path}: array {key!r} holds Python objects; save the tokens as a string "
                                "or integer array (np.array(tokens, dtype=str))") from exc
            keys = categorical_tokens(pl.Series(raw_keys)).to_list()
            values = np.asarray(npz[value], dtype=np.float32)
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        table = load_file(str(path))
        keys = list(table)
        values = np.stack([table[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
    else:
        raise DataError(f"{path}: pretrained embeddings of {field!r} must be one of {list(FORMATS)}")
    if values.ndim != 2 or len(values) != len(keys):
        raise DataError(f"{path}: expected one vector per key ({len(keys)} keys), got values of shape {values.shape}")
    return keys, values


def read_vectors(path: str | Path, field: str, key: str = "key", value: str = "value",
                 fix: str = "") -> tuple[list[str], np.ndarray]:
    """``(keys, vectors)`` of a vectors file (formats in the module docstring), checked: it exists,
    no key repeats, every value is a finite number. ``key`` / ``value``: the Parquet columns or npz
    arrays to read (safetensors names each tensor by its key); ``fix``: added to the error when
    they are missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained embeddings of {field!r}: {path} does not exist")
    keys, values = _read(path, field, key, value, fix)
    seen: set[str] = set()
    dup = sorted({k for k in keys if k in seen or seen.add(k)})
    if dup:
        raise DataError(f"{path}: pretrained embeddings of {field!r} repeat keys {dup[:5]}")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataError(f"{path}: the vector of key {keys[int(bad.argmax())]!r} ({field!r}) holds NaN or infinity "
                        f"({int(bad.sum())} vectors do); write finite numbers only")
    return keys, values


def pretrained_rows(path: str | Path, vocab: list[str], dim: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)``: the ids (in the field's id space: ``2 + position in vocab``) of the
    vocabulary tokens found in the file, and their ``(n, dim)`` float32 vectors. Tokens of the
    vocabulary that the file lacks (and padding / OOV) are not returned: they keep their usual
    initialisation. Keys that are not in the vocabulary are ignored."""
    path = Path(path)
    keys, values = read_vectors(path, field)
    if len(keys) and values.shape[1] != dim:
        raise DataError(f"{path}: pretrained vectors of {field!r} have {values.shape[1]} values but the field's "
                        f"embedding_dim is {dim}; set embedding_dim: {values.shape[1]} on the feature")
    position = {k: i for i, k in enumerate(keys)}
    found = [(FIRST_ID + i, position[t]) for i, t in enumerate(vocab) if t in position]
    ids = np.fromiter((i for i, _ in found), dtype=np.int64, count=len(found))
    rows = np.fromiter((r for _, r in found), dtype=np.int64, count=len(found))
    return ids, values[rows]
