"""Read raw split files (CSV/TSV, Parquet, libSVM, libFM) into Polars frames.

Every reader returns a :class:`polars.DataFrame` with one column per raw column, plus a
``__line__`` column holding the 1-based line number in the source file (used by error
messages). Only the requested columns are parsed (Polars projection pushdown), text
columns are kept as strings and converted by the encoders, so a bad cell can be reported
with its file, line and column.

Formats:

* ``csv`` / ``tsv``: optional header; without one, ``column_names`` names the columns (with one,
  ``column_names`` renames the header's columns by position).
  ``.gz`` files are read transparently. One parser (:func:`csv_blocks`) reads header and rows with
  the same quoting rules; a UTF-8 BOM is dropped; blank lines are not rows; ``__line__`` is the line
  a row starts on (right after quoted newlines); a row with too few or too many fields, or bytes that
  are not UTF-8, is a DataError naming the line.
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

import csv
import gzip
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl

from .errors import DataError
from .schema import DatasetConfig, NumericSpec, column_of

LINE = "__line__"


UTF8_BOM = b"\xef\xbb\xbf"


def open_bytes(path: Path):
    """A (possibly gzipped) file opened for reading bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _row_end(buf: bytes) -> int:
    """Index of the last newline of ``buf`` that ends a row (an even number of quotes before it: a
    newline inside a quoted field does not end a row); -1 if none."""
    pos = buf.rfind(b"\n")
    if b'"' not in buf:
        return pos
    while pos >= 0 and buf.count(b'"', 0, pos) % 2:
        pos = buf.rfind(b"\n", 0, pos)
    return pos


def _first_row_end(buf: bytes) -> int:
    """Index of the first newline of ``buf`` that ends a row (outside quotes); -1 if none."""
    pos = buf.find(b"\n")
    while pos >= 0 and buf.count(b'"', 0, pos) % 2:
        pos = buf.find(b"\n", pos + 1)
    return pos


def _split_row(cfg: DatasetConfig, row: str) -> list[str]:
    """One CSV row split into fields by Python's csv module, with the quoting rules the row parser
    (Polars) uses: ``"`` quotes, ``""`` inside quotes is a quote."""
    return next(csv.reader(io.StringIO(row, newline=""), delimiter=cfg.separator, quotechar='"'), [])


def _decode(path: Path, data: bytes, first_line: int, names: list[str] | None = None,
            separator: str | None = None) -> str:
    """``data`` as UTF-8 text, or a DataError naming the line (and column) of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        column = None
        if names is not None and separator is not None:
            row_start = data.rfind(b"\n", 0, exc.start) + 1
            k = data.count(separator.encode(), row_start, exc.start)
            column = names[k] if k < len(names) else None
        raise DataError(
            f"bytes {data[exc.start:exc.end]!r} are not valid UTF-8 ({exc.reason})",
            file=path,
            line=line,
            column=column,
            fix="save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8 old.csv > new.csv)",
        ) from None


def _header_row(path: Path) -> tuple[bytes, int]:
    """The first row's bytes (a quoted field may hold newlines; a UTF-8 BOM is dropped) and how many
    bytes of the file precede the second row (BOM and row ending included)."""
    with open_bytes(path) as fh:
        buf = fh.read(64 << 10)
        while True:
            start = len(UTF8_BOM) if buf.startswith(UTF8_BOM) else 0
            end = _first_row_end(buf[start:])
            more = fh.read(len(buf)) if end < 0 else b""
            if not more:
                break
            buf += more
    if end < 0:  # a file of one row without a final newline
        return buf[start:], len(buf)
    return buf[start:start + end + 1], start + end + 1


def read_header(cfg: DatasetConfig, path: Path) -> list[str]:
    """Column names of a csv/tsv file, checked for duplicates. The header row is split by the CSV
    parser (a quoted name may hold the separator), like every data row."""
    return _header_layout(cfg, path)[0]


def _header_layout(cfg: DatasetConfig, path: Path) -> tuple[list[str], int, int]:
    """Column names, the bytes before the first data row (BOM, header), and its line number."""
    _check_exists(path)
    row, skip = _header_row(path)
    if row.strip() == b"":
        raise DataError(f"file {path} is empty", file=path, line=1, fix="point the config at a file with data rows")
    fields = [c.strip() for c in _split_row(cfg, _decode(path, row, 1).rstrip("\r\n"))]
    if cfg.header:
        names = fields
        first_data_line = 1 + row.count(b"\n")
        if cfg.column_names:  # a rename by position: the header's names are replaced
            if len(fields) != len(cfg.column_names):
                raise DataError(
                    f"the header has {len(fields)} columns but column_names lists {len(cfg.column_names)}",
                    file=path,
                    line=1,
                    fix="give one name per header column in column_names (they replace the header's names), "
                        "or drop column_names to use the header's",
                )
            names = list(cfg.column_names)
    else:
        if not cfg.column_names:
            raise DataError(
                f"file {path} has no header and the dataset config gives no column_names",
                file=path,
                fix="set header: true or list column_names in the dataset config",
            )
        names = list(cfg.column_names)
        if len(fields) != len(names):
            raise DataError(
                f"line 1 has {len(fields)} fields but column_names lists {len(names)}",
                file=path,
                line=1,
                fix="make column_names match the file's columns",
            )
        skip -= len(row)  # the first row is data
        first_data_line = 1
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
    return names, skip, first_data_line


def file_columns(cfg: DatasetConfig, path: Path) -> list[str] | None:
    """The columns a csv/tsv (header or ``column_names``) or parquet file holds; None for
    libSVM/libFM (their fields are named by ``column_names``)."""
    if cfg.format in ("csv", "tsv"):
        return read_header(cfg, path)
    if cfg.format == "parquet":
        _check_exists(path, text=False)
        try:
            return list(pl.read_parquet_schema(path))
        except Exception as exc:  # noqa: BLE001 - pyarrow/polars raise several types
            raise DataError(f"not a readable Parquet file: {exc}", file=path,
                            fix="check the file format in the config") from None
    return None


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
    label or the group field stays text, so its tokens are the file's own strings; so does a
    timestamp column, which :mod:`ctrlab.data.derive` parses)."""
    numeric = {column_of(f) for f in cfg.features if isinstance(f, NumericSpec) and f.derive is None}
    other = {column_of(f) for f in cfg.features if not isinstance(f, NumericSpec) or f.derive is not None}
    other |= set(cfg.labels) | ({cfg.group_field} if cfg.group_field else set())
    return numeric - other


def parse_csv(cfg: DatasetConfig, source, names: list[str], columns: list[str], has_header: bool,
              numbers: bool = True, every_column: bool = False) -> pl.DataFrame:
    """Parse csv/tsv text (a path, or bytes of whole lines) into ``columns``. With ``numbers``, columns
    that feed numeric features only are parsed as Float64 by the reader itself (fast, and 8 bytes
    a cell instead of a 16-byte string view); the rest stay text. ``every_column``: parse every
    column, then keep ``columns``: Polars then fails on a row with too many fields (it does not
    when it parses some columns only)."""
    numeric = _numeric_columns(cfg) if numbers else set()
    overrides = {c: pl.Float64 for c in columns if c in numeric}
    df = pl.read_csv(
        source,
        separator=cfg.separator,
        has_header=has_header,
        columns=list(range(len(names))) if every_column else [names.index(c) for c in columns],
        # the overrides are keyed by our names for every column, header or not
        new_columns=names if overrides or not has_header else None,
        infer_schema=False,
        schema_overrides=overrides or None,
        quote_char='"',
    )
    if every_column:
        df.columns = names
        return df.select(columns)
    df.columns = columns
    return df


IN_MEMORY_BLOCK_ROWS = 1 << 20
"""Rows per block when a csv/tsv split is read whole (the blocks are concatenated)."""


def read_csv(cfg: DatasetConfig, path: Path, columns: list[str]) -> pl.DataFrame:
    names, _, first = _header_layout(cfg, path)
    _require(path, names, columns, 1 if cfg.header else None)
    # A numeric cell the reader cannot parse makes the read fail; the file is then read again as
    # text, and the numeric encoder names the bad cell's line and column.
    try:
        blocks = list(csv_blocks(cfg, path, columns, IN_MEMORY_BLOCK_ROWS))
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError):
        if not _numeric_columns(cfg):
            raise
        blocks = list(csv_blocks(cfg, path, columns, IN_MEMORY_BLOCK_ROWS, numbers=False))
    if not blocks:
        raise DataError(f"file {path} has a header but no data rows", file=path, line=first, fix="add data rows")
    return blocks[0] if len(blocks) == 1 else pl.concat(blocks)


def csv_blocks(cfg: DatasetConfig, path: Path, columns: list[str], block_rows: int,
               numbers: bool = True) -> Iterator[pl.DataFrame]:
    """A csv/tsv split in blocks of about ``block_rows`` rows, in file order, each with the
    ``__line__`` column: the file line each row starts on (right after quoted newlines and blank
    lines). The one csv/tsv parser: :func:`read_split` concatenates these blocks, streaming
    preprocessing encodes them one at a time.

    Text is read in byte chunks cut at a row end (a newline outside quotes) and parsed by
    :func:`parse_csv`. Blank lines are not rows. A row with more or fewer fields than the header
    (or ``column_names``), or bytes that are not UTF-8, raise a :class:`DataError` naming the line."""
    names, skip, line = _header_layout(cfg, path)
    _require(path, names, columns, 1 if cfg.header else None)
    with open_bytes(path) as fh:
        fh.read(skip)  # BOM and header (gzip streams cannot seek)
        carry, chunk, measured = b"", 64 << 10, False  # the first chunk measures the bytes per row
        while True:
            data = fh.read(chunk)
            buf = carry + data if carry else data
            if not buf:
                return
            cut = len(buf) - 1 if not data else _row_end(buf)
            if cut < 0:  # no row end yet: read more
                carry = buf
                chunk *= 2
                continue
            text, carry = buf[: cut + 1], buf[cut + 1:]
            block = _parse_block(cfg, path, text, names, columns, numbers, line)
            line += text.count(b"\n")
            if block is not None:
                if not measured:
                    chunk, measured = max(64 << 10, len(text) * block_rows // block.height), True
                yield block
            if not data:
                return


def _parse_block(cfg: DatasetConfig, path: Path, text: bytes, names: list[str], columns: list[str],
                 numbers: bool, first_line: int) -> pl.DataFrame | None:
    """Whole rows of csv text -> the frame of ``columns`` with ``__line__``; None if only blank lines."""
    if text.isspace():
        return None
    # Parsing every column costs little more when most are used, and lets a cheap count check
    # the fields of every row (_row_lines).
    every_column = 2 * len(columns) >= len(names)
    try:
        df = parse_csv(cfg, text, names, columns, has_header=False, numbers=numbers, every_column=every_column)
    except pl.exceptions.NoDataError:
        return None
    except pl.exceptions.ComputeError as exc:
        # Name the line of a byte that is not UTF-8 or of a row with the wrong field count; else
        # perhaps a number the reader cannot parse: with_text_fallback / read_csv retry as text.
        _decode(path, text, first_line, names, cfg.separator)
        _row_lines(cfg, path, text, names, first_line, None)
        if numbers and _numeric_columns(cfg):
            raise
        raise DataError(f"cannot parse the rows from line {first_line} on: {str(exc).splitlines()[0]}", file=path,
                        fix="check the separator and quoting") from None
    keep, lines = _row_lines(cfg, path, text, names, first_line, df.height, every_column)
    if keep is not None:
        df = df.filter(pl.Series(keep))
    if df.height == 0:
        return None
    return df.with_columns(pl.Series(LINE, lines, dtype=pl.Int64))


def _row_lines(cfg: DatasetConfig, path: Path, text: bytes, names: list[str], first_line: int,
               rows: int | None, every_column: bool = False) -> tuple[np.ndarray | None, np.ndarray]:
    """Check that every row of ``text`` has one field per column and find the line each row starts
    on. Returns (which of the parser's ``rows`` rows to keep, None for all: blank lines are not
    rows; the kept rows' line numbers). Raises DataError on a row with too few or too many fields.

    Text without quotes that the parser read ``every_column`` of (so no row has too many fields:
    Polars failed otherwise) is right when it holds ``rows * (n - 1)`` separators: then no row has
    fewer (and none is blank). Else, text without quotes is checked by Polars as one column of lines
    (a field count per line, run in parallel); text with quotes by a scan of the bytes that tells
    quoted separators and newlines apart (slower, exact)."""
    n, sep = len(names), cfg.separator
    quoted = b'"' in text
    if every_column and rows is not None and n > 1 and not quoted and text.count(sep.encode()) == rows * (n - 1):
        return None, np.arange(first_line, first_line + rows)
    layout = None
    if not quoted:
        try:
            per_line = pl.read_csv(text, has_header=False, separator="\x00", quote_char=None, new_columns=["l"],
                                   infer_schema=False, encoding="utf8-lossy")["l"]
        except pl.exceptions.PolarsError:  # a NUL byte in the text: the exact scan below
            per_line = None
        if per_line is not None:
            blank = per_line.str.strip_chars().fill_null("") == ""
            fields = per_line.str.count_matches(sep, literal=True).fill_null(0).to_numpy() + 1
            layout = (blank.to_numpy(), fields, np.arange(len(per_line)) + first_line)
    if layout is None:
        layout = _scan_rows(text, sep, first_line)
        if layout[3]:
            raise DataError("a quote opens a field that is not closed before the end of the file", file=path,
                            line=int(layout[2][-1]), fix='quote the whole field and double the quotes inside it '
                            '(5" is written "5""")')
    blank, fields, lines = layout[:3]
    bad = np.flatnonzero(~blank & (fields != n))
    if len(bad):
        i = int(bad[0])
        k = int(fields[i])
        what = "the header has" if cfg.header else "column_names lists"
        fix = (f"add the missing fields (an empty field is a missing value: write {sep * (n - k)!r} at the end)"
               if k < n else "quote fields that contain the separator, or remove the extra fields")
        raise DataError(f"line has {k} fields but {what} {n}", file=path, line=int(lines[i]),
                        column=names[k] if k < n else None, fix=fix)
    if rows is not None and rows != len(blank):
        raise DataError(f"the parser read {rows} rows where the lines hold {len(blank)}", file=path,
                        line=first_line, fix="check the quoting (a quote inside an unquoted field?)")
    if not blank.any():
        return None, lines
    return ~blank, lines[~blank]


def _scan_rows(text: bytes, sep: str, first_line: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(blank, fields, start line) per row of csv text with quotes, and whether a quote is left
    open at the end: separators and newlines inside quotes (an odd number of quotes before them)
    do not count."""
    b = np.frombuffer(text, dtype=np.uint8)
    inside = np.bitwise_xor.accumulate((b == ord('"')).view(np.uint8)).view(bool)
    newlines = np.flatnonzero(b == ord("\n"))
    ends = newlines[~inside[newlines]]
    if not len(ends) or ends[-1] != len(b) - 1:  # a last row without a newline
        ends = np.append(ends, len(b))
    starts = np.concatenate(([0], ends[:-1] + 1))
    seps = np.flatnonzero((b == ord(sep)) & ~inside)
    fields = np.searchsorted(seps, ends) - np.searchsorted(seps, starts) + 1
    blank = np.zeros(len(starts), dtype=bool)
    for i in np.flatnonzero(fields == 1):  # few rows: a blank one has no separator
        blank[i] = not text[starts[i]:ends[i]].strip()
    return blank, fields, np.searchsorted(newlines, starts) + first_line, bool(len(b) and inside[-1])


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
    try:
        df = pl.read_csv(
            path,
            has_header=False,
            separator="\x1f",
            quote_char=None,
            new_columns=["text"],
            schema_overrides={"text": pl.String},
            infer_schema=False,
        )
    except pl.exceptions.ComputeError:
        with open_bytes(path) as fh:  # bytes that are not UTF-8: name their line
            _decode(path, fh.read(), 1)
        raise
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
