"""From a dataset config to encoded, cached splits and a feature map.

``prepare(cfg)`` reads the train split, fits every encoder on it (vocabularies, normaliser
statistics, bucket edges), writes the feature map as JSON, encodes every split into
contiguous ``.npy`` arrays and caches the lot under a folder keyed by a hash of the
config, of the source files' contents and of the code that encodes (:func:`cache_key`).
A later call with the same config, unchanged files and the same code reuses the cache; a
change to any of them rebuilds it.

Cache layout (``<cache_dir>/encoded/<dataset>-<key>/``)::

    feature_map.json      vocabularies + statistics (readable)
    dataset_config.json   the config that built it
    manifest.json         key, sources, row counts
    train/ valid/ test/   one .npy per input group (cat, num, seq:<name>, dense:<name>, label, group)
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..config import to_dict
from .cache import BuildFolder, code_fingerprint, content_sha256, library_version, remove_abandoned, stat_identity
from .derive import with_derived
from .errors import DataError
from .encoders import (
    CategoricalEncoder,
    DenseVectorEncoder,
    NumericEncoder,
    SequenceEncoder,
    encode_labels,
    encoder_from_state,
    fit_vocabularies,
    few_tokens,
)
from .feature_map import CategoricalField, DenseField, FeatureMap, NumericField, NumericSequenceField, SequenceField
from .loader import RAGGED_SUFFIX, RAGGED_WHEN_MEAN_BELOW, EncodedSplit, RaggedArray, array_file_name, choose_storage
from .oov import oov_rates, report_oov
from .holdout import Holdout, holdout
from .item_vectors import ItemVectorEncoder, report_item_vectors, source_files
from .readers import file_columns, read_split
from .streaming import (
    DEFAULT_BLOCK_ROWS,
    STREAM_FORMATS,
    NpyAppender,
    fit_streaming,
    iter_blocks,
    split_groups,
    with_text_fallback,
)
from .schema import (CategoricalSpec, DatasetConfig, DenseVectorSpec, NumericSpec, SequenceSpec, _expand, column_of,
                     is_cross, read_features)

CACHE_VERSION = 2
"""The cache folder's layout. What is in it is keyed by the library version and the code (:func:`cache_key`)."""
ENCODING_CODE = ("ctrlab.data",)
"""The code that writes the cache: every module directly in ``ctrlab/data/`` (readers, encoders,
streaming, schema, feature map, loader, this pipeline)."""
ENCODE_BLOCK_ROWS = 1 << 18
"""Rows per block when encoding vocabulary columns (bounds the temporaries, not the result)."""


def default_cache_dir() -> Path:
    """``CTRLAB_CACHE_DIR`` if set, else ``~/.cache/ctrlab``."""
    return Path(os.environ.get("CTRLAB_CACHE_DIR", Path.home() / ".cache" / "ctrlab")).expanduser()


# ---- fitting --------------------------------------------------------------------------------
def _make_encoders(cfg: DatasetConfig) -> dict[str, Any]:
    encoders: dict[str, Any] = {}
    for spec in cfg.features:  # categorical first so sequences can share their vocabularies
        if isinstance(spec, CategoricalSpec):
            encoders[spec.name] = CategoricalEncoder(spec)
    for spec in cfg.features:
        if isinstance(spec, NumericSpec):
            encoders[spec.name] = NumericEncoder(spec)
        elif isinstance(spec, SequenceSpec):
            shared = encoders[spec.share_vocab_with] if spec.share_vocab_with else None
            encoders[spec.name] = SequenceEncoder(spec, shared=shared)
        elif isinstance(spec, DenseVectorSpec) and spec.is_lookup:
            encoders[spec.name] = ItemVectorEncoder(spec, root=cfg.root)
        elif isinstance(spec, DenseVectorSpec):
            encoders[spec.name] = DenseVectorEncoder(spec)
    return encoders


def raw_columns(cfg: DatasetConfig, with_labels: bool = True) -> list[str]:
    cols = [column_of(f) for f in read_features(cfg.features)]  # a cross reads its two features' columns
    if with_labels:
        cols += list(cfg.labels)
    if cfg.group_field:
        cols.append(cfg.group_field)
    return list(dict.fromkeys(cols))


def fit_feature_map(cfg: DatasetConfig, train: pl.DataFrame, path: Path | None = None) -> FeatureMap:
    """Fit all encoders on the train frame and describe the encoded inputs."""
    encoders = _make_encoders(cfg)
    train = with_derived(train, cfg.features, path)
    by_vocab = [e for e in encoders.values() if isinstance(e, CategoricalEncoder) and not e.spec.hash_buckets]
    sharing = [e for e in encoders.values() if isinstance(e, SequenceEncoder) and e.shared is not None]
    # all vocabulary columns in one parallel pass; a shared vocabulary also counts its sequences' tokens
    fit_vocabularies(train, by_vocab, sharing)
    for enc in encoders.values():
        if not any(enc is e for e in by_vocab):
            enc.fit(train, path)
    return describe(cfg, encoders)


def describe(cfg: DatasetConfig, encoders: dict[str, Any]) -> FeatureMap:
    """The feature map of fitted encoders: fields in the config's order, and the encoders' states."""
    fmap = FeatureMap(dataset=cfg.name, labels=list(cfg.labels), group_field=cfg.group_field)
    for spec in cfg.features:  # keep the config's order inside each group
        enc = encoders[spec.name]
        if isinstance(enc, CategoricalEncoder):
            if is_cross(spec):
                fmap.categorical.append(CategoricalField(spec.name, enc.vocab_size, spec.embedding_dim,
                                                         origin="cross", sources=list(spec.cross)))
                continue
            fmap.categorical.append(CategoricalField(spec.name, enc.vocab_size, spec.embedding_dim,
                                                     pretrained_emb=_pretrained_path(cfg, spec),
                                                     freeze_emb=spec.freeze_emb))
        elif isinstance(enc, NumericEncoder):
            if enc.boundaries is not None:
                fmap.categorical.append(
                    CategoricalField(spec.name, enc.vocab_size, spec.embedding_dim, origin="bucketized")
                )
            else:
                fmap.numeric.append(NumericField(spec.name, spec.embedding_dim))
        elif isinstance(enc, SequenceEncoder) and enc.numbers:
            fmap.numeric_sequences.append(NumericSequenceField(spec.name, spec.max_len))
        elif isinstance(enc, SequenceEncoder):
            fmap.sequences.append(
                SequenceField(spec.name, spec.max_len, enc.vocab_size, spec.share_vocab_with, spec.embedding_dim,
                              pretrained_emb=_pretrained_path(cfg, spec), freeze_emb=spec.freeze_emb)
            )
        else:
            fmap.dense.append(DenseField(spec.name, spec.dim))
    numbers = {f.name for f in fmap.numeric_sequences}  # not embedded: not in the stacking order
    fmap.field_order = [spec.name for spec in cfg.features if spec.name not in numbers]  # models stack in this order
    fmap.encoders = {name: enc.state() for name, enc in encoders.items()}
    return fmap


def _pretrained_path(cfg: DatasetConfig, spec: CategoricalSpec | SequenceSpec) -> str | None:
    """A feature's ``pretrained_emb`` as an absolute path (relative ones resolve against the
    config's ``root``, like ``files``); the file must exist when the map is fitted."""
    if spec.pretrained_emb is None:
        return None
    path = Path(_expand(spec.pretrained_emb, f"features[{spec.name}].pretrained_emb"))
    if not path.is_absolute() and cfg.root is not None:
        path = Path(_expand(str(cfg.root), "root")) / path
    if not path.is_file():
        raise DataError(f"feature {spec.name!r}: pretrained_emb file {path} does not exist")
    return str(path.resolve())


def load_encoders(fmap: FeatureMap) -> dict[str, Any]:
    encoders: dict[str, Any] = {}
    states = fmap.encoders
    order = sorted(states, key=lambda n: states[n]["spec"]["kind"] != "categorical")
    for name in order:
        encoders[name] = encoder_from_state(states[name], encoders)
    return encoders


# ---- encoding -------------------------------------------------------------------------------
def encode_frame(
    df: pl.DataFrame,
    fmap: FeatureMap,
    path: Path | None = None,
    with_labels: bool = True,
    encoders: dict[str, Any] | None = None,
    group_values: pl.Series | None = None,
    ragged: bool = False,
) -> EncodedSplit:
    """Raw frame -> encoded arrays, with the feature map's fitted encoders. ``group_values``: the
    split's sorted distinct group values, when the frame is one block of a split (group ids are
    ranks among them); by default the frame's own. ``ragged``: sequences as
    :class:`~ctrlab.data.loader.RaggedArray` (values + offsets) instead of padded matrices."""
    encoders = encoders or load_encoders(fmap)
    df = with_derived(df, [e.spec for e in encoders.values()], path)  # hour, weekday, ... of timestamps
    n = df.height
    arrays: dict[str, np.ndarray] = {}
    cat = np.zeros((n, len(fmap.categorical)), dtype=np.int32)
    # Vocabulary columns in one parallel select; a small frame (a served request) or a vocabulary
    # much larger than the frame is looked up in a prebuilt dict instead, in transform().
    by_vocab = [j for j, f in enumerate(fmap.categorical)
                if isinstance(encoders[f.name], CategoricalEncoder) and not encoders[f.name].spec.hash_buckets
                and not few_tokens(n, len(encoders[f.name].vocab))]
    if by_vocab:
        # One select over every vocabulary column (Polars runs the columns in parallel), a block
        # of rows at a time so that the temporaries stay small next to the frame itself.
        vocab_encoders = [encoders[fmap.categorical[j].name] for j in by_vocab]
        exprs = [e.transform_expr(df.schema[e.column]).alias(str(j)) for j, e in zip(by_vocab, vocab_encoders)]
        for start in range(0, n, ENCODE_BLOCK_ROWS):
            ids = df.slice(start, ENCODE_BLOCK_ROWS).select(exprs)
            cat[start:start + ids.height, by_vocab] = ids.to_numpy()
            del ids
    for j, f in enumerate(fmap.categorical):
        if j not in by_vocab:
            cat[:, j] = encoders[f.name].transform(df, path)
    arrays["cat"] = cat
    num = np.zeros((n, len(fmap.numeric)), dtype=np.float32)
    for j, f in enumerate(fmap.numeric):
        num[:, j] = encoders[f.name].transform(df, path)
    arrays["num"] = num
    def sequence(f):
        enc = encoders[f.name]
        if not ragged:
            return enc.transform(df, path)
        values, lens = enc.transform_ragged(df, path)
        return RaggedArray(values, np.r_[0, np.cumsum(lens)].astype(np.int64), enc.spec.max_len, enc.spec.padding)

    for f in fmap.sequences:
        arrays[f"seq:{f.name}"] = sequence(f)
    for f in fmap.dense:
        arrays[f"dense:{f.name}"] = encoders[f.name].transform(df, path)
    for f in fmap.numeric_sequences:
        arrays[f"numseq:{f.name}"] = sequence(f)
    if with_labels:
        arrays["label"] = encode_labels(df, fmap.labels, path)
    if fmap.group_field and fmap.group_field in df.columns:
        groups = df[fmap.group_field].cast(pl.String).fill_null("")
        if group_values is None:
            arrays["group"] = groups.rank("dense").to_numpy().astype(np.int64)
        else:  # the same dense ranks, among the whole split's values
            ranks = pl.int_range(1, len(group_values) + 1, dtype=pl.Int64, eager=True)
            arrays["group"] = groups.replace_strict(group_values, ranks).to_numpy().astype(np.int64)
    return EncodedSplit(arrays)


def sequence_padding(fmap: FeatureMap) -> dict[str, str]:
    """Array key (``seq:<name>`` / ``numseq:<name>``) -> the sequence's padding side."""
    out = {}
    for prefix, fields in (("seq:", fmap.sequences), ("numseq:", fmap.numeric_sequences)):
        for f in fields:
            out[prefix + f.name] = (fmap.encoders.get(f.name) or {}).get("spec", {}).get("padding", "pre")
    return out


def stored(split: EncodedSplit, fmap: FeatureMap, storage: str = "auto") -> EncodedSplit:
    """The split with its sequence arrays as the cache stores them (``sequence_storage``:
    :func:`ctrlab.data.loader.choose_storage`)."""
    padding = sequence_padding(fmap)
    return EncodedSplit({k: choose_storage(v, storage, padding[k]) if k in padding else v
                         for k, v in split.arrays.items()})


# ---- cache ----------------------------------------------------------------------------------
def _fingerprint(path: Path, memo_dir: Path | None = None) -> dict[str, Any]:
    """The file's size and full sha256 (remembered in ``memo_dir`` per file identity, so an
    unchanged file is not read again; :func:`ctrlab.data.cache.content_sha256`)."""
    return {"size": path.stat().st_size, "sha256": content_sha256(path, memo_dir)}


def cache_key(cfg: DatasetConfig, files: dict[str, Path], memo_dir: Path | None = None,
              fitted: bool = False) -> str:
    """Hash of the config (without its root), each source file's size and sha256 (the splits' and
    those item-vector tables are made from), the library version and the encoding code
    (:data:`ENCODING_CODE`): equal keys mean equal encoded arrays. ``fitted``: the feature map is
    given (it holds the item-vector tables), so a table's source file that is gone is left out."""
    cfg_d = to_dict(cfg)
    cfg_d.pop("root", None)
    payload = {
        "version": CACHE_VERSION,
        "library_version": library_version(),
        "code": code_fingerprint(*ENCODING_CODE),
        "config": cfg_d,
        "sources": {split: _fingerprint(p, memo_dir) for split, p in files.items()},
    }
    vectors = _vector_sources(cfg, memo_dir, fitted)
    if vectors:  # only then, so that the keys of datasets without item vectors stay as they were
        payload["item_vectors"] = vectors
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _vector_sources(cfg: DatasetConfig, memo_dir: Path | None, fitted: bool = False) -> dict[str, list[Any]]:
    """Feature -> the fingerprint of each file its item-vector table is made from, in config order."""
    out: dict[str, list[Any]] = {}
    for name, paths in source_files(cfg).items():
        prints = []
        for p in paths:
            if p.is_file():
                prints.append(_fingerprint(p, memo_dir))
            elif not fitted:
                raise DataError(f"item vectors of feature {name!r}: the file does not exist", file=p,
                                fix="check the feature's vectors.file / vectors.text[].file (relative paths resolve "
                                    "against the dataset's root)")
        out[name] = prints
    return out


def feature_map_digest(fmap: FeatureMap) -> str:
    """sha256 of a feature map's content (fields and fitted encoder states)."""
    return hashlib.sha256(json.dumps(fmap.to_dict(), sort_keys=True).encode()).hexdigest()


@dataclass
class PreparedData:
    """Encoded splits plus the feature map that describes them."""

    feature_map: FeatureMap
    splits: dict[str, EncodedSplit]
    path: Path
    config: DatasetConfig
    reused: bool = False
    oov_rates: dict[str, dict[str, float]] | None = None
    """Split -> field -> OOV rate (:mod:`ctrlab.data.oov`); None for a cache built before they were kept."""


def prepare(
    cfg: DatasetConfig,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    mmap: bool = False,
    log=print,
    streaming: bool = False,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    feature_map: FeatureMap | None = None,
) -> PreparedData:
    """Fit on train, encode all splits, cache them; reuse the cache when nothing changed.

    ``feature_map``: encode every split with this (already fitted) map instead of fitting one on
    train: how a run is evaluated or resumed, whatever the train file holds now. The map's content
    is part of the cache key; the fitted cache is reused when its map is this one.

    ``streaming``: preprocess csv/tsv/parquet files block by block (``block_rows`` rows at a time)
    in two passes, with memory bounded by a block and the vocabularies instead of the file
    (:mod:`ctrlab.data.streaming`); the splits come back memory-mapped. Same cache, same arrays."""
    if "train" not in cfg.files:
        raise ValueError(f"dataset {cfg.name!r} has no train split; files are {sorted(cfg.files)}")
    files = {split: cfg.resolve(split) for split in cfg.files}
    for split, p in files.items():
        if not p.exists():
            from .errors import DataError

            raise DataError(f"the {split} file does not exist", file=p, fix="check files/root in the dataset config")
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    remove_abandoned(root / "encoded", log)  # folders of builds killed earlier, here or elsewhere
    memo_dir = root / "fingerprints"  # the sources' sha256, remembered per file identity
    key = cache_key(cfg, files, memo_dir, fitted=feature_map is not None)
    folder = root / "encoded" / f"{cfg.name}-{key}"
    if feature_map is not None:
        digest = feature_map_digest(feature_map)
        fitted = folder / "manifest.json"
        if rebuild or not fitted.exists() or feature_map_digest(FeatureMap.load(folder / "feature_map.json")) != digest:
            key = hashlib.sha256(f"{key}:{digest}".encode()).hexdigest()[:16]
            folder = root / "encoded" / f"{cfg.name}-{key}"
    names = list(files) + (["valid"] if cfg.carved_valid_fraction else [])  # the splits prepared
    columns = raw_columns(cfg)
    # once per file, from its header only, and on a cache hit too (a first prepare may have run silently)
    for split, p in files.items():
        ignored = [c for c in file_columns(cfg, p) or [] if c not in columns and c != cfg.valid_time_column]
        if ignored:
            log(f"[ctrlab] ignored columns in {p.name}: {', '.join(ignored)} (not in the dataset config)")
    if folder.exists() and (folder / "manifest.json").exists() and not rebuild:
        fmap = FeatureMap.load(folder / "feature_map.json")
        splits = {s: EncodedSplit.load(folder / s, mmap=mmap) for s in names}
        manifest = json.loads((folder / "manifest.json").read_text())
        oov = manifest.get("oov_rates")
        if manifest.get("valid_from_train"):
            log(f"[ctrlab] {manifest['valid_from_train']}")
        report_item_vectors(fmap, log)
        report_oov(oov or {}, log, [f.name for f in fmap.sequences])
        return PreparedData(fmap, splits, folder, cfg, reused=True, oov_rates=oov)

    t0 = time.time()
    # A fresh folder of this build's own (never one another process, here or in another container
    # sharing the cache, could be writing); removed if the build fails, published at the end.
    build = BuildFolder(folder)
    tmp = build.path
    counts = {}
    encoded: dict[str, EncodedSplit] = {}
    if streaming and cfg.format in STREAM_FORMATS:
        log(f"[ctrlab] encoding dataset {cfg.name!r} in blocks of {block_rows:,} rows (streaming) -> {folder}")
        carved = holdout(cfg, files["train"], block_rows)
        if carved is not None:
            log(f"[ctrlab] {carved.description}")
        fmap, counts = _encode_streaming(cfg, files, columns, tmp, block_rows, log, feature_map, carved)
        mmap = True  # the point of streaming: the splits need not fit in memory
    else:
        if streaming:
            log(f"[ctrlab] format {cfg.format} is not streamed; reading each split whole")
        log(f"[ctrlab] encoding dataset {cfg.name!r} -> {folder}")
        train_df = read_split(cfg, files["train"], columns)
        carved = holdout(cfg, files["train"], block_rows, rows=train_df.height)
        valid_df = None
        if carved is not None:
            log(f"[ctrlab] {carved.description}")
            valid_df = train_df.filter(pl.Series(carved.valid))
            train_df = train_df.filter(pl.Series(~carved.valid))  # vocabularies and statistics: the rest only
        fmap = feature_map or fit_feature_map(cfg, train_df, files["train"])
        encoders = load_encoders(fmap)
        sources = {**files, "valid": files["train"]} if carved is not None else files
        # train first, wherever `files` lists it (yaml sorts keys): its raw frame is dropped once encoded
        for split, p in sorted(sources.items(), key=lambda item: item[0] != "train"):
            if split == "train":
                df = train_df
            elif carved is not None and split == "valid":
                df, valid_df = valid_df, None
            else:
                df = read_split(cfg, p, columns)
            train_df = None  # drop the raw train frame as soon as it is encoded (peak memory)
            enc = stored(encode_frame(df, fmap, p, encoders=encoders, ragged=cfg.sequence_storage != "padded"), fmap,
                         cfg.sequence_storage)
            del df
            enc.save(tmp / split)
            counts[split] = len(enc)
            log(f"[ctrlab]   {split}: {len(enc):,} rows from {p}")
            if not mmap:
                encoded[split] = enc  # what the saved files hold: no need to read them back
            del enc
    fmap.save(tmp / "feature_map.json")
    oov = {s: oov_rates(fmap, encoded[s] if s in encoded else EncodedSplit.load(tmp / s, mmap=True)) for s in names}
    (tmp / "dataset_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    manifest = {
        "key": key,
        "cache_version": CACHE_VERSION,
        "library_version": library_version(),
        "code": code_fingerprint(*ENCODING_CODE),
        "sources": {s: {**stat_identity(p), **_fingerprint(p, memo_dir)} for s, p in files.items()},
        **({"item_vectors": {name: [{**stat_identity(p), **_fingerprint(p, memo_dir)} for p in paths if p.is_file()]
                             for name, paths in source_files(cfg).items()}} if source_files(cfg) else {}),
        "rows": counts,
        "valid_from_train": carved.description if carved is not None else None,
        "oov_rates": oov,
        "seconds": round(time.time() - t0, 2),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # Renamed into place; if another process finished the same cache first, the key guarantees
    # identical content, so theirs is kept. `rebuild` replaces an existing folder.
    build.publish(replace=rebuild)
    splits = {s: encoded[s] if s in encoded else EncodedSplit.load(folder / s, mmap=mmap) for s in names}
    report_item_vectors(fmap, log)
    report_oov(oov, log, [f.name for f in fmap.sequences])
    return PreparedData(fmap, splits, folder, cfg, reused=False, oov_rates=oov)


def _encode_streaming(cfg: DatasetConfig, files: dict[str, Path], columns: list[str], out: Path,
                      block_rows: int, log, feature_map: FeatureMap | None = None,
                      carved: Holdout | None = None) -> tuple[FeatureMap, dict[str, int]]:
    """Fit on train (unless ``feature_map`` is given) and encode every split block by block into
    ``out/<split>/*.npy`` (:mod:`ctrlab.data.streaming`). ``carved``: the valid rows of the train file."""
    sources: dict[str, tuple[Path, np.ndarray | None]] = {split: (p, None) for split, p in files.items()}
    if carved is not None:
        sources["train"] = (files["train"], ~carved.valid)
        sources["valid"] = (files["train"], carved.valid)

    def fit(numbers: bool):
        encoders = _make_encoders(cfg)
        fit_streaming(cfg, files["train"], columns, encoders, block_rows, numbers, rows=sources["train"][1])
        return encoders

    fmap = feature_map or describe(cfg, with_text_fallback(cfg, fit))
    encoders = load_encoders(fmap)
    padding = sequence_padding(fmap)
    counts: dict[str, int] = {}
    for split, (p, keep) in sources.items():

        def encode(numbers: bool) -> int:
            groups = split_groups(cfg, p, fmap.group_field, block_rows, numbers, rows=keep)
            (out / split).mkdir(parents=True, exist_ok=True)
            writers: dict[str, NpyAppender] = {}
            ragged: dict[str, tuple[NpyAppender, NpyAppender, int]] = {}  # key -> values, lengths, max_len
            try:
                for block in iter_blocks(cfg, p, columns, block_rows, numbers, rows=keep):
                    arrays = encode_frame(block, fmap, p, encoders=encoders, group_values=groups,
                                          ragged=cfg.sequence_storage != "padded").arrays
                    for key, arr in arrays.items():
                        if key in padding and cfg.sequence_storage != "padded":  # values + lengths, decided at the end
                            r = arr
                            if key not in ragged:
                                stem = out / split / array_file_name(key)
                                ragged[key] = (NpyAppender(stem.with_name(stem.name + ".values.npy"), (), r.dtype),
                                               NpyAppender(stem.with_name(stem.name + ".lengths.tmp"), (), np.int64),
                                               arr.max_len)
                            ragged[key][0].append(r.values)
                            ragged[key][1].append(np.diff(r.offsets))
                            continue
                        if key not in writers:
                            writers[key] = NpyAppender(out / split / f"{array_file_name(key)}.npy", arr.shape[1:],
                                                       arr.dtype)
                        writers[key].append(arr)
            finally:
                for w in writers.values():
                    w.close()
                for v, n, _ in ragged.values():
                    v.close()
                    n.close()
            for key, (v, n, max_len) in ragged.items():
                _finish_ragged(out / split, array_file_name(key), v.path, n.path, max_len, padding[key],
                               cfg.sequence_storage, block_rows)
            rows = {w.written for w in writers.values()} | {n.written for _, n, _ in ragged.values()}
            if rows in (set(), {0}):
                raise DataError(f"the {split} file has no data rows", file=p, fix="add data rows")
            return rows.pop()  # every array got every block's rows

        counts[split] = with_text_fallback(cfg, encode)
        log(f"[ctrlab]   {split}: {counts[split]:,} rows from {p}")
    return fmap, counts


def _finish_ragged(folder: Path, stem: str, values_path: Path, lengths_path: Path, max_len: int, padding: str,
                   storage: str, block_rows: int) -> None:
    """A streamed sequence written as values + lengths -> stored ragged (offsets + meta), or, when
    ``storage`` is ``auto`` and ragged would not save memory, as one padded ``.npy`` written block by block."""
    lengths = np.load(lengths_path)
    lengths_path.unlink()
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    values = np.load(values_path, mmap_mode="r")
    arr = RaggedArray(values, offsets, max_len, padding)
    if storage == "ragged" or offsets[-1] < RAGGED_WHEN_MEAN_BELOW * arr.size:
        np.save(folder / f"{stem}.offsets.npy", offsets)
        (folder / f"{stem}{RAGGED_SUFFIX}").write_text(json.dumps({"max_len": max_len, "padding": padding}))
        return
    writer = NpyAppender(folder / f"{stem}.npy", (max_len,), values.dtype)
    try:
        for start in range(0, len(arr), block_rows):
            writer.append(arr[start:start + block_rows])
    finally:
        writer.close()
    del values, arr
    values_path.unlink()
