"""Streaming preprocessing (two passes over blocks of rows) gives the same feature map and the same
encoded arrays as reading each split whole, on real datasets of every streamed format, with many
small blocks; bad cells are still named by file, line and column."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ctrlab import api
from ctrlab.data.errors import DataError
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import load_dataset_config


@pytest.mark.parametrize("dataset,block_rows", [
    ("criteo_head10k", 777),     # tsv: 13 numeric (log-normalised) + 26 categorical, min_count
    ("avazu_head10k", 1000),     # csv
    ("frappe_x1_subset", 20000), # csv, 10 categorical
    ("movielens_100k", 5000),    # parquet: sequences (own and shared vocabulary), gAUC groups
])
def test_streaming_equals_in_memory(data_dir, tmp_path, dataset, block_rows):
    dcfg = api.dataset_config(api.load_run_config(None, dataset=dataset))
    whole = prepare(dcfg, tmp_path / "whole", log=lambda *a: None)
    lines = []
    streamed = prepare(dcfg, tmp_path / "streamed", log=lines.append, streaming=True, block_rows=block_rows)
    assert any("streaming" in line for line in lines)
    a, b = whole.feature_map, streamed.feature_map
    assert [(f.name, f.vocab_size) for f in a.categorical] == [(f.name, f.vocab_size) for f in b.categorical]
    assert [(f.name, f.vocab_size) for f in a.sequences] == [(f.name, f.vocab_size) for f in b.sequences]
    for name, state in a.encoders.items():
        other = b.encoders[name]
        assert state.get("vocab") == other.get("vocab"), name  # same tokens, same order
        for k, v in (state.get("stats") or {}).items():
            assert other["stats"][k] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, k)
    for split in whole.splits:
        x, y = whole.splits[split].arrays, streamed.splits[split].arrays
        assert sorted(x) == sorted(y)
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, (split, key)
            if x[key].dtype.kind == "f":
                np.testing.assert_allclose(y[key], x[key], rtol=1e-6, atol=1e-7, err_msg=f"{split} {key}")
            else:
                np.testing.assert_array_equal(y[key], x[key], err_msg=f"{split} {key}")
        assert isinstance(y["label"], np.memmap)  # streamed splits come back memory-mapped


def test_streaming_names_a_bad_numeric_cell(tmp_path, check_error):
    rows = ["label,a,x"] + [f"{i % 2},t{i % 5},{i * 0.5}" for i in range(50)]
    rows[37] = "1,t3,oops"  # file line 38
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0,
                               "features": [{"name": "a"}, {"name": "x", "kind": "numeric"}]})
    with pytest.raises(DataError) as info:
        prepare(cfg, tmp_path / "cache", log=lambda *a: None, streaming=True, block_rows=8)
    check_error(info.value, tmp_path / "train.csv", 38, "x", "declare 'x' as kind: categorical")


def test_blocks_follow_block_rows_and_number_lines(data_dir):
    from ctrlab.data.pipeline import raw_columns
    from ctrlab.data.readers import LINE, read_split
    from ctrlab.data.streaming import iter_blocks

    dcfg = api.dataset_config(api.load_run_config(None, dataset="criteo_head10k"))
    path, columns = dcfg.resolve("train"), raw_columns(dcfg)
    blocks = list(iter_blocks(dcfg, path, columns, block_rows=500))
    whole = read_split(dcfg, path, columns)
    assert len(blocks) >= 8 and max(b.height for b in blocks[1:]) < 1500
    joined = pl.concat(blocks)
    assert joined.equals(whole.select(joined.columns))  # same cells, same line numbers
    assert joined[LINE].to_list() == whole[LINE].to_list()


def test_quoted_newlines_do_not_split_rows(tmp_path):
    from ctrlab.data.streaming import iter_blocks

    body = "".join(f'{i % 2},"multi\nline {i}",{i}\n' for i in range(3000))
    (tmp_path / "q.csv").write_text("label,text,n\n" + body)
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "q.csv"}, "valid_fraction": 0,
                               "features": [{"name": "text"}, {"name": "n"}]})
    rows = pl.concat(list(iter_blocks(cfg, tmp_path / "q.csv", ["text", "n", "label"], block_rows=100)))
    assert rows.height == 3000 and rows["text"][1234] == "multi\nline 1234"


def test_streaming_numeric_normalisers_and_quantile_buckets(tmp_path):
    """Standard / min-max / log statistics and quantile bucket edges fitted over blocks match the
    in-memory fit (statistics to float rounding, bucket edges exactly: they keep every value)."""
    rng = np.random.default_rng(1)
    lines = ["label,a,x,y,z"] + [f"{i % 2},t{rng.integers(20)},{rng.gamma(2, 3):.4f},"
                                 f"{'' if i % 17 == 0 else format(rng.normal(), '.5f')},{rng.integers(0, 1000)}" for i in range(3000)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    cfg = load_dataset_config({"root": str(tmp_path), "files": {"train": "train.csv"}, "valid_fraction": 0, "features": [
        {"name": "a"},
        {"name": "x", "kind": "numeric", "normalizer": "standard"},
        {"name": "xq", "source": "x", "kind": "numeric", "n_buckets": 7},
        {"name": "y", "kind": "numeric", "normalizer": "minmax", "fill_value": -1.0},
        {"name": "z", "kind": "numeric", "normalizer": "log", "bucketize": [1.0, 3.0, 5.0]},
    ]})
    whole = prepare(cfg, tmp_path / "whole", log=lambda *a: None)
    streamed = prepare(cfg, tmp_path / "streamed", log=lambda *a: None, streaming=True, block_rows=128)
    for name in ("x", "y"):
        for k, v in whole.feature_map.encoders[name]["stats"].items():
            assert streamed.feature_map.encoders[name]["stats"][k] == pytest.approx(v, rel=1e-12), (name, k)
    assert streamed.feature_map.encoders["xq"]["boundaries"] == whole.feature_map.encoders["xq"]["boundaries"]
    for key in ("cat", "num", "label"):
        np.testing.assert_allclose(streamed.splits["train"].arrays[key], whole.splits["train"].arrays[key],
                                   rtol=1e-6, atol=1e-7)
