"""Dataset schema: what the raw files look like and how each column becomes a feature.

A dataset config is plain YAML::

    name: frappe_x1
    format: csv                  # csv | tsv | parquet | libsvm | libfm
    files: {train: train.csv, valid: valid.csv, test: test.csv}
    labels: [label]
    features:
      - {name: user, kind: categorical}
      - {name: I1, kind: numeric, normalizer: log}
      - {name: history, kind: sequence, splitter: "^", max_len: 50, share_vocab_with: item}
      - {name: image_vec, kind: dense_vector, dim: 64}

Each ``kind`` maps to one dataclass below. Every option has a default and a comment.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from ..config import ConfigError, from_dict, load_yaml, to_dict

# Reserved ids shared by every vocabulary: 0 pads sequences, 1 is out-of-vocabulary.
PAD_ID = 0
OOV_ID = 1

DerivePart = Literal["year", "month", "day", "weekday", "dayofyear", "hour", "minute"]
"""What a derived feature takes from a timestamp (``derive``; :mod:`ctrlab.data.derive`)."""


@dataclass
class CategoricalSpec:
    """A single-valued categorical field (one id per row)."""

    name: str
    """Feature name: the model's field name, and the raw column read unless ``source`` is set."""
    kind: Literal["categorical"] = "categorical"
    """Feature kind; ``categorical`` is also what an item without ``kind`` is."""
    source: str | None = None
    """Raw column to read; defaults to ``name``."""
    min_count: int = 1
    """Values seen fewer times than this in train map to the OOV id (counting the tokens of the
    sequences that share this vocabulary, ``share_vocab_with``, too)."""
    hash_buckets: int | None = None
    """If set, ids are ``hash(value) % hash_buckets`` (+2 for pad/OOV) instead of a fitted vocabulary."""
    embedding_dim: int | None = None
    """Per-field embedding size; None uses the model's ``embedding_dim``. Models that stack the
    fields into one ``(B, F, D)`` tensor need every field at their size (they raise otherwise);
    models that flatten the embeddings (e.g. DCNv2) take any sizes."""
    pretrained_emb: str | None = None
    """File of pretrained vectors keyed by token (``.parquet`` key/value columns, ``.npz`` key/value
    arrays, ``.safetensors`` one tensor per token; see :mod:`ctrlab.data.pretrained`); relative
    paths resolve like ``files``. The vectors (of the field's embedding size) initialise the
    rows of the tokens they cover; the other rows start as usual."""
    freeze_emb: bool = True
    """With ``pretrained_emb``: keep the field's rows fixed (FuxiCTR's default) or train them."""
    derive: DerivePart | None = None
    """Compute the feature from a timestamp in ``source`` instead of reading it as is: ``hour``
    (0-23), ``minute`` (0-59), ``weekday`` (1 = Monday .. 7 = Sunday), ``day`` (of the month,
    1-31), ``dayofyear`` (1-366), ``month`` (1-12) or ``year``, taken in ``timezone``
    (:mod:`ctrlab.data.derive`). A missing timestamp is a missing cell (the ``""`` token)."""
    time_unit: Literal["s", "ms"] = "s"
    """With ``derive``: unit of epoch numbers in ``source`` (seconds or milliseconds since 1970 UTC)."""
    time_format: str | None = None
    """With ``derive``: ``source`` holds datetime strings in this strptime format (e.g.
    ``"%Y-%m-%d %H:%M:%S"``; ``%z`` for an offset) instead of epoch numbers."""
    timezone: str = "UTC"
    """With ``derive``: the IANA zone (e.g. ``Europe/Berlin``) in which the hour, day, ... are taken.
    Epoch numbers and strings with an offset are converted to it; strings without an offset are
    read as already in it."""
    cross: list[str] | None = None
    """Two categorical feature names ``[a, b]``: the feature's value is the pair of their values
    (a cross-product feature, :func:`ctrlab.data.derive.with_crosses`), with a vocabulary fitted on
    train like any categorical one (``min_count``, OOV). No raw column is read: prediction and the
    server take ``a`` and ``b`` and derive the pair. ``crosses`` on the dataset config adds them."""

    def validate(self, where: str) -> None:
        check_derive(self, where)
        if self.cross is not None:
            if len(self.cross) != 2 or self.cross[0] == self.cross[1]:
                raise ConfigError(f"{where}.cross: name two different categorical features, e.g. [user, item]; "
                                  f"got {self.cross}")
            if self.source is not None or self.derive is not None:
                raise ConfigError(f"{where}.cross: a cross feature is derived from its two features; drop "
                                  "source/derive")
        if self.min_count < 1:
            raise ConfigError(f"{where}.min_count: must be >= 1, got {self.min_count}")
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ConfigError(f"{where}.hash_buckets: must be >= 1, got {self.hash_buckets}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise ConfigError(f"{where}.embedding_dim: must be >= 1, got {self.embedding_dim}")
        if self.pretrained_emb is not None and self.hash_buckets is not None:
            raise ConfigError(f"{where}.pretrained_emb: a hashed field has no vocabulary to align the vectors "
                              "with; drop hash_buckets or pretrained_emb")


@dataclass
class NumericSpec:
    """A real-valued field, optionally normalised or bucketized into a categorical field."""

    name: str
    """Feature name: the model's field name, and the raw column read unless ``source`` is set."""
    kind: Literal["numeric"] = "numeric"
    """Feature kind: ``numeric`` selects this spec."""
    source: str | None = None
    """Raw column to read; defaults to ``name``."""
    fill_value: float = 0.0
    """Value used where the raw cell is empty/missing (before normalisation)."""
    non_finite: Literal["error", "fill"] = "error"
    """What a value that is not a finite number does (``nan``, ``inf``, ``-inf``, or a number too
    large for float64 such as ``1e309``): ``error`` (default) raises a DataError naming the file,
    line and column (training and ``ctrlab predict`` files; the server answers 422); ``fill`` reads
    it as a missing cell, so it takes ``fill_value`` (for data that writes ``nan`` for missing)."""
    normalizer: Literal["none", "standard", "minmax", "log"] = "none"
    """none; standard (z-score with train mean/std); minmax (train min/max to [0, 1]);
    log (``sign(x) * log1p(|x|)``, for heavy-tailed counts such as Criteo's I1-I13)."""
    bucketize: list[float] | None = None
    """Explicit bucket boundaries; turns the field into a categorical one. With ``normalizer: log``
    the boundaries are in log units (the value is transformed first)."""
    n_buckets: int | None = None
    """Quantile buckets fitted on train; turns the field into a categorical one."""
    embedding_dim: int | None = None
    """Per-field embedding size; None uses the model's ``embedding_dim``."""
    derive: DerivePart | None = None
    """As for a categorical feature: the number (hour, weekday, ...) computed from a timestamp in
    ``source``, then normalised or bucketized as set; a missing timestamp takes ``fill_value``."""
    time_unit: Literal["s", "ms"] = "s"
    """With ``derive``: unit of epoch numbers in ``source``."""
    time_format: str | None = None
    """With ``derive``: strptime format of datetime strings in ``source`` (instead of epoch numbers)."""
    timezone: str = "UTC"
    """With ``derive``: the IANA zone in which the parts are taken."""

    @property
    def is_bucketized(self) -> bool:
        return self.bucketize is not None or self.n_buckets is not None

    def validate(self, where: str) -> None:
        check_derive(self, where)
        if self.bucketize is not None and self.n_buckets is not None:
            raise ConfigError(f"{where}: set either bucketize (boundaries) or n_buckets (quantiles), not both")
        if self.bucketize is not None and list(self.bucketize) != sorted(self.bucketize):
            raise ConfigError(f"{where}.bucketize: boundaries must be sorted ascending")
        if self.n_buckets is not None and self.n_buckets < 2:
            raise ConfigError(f"{where}.n_buckets: must be >= 2, got {self.n_buckets}")


@dataclass
class SequenceSpec:
    """A variable-length token list (e.g. user behaviour history), padded to ``max_len``."""

    name: str
    """Feature name: the model's field name, and the raw column read unless ``source`` is set."""
    kind: Literal["sequence"] = "sequence"
    """Feature kind: ``sequence`` selects this spec."""
    source: str | None = None
    """Raw column to read; defaults to ``name``. Parquet list columns are read as-is."""
    splitter: str = "^"
    """Token separator inside a text cell. Fitting warns when most cells are one token but hold
    another common separator (e.g. a space-separated history read with ``^``)."""
    max_len: int = 50
    """Sequences are cut or padded to this length."""
    padding: Literal["pre", "post"] = "pre"
    """Where pad ids (0) go: ``pre`` puts them first so the latest item is last."""
    truncating: Literal["pre", "post"] = "pre"
    """Which end is cut when too long: ``pre`` drops the oldest tokens (keeps the latest)."""
    share_vocab_with: str | None = None
    """Name of a categorical feature whose vocabulary (and embedding rows) this sequence uses,
    e.g. an item history sharing the ``item_id`` vocabulary. The shared vocabulary is fitted on
    that feature's column and every sequence sharing it (train split), so ids seen only in
    histories get their own ids; that feature's ``min_count`` applies to the combined counts. DIN
    finds its target and sequence from it when one sequence shares a vocabulary."""
    min_count: int = 1
    """For an own vocabulary: tokens seen fewer times in train map to OOV (a shared vocabulary
    uses its categorical feature's ``min_count``)."""
    embedding_dim: int | None = None
    """Own-vocabulary embedding size; None uses the model's ``embedding_dim`` (a sequence with
    ``share_vocab_with`` has the shared field's size)."""
    pretrained_emb: str | None = None
    """Own vocabulary only: pretrained vectors keyed by token, as for a categorical feature."""
    freeze_emb: bool = True
    """With ``pretrained_emb``: keep the rows fixed or train them."""
    values: Literal["ids", "numbers"] = "ids"
    """``ids`` (default): tokens looked up in a vocabulary. ``numbers``: a numeric (value) sequence,
    e.g. the time gap of every history event: each token is parsed as a float (no vocabulary, no
    normalisation), padded and cut exactly as an id sequence of the same ``max_len``, batch key
    ``numseq:<name>`` float32 with 0 at padding (see :class:`~ctrlab.data.feature_map.NumericSequenceField`).
    A token that is not a finite number is an error; a missing or empty cell has no events."""

    def validate(self, where: str) -> None:
        if self.max_len < 1:
            raise ConfigError(f"{where}.max_len: must be >= 1, got {self.max_len}")
        if self.values not in ("ids", "numbers"):
            raise ConfigError(f"{where}.values: must be 'ids' or 'numbers', got {self.values!r}")
        if self.values == "numbers":
            for key, default in (("share_vocab_with", None), ("pretrained_emb", None), ("embedding_dim", None),
                                 ("min_count", 1)):
                if getattr(self, key) != default:
                    raise ConfigError(f"{where}.{key}: a sequence with values: numbers has no vocabulary or "
                                      f"embedding; remove {key} (or use values: ids)")
        if self.share_vocab_with is not None and self.pretrained_emb is not None:
            raise ConfigError(f"{where}: a sequence with share_vocab_with uses the rows of "
                              f"{self.share_vocab_with!r}; set pretrained_emb there instead")
        if not self.splitter:
            raise ConfigError(f"{where}.splitter: must be a non-empty string")


@dataclass
class ItemTextSpec:
    """One table of item text for ``vectors.text`` (:mod:`ctrlab.data.item_vectors`): a csv/tsv, Parquet
    or JSON file with the text of each item, keyed by item id."""

    file: str
    """Path (relative paths resolve like ``files``; ``${CTRLAB_DATA_DIR}`` and ``~`` expand). The format
    is the file name's: ``.csv``, ``.tsv``, ``.parquet`` or ``.json`` (csv, tsv and JSON may be gzipped:
    ``.csv.gz``). A JSON file
    is one object mapping item id -> text or a list of tokens (e.g. S3-Rec's ``*_item2attributes.json``:
    attribute ids); it takes no ``key_column`` / ``columns``."""
    key_column: str | None = None
    """csv/tsv/Parquet: the column of item ids (matched to the ``key`` column's values as tokens:
    ``10``, ``10.0`` and ``"10"`` are one item)."""
    columns: list[str] = field(default_factory=list)
    """csv/tsv/Parquet: the text columns, joined by a space (list cells: their elements)."""
    duplicates: Literal["error", "join"] = "error"
    """A key on several rows: ``error`` (default), or ``join`` their text in file order (a table with
    one row per tag, such as MovieLens ``tags.csv``)."""

    def validate(self, where: str) -> None:
        is_json = _strip_gz(self.file).lower().endswith(".json")
        if is_json and (self.key_column is not None or self.columns):
            raise ConfigError(f"{where}: {self.file} is a JSON object keyed by item id; drop key_column and columns")
        if not is_json and (self.key_column is None or not self.columns):
            raise ConfigError(f"{where}: name the item id column and the text columns of {self.file}, e.g. "
                              "key_column: movieId, columns: [title, genres]")


@dataclass
class ItemVectorsSpec:
    """Where an item-vector feature's table comes from (``vectors`` of a ``dense_vector`` feature with
    ``key``): a file of vectors, or vectors fitted from item text (:mod:`ctrlab.data.item_vectors`)."""

    file: str | None = None
    """User-supplied vectors keyed by item id: ``.parquet`` (a key column and a list-of-floats column),
    ``.npz`` (a key array and an ``(n, dim)`` array) or ``.safetensors`` (one tensor per key), read by
    :mod:`ctrlab.data.pretrained`. Relative paths resolve like ``files``."""
    key_column: str = "key"
    """With ``file`` (.parquet / .npz): the column / array of item ids."""
    value_column: str = "value"
    """With ``file`` (.parquet / .npz): the column / array of vectors."""
    text: list[ItemTextSpec] | None = None
    """Item text tables to fit vectors from with ``method`` (a list; an item's texts in the tables are
    joined). Fitted on the items of the train split only; every item of the tables gets a vector."""
    method: Literal["tfidf_svd"] = "tfidf_svd"
    """With ``text``: ``tfidf_svd``: TF-IDF of the lowercased word tokens (scikit-learn
    ``TfidfVectorizer``), reduced to ``dim`` by ``TruncatedSVD`` (randomized, seeded), then L2-normalised
    (``normalize``). Both are fitted on the train items' text; all items are transformed."""
    max_features: int | None = 50000
    """With ``text``: keep the most frequent terms only (null: all)."""
    min_df: int = 1
    """With ``text``: drop terms found in fewer train items than this."""
    sublinear_tf: bool = True
    """With ``text``: ``1 + log(tf)`` instead of raw term counts (a tag repeated by many users counts less)."""
    normalize: bool = True
    """With ``text``: scale each item's vector to unit length (an item without known terms stays zeros)."""
    seed: int = 0
    """With ``text``: the SVD's random state: the same data and settings give the same vectors."""
    n_iter: int = 7
    """With ``text``: power iterations of the randomized SVD."""

    def validate(self, where: str) -> None:
        if (self.file is None) == (self.text is None):
            raise ConfigError(f"{where}: give either file (vectors keyed by item id) or text (item text to fit "
                              "vectors from), not both or neither")
        if self.text is not None and not self.text:
            raise ConfigError(f"{where}.text: list at least one item text table")
        if self.min_df < 1:
            raise ConfigError(f"{where}.min_df: must be >= 1, got {self.min_df}")
        if self.max_features is not None and self.max_features < 1:
            raise ConfigError(f"{where}.max_features: must be >= 1 (or null for all terms), got {self.max_features}")
        if self.n_iter < 0:
            raise ConfigError(f"{where}.n_iter: must be >= 0, got {self.n_iter}")

    def paths(self) -> list[str]:
        """The files the table is read from, as written in the config."""
        return [self.file] if self.file is not None else [t.file for t in self.text or []]


def _strip_gz(name: str) -> str:
    return name[:-3] if name.lower().endswith(".gz") else name


@dataclass
class DenseVectorSpec:
    """A fixed-size float vector per row (pretrained or multimodal embedding), read from a raw column,
    or looked up by item id in a table of item vectors (``key`` + ``vectors``)."""

    name: str
    """Feature name: the model's field name, and the raw column read unless ``source`` or ``key`` is set."""
    dim: int
    """Vector length; every row must have exactly this many values."""
    kind: Literal["dense_vector"] = "dense_vector"
    """Feature kind: ``dense_vector`` selects this spec."""
    source: str | None = None
    """Raw column to read; defaults to ``name``. Text cells are split by ``splitter``."""
    splitter: str = " "
    """Separator inside a text cell."""
    key: str | None = None
    """Item vectors: the raw column of item ids (e.g. ``item_id``, read as a categorical column is) whose
    vector each row gets from the table of ``vectors``; no vector column is read. The fitted table is
    stored in the feature map, so prediction and the server turn a raw item id into the same vector.
    An item without a vector gets zeros (counted and logged per split as the feature's OOV rate)."""
    vectors: ItemVectorsSpec | None = None
    """With ``key``: the table's source (:class:`ItemVectorsSpec`)."""

    def validate(self, where: str) -> None:
        if self.dim < 1:
            raise ConfigError(f"{where}.dim: must be >= 1, got {self.dim}")
        if (self.key is None) != (self.vectors is None):
            raise ConfigError(f"{where}: an item-vector feature needs both key (the item id column) and vectors "
                              "(file or text); a vector column needs neither")
        if self.key is not None and (self.source is not None or self.splitter != " "):
            raise ConfigError(f"{where}: an item-vector feature reads the item id column (key: {self.key}), not "
                              "a vector column; drop source/splitter")

    @property
    def is_lookup(self) -> bool:
        """Vectors looked up by item id (``key``) rather than read from a column."""
        return self.key is not None


CROSS_SEPARATOR = "\x1f"
"""Between the two tokens of a cross feature's value (the ASCII unit separator: not in real tokens,
so ``("a", "b|c")`` and ``("a|b", "c")`` stay apart)."""


def cross_name(a: str, b: str) -> str:
    """The name ``crosses`` gives the cross feature of ``a`` and ``b``."""
    return f"{a}_x_{b}"


def is_cross(spec: Any) -> bool:
    return getattr(spec, "cross", None) is not None


@dataclass
class CrossesConfig:
    """Cross-product features of every pair of some categorical features (OptInter's memorized
    interactions): ``crosses: {fields: all, min_count: 20}`` adds ``a_x_b`` for each pair ``a < b``
    in feature order."""

    fields: list[str] | Literal["all"] = "all"
    """The categorical features whose pairs are crossed, or ``all`` (every categorical feature that
    is not itself a cross)."""
    min_count: int = 1
    """Pairs seen fewer times in train map to the cross feature's OOV id. 1 (every train pair),
    as for a single feature: on Frappe and MovieLens 100K a pair seen a few times still carries
    signal (all-memorize OptInter on Frappe: test AUC 0.9506 at 1, 0.9406 at 5, 0.9324 at 20). A pair
    vocabulary grows with the product of the two: raise it on large data (OptInter's Criteo setting is 20)."""
    embedding_dim: int | None = None
    """The cross features' embedding size in models that embed every field; None: the model's.
    (OptInter embeds them at its own ``interaction_dim``.)"""

    def validate(self, where: str) -> None:
        if self.min_count < 1:
            raise ConfigError(f"{where}.min_count: must be >= 1, got {self.min_count}")
        if isinstance(self.fields, list) and len(self.fields) < 2:
            raise ConfigError(f"{where}.fields: name at least two categorical features (or write all)")


def cross_specs(features: list[Any], crosses: CrossesConfig, where: str = "crosses") -> list["CategoricalSpec"]:
    """The cross specs ``crosses`` adds to ``features``: one per pair not already crossed there."""
    cats = [f.name for f in features if isinstance(f, CategoricalSpec) and not is_cross(f)]
    names = cats if crosses.fields == "all" else list(crosses.fields)
    unknown = [n for n in names if n not in cats]
    if unknown:
        raise ConfigError(f"{where}.fields: {unknown} are not categorical features; choose among {cats} (or all)")
    have = {tuple(f.cross) for f in features if is_cross(f)}
    order = [n for n in cats if n in names]  # feature order, whatever order `fields` lists them in
    out = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            if (a, b) not in have and (b, a) not in have:
                out.append(CategoricalSpec(name=cross_name(a, b), cross=[a, b], min_count=crosses.min_count,
                                           embedding_dim=crosses.embedding_dim))
    return out


FeatureSpec = Union[CategoricalSpec, NumericSpec, SequenceSpec, DenseVectorSpec]
FEATURE_KINDS: dict[str, type] = {
    "categorical": CategoricalSpec,
    "numeric": NumericSpec,
    "sequence": SequenceSpec,
    "dense_vector": DenseVectorSpec,
}


def column_of(spec: FeatureSpec) -> str:
    """The raw column a feature is read from (an item-vector feature's: its ``key``)."""
    return getattr(spec, "key", None) or spec.source or spec.name


def encoded_column(spec: FeatureSpec) -> str:
    """The frame column a feature's encoder reads: its raw column, or for a derived feature the
    column :func:`ctrlab.data.derive.with_derived` adds to the frame (named after the feature)."""
    if getattr(spec, "derive", None):
        return f"__derived__:{spec.name}"
    if is_cross(spec):
        return f"__cross__:{spec.name}"
    return column_of(spec)


def read_features(features: list[Any]) -> list[Any]:
    """The features that read a raw column (all but crosses, which are derived from two of them)."""
    return [f for f in features if not is_cross(f)]


def check_derive(spec: CategoricalSpec | NumericSpec, where: str) -> None:
    """The timestamp options of a feature: only with ``derive``, and a zone Polars knows."""
    if spec.derive is None:
        if spec.time_format is not None or spec.time_unit != "s" or spec.timezone != "UTC":
            raise ConfigError(f"{where}: time_unit, time_format and timezone apply to a derived feature; "
                              "set derive (hour, weekday, ...) or drop them")
        return
    if spec.time_format is not None and spec.time_unit != "s":
        raise ConfigError(f"{where}.time_unit: applies to epoch numbers, not to strings read with time_format; "
                          "drop one of them")
    if spec.time_format is not None and "%" not in spec.time_format:
        raise ConfigError(f"{where}.time_format: {spec.time_format!r} has no strptime directive; "
                          "write e.g. '%Y-%m-%d %H:%M:%S'")
    import polars as pl

    try:
        pl.Series([0], dtype=pl.Datetime("us")).dt.replace_time_zone(spec.timezone)
    except pl.exceptions.PolarsError:
        raise ConfigError(f"{where}.timezone: {spec.timezone!r} is not an IANA time zone; write e.g. "
                          "'UTC' or 'Europe/Berlin'") from None


@dataclass
class DatasetConfig:
    """Where a dataset's files are, how to parse them, and its features and labels."""

    name: str = "dataset"
    """Dataset identifier; used in cache keys and run folders."""
    format: Literal["csv", "tsv", "parquet", "libsvm", "libfm"] = "csv"
    """File format of every split."""
    files: dict[str, str] = field(default_factory=dict)
    """Split name -> path (train, valid, test). Relative paths resolve against ``root``."""
    root: str | None = None
    """Directory relative paths resolve against; None: the config file's directory or CTRLAB_DATA_DIR."""
    header: bool = True
    """csv/tsv: whether the first line holds column names."""
    column_names: list[str] | None = None
    """csv/tsv without header: names of the columns. csv/tsv with ``header: true``: the columns'
    names instead of the header's (a rename, by position; the counts must match). libsvm/libfm:
    label then field names. Not for parquet (use a feature's ``source`` to read a column under
    another name)."""
    separator: str | None = None
    """csv/tsv: field separator (default ``,`` for csv and a tab for tsv)."""
    labels: list[str] = field(default_factory=lambda: ["label"])
    """Label columns, each with values in {0, 1} (e.g. click, conversion)."""
    features: list[Any] = field(default_factory=list)
    """Feature specs; each item has a ``kind`` (categorical, numeric, sequence, dense_vector)."""
    group_field: str | None = None
    """Column used to group rows for gAUC (e.g. user id); kept as raw ids, not a model input."""
    sequence_storage: Literal["auto", "padded", "ragged"] = "auto"
    """How the encoded cache stores each split's sequence arrays (``seq:`` / ``numseq:``): ``padded``
    (an (N, max_len) matrix), ``ragged`` (flat values + row offsets, padded per batch by the loader)
    or ``auto`` (default): ragged when the split's mean row length is below half of ``max_len``.
    Batches are identical either way (:class:`ctrlab.data.loader.RaggedArray`)."""
    valid_fraction: float | None = None
    """When ``files`` has no ``valid``: the fraction of the train file's rows held out as the
    validation split (None: 0.1). The rest is the train split; vocabularies and statistics are
    fitted on it alone. 0: no validation split (the trainer runs every epoch, no early stopping).
    An error with a ``valid`` file."""
    valid_time_column: str | None = None
    """When ``files`` has no ``valid``: hold out the *latest* ``valid_fraction`` of train rows by
    this column (numbers such as Unix timestamps, or ISO dates/datetimes) instead of a random
    sample; ties keep file order. An error with a ``valid`` file."""
    split_seed: int = 2021
    """Seed of the random validation split (``valid_fraction`` without ``valid_time_column``)."""
    crosses: CrossesConfig | None = None
    """Add a cross-product feature for every pair of some categorical features
    (:class:`CrossesConfig`; ``cross`` on a categorical feature adds one pair)."""

    def validate(self, where: str) -> None:
        parsed = []
        for i, item in enumerate(self.features):
            if not isinstance(item, dict):
                if isinstance(item, tuple(FEATURE_KINDS.values())):
                    parsed.append(item)
                    continue
                raise ConfigError(f"{where}.features[{i}]: expected a mapping, got {item!r}")
            kind = item.get("kind", "categorical")
            if kind not in FEATURE_KINDS:
                raise ConfigError(
                    f"{where}.features[{i}].kind: {kind!r} is not allowed; choose one of {list(FEATURE_KINDS)}"
                )
            parsed.append(from_dict(FEATURE_KINDS[kind], {**item, "kind": kind}, f"{where}.features[{i}]"))
        if self.crosses is not None:  # idempotent: pairs already crossed (a saved config) are kept as they are
            parsed += cross_specs(parsed, self.crosses, f"{where}.crosses")
        self.features = parsed
        names = [f.name for f in parsed]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"{where}.features: duplicate feature names {dup}")
        cats = {f.name for f in parsed if isinstance(f, CategoricalSpec)}
        for f in parsed:
            if isinstance(f, SequenceSpec) and f.share_vocab_with is not None and f.share_vocab_with not in cats:
                raise ConfigError(
                    f"{where}.features[{f.name}].share_vocab_with: {f.share_vocab_with!r} is not a categorical "
                    f"feature; choose one of {sorted(cats)}"
                )
        plain = {f.name for f in parsed if isinstance(f, CategoricalSpec) and not is_cross(f)}
        for f in parsed:
            bad = [n for n in (f.cross or []) if n not in plain] if is_cross(f) else []
            if bad:
                raise ConfigError(f"{where}.features[{f.name}].cross: {bad} are not categorical features (crosses "
                                  f"of crosses are not supported); choose among {sorted(plain)}")
        if not self.labels:
            raise ConfigError(f"{where}.labels: at least one label column is required")
        if self.separator is None:
            self.separator = "\t" if self.format == "tsv" else ","
        if self.column_names is not None and self.format == "parquet":
            raise ConfigError(f"{where}.column_names: parquet files name their own columns; drop column_names "
                              "and read a column under another name with a feature's source")
        self._validate_holdout(where)

    def _validate_holdout(self, where: str) -> None:
        """The validation-split options: a fraction in [0, 1), and none of them beside a valid file."""
        given = [k for k in ("valid_fraction", "valid_time_column") if getattr(self, k) is not None]
        if "valid" in self.files and given:
            raise ConfigError(f"{where}.{given[0]}: the dataset has a valid file ({self.files['valid']}), so no "
                              f"validation split is carved out of train; drop {given[0]} or the valid file")
        f = self.valid_fraction
        if f is not None and not (isinstance(f, (int, float)) and 0 <= f < 1):
            raise ConfigError(f"{where}.valid_fraction: must be in (0, 1) (or 0 for no validation split), got {f!r}; "
                              "e.g. 0.1 holds out 10% of the train rows")
        if f == 0 and self.valid_time_column is not None:
            raise ConfigError(f"{where}.valid_time_column: valid_fraction is 0 (no validation split); set a "
                              "fraction such as 0.1 or drop valid_time_column")

    @property
    def carved_valid_fraction(self) -> float:
        """The fraction of train rows held out as valid: 0 with a valid file or ``valid_fraction: 0``."""
        if "valid" in self.files:
            return 0.0
        return 0.1 if self.valid_fraction is None else float(self.valid_fraction)

    def resolve(self, split: str, base: str | Path | None = None) -> Path:
        """Absolute path of a split's file."""
        if split not in self.files:
            raise ConfigError(f"dataset {self.name!r} has no {split!r} split; it has {sorted(self.files)}")
        path = Path(_expand(self.files[split], f"files.{split}"))
        if not path.is_absolute():
            root = self.root if self.root is not None else base
            if root is not None:
                path = Path(_expand(str(root), "root")) / path
        return path

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def _expand(text: str, key: str) -> str:
    """Expand ``~`` and ``$VAR`` / ``${VAR}`` (e.g. ``${CTRLAB_DATA_DIR}``) in a path."""
    out = os.path.expanduser(os.path.expandvars(text))
    if "$" in out:
        var = out[out.index("$"):].split("/")[0]
        raise ConfigError(f"{key}: environment variable {var} in {text!r} is not set; export it or write the path")
    return out


def load_dataset_config(source: str | Path | dict[str, Any]) -> DatasetConfig:
    """Load a DatasetConfig from a YAML path or a mapping."""
    if isinstance(source, dict):
        return from_dict(DatasetConfig, source)
    data = load_yaml(source)
    cfg = from_dict(DatasetConfig, data, str(source))
    if cfg.root is None:
        cfg.root = str(Path(source).resolve().parent)
    return cfg
