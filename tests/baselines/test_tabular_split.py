"""tabular_split: the run's encoded splits as one flat table for the GBDTs: columns, categorical indices,
sequence summaries, labels and groups on real data; train-only vocabularies (no leakage); clear errors."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrlab.api import RunConfig, dataset_config
from ctrlab.baselines import tabular_split
from ctrlab.baselines.tabular import MAX_EXACT_ID, tabular_columns
from ctrlab.data.errors import DataError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.loader import EncodedSplit, RaggedArray
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import OOV_ID, load_dataset_config


def _latest(row) -> tuple[int, int]:
    """(tokens, latest token or 0) of one encoded id sequence, by a plain loop over the row."""
    tokens = [int(v) for v in row if v != 0]
    return len(tokens), (tokens[-1] if tokens else 0)


def test_movielens_columns_categorical_sequences_labels_groups(data_dir):
    """MovieLens 100K: 7 categorical fields, a ragged multi-valued ``genres`` and a padded item ``history``
    sharing the item vocabulary, a group field (user): every column checked against the encoded arrays."""
    data = prepare(dataset_config(RunConfig(dataset="movielens_100k")), log=lambda *a: None)
    fmap = data.feature_map
    enc = data.splits["valid"]
    assert isinstance(enc.arrays["seq:genres"], RaggedArray)  # both storages are exercised
    assert not isinstance(enc.arrays["seq:history"], RaggedArray)
    t = tabular_split(fmap, enc)
    cat_names = [f.name for f in fmap.categorical]
    assert t.feature_names == [*cat_names, "genres.length", "genres.last", "history.length", "history.last"]
    assert [t.feature_names[j] for j in t.categorical] == [*cat_names, "genres.last", "history.last"]
    assert t.X.dtype == np.float32 and t.X.shape == (len(enc), len(t.feature_names))
    np.testing.assert_array_equal(t.X[:, :len(cat_names)], enc.arrays["cat"])
    for name in ("genres", "history"):
        padded = np.asarray(enc.arrays[f"seq:{name}"])
        j = t.feature_names.index(f"{name}.length")
        expected = np.array([_latest(r) for r in padded[:2000]])
        np.testing.assert_array_equal(t.X[:2000, j:j + 2], expected)
        assert expected[:, 0].max() > 1 and (name == "genres" or expected[:, 0].min() == 0)  # empty histories too
    np.testing.assert_array_equal(t.y, enc.arrays["label"][:, 0])
    np.testing.assert_array_equal(t.group, enc.arrays["group"])
    half = t.take(slice(0, 10))
    assert len(half) == 10 and half.feature_names == t.feature_names and half.group.shape == (10,)


def test_numeric_dense_number_sequence_and_post_padding():
    """By hand: a numeric field, a 3-wide dense vector, a post-padded id sequence, a pre-padded number
    sequence, in the map's field order; no labels, no group."""
    fmap = FeatureMap.from_fields(categorical={"c": 5}, numeric=["n"], sequences={"s": (4, 9)},
                                  dense={"v": 3}, numeric_sequences={"gap": 3})
    fmap.encoders = {}
    enc = EncodedSplit({
        "cat": np.array([[2], [4], [1]], dtype=np.int32),
        "num": np.array([[0.5], [-1.0], [2.0]], dtype=np.float32),
        "seq:s": np.array([[3, 5, 0, 0], [0, 0, 0, 0], [7, 1, 8, 2]], dtype=np.int32),  # post padding
        "dense:v": np.arange(9, dtype=np.float32).reshape(3, 3),
        "numseq:gap": np.array([[0.0, 1.5, 0.0], [0.0, 0.0, 0.0], [4.0, 2.0, 3.0]], dtype=np.float32),
    })
    t = tabular_split(fmap, enc)
    assert t.feature_names == ["c", "n", "s.length", "s.last", "v.0", "v.1", "v.2", "gap.last"]
    assert t.categorical == [0, 3] and t.y is None and t.group is None
    np.testing.assert_array_equal(t.X, np.array([
        [2, 0.5, 2, 5, 0, 1, 2, 0.0],   # pre-padded number sequence: the last position is the latest value
        [4, -1.0, 0, 0, 3, 4, 5, 0.0],
        [1, 2.0, 4, 2, 6, 7, 8, 3.0]], dtype=np.float32))


def test_an_id_seen_only_in_test_is_out_of_vocabulary(tmp_path):
    """Vocabularies are fitted on train only: values (and pairs of a cross) that first appear in valid
    or test are the OOV id in the GBDT's columns, exactly as the torch models see them."""
    pl.DataFrame({"label": [1, 0, 1, 0, 1, 0], "a": ["x", "x", "y", "y", "x", "y"], "b": ["p", "q", "p", "q", "p", "q"]}
                 ).write_csv(tmp_path / "train.csv")
    pl.DataFrame({"label": [1, 0], "a": ["x", "new"], "b": ["p", "q"]}).write_csv(tmp_path / "valid.csv")
    pl.DataFrame({"label": [1, 0, 1], "a": ["only_in_test", "y", "x"], "b": ["p", "p", "r"]}).write_csv(tmp_path / "test.csv")
    cfg = load_dataset_config({"name": "oov", "root": str(tmp_path), "labels": ["label"],
                               "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"},
                               "features": [{"name": "a"}, {"name": "b"}, {"name": "ab", "cross": ["a", "b"]}]})
    data = prepare(cfg, tmp_path / "cache", log=lambda *a: None)
    assert data.feature_map.encoders["a"]["vocab"] == ["x", "y"]
    test = tabular_split(data.feature_map, data.splits["test"])
    assert test.feature_names == ["a", "b", "ab"] and test.categorical == [0, 1, 2]
    a, b, ab = test.X.T
    assert a.tolist() == [OOV_ID, 3, 2]       # only_in_test -> OOV; y, x keep their train ids
    assert b.tolist() == [2, 2, OOV_ID]       # r never in train
    assert ab[[0, 2]].tolist() == [OOV_ID, OOV_ID] and ab[1] >= 2  # (x, r) never a train pair; (y, p) was
    valid = tabular_split(data.feature_map, data.splits["valid"])
    assert valid.X[:, 0].tolist() == [2, OOV_ID]
    assert tabular_split(data.feature_map, data.splits["train"]).X.min() >= 2  # min_count 1: all known


def test_clear_errors():
    big = FeatureMap.from_fields(categorical={"huge": MAX_EXACT_ID + 1})
    with pytest.raises(DataError, match=r"field 'huge' has 16,777,217 ids.*Fix: raise the field's min_count"):
        tabular_columns(big)
    fmap = FeatureMap.from_fields(categorical={"c": 5}, sequences={"s": (3, 9)})
    with pytest.raises(DataError, match=r"no arrays \['seq:s'\]"):
        tabular_split(fmap, EncodedSplit({"cat": np.ones((2, 1), dtype=np.int32)}))
