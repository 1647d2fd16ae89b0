"""From a dataset config to encoded, cached splits and a feature map.

``prepare(cfg)`` reads the train split, fits every encoder on it (vocabularies, normaliser
statistics, bucket edges), writes the feature map as JSON, encodes every split into
contiguous ``.npy`` arrays and caches the lot under a folder keyed by a hash of the
config and of the source files. A later call with the same config and unchanged files
reuses the cache; a change to either rebuilds it.

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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..config import to_dict
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
from .feature_map import CategoricalField, DenseField, FeatureMap, NumericField, SequenceField
from .loader import EncodedSplit, array_file_name
from .readers import read_split
from .streaming import (
    DEFAULT_BLOCK_ROWS,
    STREAM_FORMATS,
    NpyAppender,
    fit_streaming,
    iter_blocks,
    split_groups,
    with_text_fallback,
)
from .schema import CategoricalSpec, DatasetConfig, DenseVectorSpec, NumericSpec, SequenceSpec, _expand, column_of

CACHE_VERSION = 1
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
        elif isinstance(spec, DenseVectorSpec):
            encoders[spec.name] = DenseVectorEncoder(spec)
    return encoders


def raw_columns(cfg: DatasetConfig, with_labels: bool = True) -> list[str]:
    cols = [column_of(f) for f in cfg.features]
    if with_labels:
        cols += list(cfg.labels)
    if cfg.group_field:
        cols.append(cfg.group_field)
    return list(dict.fromkeys(cols))


def fit_feature_map(cfg: DatasetConfig, train: pl.DataFrame, path: Path | None = None) -> FeatureMap:
    """Fit all encoders on the train frame and describe the encoded inputs."""
    encoders = _make_encoders(cfg)
    by_vocab = [e for e in encoders.values() if isinstance(e, CategoricalEncoder) and not e.spec.hash_buckets]
    fit_vocabularies(train, by_vocab)  # all vocabulary columns in one parallel pass
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
        elif isinstance(enc, SequenceEncoder):
            fmap.sequences.append(
                SequenceField(spec.name, spec.max_len, enc.vocab_size, spec.share_vocab_with, spec.embedding_dim,
                              pretrained_emb=_pretrained_path(cfg, spec), freeze_emb=spec.freeze_emb)
            )
        else:
            fmap.dense.append(DenseField(spec.name, spec.dim))
    fmap.field_order = [spec.name for spec in cfg.features]  # models stack fields in this order
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
) -> EncodedSplit:
    """Raw frame -> encoded arrays, with the feature map's fitted encoders. ``group_values``: the
    split's sorted distinct group values, when the frame is one block of a split (group ids are
    ranks among them); by default the frame's own."""
    encoders = encoders or load_encoders(fmap)
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
        exprs = [encoders[fmap.categorical[j].name].transform_expr().alias(str(j)) for j in by_vocab]
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
    for f in fmap.sequences:
        arrays[f"seq:{f.name}"] = encoders[f.name].transform(df, path)
    for f in fmap.dense:
        arrays[f"dense:{f.name}"] = encoders[f.name].transform(df, path)
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


# ---- cache ----------------------------------------------------------------------------------
def _fingerprint(path: Path) -> dict[str, Any]:
    """Cheap content fingerprint: size + sha256 of the first and last MiB.

    Hashing whole multi-GB files on every run would cost minutes; size + head/tail digests
    catch replaced or edited files (an in-place edit that keeps size, head and tail
    identical is not detected; pass ``rebuild=True`` after such surgery)."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > (1 << 20):  # the tail MiB overlaps the head for files of 1-2 MiB
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {"path": str(path), "size": st.st_size, "sha256_head_tail": h.hexdigest()}


def cache_key(cfg: DatasetConfig, files: dict[str, Path]) -> str:
    cfg_d = to_dict(cfg)
    cfg_d.pop("root", None)
    payload = {
        "version": CACHE_VERSION,
        "config": cfg_d,
        "sources": {split: {k: v for k, v in _fingerprint(p).items() if k != "path"} for split, p in files.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PreparedData:
    """Encoded splits plus the feature map that describes them."""

    feature_map: FeatureMap
    splits: dict[str, EncodedSplit]
    path: Path
    config: DatasetConfig
    reused: bool = False


def prepare(
    cfg: DatasetConfig,
    cache_dir: str | Path | None = None,
    rebuild: bool = False,
    mmap: bool = False,
    log=print,
    streaming: bool = False,
    block_rows: int = DEFAULT_BLOCK_ROWS,
) -> PreparedData:
    """Fit on train, encode all splits, cache them; reuse the cache when nothing changed.

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
    key = cache_key(cfg, files)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    folder = root / "encoded" / f"{cfg.name}-{key}"
    if folder.exists() and (folder / "manifest.json").exists() and not rebuild:
        fmap = FeatureMap.load(folder / "feature_map.json")
        splits = {s: EncodedSplit.load(folder / s, mmap=mmap) for s in files}
        return PreparedData(fmap, splits, folder, cfg, reused=True)

    t0 = time.time()
    columns = raw_columns(cfg)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts = {}
    encoded: dict[str, EncodedSplit] = {}
    if streaming and cfg.format in STREAM_FORMATS:
        log(f"[ctrlab] encoding dataset {cfg.name!r} in blocks of {block_rows:,} rows (streaming) -> {folder}")
        fmap, counts = _encode_streaming(cfg, files, columns, tmp, block_rows, log)
        mmap = True  # the point of streaming: the splits need not fit in memory
    else:
        if streaming:
            log(f"[ctrlab] format {cfg.format} is not streamed; reading each split whole")
        log(f"[ctrlab] encoding dataset {cfg.name!r} -> {folder}")
        train_df = read_split(cfg, files["train"], columns)
        fmap = fit_feature_map(cfg, train_df, files["train"])
        encoders = load_encoders(fmap)
        for split, p in files.items():
            df = train_df if split == "train" else read_split(cfg, p, columns)
            train_df = None  # drop the raw train frame as soon as it is encoded (peak memory)
            enc = encode_frame(df, fmap, p, encoders=encoders)
            del df
            enc.save(tmp / split)
            counts[split] = len(enc)
            log(f"[ctrlab]   {split}: {len(enc):,} rows from {p}")
            if not mmap:
                encoded[split] = enc  # what the saved files hold: no need to read them back
            del enc
    fmap.save(tmp / "feature_map.json")
    (tmp / "dataset_config.json").write_text(json.dumps(to_dict(cfg), indent=1))
    manifest = {
        "key": key,
        "cache_version": CACHE_VERSION,
        "sources": {s: _fingerprint(p) for s, p in files.items()},
        "rows": counts,
        "seconds": round(time.time() - t0, 2),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if folder.exists() and (rebuild or not (folder / "manifest.json").exists()):
        shutil.rmtree(folder, ignore_errors=True)  # explicit rebuild, or a half-written folder
    try:
        tmp.rename(folder)
    except OSError:
        # Another process (e.g. a parallel test worker) finished the same cache first: the
        # key guarantees identical content, so keep theirs and drop ours.
        if not (folder / "manifest.json").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    splits = {s: encoded[s] if s in encoded else EncodedSplit.load(folder / s, mmap=mmap) for s in files}
    return PreparedData(fmap, splits, folder, cfg, reused=False)


def _encode_streaming(cfg: DatasetConfig, files: dict[str, Path], columns: list[str], out: Path,
                      block_rows: int, log) -> tuple[FeatureMap, dict[str, int]]:
    """Fit on train and encode every split block by block into ``out/<split>/*.npy``
    (:mod:`ctrlab.data.streaming`)."""

    def fit(numbers: bool):
        encoders = _make_encoders(cfg)
        fit_streaming(cfg, files["train"], columns, encoders, block_rows, numbers)
        return encoders

    fmap = describe(cfg, with_text_fallback(cfg, fit))
    encoders = load_encoders(fmap)
    counts: dict[str, int] = {}
    for split, p in files.items():

        def encode(numbers: bool) -> int:
            groups = split_groups(cfg, p, fmap.group_field, block_rows, numbers)
            (out / split).mkdir(parents=True, exist_ok=True)
            writers: dict[str, NpyAppender] = {}
            try:
                for block in iter_blocks(cfg, p, columns, block_rows, numbers):
                    arrays = encode_frame(block, fmap, p, encoders=encoders, group_values=groups).arrays
                    for key, arr in arrays.items():
                        if key not in writers:
                            writers[key] = NpyAppender(out / split / f"{array_file_name(key)}.npy", arr.shape[1:],
                                                       arr.dtype)
                        writers[key].append(arr)
            finally:
                for w in writers.values():
                    w.close()
            rows = {w.written for w in writers.values()}
            if rows in (set(), {0}):
                raise DataError(f"the {split} file has no data rows", file=p, fix="add data rows")
            return rows.pop()  # every array got every block's rows

        counts[split] = with_text_fallback(cfg, encode)
        log(f"[ctrlab]   {split}: {counts[split]:,} rows from {p}")
    return fmap, counts
