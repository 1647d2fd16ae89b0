"""Derived features: parts of a timestamp column (``derive: hour`` and the like on a feature spec)
and cross-product features (``cross: [a, b]``, :func:`with_crosses`).

:func:`with_derived` adds one column per derived feature to a raw frame, named
:func:`~ctrlab.data.schema.encoded_column`; the feature's encoder then reads that column like any
other. It runs wherever raw frames meet encoders: the in-memory fit (:func:`~ctrlab.data.pipeline.fit_feature_map`),
the streaming fit (per block), and :func:`~ctrlab.data.pipeline.encode_frame`, which every split,
``ctrlab predict`` and the server's :class:`~ctrlab.serve.predictor.Predictor` encode with. One
function, so a timestamp gives the same hour in training, prediction and serving.

How the source column is read:

* epoch numbers (no ``time_format``): seconds (``time_unit: s``, default) or milliseconds (``ms``)
  since 1970-01-01 UTC, as integers, floats or text (``"1700000000"``); every kind goes through
  Float64 first, so a CSV's text, a Parquet integer and a JSON number give the same instant.
  Fractions are floored to the microsecond. Values beyond 2^53 microseconds from 1970 (about
  years 1685-2255) are an error.
* strings (``time_format``): parsed with that strptime format. Without an offset (``%z``) the
  written fields are the local time in ``timezone``; with one, the instant is converted to it.
* a Parquet ``Datetime`` / ``Date`` column is read as it is (naive values as written).

Parts are taken in ``timezone`` (default UTC). A null, empty or blank cell (or a NaN) is missing: the derived
cell is null (a categorical feature's ``""`` token, a numeric feature's ``fill_value``). A cell
that is not a number (epoch) or does not match ``time_format`` is a :class:`DataError` naming the
file, line and column.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from ..config import ConfigError
from .encoders import _bad_row, token_expr
from .schema import CROSS_SEPARATOR, column_of, encoded_column, is_cross

EPOCH_SCALE = {"s": 1_000_000, "ms": 1_000}
"""Microseconds per unit of an epoch number."""
EPOCH_LIMIT_US = 2.0**53
"""Largest |microseconds| from 1970 accepted: Float64 holds every integer up to it."""

PARTS = {
    "year": lambda d: d.dt.year(),
    "month": lambda d: d.dt.month(),
    "day": lambda d: d.dt.day(),
    "weekday": lambda d: d.dt.weekday(),  # ISO: Monday = 1 .. Sunday = 7
    "dayofyear": lambda d: d.dt.ordinal_day(),
    "hour": lambda d: d.dt.hour(),
    "minute": lambda d: d.dt.minute(),
}


def is_derived(spec: Any) -> bool:
    return getattr(spec, "derive", None) is not None


def with_derived(df: pl.DataFrame, specs: Iterable[Any], path: Path | None = None) -> pl.DataFrame:
    """``df`` with a column per derived feature among ``specs`` (named :func:`encoded_column`):
    timestamp parts (Int32, null where the timestamp is missing; each source is parsed once per
    reading, unit / format / zone, whatever number of features derive from it), then cross features
    (:func:`with_crosses`, which may cross a derived feature)."""
    specs = list(specs)
    return with_crosses(_with_time_parts(df, specs, path), specs)


def with_crosses(df: pl.DataFrame, specs: list[Any]) -> pl.DataFrame:
    """``df`` with a String column per cross feature among ``specs``: the tokens of its two
    features joined by :data:`~ctrlab.data.schema.CROSS_SEPARATOR` (a missing cell is the ``""``
    token, so a pair with a missing side is still a pair). Tokens are taken as a categorical
    encoder takes them (:func:`~ctrlab.data.encoders.token_expr`), so a CSV's ``"10"``, a Parquet
    ``10`` and a served JSON ``10`` give the same pair; the encoder then fits its vocabulary on
    the train split with ``min_count`` and OOV like any categorical feature's."""
    crosses = [s for s in specs if is_cross(s)]
    if not crosses:
        return df
    by_name = {s.name: s for s in specs}
    exprs = []
    for spec in crosses:
        missing = [n for n in spec.cross if n not in by_name]
        if missing:
            raise ValueError(f"cross feature {spec.name!r}: its features {missing} are not among the features; "
                             "the feature map must hold both sides of every cross")
        sides = [encoded_column(by_name[n]) for n in spec.cross]
        a, b = (token_expr(pl.col(c), df.schema[c]).fill_null("") for c in sides)
        exprs.append(pl.concat_str([a, pl.lit(CROSS_SEPARATOR), b]).alias(encoded_column(spec)))
    return df.with_columns(exprs)


def _with_time_parts(df: pl.DataFrame, specs: list[Any], path: Path | None) -> pl.DataFrame:
    derived = [s for s in specs if is_derived(s)]
    if not derived:
        return df
    times: dict[tuple, pl.Series] = {}
    new = []
    for spec in derived:
        key = (column_of(spec), spec.time_unit, spec.time_format, spec.timezone)
        if key not in times:
            times[key] = timestamps(df, *key, path=path)
        new.append(PARTS[spec.derive](times[key]).cast(pl.Int32).alias(encoded_column(spec)))
    return df.with_columns(new)


def timestamps(df: pl.DataFrame, column: str, time_unit: str = "s", time_format: str | None = None,
               timezone: str = "UTC", path: Path | None = None) -> pl.Series:
    """The column as datetimes whose fields are the local time in ``timezone`` (null where missing);
    a bad cell raises a DataError naming its line (see the module docstring for the rules)."""
    raw = df[column]
    if raw.dtype == pl.Date:
        raw = raw.cast(pl.Datetime("us"))
    if isinstance(raw.dtype, pl.Datetime):
        return _in_zone(raw, timezone)
    if raw.dtype == pl.Null:
        return pl.Series(column, [None] * len(raw), dtype=pl.Datetime("us"))
    if time_format is not None:
        text = raw.cast(pl.String).str.strip_chars()
        fmt, cells = time_format, text
        if re.search(r"%[HIkl]", fmt) and not re.search(r"%[MRTXc]", fmt):
            # Polars' parser (chrono) refuses an hour without minutes ("%y%m%d%H", Avazu's hour column):
            # read such cells with minute 00 appended, which is what they mean
            fmt, cells = fmt + "%M", text + "00"
        try:
            parsed = cells.str.strptime(pl.Datetime("us"), fmt, strict=False)
        except pl.exceptions.PolarsError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(f"feature source {column!r}: time_format {time_format!r} cannot be used ({reason}); "
                              "write it with strptime directives, e.g. '%Y-%m-%d %H:%M:%S'") from None
        present = text.is_not_null() & (text != "")
        _bad_row(df, parsed.is_null() & present, path, column,
                  f"value {{value!r}} does not match time_format {time_format!r}",
                  "fix the cell, or set time_format to the cells' layout (strptime directives); leave it "
                  "empty for a missing time")
        return _in_zone(parsed, timezone)
    if raw.dtype == pl.String:
        text = raw.str.strip_chars()
        number = text.cast(pl.Float64, strict=False)
        _bad_row(df, number.is_null() & text.is_not_null() & (text != ""), path, column,
                  "value {value!r} is not an epoch number",
                  f"write {_unit_name(time_unit)} since 1970 UTC, or set time_format for datetime strings")
    else:
        number = raw.cast(pl.Float64, strict=False)
    number = number.fill_nan(None)  # NaN is missing (pandas writes it for a missing integer)
    micros = (number * EPOCH_SCALE[time_unit]).floor()
    _bad_row(df, (~(micros.abs() <= EPOCH_LIMIT_US)).fill_null(False), path, column,
              f"value {{value!r}} is not a time: {_unit_name(time_unit)} since 1970 within about years 1685-2255 "
              "expected",
              "check time_unit (s or ms) and the cell; leave it empty for a missing time")
    utc = pl.from_epoch(micros.cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC")
    return _in_zone(utc, timezone)


def _in_zone(times: pl.Series, timezone: str) -> pl.Series:
    """Aware datetimes converted to ``timezone``; naive ones are its local time already."""
    if times.dtype.time_zone is None:  # type: ignore[union-attr]
        return times
    return times.dt.convert_time_zone(timezone)


def _unit_name(time_unit: str) -> str:
    return "seconds" if time_unit == "s" else "milliseconds"
