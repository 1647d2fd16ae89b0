"""Read raw split files (CSV/TSV, Parquet, libSVM, libFM) into Polars frames.

Every reader returns a :class:`polars.DataFrame` with one column per raw column, plus a
``__line__`` column holding the 1-based line number in the source file (used by error
messages). Only the requested columns are parsed (Polars projection pushdown), text
columns are kept as strings and converted by the encoders, so a bad cell can be reported
with its file, line and column.

Formats:

* ``csv`` / ``tsv``: optional header; without one, ``column_names`` names the columns.
  ``.gz`` files are read transparently.
* ``parquet``: any column types; list columns may feed sequence / dense-vector features.
* ``libsvm``: ``label index:value index:value ...`` with one token per field, fields in a
  fixed order (e.g. Frappe); ``column_names`` = label then field names.
* ``libfm``: ``label field:index:value ...``; the field id selects the column
  (``column_names[1 + field]`` or ``f<field>``).

In libSVM/libFM files a label of ``-1`` means 0 (the usual convention of those formats).
For each field, the column ``<field>`` holds the feature index as text and
``<field>:value`` holds its value. A libFM line without a token for some field leaves that
field null (missing); the categorical encoder reads it as the empty string, which maps to
the OOV id (1) unless train itself had rows missing that field.

Empty files, header-only files, duplicate header names, missing columns and malformed
libSVM/libFM tokens raise :class:`~ctrlab.data.errors.DataError` naming the file, line and
column (where there is one) and how to fix it.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import polars as pl

from .errors import DataError
from .schema import DatasetConfig, NumericSpec, column_of

LINE = "__line__"


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, encoding="utf-8", errors="replace", newline="")


def first_line(path: Path) -> str | None:
    """The first line of a (possibly gzipped) text file without its line ending; None if empty."""
    with _open_text(path) as fh:
        line = fh.readline()
    if line == "":
        return None
    return line.rstrip("\r\n")


def _check_exists(path: Path, text: bool = True) -> None:
    if not path.exists():
        raise DataError(f"file {path} does not exist", file=path, fix="check the path in the dataset config's files")
    if path.stat().st_size == 0:
        raise DataError(
            f"file {path} is empty (0 bytes)",
            file=path,
            line=1 if text else None,
            fix="point the config at a file with data rows",
        )


def read_header(cfg: DatasetConfig, path: Path) -> list[str]:
    """Column names of a csv/tsv file, checked for duplicates."""
    _check_exists(path)
    line = first_line(path)
    if line is None or line.strip() == "":
        raise DataError(f"file {path} is empty", file=path, line=1, fix="point the config at a file with data rows")
    if cfg.header:
        names = [c.strip().strip('"') for c in line.split(cfg.separator)]
    else:
        if not cfg.column_names:
            raise DataError(
                f"file {path} has no header and the dataset config gives no column_names",
                file=path,
                fix="set header: true or list column_names in the dataset config",
            )
        names = list(cfg.column_names)
        n = len(line.split(cfg.separator))
        if n != len(names):
            raise DataError(
                f"line 1 has {n} fields but column_names lists {len(names)}",
                file=path,
                line=1,
                fix="make column_names match the file's columns",
            )
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(
                f"duplicate column name {name!r} at positions {seen[name] + 1} and {i + 1}",
                file=path,
                line=1,
                column=name,
                fix="rename one of the columns (every column name must be unique)",
            )
        seen[name] = i
    return names


def _require(path: Path, available: list[str], wanted: list[str], line: int | None) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DataError(
            f"column(s) {missing} not found; the file has {available}",
            file=path,
            line=line,
            column=missing[0],
            fix="fix the feature's name/source (or the labels) in the dataset config, or the file's header",
        )


def _numeric_columns(cfg: DatasetConfig) -> set[str]:
    """Columns read only as numeric features (a column that also feeds a categorical feature, a
    label or the group field stays text, so its tokens are the file's own strings)."""
    numeric = {column_of(f) for f in cfg.features if isinstance(f, NumericSpec)}
    other = {column_of(f) for f in cfg.features if not isinstance(f, NumericSpec)}
    other |= set(cfg.labels) | ({cfg.group_field} if cfg.group_field else set())
    return numeric - other


def parse_csv(cfg: DatasetConfig, source, names: list[str], columns: list[str], has_header: bool,
              numbers: bool = True) -> pl.DataFrame:
    """Parse csv/tsv text (a path, or bytes of whole lines) into ``columns``. With ``numbers``, columns
    that feed numeric features only are parsed as Float64 by the reader itself (fast, and 8 bytes
    a cell instead of a 16-byte string view); the rest stay text."""
    numeric = _numeric_columns(cfg) if numbers else set()
    overrides = {c: pl.Float64 for c in columns if c in numeric}
    df = pl.read_csv(
        source,
        separator=cfg.separator,
        has_header=has_header,
        columns=[names.index(c) for c in columns],
        # the overrides are keyed by our names for every column, header or not
        new_columns=names if overrides or not has_header else None,
        infer_schema=False,
        schema_overrides=overrides or None,
        quote_char='"',
    )
    df.columns = columns
    return df


def read_csv(cfg: DatasetConfig, path: Path, columns: list[str]) -> pl.DataFrame:
    names = read_header(cfg, path)
    _require(path, names, columns, 1 if cfg.header else None)
    offset = 2 if cfg.header else 1
    # A numeric cell the reader cannot parse makes the read fail; the file is then read again as
    # text, and the numeric encoder names the bad cell's line and column.
    try:
        try:
            df = parse_csv(cfg, path, names, columns, cfg.header)
        except Exception:  # noqa: BLE001 - an unparsable number (or a header Polars splits
            if not _numeric_columns(cfg):  # differently): read as text, the encoders then name the bad cell
                raise
            df = parse_csv(cfg, path, names, columns, cfg.header, numbers=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise DataError(f"cannot parse: {str(exc).splitlines()[0]}", file=path, fix="check the separator and quoting") from None
    if df.height == 0:
        raise DataError(f"file {path} has a header but no data rows", file=path, line=offset, fix="add data rows")
    return df.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + offset).alias(LINE))


def read_parquet(cfg: DatasetConfig, path: Path, columns: list[str]) -> pl.DataFrame:
    _check_exists(path, text=False)
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow/polars raise several types
        raise DataError(f"not a readable Parquet file: {exc}", file=path, fix="check the file format in the config") from None
    _require(path, list(schema), columns, None)
    df = pl.read_parquet(path, columns=columns)
    if df.height == 0:
        raise DataError(f"file {path} has no rows", file=path, fix="point the config at a file with data rows")
    # Parquet has no lines; report 1-based row numbers instead.
    return df.with_columns((pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias(LINE))


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_SVM_TOKEN = re.compile(rf"^\d+:{_NUM}$")
_FM_TOKEN = re.compile(rf"^\d+:\d+:{_NUM}$")


def _read_lines(path: Path) -> pl.DataFrame:
    _check_exists(path)
    df = pl.read_csv(
        path,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["text"],
        schema_overrides={"text": pl.String},
        infer_schema=False,
    )
    df = df.with_columns(
        pl.col("text").str.strip_chars(), (pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias(LINE)
    ).filter(pl.col("text").str.len_chars() > 0)
    if df.height == 0:
        raise DataError(f"file {path} is empty", file=path, fix="point the config at a file with data rows")
    return df


def _first_bad(df: pl.DataFrame, path: Path, token_re: str, shape: str, fix: str, column_of) -> None:
    """Raise on the first token not matching ``token_re``; ``column_of(token, position)`` names its column."""
    bad = (
        df.select(LINE, pl.col("tokens"), pl.int_ranges(pl.col("tokens").list.len()).alias("pos"))
        .explode("tokens", "pos")
        .filter(~pl.col("tokens").str.contains(token_re) | pl.col("tokens").is_null())
        .head(1)
    )
    if bad.height:
        line, token, pos = bad.row(0)
        if token is None:
            problem = f"line has a label but no {shape} tokens"
            column = None
        else:
            problem = f"malformed token {token!r} (token {pos + 1} after the label): expected {shape}"
            column = column_of(token, pos)
        raise DataError(problem, file=path, line=line, column=column, fix=fix)


def _label_column(df: pl.DataFrame, path: Path, label: str) -> pl.Expr:
    return (
        pl.when(pl.col("label_text") == "-1").then(pl.lit("0")).otherwise(pl.col("label_text")).alias(label)
    )


def read_libsvm(cfg: DatasetConfig, path: Path, columns: list[str]) -> pl.DataFrame:
    names = cfg.column_names
    df = _read_lines(path)
    df = df.with_columns(pl.col("text").str.split(" ").alias("parts")).with_columns(
        pl.col("parts").list.first().alias("label_text"),
        pl.col("parts").list.slice(1).list.eval(pl.element().filter(pl.element() != "")).alias("tokens"),
    )
    looks_fm = df.head(1)["tokens"].list.first().str.count_matches(":").item() == 2

    def column_of(token: str, pos: int) -> str:  # libSVM is positional: token i is field i
        return names[1 + pos] if names is not None and 1 + pos < len(names) else f"f{pos}"

    _first_bad(
        df,
        path,
        _SVM_TOKEN.pattern,
        "index:value (libSVM)",
        "use format: libfm for field:index:value files, or fix the token" if looks_fm else "fix the token (index:value)",
        column_of,
    )
    counts = df.select(LINE, pl.col("tokens").list.len().alias("n"))
    n_fields = counts["n"][0]
    odd = counts.filter(pl.col("n") != n_fields).head(1)
    if odd.height:
        raise DataError(
            f"line has {odd['n'][0]} index:value tokens but line 1 has {n_fields}; libSVM input is read "
            f"positionally (token i is field i), so every line needs the same number of tokens",
            file=path,
            line=odd[LINE][0],
            fix="use format: libfm (field:index:value) for rows with missing fields",
        )
    if names is None:
        names = ["label"] + [f"f{i}" for i in range(n_fields)]
    if len(names) != n_fields + 1:
        raise DataError(
            f"column_names lists {len(names) - 1} fields after the label but lines have {n_fields} tokens",
            file=path,
            line=1,
            fix="list the label then one name per field in column_names",
        )
    exprs = [_label_column(df, path, names[0])]
    for i, name in enumerate(names[1:]):
        tok = pl.col("tokens").list.get(i).str.split_exact(":", 1)
        exprs.append(tok.struct.field("field_0").alias(name))
        exprs.append(tok.struct.field("field_1").alias(f"{name}:value"))
    out = df.with_columns(exprs)
    _require(path, [c for c in out.columns if c not in ("text", "parts", "tokens", "label_text", LINE)], columns, None)
    return out.select(columns + [LINE])


def read_libfm(cfg: DatasetConfig, path: Path, columns: list[str]) -> pl.DataFrame:
    df = _read_lines(path)
    df = df.with_columns(pl.col("text").str.split(" ").alias("parts")).with_columns(
        pl.col("parts").list.first().alias("label_text"),
        pl.col("parts").list.slice(1).list.eval(pl.element().filter(pl.element() != "")).alias("tokens"),
    )
    names = cfg.column_names

    def field_name(f: int) -> str:
        return names[1 + f] if names and 1 + f < len(names) else f"f{f}"

    def column_of(token: str, pos: int) -> str | None:  # libFM: the token's field id names the column
        m = re.match(r"^(\d+):[^:]*:", token)  # only a three-part token has a field id
        return field_name(int(m.group(1))) if m else None

    _first_bad(
        df,
        path,
        _FM_TOKEN.pattern,
        "field:index:value (libFM)",
        "use format: libsvm for index:value files, or fix the token",
        column_of,
    )
    long = (
        df.select(LINE, "tokens")
        .explode("tokens")
        .drop_nulls("tokens")  # a label-only line (all fields missing) explodes to null on some polars versions
        .with_columns(pl.col("tokens").str.split_exact(":", 2).alias("t"))
        .select(
            LINE,
            pl.col("t").struct.field("field_0").cast(pl.Int64).alias("field"),
            pl.col("t").struct.field("field_1").alias("index"),
            pl.col("t").struct.field("field_2").alias("value"),
        )
    )
    label = names[0] if names else "label"
    out = df.select(LINE, _label_column(df, path, label))
    fields = sorted(long["field"].unique().to_list())

    for f in fields:
        name = field_name(f)
        if name not in columns and f"{name}:value" not in columns:
            continue
        part = long.filter(pl.col("field") == f)
        dup = part.group_by(LINE).len().filter(pl.col("len") > 1).head(1)
        if dup.height:
            raise DataError(
                f"field {f} appears {dup['len'][0]} times in one line; libFM fields must be single-valued",
                file=path,
                line=dup[LINE][0],
                fix="keep one token per field, or model the field as a sequence in csv/parquet",
            )
        out = out.join(
            part.select(LINE, pl.col("index").alias(name), pl.col("value").alias(f"{name}:value")),
            on=LINE,
            how="left",
            maintain_order="left",  # polars does not keep row order in joins unless asked
        )
    _require(path, [c for c in out.columns if c != LINE], columns, None)
    return out.select(columns + [LINE])


READERS = {"csv": read_csv, "tsv": read_csv, "parquet": read_parquet, "libsvm": read_libsvm, "libfm": read_libfm}


def read_split(cfg: DatasetConfig, path: str | Path, columns: list[str]) -> pl.DataFrame:
    """Read ``columns`` of one split file (plus ``__line__``) according to ``cfg.format``."""
    path = Path(path)
    columns = list(dict.fromkeys(columns))  # unique, in order
    return READERS[cfg.format](cfg, path, columns)
