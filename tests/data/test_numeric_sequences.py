"""Numeric (value) sequences (``values: numbers``): parsing, padding aligned with id sequences, the
feature map, the in-memory and streaming pipeline, the cache key, the loader's float batches, and a
served request (``^``-joined text or a JSON array) encoding as the training pipeline does."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from ctrlab.config import ConfigError
from ctrlab.data.errors import DataError
from ctrlab.data.feature_map import FeatureMap, NumericSequenceField, validate_feature_map_dict
from ctrlab.data.loader import BatchLoader
from ctrlab.data.pipeline import encode_frame, prepare
from ctrlab.data.schema import load_dataset_config

YAML = """
name: gaps
format: {fmt}
files: {{train: train.{fmt}, valid: valid.{fmt}, test: test.{fmt}}}
labels: [label]
features:
  - {{name: item, kind: categorical}}
  - {{name: hist, kind: sequence, splitter: "^", max_len: 4, share_vocab_with: item, padding: {padding}, truncating: {trunc}}}
  - {{name: gap, kind: sequence, values: numbers, splitter: "^", max_len: 4, padding: {padding}, truncating: {trunc}}}
"""


def _rows(n: int, seed: int):
    rng = np.random.default_rng(seed)
    items = [f"i{k}" for k in range(8)]
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 7))
        hist = [items[j] for j in rng.integers(0, 8, k)]
        gap = [round(float(g), 2) for g in np.sort(rng.exponential(100.0, k))[::-1]]
        out.append({"label": int(rng.random() < 0.4), "item": items[int(rng.integers(8))],
                    "hist": "^".join(hist), "gap": "^".join(str(g) for g in gap)})
    return out


def _write(folder, fmt="csv", padding="pre", trunc="pre", n=300):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows, seed in (("train", n, 0), ("valid", 60, 1), ("test", 60, 2)):
        df = pl.DataFrame(_rows(rows, seed))
        if fmt == "parquet":  # list cells: strings for ids, floats for the gaps
            df = df.with_columns(pl.col("hist").str.split("^").list.eval(pl.element().filter(pl.element() != "")),
                                 pl.col("gap").str.split("^").list.eval(
                                     pl.element().filter(pl.element() != "").cast(pl.Float64)))
            df.write_parquet(folder / f"{split}.parquet")
        else:
            df.write_csv(folder / f"{split}.csv")
    (folder / "gaps.yaml").write_text(YAML.format(fmt=fmt, padding=padding, trunc=trunc))
    return load_dataset_config(folder / "gaps.yaml")


@pytest.mark.parametrize("padding,trunc", [("pre", "pre"), ("post", "post"), ("pre", "post")])
def test_values_aligned_with_the_id_sequence_of_the_same_rows(tmp_path, padding, trunc):
    cfg = _write(tmp_path / "d", padding=padding, trunc=trunc)
    data = prepare(cfg, cache_dir=tmp_path / "c", log=lambda *a: None)
    fmap = data.feature_map
    assert [f.name for f in fmap.sequences] == ["hist"]
    assert fmap.numeric_sequences == [NumericSequenceField("gap", 4)]
    assert fmap.field_names() == ["item", "hist"] and fmap.num_fields == 2  # not embedded
    raw = pl.read_csv(cfg.resolve("train"))
    tr = data.splits["train"].arrays
    assert tr["numseq:gap"].dtype == np.float32 and tr["numseq:gap"].shape == (raw.height, 4)
    np.testing.assert_array_equal(tr["numseq:gap"] != 0, tr["seq:hist"] != 0)  # same positions
    for i, cell in enumerate(raw["gap"].fill_null("").to_list()):
        vals = [float(x) for x in cell.split("^") if x]
        vals = vals[-4:] if trunc == "pre" else vals[:4]
        row = tr["numseq:gap"][i]
        got = row[row != 0] if vals else row[:0]
        np.testing.assert_allclose(got, np.float32(vals))
        if vals and len(vals) < 4:
            assert (row[0] == 0) == (padding == "pre")
    # batches: float32 values kept (no int cast), aligned with the ids
    batch = next(iter(BatchLoader(data.splits["train"], 64, shuffle=True, seed=3)))
    assert batch["numseq:gap"].dtype == torch.float32 and batch["seq:hist"].dtype == torch.int64
    assert torch.equal(batch["numseq:gap"] != 0, batch["seq:hist"] != 0)
    assert (batch["numseq:gap"] % 1 != 0).any()


@pytest.mark.filterwarnings("ignore:.*out of the train vocabulary")  # the gaps read as ids (on purpose)
def test_streaming_and_parquet_lists_give_the_same_arrays(tmp_path):
    cfg = _write(tmp_path / "csv")
    whole = prepare(cfg, cache_dir=tmp_path / "c1", log=lambda *a: None)
    streamed = prepare(cfg, cache_dir=tmp_path / "c2", log=lambda *a: None, streaming=True, block_rows=70)
    pq = prepare(_write(tmp_path / "pq", fmt="parquet"), cache_dir=tmp_path / "c3", log=lambda *a: None)
    for split in ("train", "valid", "test"):
        for other in (streamed, pq):
            for key in ("numseq:gap", "seq:hist"):
                np.testing.assert_array_equal(whole.splits[split].arrays[key], np.asarray(other.splits[split].arrays[key]))
    # the cache key follows `values`: the same column read as ids is another cache
    text = (tmp_path / "csv" / "gaps.yaml").read_text().replace("values: numbers", "values: ids")
    (tmp_path / "csv" / "ids.yaml").write_text(text)
    as_ids = prepare(load_dataset_config(tmp_path / "csv" / "ids.yaml"), cache_dir=tmp_path / "c1", log=lambda *a: None)
    assert as_ids.path != whole.path and not as_ids.reused and "seq:gap" in as_ids.splits["train"].arrays
    again = prepare(cfg, cache_dir=tmp_path / "c1", log=lambda *a: None)
    assert again.reused and again.feature_map.numeric_sequences == whole.feature_map.numeric_sequences


def test_bad_tokens_and_bad_configs(tmp_path):
    cfg = _write(tmp_path / "d")
    data = prepare(cfg, cache_dir=tmp_path / "c", log=lambda *a: None)
    frame = pl.DataFrame({"item": ["i1", "i2", "i3"], "hist": ["i1", "", None], "gap": ["3^4", "", None],
                          "label": [0, 1, 0]})
    enc = encode_frame(frame, data.feature_map).arrays["numseq:gap"]
    np.testing.assert_array_equal(enc, [[0, 0, 3, 4], [0, 0, 0, 0], [0, 0, 0, 0]])  # empty / missing: no events
    for bad in ("3^x", "1^inf"):
        with pytest.raises(DataError, match="not a finite number") as info:
            encode_frame(frame.with_columns(pl.Series("gap", ["1", bad, ""])), data.feature_map)
        assert info.value.line == 2 and info.value.column == "gap"
    for extra, key in (("share_vocab_with: item", "share_vocab_with"), ("min_count: 2", "min_count"),
                       ("embedding_dim: 8", "embedding_dim"), ("values: words", "values")):
        text = (tmp_path / "d" / "gaps.yaml").read_text().replace("values: numbers", "values: numbers, " + extra)
        if key == "values":
            text = text.replace("values: numbers, values: words", "values: words")
        (tmp_path / "d" / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=key):
            load_dataset_config(tmp_path / "d" / "bad.yaml")


def test_feature_map_from_fields_round_trip_and_validation(tmp_path):
    fm = FeatureMap.from_fields(categorical={"item": 10}, sequences={"hist": (5, "item")},
                                numeric_sequences={"gap": 5})
    assert fm.numeric_sequences == [NumericSequenceField("gap", 5)] and fm.num_fields == 2
    assert FeatureMap.from_dict(fm.to_dict()) == fm
    fm.save(tmp_path / "fm.json")
    assert FeatureMap.load(tmp_path / "fm.json") == fm
    d = fm.to_dict()
    d["numeric_sequences"] = [{"name": "gap", "max_len": 0}]
    with pytest.raises(DataError, match="max_len"):
        validate_feature_map_dict(d)
    d["numeric_sequences"] = [{"name": "gap"}]
    with pytest.raises(DataError, match="missing key"):
        validate_feature_map_dict(d)
    # a fitted map: the encoder state of a numeric sequence must say values: numbers
    cfg = _write(tmp_path / "d")
    fitted = prepare(cfg, cache_dir=tmp_path / "c", log=lambda *a: None).feature_map.to_dict()
    validate_feature_map_dict(fitted)
    fitted["sequences"].append(fitted["numeric_sequences"].pop())
    fitted["sequences"][-1]["vocab_size"] = 2
    with pytest.raises(DataError, match="values"):
        validate_feature_map_dict(fitted)


def test_export_and_serve_a_number_sequence(tmp_path):
    from ctrlab import api
    from ctrlab.serve.artifact import export_run, model_inputs
    from ctrlab.serve.predictor import Predictor

    torch.set_num_threads(1)
    cfg = _write(tmp_path / "d")
    run = tmp_path / "run"
    api.train(dataset=str(tmp_path / "d" / "gaps.yaml"), model="DNN", preset="none", output=str(run),
              log=lambda *a: None, overrides=["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=128"])
    art = export_run(run, tmp_path / "artifact")
    pred = Predictor(art)
    assert "numseq:gap" in [s.key for s in model_inputs(pred.fmap)]
    gap_col = next(c for c in pred.schema if c["name"] == "gap")
    assert gap_col["features"][0]["values"] == "numbers" and "array" in gap_col["accepts"]
    raw = pl.read_csv(cfg.resolve("test")).head(20)
    records = [{"item": r["item"], "hist": r["hist"], "gap": r["gap"]} for r in raw.iter_rows(named=True)]
    as_lists = [{**r, "gap": [float(x) for x in (r["gap"] or "").split("^") if x]} for r in records]
    _, fmap, dcfg, rcfg = api.load_run(run)
    want = prepare(dcfg, cache_dir=rcfg.cache_dir, log=lambda *a: None, feature_map=fmap).splits["test"]
    for recs in (records, as_lists):
        enc = pred.encode_records(recs)
        np.testing.assert_array_equal(enc["numseq__gap"], np.asarray(want.arrays["numseq:gap"][:20]))
        probs = pred.predict_records(recs)
        assert probs.shape == (20,) and np.isfinite(probs).all()
    from ctrlab.serve.predictor import RequestError

    with pytest.raises(RequestError, match="numbers"):
        pred.encode_records([{**as_lists[0], "gap": ["a"]}])
    with pytest.raises(RequestError):
        pred.encode_records([{**records[0], "gap": "1^zz"}])


def test_min_count_setting_leaves_number_sequences_alone(tmp_path):
    """``min_count`` (the auto preset's small-data setting, or --min-count) raises the categorical and
    own-vocabulary id sequences' min_count; a number sequence has no vocabulary, so it must keep 1
    (raising it made the saved encoder state fail its own validation when the run loaded it)."""
    from ctrlab import api

    torch.set_num_threads(1)
    _write(tmp_path / "d")
    run = tmp_path / "run"
    api.train(dataset=str(tmp_path / "d" / "gaps.yaml"), model="DNN", preset="none", min_count=3, output=str(run),
              log=lambda *a: None, overrides=["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=128"])
    _, fmap, dcfg, _ = api.load_run(run)
    specs = {s.name: s for s in dcfg.features}
    assert specs["gap"].min_count == 1 and specs["item"].min_count == 3
