"""``ctrlab predict``'s file side: the input read with the columns to pass through, the warning about
mostly unseen fields, and the scores CSV (kept columns, then ``probability``)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

from .errors import DataError, DataWarning
from .feature_map import FeatureMap
from .readers import read_split
from .schema import DatasetConfig
from .unseen import high_unseen_fields

SCORE_COLUMN = "probability"


def read_with_kept(dcfg: DatasetConfig, path: Path, columns: list[str],
                   keep_columns: list[str] | None) -> tuple[pl.DataFrame, list[str]]:
    """The file's ``columns`` and ``keep_columns`` (in that order, each once) -> (frame, kept names).
    A kept name that is not in the file is a :class:`DataError` naming the file and its columns."""
    keep = list(dict.fromkeys(keep_columns or []))
    if SCORE_COLUMN in keep:
        raise DataError(f"keep_columns names {SCORE_COLUMN!r}, the output's score column", file=path,
                        column=SCORE_COLUMN, fix=f"rename the input's {SCORE_COLUMN!r} column, or do not keep it")
    try:
        frame = read_split(dcfg, path, columns + keep)
    except DataError as exc:
        if exc.column in keep and exc.column not in columns:
            raise DataError(exc.problem, file=exc.file, line=exc.line, column=exc.column,
                            fix="--keep-columns (keep_columns) names columns of the input file to copy into the "
                                "output; choose among the file's columns") from None
        raise
    return frame, keep


def warn_unseen(fmap: FeatureMap, frame: pl.DataFrame, arrays: dict[str, np.ndarray], path: Path,
                log: Callable[[str], None]) -> None:
    """Log and warn (:class:`DataWarning`) about each field mostly unseen in the file
    (:func:`ctrlab.data.unseen.high_unseen_fields`)."""
    for message in high_unseen_fields(fmap, frame, arrays):
        message = f"{path}: {message}"
        log(f"[ctrlab] WARNING: {message}")
        warnings.warn(message, DataWarning, stacklevel=3)


def write_scores(kept: pl.DataFrame, probabilities: np.ndarray, path: Path,
                 tasks: dict[str, np.ndarray] | None = None) -> None:
    """The scores CSV: the kept input columns, row-aligned, then ``probability`` (a multi-task
    model's main task) and, given ``tasks``, one ``probability_<task>`` column per task."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = [pl.Series(f"{SCORE_COLUMN}_{t}", p.astype(np.float64)) for t, p in (tasks or {}).items()]
    pl.DataFrame([*kept.get_columns(), pl.Series(SCORE_COLUMN, probabilities.astype(np.float64)), *extra]).write_csv(path)
