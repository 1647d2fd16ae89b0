"""A validation split carved out of the train file when the dataset config lists no ``valid`` file.

``valid_fraction`` (default 0.1) of the train rows become the valid split: a seeded random sample
(``split_seed``), or with ``valid_time_column`` the latest rows by that column (ties keep file
order). The choice is a boolean mask over the train file's data rows in file order
(:func:`holdout`), computed the same way by the in-memory and the streaming pipeline, so both give
the same rows (and a run's evaluate and resume, which prepare the same config, the same split).
The remaining rows are the train split: vocabularies and statistics are fitted on them alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from .errors import DataError
from .readers import LINE, read_split
from .schema import DatasetConfig
from .streaming import STREAM_FORMATS, iter_blocks


@dataclass
class Holdout:
    """Which rows of the train file form the valid split."""

    path: Path
    """The train file."""
    valid: np.ndarray
    """One bool per data row of the train file, in file order: True for a valid row."""
    description: str
    """How the split was made, for the log ("valid: 10% of train.csv (seed 2021), 2,400 rows")."""


def holdout(cfg: DatasetConfig, path: Path, block_rows: int, rows: int | None = None) -> Holdout | None:
    """The valid rows carved out of the train file ``path``; None when the config has a valid file or
    ``valid_fraction: 0``. ``rows``: the file's data rows when known (else counted in a pass)."""
    fraction = cfg.carved_valid_fraction
    if fraction == 0:
        return None
    share = f"{fraction * 100:g}%"
    if cfg.valid_time_column is None:
        n = rows if rows is not None else _count_rows(cfg, path, block_rows)
        k = _valid_count(cfg, path, n, fraction)
        valid = np.zeros(n, dtype=bool)
        valid[np.random.default_rng(cfg.split_seed).choice(n, size=k, replace=False)] = True
        how = f"{share} of {path.name} (seed {cfg.split_seed})"
    else:
        key = _time_key(cfg, path, block_rows)
        n = len(key)
        k = _valid_count(cfg, path, n, fraction)
        valid = np.zeros(n, dtype=bool)
        valid[np.argsort(key, kind="stable")[n - k:]] = True  # the k latest; ties in file order
        how = f"the latest {share} of {path.name} by {cfg.valid_time_column!r}"
    return Holdout(path, valid, f"valid: {how}, {k:,} rows")


def _valid_count(cfg: DatasetConfig, path: Path, n: int, fraction: float) -> int:
    k = int(round(fraction * n))
    if k < 1 or k > n - 1:
        raise DataError(
            f"valid_fraction {fraction:g} of the train file's {n:,} rows leaves {k:,} for valid and {n - k:,} for "
            "train; each needs at least one",
            file=path,
            fix="add rows to the train file, change valid_fraction, or list a valid file in the dataset config",
        )
    return k


def _count_rows(cfg: DatasetConfig, path: Path, block_rows: int) -> int:
    """Data rows of a streamed-format file, from a pass over its first label column alone."""
    return sum(b.height for b in iter_blocks(cfg, path, [cfg.labels[0]], block_rows, numbers=False))


def _time_key(cfg: DatasetConfig, path: Path, block_rows: int) -> np.ndarray:
    """The values of ``valid_time_column`` as sortable numbers (floats, or a datetime's integer
    ticks), one per data row; a DataError names the line of a cell that cannot be ordered."""
    col = cfg.valid_time_column
    try:
        if cfg.format in STREAM_FORMATS:
            blocks = list(iter_blocks(cfg, path, [col], block_rows, numbers=False))
            frame = pl.concat(blocks) if blocks else pl.DataFrame({col: [], LINE: []})
        else:
            frame = read_split(cfg, path, [col])
    except DataError as exc:
        if exc.column != col or "not found" not in exc.problem:
            raise
        raise DataError(f"valid_time_column {col!r} is not a column of the train file; {exc.problem.split('; ')[-1]}",
                        file=path, column=col,
                        fix="set valid_time_column to a column of the train file, or drop it for a random split"
                        ) from None
    values, lines = frame[col], frame[LINE]

    def refuse(i: int, why: str) -> DataError:
        return DataError(f"valid_time_column: {why}, so the rows cannot be ordered by time", file=path,
                         line=int(lines[i]), column=col,
                         fix="fill the column with numbers (e.g. Unix timestamps) or ISO dates/datetimes, or "
                             "choose another valid_time_column")

    if values.dtype == pl.String:
        text = values.str.strip_chars()
        empty = (text.fill_null("") == "").arg_true()
        if len(empty):
            raise refuse(int(empty[0]), "the cell is empty")
        numbers = text.cast(pl.Float64, strict=False)
        if numbers.null_count() == 0:
            values = numbers
        else:
            try:
                values = text.str.to_datetime(strict=True, time_unit="us")
            except pl.exceptions.PolarsError:
                bad = int(numbers.is_null().arg_true()[0])
                raise refuse(bad, f"{text[bad]!r} is neither a number nor an ISO date/datetime") from None
    if not (values.dtype.is_numeric() or values.dtype.is_temporal()):
        raise refuse(0, f"the column holds {values.dtype} values")
    missing = values.is_null().arg_true()
    if len(missing):
        raise refuse(int(missing[0]), "the cell is empty")
    if values.dtype.is_temporal():
        return values.to_physical().to_numpy()
    key = values.cast(pl.Float64).to_numpy()
    nan = np.flatnonzero(np.isnan(key))
    if len(nan):
        raise refuse(int(nan[0]), "the value is NaN")
    return key
