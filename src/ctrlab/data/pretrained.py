"""Pretrained embedding vectors for a field's vocabulary, read from a file keyed by token.

Formats (the key/value layout of FuxiCTR's ``pretrained_emb`` files, plus safetensors):

* ``.parquet``: a ``key`` column (tokens) and a ``value`` column (list of floats);
* ``.npz``: arrays ``key`` (tokens, strings or integers; no pickled objects) and ``value``
  (``(n, dim)`` floats);
* ``.safetensors``: one ``(dim,)`` tensor per token, named by the token.

Keys are matched to the vocabulary as the encoders turn raw cells into tokens (a cast to
string: an integer key 10 matches the token ``"10"``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from .errors import DataError
from .encoders import FIRST_ID

FORMATS = (".parquet", ".npz", ".safetensors")


def _read(path: Path, field: str) -> tuple[list[str], np.ndarray]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pl.read_parquet(path)
        missing = [c for c in ("key", "value") if c not in df.columns]
        if missing:
            raise DataError(f"{path}: pretrained embeddings of {field!r} need columns 'key' and 'value'; "
                            f"missing {missing} (columns: {df.columns})")
        keys = df["key"].cast(pl.String).to_list()
        values = np.asarray(df["value"].to_list(), dtype=np.float32)
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("key", "value") if k not in npz.files]
            if missing:
                raise DataError(f"{path}: pretrained embeddings of {field!r} need arrays 'key' and 'value'; "
                                f"missing {missing} (arrays: {npz.files})")
            try:
                raw_keys = npz["key"]
            except ValueError as exc:  # an object array needs pickle, which is never used
                raise DataError(f"{path}: array 'key' holds Python objects; save the tokens as a string "
                                "or integer array (np.array(tokens, dtype=str))") from exc
            keys = pl.Series(raw_keys).cast(pl.String).to_list()
            values = np.asarray(npz["value"], dtype=np.float32)
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


def pretrained_rows(path: str | Path, vocab: list[str], dim: int, field: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)``: the ids (in the field's id space: ``2 + position in vocab``) of the
    vocabulary tokens found in the file, and their ``(n, dim)`` float32 vectors. Tokens of the
    vocabulary that the file lacks (and padding / OOV) are not returned: they keep their usual
    initialisation. Keys that are not in the vocabulary are ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained embeddings of {field!r}: {path} does not exist")
    keys, values = _read(path, field)
    if len(keys) and values.shape[1] != dim:
        raise DataError(f"{path}: pretrained vectors of {field!r} have {values.shape[1]} values but the field's "
                        f"embedding_dim is {dim}; set embedding_dim: {values.shape[1]} on the feature")
    seen: set[str] = set()
    dup = sorted({k for k in keys if k in seen or seen.add(k)})
    if dup:
        raise DataError(f"{path}: pretrained embeddings of {field!r} repeat keys {dup[:5]}")
    position = {k: i for i, k in enumerate(keys)}
    found = [(FIRST_ID + i, position[t]) for i, t in enumerate(vocab) if t in position]
    ids = np.fromiter((i for i, _ in found), dtype=np.int64, count=len(found))
    rows = np.fromiter((r for _, r in found), dtype=np.int64, count=len(found))
    return ids, values[rows]
