"""Streaming preprocessing: files larger than memory, encoded in blocks of rows, in two passes.

``prepare(cfg, streaming=True)`` (or ``streaming: true`` in a run config) never holds a whole split:

1. **Fit** (train only): the file is read block by block (:func:`iter_blocks`, parsed exactly as
   :func:`~ctrlab.data.readers.read_split` parses it). Each
   block adds its token counts to running counts per vocabulary (a vocabulary shared with
   sequences counts their tokens too), and its values to running
   statistics per numeric feature (count, mean and sum of squares combined by Chan's formula, min,
   max), and its distinct items to the set an item-vector table is fitted on
   (:mod:`ctrlab.data.item_vectors`). The vocabularies and item tables come out identical to an
   in-memory fit (same counts, same order); the statistics equal it up to float rounding.
2. **Encode** (every split): blocks again, each encoded with :func:`~ctrlab.data.pipeline.encode_frame`
   and appended to its ``.npy`` files (:class:`NpyAppender`: the header's row count is filled in
   at the end, so no pass is spent counting rows).

Peak memory is a block (``block_rows``) plus the vocabularies, not the file. gAUC group ids are the
ranks of the split's sorted distinct group values, as in memory (one extra pass over the group column alone).
libSVM / libFM inputs are not streamed (they are small benchmark formats); they are read whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import polars as pl

from .derive import with_derived
from .encoders import CategoricalEncoder, NumericEncoder, SequenceEncoder, categorical_tokens, warn_splitter
from .errors import DataError
from .item_vectors import ItemVectorEncoder
from .readers import LINE, _numeric_columns, _require, csv_blocks
from .schema import DatasetConfig

STREAM_FORMATS = ("csv", "tsv", "parquet")
DEFAULT_BLOCK_ROWS = 1 << 18
"""Rows per block: a 262,144-row block of 40 Criteo text columns is about 0.4 GB parsed."""


# ---- reading in blocks ---------------------------------------------------------------------------
def _check_parquet(path: Path, columns: list[str]) -> None:
    if not path.exists():
        raise DataError(f"file {path} does not exist", file=path, fix="check the path in the dataset config's files")
    _require(path, list(pl.read_parquet_schema(path)), columns, None)


def iter_blocks(cfg: DatasetConfig, path: Path, columns: list[str], block_rows: int,
                numbers: bool = True, rows: np.ndarray | None = None) -> Iterator[pl.DataFrame]:
    """The split in blocks of about ``block_rows`` rows, in file order, each with the ``__line__``
    column numbering the source lines (so that errors name the right line). ``rows``: one bool per
    data row of the file; only the rows marked True (a validation split carved out of train, or the
    rest of train: :mod:`ctrlab.data.holdout`).

    Blocks are pulled one at a time, so memory holds one block: csv/tsv text is read in byte
    chunks cut at a row end by :func:`~ctrlab.data.readers.csv_blocks`, the in-memory reader's
    own parser; Parquet row batches come from PyArrow's ``iter_batches``. (Polars'
    ``collect_batches`` runs ahead of a slow consumer and buffers without a bound.)"""
    if rows is not None:
        start = 0
        for block in iter_blocks(cfg, path, columns, block_rows, numbers):
            keep = rows[start:start + block.height]
            start += block.height
            if keep.any():
                yield block.filter(pl.Series(keep))
        return
    if cfg.format != "parquet":
        yield from csv_blocks(cfg, path, columns, block_rows, numbers)  # numbers its lines itself
        return
    offset = 1
    for block in _parquet_blocks(path, columns, block_rows):
        if block.height == 0:
            continue
        yield block.with_columns((pl.int_range(block.height, dtype=pl.Int64) + offset).alias(LINE))
        offset += block.height


def _parquet_blocks(path: Path, columns: list[str], block_rows: int) -> Iterator[pl.DataFrame]:
    import pyarrow.parquet as pq

    _check_parquet(path, columns)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=block_rows, columns=columns):
        yield pl.from_arrow(batch).select(columns)  # type: ignore[union-attr]


def with_text_fallback(cfg: DatasetConfig, run: Callable[[bool], Any]) -> Any:
    """``run(numbers=True)``; if the reader could not parse a numeric column as numbers, the whole pass
    again with text columns, so that the numeric encoder names the bad cell (as read_split does)."""
    try:
        return run(True)
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        if cfg.format == "parquet" or not _numeric_columns(cfg):
            raise
        return run(False)


# ---- pass 1: fit ---------------------------------------------------------------------------------
class _RunningCounts:
    """Token counts of one vocabulary, merged block by block."""

    def __init__(self):
        self.counts: pl.DataFrame | None = None

    def add(self, tokens: pl.Series) -> None:
        block = tokens.rename("token").to_frame().group_by("token").agg(pl.len().cast(pl.Int64).alias("n"))
        if self.counts is None:
            self.counts = block
        else:
            self.counts = pl.concat([self.counts, block]).group_by("token").agg(pl.col("n").sum())

    def vocabulary(self, min_count: int) -> pl.Series:
        """Tokens seen at least ``min_count`` times, by count then token (as the in-memory fit)."""
        if self.counts is None:
            return pl.Series("token", [], dtype=pl.String)
        kept = self.counts.drop_nulls("token").filter(pl.col("n") >= min_count)
        return kept.sort(["n", "token"], descending=[True, False])["token"]


class _RunningMoments:
    """Count, mean, sum of squared deviations (Chan et al.), min and max of a numeric feature."""

    def __init__(self, keep_values: bool):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.min, self.max = np.inf, -np.inf
        self.values: list[np.ndarray] | None = [] if keep_values else None

    def add(self, x: np.ndarray) -> None:
        if not len(x):
            return
        n_b, mean_b = len(x), float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        if self.values is not None:  # quantile buckets need every value (8 bytes a row, one column)
            self.values.append(x)


def fit_streaming(cfg: DatasetConfig, path: Path, columns: list[str], encoders: dict[str, Any],
                  block_rows: int, numbers: bool, rows: np.ndarray | None = None) -> int:
    """Fit ``encoders`` (from ``_make_encoders``) on the train file block by block (its ``rows``
    only, when given: see :func:`iter_blocks`); returns the rows fitted on."""
    counts: dict[str, _RunningCounts] = {}
    moments: dict[str, _RunningMoments] = {}
    for name, enc in encoders.items():
        if isinstance(enc, CategoricalEncoder) and not enc.spec.hash_buckets:
            counts[name] = _RunningCounts()
        elif isinstance(enc, SequenceEncoder) and enc.shared is None and not enc.numbers:
            counts[name] = _RunningCounts()
    # a shared vocabulary counts its sequences' tokens too (as fit_vocabularies does in memory)
    sharing = [(enc.shared.spec.name, enc) for enc in encoders.values()
               if isinstance(enc, SequenceEncoder) and enc.shared is not None and enc.shared.spec.name in counts]
    for name, enc in encoders.items():
        if isinstance(enc, NumericEncoder):
            moments[name] = _RunningMoments(keep_values=bool(enc.spec.n_buckets))
    items = {name: set() for name, enc in encoders.items() if isinstance(enc, ItemVectorEncoder)}
    kept, rows = rows, 0
    float32_lost: dict[str, float] = {}  # a value float32 cannot hold, per numeric feature (one warning each)
    for block in iter_blocks(cfg, path, columns, block_rows, numbers, rows=kept):
        rows += block.height
        block = with_derived(block, cfg.features, path)
        if rows == block.height:  # the first block: a wrong splitter shows in any block
            for enc in encoders.values():
                if isinstance(enc, SequenceEncoder) and not enc.numbers:
                    warn_splitter(enc.spec, block[enc.column])
        for name, running in counts.items():
            enc = encoders[name]
            if isinstance(enc, CategoricalEncoder):
                running.add(enc._tokens(block))
            else:
                running.add(enc.flat_tokens(block))
        for name, seq in sharing:
            counts[name].add(seq.flat_tokens(block))
        for name, seen in items.items():  # the train split's items: what an item-vector table is fitted on
            seen.update(categorical_tokens(block[encoders[name].column]).unique().to_list())
        for name, running in moments.items():
            enc = encoders[name]
            x = enc.values(block, path)
            if name not in float32_lost and (lost := enc.float32_loss(x)) is not None:
                float32_lost[name] = lost
            if enc.spec.normalizer == "log":
                x = np.sign(x) * np.log1p(np.abs(x))
            running.add(x)
    if rows == 0:
        raise DataError(f"file {path} has no data rows", file=path, fix="add data rows")
    for name, lost in float32_lost.items():
        encoders[name].warn_float32(lost)
    for name, running in counts.items():
        enc = encoders[name]
        tokens = running.vocabulary(enc.spec.min_count)
        enc.vocab = tokens.to_list()
    for name, seen in items.items():
        encoders[name].fit_keys(seen)
    for name, m in moments.items():
        enc = encoders[name]
        enc.stats = {"mean": m.mean, "std": float(np.sqrt(m.m2 / m.n)), "min": m.min, "max": m.max}
        if enc.spec.n_buckets:
            x = np.concatenate(m.values)
            qs = np.quantile(x, np.linspace(0, 1, enc.spec.n_buckets + 1)[1:-1])
            enc.boundaries = sorted({float(q) for q in qs})
    return rows


# ---- pass 2: encode ------------------------------------------------------------------------------
class NpyAppender:
    """A ``.npy`` file written row block by row block, so that memory holds one block, not the array.

    The row count is not known in advance (counting would cost another pass over the file): the
    header is written with room for any count and rewritten, same length, when the file is closed."""

    HEADER_BYTES = 192
    """Bytes for the magic string, version, length and padded header dict (a multiple of 64)."""

    def __init__(self, path: Path, tail: tuple[int, ...], dtype: np.dtype):
        self.path, self.tail, self.dtype = path, tuple(tail), np.dtype(dtype)
        self.written = 0
        self.fh = open(path, "wb")
        self.fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        magic = np.lib.format.magic(2, 0)  # version 2: a 4-byte header length
        text = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                     "shape": (rows, *self.tail)})
        size = self.HEADER_BYTES - len(magic) - 4
        if len(text) + 1 > size:
            raise ValueError(f"{self.path}: header {text!r} does not fit {self.HEADER_BYTES} bytes")
        return magic + size.to_bytes(4, "little") + (text.ljust(size - 1) + "\n").encode("latin1")

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.tail or block.dtype != self.dtype:
            raise ValueError(f"{self.path}: block {block.shape} {block.dtype} does not fit {self.tail} {self.dtype}")
        self.fh.write(np.ascontiguousarray(block).tobytes())
        self.written += len(block)

    def close(self) -> None:
        self.fh.seek(0)
        self.fh.write(self._header(self.written))
        self.fh.close()


def split_groups(cfg: DatasetConfig, path: Path, group_field: str | None, block_rows: int,
                 numbers: bool, rows: np.ndarray | None = None) -> pl.Series | None:
    """The split's sorted distinct group values, from a pass over its group column alone (memory
    grows with the groups, not the rows); ``rows`` as for :func:`iter_blocks`."""
    if not group_field:
        return None
    seen = pl.Series(group_field, [], dtype=pl.String)
    for block in iter_blocks(cfg, path, [group_field], block_rows, numbers, rows=rows):
        seen = pl.concat([seen, block[group_field].cast(pl.String).fill_null("").unique()]).unique()
    return seen.sort()
