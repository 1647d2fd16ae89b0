"""Item vectors: a dense-vector feature looked up by item id in a table of vectors.

A ``dense_vector`` feature with ``key`` (the raw column of item ids) and ``vectors`` gives each row
the vector of its item, from a table made once, when the feature map is fitted:

* ``vectors: {file: ...}``: vectors supplied by the user, keyed by item id (``.parquet``, ``.npz``,
  ``.safetensors``; read by :func:`ctrlab.data.pretrained.read_vectors`);
* ``vectors: {text: [...], method: tfidf_svd}``: vectors fitted from item text (titles, genres,
  tags, attribute ids) by TF-IDF and a truncated SVD (scikit-learn), on the text of the items that
  occur in the **train split only** (the vocabulary, the IDF weights and the SVD components);
  every item of the text tables, seen in train or not, is then transformed with that fitted model.
  No download, no pretrained model: the result depends only on the files, the train split and the
  settings (the SVD is seeded).

The table (item ids and float32 vectors) is the encoder's fitted state: it is written into
``feature_map.json`` (the vectors as base64 of little-endian float32, about ``5.4 * dim`` bytes per
item), so the encoded cache, ``ctrlab predict``, exported artifacts and the server turn a raw item
id into the same vector without the source files. The files' contents and the settings are part
of the cache key (:func:`source_files`), so a change to either refits.

Items are matched as a categorical column's cells are turned into tokens
(:func:`~ctrlab.data.encoders.categorical_tokens`: ``10``, ``10.0`` and ``"10"`` are one item). A
row whose item has no vector (not in the table, or a missing cell) gets zeros: never dropped, and
counted: the fit report (logged by ``prepare``) names the train items without a vector, and every
split's share of rows without one is logged with the OOV rates (:mod:`ctrlab.data.oov`).
"""
from __future__ import annotations

import base64
import gzip
import json
import warnings
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import polars as pl

from ..config import from_dict, to_dict
from .encoders import FEW_ROWS, categorical_tokens
from .errors import DataError, DataWarning
from .readers import LINE, read_split
from .schema import DatasetConfig, DenseVectorSpec, ItemTextSpec, ItemVectorsSpec, _expand, _strip_gz

TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".json": "json"}
"""Item text tables by file name suffix (before a ``.gz``)."""
TOKEN_PATTERN = r"(?u)\b\w+\b"
"""Word tokens of item text (scikit-learn's default drops one-character tokens, e.g. attribute id ``7``)."""
FEW_VECTORS_WARNING = 0.5
"""``prepare`` warns when more than this share of the train items have no vector (ids written differently?)."""
EXAMPLES = 5
"""Items named in the fit report."""


def resolve(path: str, root: str | Path | None, where: str) -> Path:
    """A config path: ``~`` and ``${VAR}`` expanded, relative ones against ``root`` (as ``files``)."""
    out = Path(_expand(path, where))
    if not out.is_absolute() and root is not None:
        out = Path(_expand(str(root), "root")) / out
    return out


def lookup_specs(features: Iterable[Any]) -> list[DenseVectorSpec]:
    """The item-vector features among ``features``."""
    return [f for f in features if isinstance(f, DenseVectorSpec) and f.is_lookup]


def source_files(cfg: DatasetConfig) -> dict[str, list[Path]]:
    """Feature name -> the files its item-vector table is made from (for the cache key)."""
    return {spec.name: [resolve(p, cfg.root, f"features[{spec.name}].vectors")
                        for p in spec.vectors.paths()]  # type: ignore[union-attr]
            for spec in lookup_specs(cfg.features)}


# ---- reading item text ---------------------------------------------------------------------------
def _text_format(path: Path) -> str:
    name = _strip_gz(path.name).lower()
    fmt = next((f for s, f in TEXT_FORMATS.items() if name.endswith(s)), None)
    if fmt is None or (fmt == "parquet" and path.name.lower().endswith(".gz")):
        raise DataError(f"item text must be a {', '.join(TEXT_FORMATS)} file (csv, tsv and JSON may be .gz)", file=path,
                        fix="convert the table, or rename it with the suffix of its format")
    return fmt


def _cell_text(series: pl.Series) -> pl.Series:
    """A text column's cells as strings: list cells (Parquet) joined by spaces, missing cells empty."""
    if isinstance(series.dtype, (pl.List, pl.Array)):
        return series.cast(pl.List(pl.String)).list.join(" ").fill_null("")
    return series.cast(pl.String).fill_null("")


def read_item_text(src: ItemTextSpec, path: Path, field: str) -> tuple[list[str], list[str]]:
    """(item ids, texts) of one item text table, one entry per item in file order."""
    if not path.is_file():
        raise DataError(f"item text of feature {field!r} does not exist", file=path,
                        fix="check vectors.text[].file (relative paths resolve against the dataset's root)")
    fmt = _text_format(path)
    if fmt == "json":
        return _read_json_text(path, field)
    cfg = DatasetConfig(name=field, format=fmt, separator="\t" if fmt == "tsv" else ",")
    wanted = [src.key_column, *src.columns]
    try:
        df = read_split(cfg, path, wanted)
    except DataError as exc:
        if exc.column in wanted:
            raise DataError(exc.problem, file=exc.file, line=exc.line, column=exc.column,
                            fix=f"set key_column and columns of {field!r}'s vectors.text to columns of this file"
                            ) from None
        raise
    keys = categorical_tokens(df[src.key_column])
    empty = keys.str.strip_chars() == ""
    if empty.any():
        i = int(empty.arg_max())
        raise DataError("empty item id", file=path, line=int(df[LINE][i]), column=src.key_column,
                        fix="give every row an item id, or remove the row")
    parts = pl.DataFrame([_cell_text(df[c]).alias(f"c{i}") for i, c in enumerate(src.columns)])
    text = parts.select(pl.concat_str(pl.all(), separator=" ")).to_series()
    frame = pl.DataFrame({"key": keys, "text": text, "line": df[LINE]})
    repeated = frame.filter(pl.col("key").is_duplicated())
    if repeated.height and src.duplicates == "error":
        key = repeated["key"][0]
        lines = repeated.filter(pl.col("key") == key)["line"].to_list()
        raise DataError(f"item id {key!r} is on lines {lines[0]} and {lines[1]}" + (
            f" ({repeated['key'].n_unique()} ids repeat)" if repeated["key"].n_unique() > 1 else ""),
            file=path, line=lines[1], column=src.key_column,
            fix="set duplicates: join on this vectors.text entry to join the rows' text (e.g. one row per tag), "
                "or remove the repeated rows")
    if repeated.height:
        frame = frame.group_by("key", maintain_order=True).agg(pl.col("text").str.join(" "))
    return frame["key"].to_list(), frame["text"].to_list()


def _read_json_text(path: Path, field: str) -> tuple[list[str], list[str]]:
    """A JSON object item id -> text or list of tokens (S3-Rec's ``*_item2attributes.json``)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            doc = json.load(fh)
    except (ValueError, OSError) as exc:
        raise DataError(f"not a readable JSON file ({exc})", file=path,
                        fix="write one JSON object mapping item id -> text or list of tokens") from None
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object of item id -> text, got {type(doc).__name__}", file=path,
                        fix="write one JSON object mapping item id -> text or list of tokens")
    keys, texts = [], []
    for key, value in doc.items():
        if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                           for v in value):
            text = " ".join(map(str, value))
        elif isinstance(value, str):
            text = value
        else:
            raise DataError(f"item {key!r}: expected text or a list of tokens, got {str(value)[:60]}", file=path,
                            fix="write each item's text as a string or a list of strings / numbers")
        keys.append(key)
        texts.append(text)
    return keys, texts


def item_texts(vspec: ItemVectorsSpec, root: str | Path | None, field: str) -> tuple[list[str], list[str]]:
    """(item ids, texts) over all of ``vspec.text``: an item's texts in several tables are joined (in
    the tables' order); items in the order they first appear."""
    joined: dict[str, list[str]] = {}
    for i, src in enumerate(vspec.text or []):
        keys, texts = read_item_text(src, resolve(src.file, root, f"features[{field}].vectors.text[{i}].file"), field)
        for k, t in zip(keys, texts):
            joined.setdefault(k, []).append(t)
    return list(joined), [" ".join(t) for t in joined.values()]


# ---- fitting -------------------------------------------------------------------------------------
def fit_tfidf_svd(keys: list[str], texts: list[str], train_keys: set[str], vspec: ItemVectorsSpec, dim: int,
                  field: str) -> tuple[np.ndarray, dict[str, Any]]:
    """``(n, dim)`` float32 vectors of every item in ``keys``, from TF-IDF + TruncatedSVD fitted on
    the items in ``train_keys`` with some text (in table order), and the fit's report."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    fit_rows = [i for i, k in enumerate(keys) if k in train_keys and texts[i].strip()]
    where = f"feature {field!r} (vectors.text)"
    if not fit_rows:
        raise DataError(f"{where}: none of the train split's items has text in the item text tables",
                        fix=f"check that key_column holds the same ids as the key column, e.g. '10' not 'i10'")
    vectorizer = TfidfVectorizer(lowercase=True, token_pattern=TOKEN_PATTERN, min_df=vspec.min_df,
                                 max_features=vspec.max_features, sublinear_tf=vspec.sublinear_tf,
                                 dtype=np.float64)
    try:
        fitted = vectorizer.fit_transform([texts[i] for i in fit_rows])
    except ValueError as exc:  # no term left (empty texts, or min_df above every count)
        raise DataError(f"{where}: no terms to fit on ({exc})", fix="lower min_df, or check the text columns") from None
    n_terms = fitted.shape[1]
    if dim > min(len(fit_rows), n_terms) or n_terms < 2:
        raise DataError(f"{where}: dim {dim} needs at least {dim} train items with text and {max(dim, 2)} terms; "
                        f"the train items give {len(fit_rows)} items and {n_terms} terms",
                        fix=f"lower dim to at most {max(1, min(len(fit_rows), n_terms))}, add text columns, or "
                            "lower min_df")
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=vspec.n_iter, random_state=vspec.seed)
    svd.fit(fitted)
    vectors = svd.transform(vectorizer.transform(texts))
    if vspec.normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    report = {"fit_items": len(fit_rows), "terms": int(n_terms),
              "explained_variance": round(float(svd.explained_variance_ratio_.sum()), 6)}
    return vectors.astype(np.float32), report


def read_table(vspec: ItemVectorsSpec, root: str | Path | None, dim: int, field: str) -> tuple[list[str], np.ndarray]:
    """The user-supplied table of ``vspec.file``, checked against ``dim``."""
    from .pretrained import read_vectors

    path = resolve(vspec.file, root, f"features[{field}].vectors.file")  # type: ignore[arg-type]
    if not path.is_file():
        raise DataError(f"item vectors of feature {field!r} do not exist", file=path,
                        fix="check vectors.file (relative paths resolve against the dataset's root)")
    keys, values = read_vectors(path, f"item vectors of feature {field}", vspec.key_column, vspec.value_column,
                                fix="; set vectors.key_column / value_column to the ones holding the item ids and "
                                    "vectors")
    if not keys:
        raise DataError(f"item vectors of feature {field!r}: the file has no vectors", file=path,
                        fix="write one vector per item")
    if values.shape[1] != dim:
        raise DataError(f"item vectors of feature {field!r} have {values.shape[1]} values, the feature's dim is {dim}",
                        file=path, fix=f"set dim: {values.shape[1]} on the feature, or write {dim}-value vectors")
    return keys, values


# ---- the encoder ---------------------------------------------------------------------------------
class ItemVectorEncoder:
    """A ``dense_vector`` feature with ``key``: fitted to a table item id -> vector, which
    :meth:`transform` looks the key column's items up in (zeros for an item without a vector)."""

    kind = "dense_vector"

    def __init__(self, spec: DenseVectorSpec, root: str | Path | None = None, keys: list[str] | None = None,
                 vectors: np.ndarray | None = None, report: dict[str, Any] | None = None):
        self.spec = spec
        self.column = spec.key
        self.root = root
        self.report = report or {}
        self._set(keys or [], vectors if vectors is not None else np.zeros((0, spec.dim), np.float32))

    def _set(self, keys: list[str], vectors: np.ndarray) -> None:
        self.keys = keys
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._rows = np.vstack([np.zeros((1, self.spec.dim), np.float32), self.vectors])  # row 0: no vector
        self._index = dict(zip(keys, range(1, len(keys) + 1)))
        self._keys = pl.Series("key", keys, dtype=pl.String)
        self._ids = pl.int_range(1, len(keys) + 1, dtype=pl.Int32, eager=True)

    # ---- fit ----
    def fit(self, df: pl.DataFrame, path: Path | None = None) -> "ItemVectorEncoder":
        return self.fit_keys(categorical_tokens(df[self.column]).unique().to_list())

    def fit_keys(self, train_keys: Iterable[str]) -> "ItemVectorEncoder":
        """Make the table, given the items of the train split (their key tokens)."""
        train = {k for k in train_keys if k != ""}  # a missing cell is no item
        vspec, name = self.spec.vectors, self.spec.name
        assert vspec is not None
        if vspec.file is not None:
            keys, vectors = read_table(vspec, self.root, self.spec.dim, name)
            report: dict[str, Any] = {"method": "file", "sources": vspec.paths()}
        else:
            keys, texts = item_texts(vspec, self.root, name)
            vectors, fit = fit_tfidf_svd(keys, texts, train, vspec, self.spec.dim, name)
            report = {"method": vspec.method, "sources": vspec.paths(), **fit}
        self._set(keys, vectors)
        zero = ~self.vectors.any(axis=1)
        without = sorted(k for k in train if k not in self._index or zero[self._index[k] - 1])
        report.update(items=len(keys), zero_items=int(zero.sum()), train_items=len(train),
                      train_items_without_vector=len(without), examples_without_vector=without[:EXAMPLES])
        self.report = report
        return self

    # ---- transform ----
    def row_ids(self, df: pl.DataFrame) -> np.ndarray:
        """Each row's index into the table + 1 (0: no vector)."""
        raw = df[self.column]
        if len(raw) <= FEW_ROWS:  # a served request: one dict lookup per row, no Polars hash table
            tokens = categorical_tokens(raw).to_list()
            return np.fromiter(map(self._index.get, tokens, repeat(0)), dtype=np.int64, count=len(tokens))
        ids = categorical_tokens(raw).replace_strict(self._keys, self._ids, default=0, return_dtype=pl.Int32)
        return ids.to_numpy().astype(np.int64)

    def transform(self, df: pl.DataFrame, path: Path | None = None) -> np.ndarray:
        """(N, dim) float32: each row's item vector, zeros where the item has none."""
        return self._rows[self.row_ids(df)]

    # ---- state ----
    def state(self) -> dict[str, Any]:
        return {"spec": to_dict(self.spec), "keys": self.keys,
                "vectors": base64.b64encode(self.vectors.astype("<f4").tobytes()).decode("ascii"),
                "report": self.report}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ItemVectorEncoder":
        spec = from_dict(DenseVectorSpec, state["spec"])
        keys = state.get("keys")
        fix = "train or export the run again (feature_map.json is written by ctrlab and must not be edited)"
        try:
            raw = base64.b64decode(state.get("vectors", ""), validate=True)
        except (ValueError, TypeError):
            raise DataError(f"encoders[{spec.name!r}]: 'vectors' is not base64 text", fix=fix) from None
        if not isinstance(keys, list) or len(raw) != 4 * spec.dim * len(keys):
            raise DataError(f"encoders[{spec.name!r}]: the item table does not hold one {spec.dim}-value vector "
                            "per key", fix=fix)
        vectors = np.frombuffer(raw, dtype="<f4").reshape(len(keys), spec.dim)
        return cls(spec, keys=[str(k) for k in keys], vectors=vectors, report=state.get("report"))


# ---- reporting -----------------------------------------------------------------------------------
def describe_fit(name: str, report: dict[str, Any], dim: int) -> str:
    """One log line about a fitted table."""
    if not report:
        return f"item vectors {name!r}: no fit report"
    if report.get("method") == "file":
        how = f"{report['items']:,} vectors from {', '.join(report['sources'])}"
    else:
        how = (f"{report['method']} fitted on the text of {report['fit_items']:,} train items ({report['terms']:,} "
               f"terms, {dim} dims, {report['explained_variance']:.1%} of the variance); {report['items']:,} items "
               f"have vectors")
        if report.get("zero_items"):
            how += f" ({report['zero_items']:,} of them zeros: no fitted term)"
    missing = report["train_items_without_vector"]
    tail = (f"; {missing:,} of {report['train_items']:,} train items have none (zeros), e.g. "
            f"{', '.join(report['examples_without_vector'])}" if missing else
            f"; all {report['train_items']:,} train items have one")
    return f"item vectors {name!r}: {how}{tail}"


def report_item_vectors(fmap, log: Callable[[str], None]) -> None:
    """Log each item-vector feature's fit report; warn (:class:`DataWarning`) when most train items
    have no vector: the table's ids are probably written differently from the key column's."""
    for f in fmap.dense:
        state = fmap.encoders.get(f.name) or {}
        if not state.get("spec", {}).get("key"):
            continue
        report = state.get("report") or {}
        log(f"[ctrlab]   {describe_fit(f.name, report, f.dim)}")
        train, missing = report.get("train_items", 0), report.get("train_items_without_vector", 0)
        if train and missing > FEW_VECTORS_WARNING * train:
            message = (f"item vectors {f.name!r}: {missing:,} of {train:,} train items have no vector (they get "
                       f"zeros), e.g. {', '.join(report['examples_without_vector'])}. Check that the table's ids "
                       f"are written as the {state['spec']['key']!r} column writes them (e.g. '10' not '10.0')")
            log(f"[ctrlab] WARNING: {message}")
            warnings.warn(message, DataWarning, stacklevel=2)
