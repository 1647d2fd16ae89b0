"""Pretrained embedding files (issue 14.15): formats, alignment by token, config validation, and
the path from a dataset config through prepare() to a model's rows."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from ctrlab.config import ConfigError
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import prepare
from ctrlab.data.pretrained import pretrained_rows
from ctrlab.data.schema import load_dataset_config
from ctrlab.models import create


def test_formats_align_by_token(tmp_path):
    from safetensors.numpy import save_file

    vocab = ["10", "11", "x"]
    pl.DataFrame({"key": [11, 5], "value": [[1.0, 2.0], [3.0, 4.0]]}).write_parquet(tmp_path / "e.parquet")
    np.savez(tmp_path / "e.npz", key=np.array(["x", "10"]), value=np.array([[5.0, 6.0], [7.0, 8.0]]))
    save_file({"11": np.array([9.0, 9.5], dtype=np.float32)}, str(tmp_path / "e.safetensors"))
    ids, vec = pretrained_rows(tmp_path / "e.parquet", vocab, 2, "item")
    assert ids.tolist() == [3] and vec.tolist() == [[1.0, 2.0]]  # "11" is id 2 + 1; key 5 unused
    ids, vec = pretrained_rows(tmp_path / "e.npz", vocab, 2, "item")
    assert ids.tolist() == [2, 4] and vec.tolist() == [[7.0, 8.0], [5.0, 6.0]]
    ids, vec = pretrained_rows(tmp_path / "e.safetensors", vocab, 2, "item")
    assert ids.tolist() == [3] and vec.tolist() == [[9.0, 9.5]]


def test_file_errors_name_the_field(tmp_path):
    np.savez(tmp_path / "obj.npz", key=np.array(["a", 1], dtype=object), value=np.zeros((2, 2)))
    with pytest.raises(DataError, match="Python objects"):
        pretrained_rows(tmp_path / "obj.npz", ["a"], 2, "item")
    np.savez(tmp_path / "dup.npz", key=np.array(["a", "a"]), value=np.zeros((2, 2)))
    with pytest.raises(DataError, match="'item' repeat keys \\['a'\\]"):
        pretrained_rows(tmp_path / "dup.npz", ["a"], 2, "item")
    pl.DataFrame({"token": ["a"], "value": [[1.0]]}).write_parquet(tmp_path / "cols.parquet")
    with pytest.raises(DataError, match="'item' need columns 'key' and 'value'"):
        pretrained_rows(tmp_path / "cols.parquet", ["a"], 1, "item")
    (tmp_path / "e.txt").write_text("a 1 2\n")
    with pytest.raises(DataError, match="must be one of"):
        pretrained_rows(tmp_path / "e.txt", ["a"], 2, "item")


def test_config_validation():
    base = {"name": "d", "files": {"train": "t.csv"}}
    with pytest.raises(ConfigError, match="hashed field"):
        load_dataset_config({**base, "features": [{"name": "a", "hash_buckets": 10, "pretrained_emb": "e.npz"}]})
    with pytest.raises(ConfigError, match="share_vocab_with uses the rows of 'a'; set pretrained_emb there"):
        load_dataset_config({**base, "features": [
            {"name": "a"}, {"name": "h", "kind": "sequence", "share_vocab_with": "a", "pretrained_emb": "e.npz"}]})
    with pytest.raises(ConfigError, match="embedding_dim: must be >= 1"):
        load_dataset_config({**base, "features": [{"name": "a", "embedding_dim": 0}]})


def test_dataset_config_to_model_rows(tmp_path):
    """A relative ``pretrained_emb`` resolves against the config's folder; the fitted map carries
    it with ``freeze_emb`` and the feature's ``embedding_dim``; the model's rows for the covered
    tokens are the file's vectors, frozen by default."""
    pl.DataFrame({"label": [1, 0, 1, 0], "item": ["i1", "i2", "i1", "i3"], "user": ["a", "b", "c", "a"]}) \
        .write_csv(tmp_path / "train.csv")
    np.savez(tmp_path / "items.npz", key=np.array(["i2", "i1", "zz"]),
             value=np.arange(9, dtype=np.float32).reshape(3, 3))
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({
        "name": "pre", "files": {"train": "train.csv"}, "valid_fraction": 0,
        "features": [{"name": "user"}, {"name": "item", "embedding_dim": 3, "pretrained_emb": "items.npz"}]}))
    data = prepare(load_dataset_config(tmp_path / "d.yaml"), tmp_path / "cache", log=lambda *a: None)
    fmap = data.feature_map
    item = fmap.categorical[1]
    assert item.pretrained_emb == str((tmp_path / "items.npz").resolve()) and item.freeze_emb and item.embedding_dim == 3
    m = create("DCNv2", fmap, embedding_dim=2, hidden_units=[4])
    assert m.embedding.output_dim == 2 + 3
    vocab = fmap.encoders["item"]["vocab"]  # ["i1", "i2", "i3"] (i1 twice)
    ids = torch.tensor([[0, 2 + vocab.index("i1")], [0, 2 + vocab.index("i2")], [0, 2 + vocab.index("i3")]])
    rows = m.embedding.categorical_embedding({"cat": ids}, "item")
    torch.testing.assert_close(rows[:2], torch.tensor([[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]))
    assert rows[2].abs().max() < 1e-3
    assert not any(p is m.embedding.groups[m.embedding._group_of["item"]].embedding.weight
                   for p in m.embedding_parameters())  # frozen: neither trained nor regularized
    (tmp_path / "items.npz").unlink()
    with pytest.raises(DataError, match="'item': pretrained_emb file .*items.npz does not exist"):
        prepare(load_dataset_config(tmp_path / "d.yaml"), tmp_path / "cache2", log=lambda *a: None)


def test_non_finite_and_ragged_pretrained_vectors_are_errors(tmp_path):
    """The reader item-vector features share (issue 18): NaN and ragged Parquet vectors name the key."""
    np.savez(tmp_path / "nan.npz", key=np.array(["a", "b"]), value=np.array([[1.0, 2.0], [np.nan, 0.0]]))
    with pytest.raises(DataError, match="vector of key 'b' .*NaN or infinity"):
        pretrained_rows(tmp_path / "nan.npz", ["a", "b"], 2, "item")
    pl.DataFrame({"key": ["a", "b"], "value": [[1.0, 2.0], [1.0]]}).write_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(DataError, match="vector of key 'b' .*is 1 long"):
        pretrained_rows(tmp_path / "ragged.parquet", ["a", "b"], 2, "item")
