"""Encoders turn raw columns into arrays; they are fitted on the train split only.

Each encoder is built from a feature spec, ``fit`` on train, and saved as a plain JSON-able
``state`` inside the feature map, so the exact same transform runs at evaluation, prediction
and serving time (``encoder_from_state``).

Conventions: categorical ids are 0 = padding, 1 = out-of-vocabulary, 2.. = values seen in
train (at least ``min_count`` times) ordered by frequency then value. A missing categorical
cell is the empty string, an ordinary value.

Tokens do not depend on a column's dtype (:func:`categorical_tokens`): text cells are their own
token; a whole-number float is the integer's token (``10.0`` -> ``"10"``, as an integer column
gives), since pandas turns an integer column into floats as soon as one value is missing; a
float NaN is a missing cell.
"""
from __future__ import annotations

import hashlib
import warnings
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from .errors import DataError, DataWarning
from .readers import LINE
from ..config import from_dict, to_dict
from .schema import (
    FEATURE_KINDS,
    OOV_ID,
    CategoricalSpec,
    DenseVectorSpec,
    NumericSpec,
    SequenceSpec,
    column_of,
    encoded_column,
)

FIRST_ID = 2  # ids 0 and 1 are padding and OOV


def _bad_row(df: pl.DataFrame, mask: pl.Series, path: Path | None, column: str, problem: str, fix: str) -> None:
    if mask.any():
        i = int(mask.arg_max())
        value = df[column][i]
        if isinstance(value, pl.Series):  # a list cell (Parquet sequence / vector)
            value = value.to_list()
        # Frames from the readers carry their source line; frames built by hand (encode_frame at
        # serving time) do not, so report the 1-based row number instead.
        line = int(df[LINE][i]) if LINE in df.columns else i + 1
        raise DataError(problem.format(value=value), file=path, line=line, column=column, fix=fix)


def stable_hash(value: str, buckets: int) -> int:
    """Process- and version-independent hash (blake2b), so hashed ids survive export/serving."""
    return int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little") % buckets


def token_expr(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Cells of ``dtype`` -> String tokens (null where missing). Floats that are whole numbers
    become the integer's text (``10.0`` -> ``"10"``, ``-0.0`` -> ``"0"``), so that a Float64 column
    (pandas makes one whenever a value is missing; Parquet files keep it) gives the tokens an Int64
    column gives; NaN is missing, like null; other floats keep Polars' text (``"10.5"``)."""
    if dtype.is_float():
        whole = expr.is_finite() & (expr == expr.floor()) & (expr.abs() < 2.0**63)
        return (pl.when(expr.is_nan()).then(pl.lit(None, dtype=pl.String))
                .when(whole).then(expr.cast(pl.Int64, strict=False).cast(pl.String))
                .otherwise(expr.cast(pl.String)))
    return expr.cast(pl.String)


def categorical_tokens(raw: pl.Series) -> pl.Series:
    """A categorical column's tokens (:func:`token_expr`; a missing cell is ``""``)."""
    if raw.dtype == pl.String:
        return raw.fill_null("")
    return raw.to_frame().select(token_expr(pl.col(raw.name), raw.dtype).fill_null("")).to_series()


def _vocab_series(vocab: list[str], built_from: pl.Series | None = None) -> tuple[pl.Series, pl.Series]:
    """The vocabulary and its ids as Polars series (what ``replace_strict`` maps with), built once
    per vocabulary list: converting a million-entry Python list on every call cost more than the
    mapping itself. ``built_from``: a Series the list was just made from (saves converting back)."""
    def build() -> tuple[pl.Series, pl.Series]:
        keys = built_from.cast(pl.String).rename("") if built_from is not None else pl.Series(vocab, dtype=pl.String)
        return keys, pl.int_range(FIRST_ID, FIRST_ID + len(vocab), dtype=pl.Int32, eager=True)

    return _per_vocab(_VOCAB_SERIES, vocab, build, fresh=built_from is not None)


def _per_vocab(cache: dict, vocab: list[str], build, fresh: bool = False):
    """``build()`` for this vocabulary list, computed once and kept in ``cache`` (at most 256 lists).
    Entries hold their list, so an ``id`` is never reused while cached; vocabulary lists are never
    changed in place (encoders assign new lists)."""
    key = (id(vocab), len(vocab))
    hit = cache.get(key)
    if fresh or hit is None or hit[0] is not vocab:
        if len(cache) > 256:
            cache.clear()
        hit = cache[key] = (vocab, build())
    return hit[1]


_VOCAB_SERIES: dict[tuple[int, int], tuple[list[str], tuple[pl.Series, pl.Series]]] = {}
"""Cache of :func:`_vocab_series`."""


SMALL_LOOKUP_RATIO = 16
FEW_ROWS = 256
"""Columns of at most ``FEW_ROWS`` tokens, or of fewer than ``vocabulary size / SMALL_LOOKUP_RATIO``,
are looked up in a dict built once per vocabulary (:func:`_lookup_few`): ``replace_strict`` rebuilds
a hash table of the whole vocabulary on every call (200 ms for one served row against a
million-entry vocabulary), and each Polars call costs ~50 µs, more than a served row's lookups."""


def few_tokens(rows: int, vocab_size: int) -> bool:
    """Whether ``rows`` tokens against this vocabulary take the dict lookup."""
    return rows <= FEW_ROWS or rows * SMALL_LOOKUP_RATIO < vocab_size


def _vocab_dict(vocab: list[str]) -> dict[str | None, int]:
    """token -> id, built once per vocabulary list (about 40 bytes per entry beside the list). A
    missing cell (None) is the empty-string token, as ``fill_null("")`` makes it elsewhere."""
    def build() -> dict[str | None, int]:
        table: dict[str | None, int] = dict(zip(vocab, range(FIRST_ID, FIRST_ID + len(vocab))))
        table[None] = table.get("", OOV_ID)
        return table

    return _per_vocab(_VOCAB_DICT, vocab, build)


_VOCAB_DICT: dict[tuple[int, int], tuple[list[str], dict[str | None, int]]] = {}


def _lookup_few(tokens: pl.Series, vocab: list[str]) -> pl.Series:
    """Ids of a String column: ``dict.get`` mapped over it in C (no Python code per token)."""
    values = tokens.to_list()
    ids = np.fromiter(map(_vocab_dict(vocab).get, values, repeat(OOV_ID, len(values))), dtype=np.int32,
                      count=len(values))
    return pl.Series(tokens.name, ids)


def _map_tokens(tokens: pl.Series, vocab: list[str], hash_buckets: int | None) -> pl.Series:
    """Map a String series to int32 ids with the vocabulary (or stable hashing)."""
    if hash_buckets:
        uniq = tokens.unique().drop_nulls()
        ids = [FIRST_ID + stable_hash(v, hash_buckets) for v in uniq.to_list()]
        return tokens.replace_strict(uniq, ids, default=OOV_ID, return_dtype=pl.Int32)
    if few_tokens(len(tokens), len(vocab)):
        return _lookup_few(tokens, vocab)
    keys, ids = _vocab_series(vocab)
    return tokens.replace_strict(keys, ids, default=OOV_ID, return_dtype=pl.Int32)


def _fit_vocab(tokens: pl.Series, min_count: int) -> list[str]:
    counts = tokens.drop_nulls().value_counts(name="n")
    counts = counts.filter(pl.col("n") >= min_count).sort(["n", counts.columns[0]], descending=[True, False])
    return counts[counts.columns[0]].to_list()


class CategoricalEncoder:
    kind = "categorical"

    def __init__(self, spec: CategoricalSpec, vocab: list[str] | None = None):
        self.spec = spec
        self.column = encoded_column(spec)
        self.vocab = vocab or []

    @property
    def vocab_size(self) -> int:
        return FIRST_ID + (self.spec.hash_buckets or len(self.vocab))

    def _tokens(self, df: pl.DataFrame) -> pl.Series:
        return categorical_tokens(df[self.column])

    def tokens_expr(self, dtype: pl.DataType) -> pl.Expr:
        """The column (of ``dtype``) as tokens (strings; a missing cell is ``""``), as a Polars
        expression (:func:`token_expr`)."""
        return token_expr(pl.col(self.column), dtype).fill_null("")

    def transform_expr(self, dtype: pl.DataType) -> pl.Expr:
        """:meth:`transform` of a column of ``dtype`` as a Polars expression (vocabulary encoders
        only, not hashing), so that many columns are encoded by one parallel ``select``. Built once
        per vocabulary: building it cost more than encoding a served request."""
        if self.spec.hash_buckets:
            raise ValueError(f"{self.spec.name!r} hashes its values; use transform()")
        cached = getattr(self, "_expr", None)
        if cached is None or cached[0] is not self.vocab or cached[1] != dtype:
            keys, ids = _vocab_series(self.vocab)
            expr = self.tokens_expr(dtype).replace_strict(keys, ids, default=OOV_ID, return_dtype=pl.Int32)
            cached = self._expr = (self.vocab, dtype, expr)
        return cached[2]

    def fit(self, df: pl.DataFrame, path: Path | None = None) -> "CategoricalEncoder":
        if not self.spec.hash_buckets:
            fit_vocabularies(df, [self])
        return self

    def transform(self, df: pl.DataFrame, path: Path | None = None) -> np.ndarray:
        raw = df[self.column]
        if raw.dtype == pl.String and not self.spec.hash_buckets and few_tokens(len(raw), len(self.vocab)):
            return _lookup_few(raw, self.vocab).to_numpy()  # nulls are "" in the dict: no fill_null call
        return _map_tokens(self._tokens(df), self.vocab, self.spec.hash_buckets).to_numpy()

    def state(self) -> dict[str, Any]:
        return {"spec": _spec_dict(self.spec), "vocab": self.vocab}


def fit_vocabularies(df: pl.DataFrame, encoders: list["CategoricalEncoder"],
                     sequences: list["SequenceEncoder"] = ()) -> None:
    """Fit the vocabularies of many categorical encoders at once, with the same result as their
    ``fit``: one Polars query per column (token counts, ``min_count`` filter, order by count then
    value), all collected together so that Polars runs them in parallel.

    A vocabulary shared with sequences (``share_vocab_with``; those among ``sequences`` whose
    ``shared`` is the encoder) counts the candidate column's tokens plus every sharing sequence's
    tokens, and ``min_count`` applies to the combined counts: ids that occur only in histories
    (common in click logs) get real ids instead of all becoming OOV."""
    queries = []
    for enc in encoders:
        parts = [df.lazy().select(enc.tokens_expr(df.schema[enc.column]).alias("token"))]
        parts += [seq.flat_tokens(df).alias("token").to_frame().lazy() for seq in sequences if seq.shared is enc]
        queries.append(
            pl.concat(parts)
            .group_by("token")
            .agg(pl.len().alias("n"))
            .filter(pl.col("n") >= enc.spec.min_count)
            .sort(["n", "token"], descending=[True, False])
        )
    for enc, counts in zip(encoders, pl.collect_all(queries)):
        tokens = counts["token"]
        enc.vocab = tokens.to_list()
        _vocab_series(enc.vocab, built_from=tokens)


FLOAT32_EXACT_INTEGERS = 2**24
"""float32 holds every integer up to 2^24 in magnitude; beyond it, consecutive integers merge."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _signed_log(x: np.ndarray) -> np.ndarray:
    """``normalizer: log``: ``sign(x) log(1 + |x|)``."""
    return np.sign(x) * np.log1p(np.abs(x))


class NumericEncoder:
    kind = "numeric"

    def __init__(self, spec: NumericSpec, stats: dict[str, float] | None = None, boundaries: list[float] | None = None):
        self.spec = spec
        self.column = encoded_column(spec)
        self.stats = stats or {}
        self.boundaries = boundaries if boundaries is not None else (list(spec.bucketize) if spec.bucketize else None)

    @property
    def vocab_size(self) -> int:
        return FIRST_ID + len(self.boundaries or []) + 1

    def values(self, df: pl.DataFrame, path: Path | None) -> np.ndarray:
        """Parse to float64, failing on text; missing cells take ``fill_value``. NaN and ±inf (also
        an overflowing ``1e309``) fail too, unless the spec says ``non_finite: fill``."""
        raw = df[self.column]
        if raw.dtype == pl.String:
            text = raw.str.strip_chars()
            parsed = text.cast(pl.Float64, strict=False)
            bad = parsed.is_null() & text.is_not_null() & (text != "")
            _bad_row(
                df,
                bad,
                path,
                self.column,
                "value {value!r} is not a number",
                f"clean the column, or declare {self.spec.name!r} as kind: categorical",
            )
        else:
            parsed = raw.cast(pl.Float64, strict=False)
        if self.spec.non_finite == "error":
            _bad_row(
                df,
                (~parsed.is_finite()).fill_null(False),
                path,
                self.column,
                "value {value!r} is not a finite number",
                f"write a number or leave the cell empty (missing: fill_value {self.spec.fill_value:g}), or set "
                f"non_finite: fill on {self.spec.name!r} to read NaN / inf / overflowing numbers as missing",
            )
        arr = parsed.to_numpy().astype(np.float64, copy=True)
        arr[~np.isfinite(arr)] = self.spec.fill_value
        return arr

    def float32_loss(self, x: np.ndarray) -> float | None:
        """A train value beyond 2^24 that float32 (the model's input type) stores as another number,
        when the value reaches the model as is (``normalizer: none``, not bucketized); None if none."""
        if self.spec.normalizer != "none" or self.spec.is_bucketized:
            return None
        big = x[np.abs(x) > FLOAT32_EXACT_INTEGERS]
        lost = big[big.astype(np.float32).astype(np.float64) != big]
        return float(lost[0]) if len(lost) else None

    def warn_float32(self, value: float) -> None:
        stored = float(np.float32(value))
        warnings.warn(
            f"numeric feature {self.spec.name!r} (normalizer: none) has train values beyond 2^24 = 16,777,216, "
            f"where float32 (the model's input type) cannot hold every integer: {_number(value)} is stored as "
            f"{_number(stored)}. Fix: set normalizer: standard, minmax or log, or bucketize it "
            "(bucketize / n_buckets), e.g. for timestamps or ids",
            DataWarning,
            stacklevel=2,
        )

    def fit(self, df: pl.DataFrame, path: Path | None = None) -> "NumericEncoder":
        x = self.values(df, path)
        lost = self.float32_loss(x)
        if lost is not None:
            self.warn_float32(lost)
        if self.spec.normalizer == "log":
            x = _signed_log(x)
        self.stats = {
            "mean": float(x.mean()),
            "std": float(x.std()),
            "min": float(x.min()),
            "max": float(x.max()),
        }
        if self.spec.n_buckets:
            qs = np.quantile(x, np.linspace(0, 1, self.spec.n_buckets + 1)[1:-1])
            self.boundaries = sorted({float(q) for q in qs})
        return self

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        if self.spec.normalizer == "standard":
            return (x - self.stats["mean"]) / (self.stats["std"] or 1.0)
        if self.spec.normalizer == "minmax":
            span = self.stats["max"] - self.stats["min"]
            return (x - self.stats["min"]) / (span or 1.0)
        return x

    def transform(self, df: pl.DataFrame, path: Path | None = None) -> np.ndarray:
        x = self.values(df, path)
        norm = self.spec.normalizer
        if norm == "log":
            x = _signed_log(x)
        if self.boundaries is not None:
            # bucket b in 0..len(boundaries) -> id b + 2
            return (np.searchsorted(np.asarray(self.boundaries), x, side="right") + FIRST_ID).astype(np.int32)
        x = self._normalize(x)
        with np.errstate(over="ignore"):
            out = x.astype(np.float32)
        # finite in float64 but beyond float32's range (|x| > 3.4e38, e.g. 1e39): the model would see inf
        over = ~np.isfinite(out)
        if over.any():
            if self.spec.non_finite == "error":
                _bad_row(df, pl.Series(over), path, self.column,
                         "value {value!r} is beyond the range of float32 (the model's input type, about ±3.4e38)"
                         + (f" after normalizer: {norm}" if norm != "none" else ""),
                         f"write a smaller number, set normalizer: log on {self.spec.name!r}, or set non_finite: fill "
                         "to read such numbers as missing")
            fill = np.asarray([self.spec.fill_value], dtype=np.float64)
            out[over] = self._normalize(_signed_log(fill) if norm == "log" else fill).astype(np.float32)[0]
        return out

    def state(self) -> dict[str, Any]:
        return {"spec": _spec_dict(self.spec), "stats": self.stats, "boundaries": self.boundaries}


def sequence_tokens(raw: pl.Series, splitter: str) -> pl.Series:
    """A sequence column (text cells split by ``splitter``, or list cells) -> lists of tokens,
    each stripped, empty ones dropped; a missing cell is an empty list. List elements are tokens
    as categorical cells are (:func:`token_expr`: ``[10.0, 11.0]`` gives ``["10", "11"]``)."""
    if raw.dtype == pl.String:
        lists = raw.fill_null("").str.split(splitter)
    elif isinstance(raw.dtype, (pl.List, pl.Array)):
        inner = raw.dtype.inner
        if inner.is_float():
            lists = raw.cast(pl.List(inner)).list.eval(token_expr(pl.element(), inner)).fill_null([])
        else:
            lists = raw.cast(pl.List(pl.String)).fill_null([])
    else:
        lists = categorical_tokens(raw).str.split(splitter)
    return lists.list.eval(pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0))


def vector_values(raw: pl.Series, splitter: str) -> pl.Series:
    """A dense-vector column (text cells of numbers split by ``splitter``, or list cells) ->
    lists of Float64; text that is not a number becomes null (the encoder reports it)."""
    if raw.dtype == pl.String:
        parts = raw.fill_null("").str.strip_chars().str.split(splitter)
        parts = parts.list.eval(pl.element().filter(pl.element().str.len_chars() > 0))
        return parts.list.eval(pl.element().cast(pl.Float64, strict=False))
    return raw.cast(pl.List(pl.Float64))


SPLITTER_CANDIDATES = ("^", " ", ",", ";", "|", "\t", ":")
"""Separators a text history is commonly written with (checked by :func:`splitter_suspect`)."""
SINGLE_TOKEN_SHARE = 0.5
"""A text sequence column may warn when more than this share of its non-empty cells is one token."""
OTHER_SEPARATOR_SHARE = 0.1
"""... and more than this share of them (and more cells than hold the splitter) contain another
common separator. Not a majority: in a click log most histories can be a single item (FuxiCTR's
tiny Taobao sample: 15 of 25), and the multi-item ones are the ones a wrong splitter breaks."""


def splitter_suspect(raw: pl.Series, splitter: str) -> str | None:
    """The separator a text sequence column seems to use instead of ``splitter``, or None: when
    most non-empty cells are a single token with ``splitter`` and another common separator is in
    more of them (:data:`OTHER_SEPARATOR_SHARE`) than ``splitter`` is, e.g. a space-separated
    history read with the default ``^``, which makes each whole cell one token."""
    if raw.dtype != pl.String:
        return None  # list cells (Parquet) are not split
    cells = raw.drop_nulls().str.strip_chars()
    cells = cells.filter(cells.str.len_chars() > 0)
    if cells.is_empty():
        return None
    with_splitter = int(cells.str.contains(splitter, literal=True).sum())
    if len(cells) - with_splitter <= SINGLE_TOKEN_SHARE * len(cells):
        return None
    single = cells.filter(~cells.str.contains(splitter, literal=True))
    best, best_n = None, 0
    for sep in SPLITTER_CANDIDATES:
        if sep == splitter:
            continue
        n = int(single.str.contains(sep, literal=True).sum())
        if n > best_n:
            best, best_n = sep, n
    if best_n > OTHER_SEPARATOR_SHARE * len(cells) and best_n > with_splitter:
        return best
    return None


def warn_splitter(spec: SequenceSpec, raw: pl.Series) -> None:
    """Warn (:class:`DataWarning`) when :func:`splitter_suspect` finds another separator."""
    sep = splitter_suspect(raw, spec.splitter)
    if sep is not None:
        warnings.warn(
            f"sequence feature {spec.name!r}: most cells are a single token with splitter {spec.splitter!r}, "
            f"but many contain {sep!r}; each such cell is read as one whole token. Fix: set splitter: {sep!r} "
            f"on {spec.name!r}",
            DataWarning,
            stacklevel=2,
        )


def pad_rows(values: np.ndarray, lens: np.ndarray, max_len: int, padding: str, dtype) -> np.ndarray:
    """Ragged rows (flat ``values``, row lengths ``lens`` <= ``max_len``) -> an (N, max_len) array of
    ``dtype`` with 0 at padding, the values first (``padding="post"``) or last (``"pre"``)."""
    n = len(lens)
    out = np.zeros((n, max_len), dtype=dtype)
    rows = np.repeat(np.arange(n), lens)
    starts = np.cumsum(lens) - lens
    within = np.arange(len(values)) - np.repeat(starts, lens)
    cols = within + (max_len - lens)[rows] if padding == "pre" else within
    out[rows, cols] = values
    return out


class SequenceEncoder:
    kind = "sequence"

    def __init__(self, spec: SequenceSpec, vocab: list[str] | None = None, shared: CategoricalEncoder | None = None):
        self.spec = spec
        self.column = column_of(spec)
        self.vocab = vocab or []
        self.shared = shared

    @property
    def vocab_size(self) -> int:
        return self.shared.vocab_size if self.shared else FIRST_ID + len(self.vocab)

    def _lists(self, df: pl.DataFrame) -> pl.Series:
        return sequence_tokens(df[self.column], self.spec.splitter)

    def flat_tokens(self, df: pl.DataFrame) -> pl.Series:
        """Every token of the column, row after row (what a vocabulary counts)."""
        return self._lists(df).explode().drop_nulls()

    def fit(self, df: pl.DataFrame, path: Path | None = None) -> "SequenceEncoder":
        """An own vocabulary is fitted here; a shared one is fitted with its categorical field
        (:func:`fit_vocabularies` with this encoder among ``sequences``). A number sequence has
        nothing to fit (its train cells are checked to be numbers)."""
        if self.numbers:
            self.number_lists(df, path)
            return self
        warn_splitter(self.spec, df[self.column])
        if self.shared is None:
            self.vocab = _fit_vocab(self.flat_tokens(df), self.spec.min_count)
        return self

    @property
    def numbers(self) -> bool:
        """A numeric (value) sequence (``values: numbers``): no vocabulary, float32 output."""
        return self.spec.values == "numbers"

    def number_lists(self, df: pl.DataFrame, path: Path | None = None) -> pl.Series:
        """The column as lists of Float64 (text cells split by the splitter, tokens stripped, empty
        ones dropped; list cells as they are; a missing cell is empty). A token that is not a
        finite number is a DataError naming the row."""
        raw = df[self.column]
        if raw.dtype == pl.String:
            lists = raw.fill_null("").str.split(self.spec.splitter).list.eval(
                pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0).cast(pl.Float64, strict=False))
        elif isinstance(raw.dtype, (pl.List, pl.Array)):
            lists = raw.cast(pl.List(pl.Float64), strict=False).fill_null([])
            if isinstance(raw.dtype.inner, (pl.String, pl.Categorical)):
                lists = raw.cast(pl.List(pl.String)).fill_null([]).list.eval(
                    pl.element().str.strip_chars().cast(pl.Float64, strict=False))
        else:
            lists = raw.cast(pl.String).fill_null("").str.split(self.spec.splitter).list.eval(
                pl.element().str.strip_chars().filter(pl.element().str.len_chars() > 0).cast(pl.Float64, strict=False))
        bad = lists.list.eval(~pl.element().is_finite().fill_null(False)).list.any().fill_null(False)
        _bad_row(df, bad, path, self.column, "number sequence {value!r} holds a token that is not a finite number",
                 "write numbers only (values: numbers), or make it an id sequence (values: ids)")
        return lists

    def transform(self, df: pl.DataFrame, path: Path | None = None) -> np.ndarray:
        """(N, max_len) int32 ids, or float32 values for ``values: numbers``; 0 at padding."""
        values, lens = self.transform_ragged(df, path)
        return pad_rows(values, lens, self.spec.max_len, self.spec.padding, values.dtype)

    def transform_ragged(self, df: pl.DataFrame, path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(flat values of every row after truncation to max_len, int32 ids or float32 numbers; row
        lengths int64): what :meth:`transform` pads. A number may be 0, so the lengths, not the
        zeros, say where a row ends."""
        lists = self.number_lists(df, path) if self.numbers else self._lists(df)
        L = self.spec.max_len
        lists = lists.list.tail(L) if self.spec.truncating == "pre" else lists.list.head(L)
        lens = lists.list.len().to_numpy().astype(np.int64)
        flat = lists.explode().drop_nulls()
        if self.numbers:
            ids = flat.to_numpy().astype(np.float32)
        elif self.shared is not None:
            ids = _map_tokens(flat, self.shared.vocab, self.shared.spec.hash_buckets).to_numpy()
        else:
            ids = _map_tokens(flat, self.vocab, None).to_numpy()
        return np.asarray(ids, dtype=np.float32 if self.numbers else np.int32), lens

    def state(self) -> dict[str, Any]:
        return {"spec": _spec_dict(self.spec), "vocab": self.vocab}


class DenseVectorEncoder:
    kind = "dense_vector"

    def __init__(self, spec: DenseVectorSpec):
        self.spec = spec
        self.column = column_of(spec)

    def fit(self, df: pl.DataFrame, path: Path | None = None) -> "DenseVectorEncoder":
        return self

    def transform(self, df: pl.DataFrame, path: Path | None = None) -> np.ndarray:
        vals = vector_values(df[self.column], self.spec.splitter)
        # text that is not a number, or a null inside a Parquet list (would become NaN)
        bad = (vals.list.eval(pl.element().is_null()).list.any()).fill_null(False)
        _bad_row(df, bad, path, self.column, "vector {value!r} holds a non-number", "write numbers only")
        infinite = vals.list.eval(~pl.element().is_finite()).list.any().fill_null(False)
        _bad_row(df, infinite, path, self.column, "vector {value!r} holds a value that is not a finite number",
                 "write finite numbers only (no nan / inf)")
        lens = vals.list.len().fill_null(0)
        _bad_row(
            df,
            lens != self.spec.dim,
            path,
            self.column,
            f"vector {{value!r}} does not have dim={self.spec.dim} values",
            f"give every row exactly {self.spec.dim} values, or fix dim in the config",
        )
        return vals.explode().to_numpy().astype(np.float32).reshape(len(df), self.spec.dim)

    def state(self) -> dict[str, Any]:
        return {"spec": _spec_dict(self.spec)}


def encode_labels(df: pl.DataFrame, labels: list[str], path: Path | None) -> np.ndarray:
    """(N, K) float32 labels, each checked to be 0 or 1."""
    cols = []
    for name in labels:
        raw = df[name]
        if raw.dtype == pl.Boolean:  # Parquet click flags: true/false -> 1/0
            raw = raw.cast(pl.Int8)
        text = raw.cast(pl.String).str.strip_chars()
        vals = text.cast(pl.Float64, strict=False)
        bad = vals.is_null() | ~vals.is_in([0.0, 1.0])
        _bad_row(
            df.with_columns(text.alias(name)),
            bad.fill_null(True),
            path,
            name,
            "label {value!r} is not 0 or 1",
            "binarise the label (e.g. rating >= 4 -> 1) before training, or fix the row",
        )
        cols.append(vals.to_numpy())
    return np.stack(cols, axis=1).astype(np.float32)


def _spec_dict(spec) -> dict[str, Any]:
    return to_dict(spec)


def encoder_from_state(state: dict[str, Any], encoders: dict[str, Any]):
    """Rebuild a fitted encoder from its saved state (``encoders`` resolves shared vocabularies)."""
    spec_d = state["spec"]
    spec = from_dict(FEATURE_KINDS[spec_d["kind"]], spec_d)
    if isinstance(spec, CategoricalSpec):
        return CategoricalEncoder(spec, state.get("vocab"))
    if isinstance(spec, NumericSpec):
        return NumericEncoder(spec, state.get("stats"), state.get("boundaries"))
    if isinstance(spec, SequenceSpec):
        shared = encoders[spec.share_vocab_with] if spec.share_vocab_with else None
        return SequenceEncoder(spec, state.get("vocab"), shared)
    if spec.is_lookup:  # vectors looked up by item id in the fitted table
        from .item_vectors import ItemVectorEncoder

        return ItemVectorEncoder.from_state(state)
    return DenseVectorEncoder(spec)


