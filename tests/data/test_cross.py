"""Cross-product features (``cross: [a, b]`` / ``crosses:``): vocabularies fitted on the train split only
with min_count and OOV, the feature map's record, the cache key, and serving from the raw source
columns alone (the exported artifact and the HTTP server derive the pairs)."""
from __future__ import annotations


import numpy as np
import polars as pl
import pytest

from ctrlab import api
from ctrlab.config import ConfigError
from ctrlab.data.derive import with_crosses
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import CROSS_SEPARATOR, OOV_ID, CategoricalSpec, load_dataset_config

SEP = CROSS_SEPARATOR


def dataset(tmp_path, crosses=None, valid_rows=None):
    """train/valid/test CSVs of categorical a, b, c; pair counts in train: (x, 1) 3 times, (y, 2) twice,
    (x, 2) once; (y, 1) appears in valid and test only."""
    train = pl.DataFrame({"label": [1, 0, 1, 0, 1, 0], "a": ["x", "x", "x", "y", "y", "x"],
                          "b": [1, 1, 1, 2, 2, 2], "c": ["p", "q", "p", "q", "p", "q"]})
    valid = pl.DataFrame({"label": [1, 0, 1, 0], "a": ["y", "y", "y", "x"], "b": [1, 1, 1, 1],
                          "c": ["p", "p", "p", "p"]})
    test = pl.DataFrame({"label": [1, 0, 1], "a": ["y", "x", "x"], "b": [1, 1, 2], "c": ["p", "q", "z"]})
    for name, df in (("train", train), ("valid", valid), ("test", test)):
        df.write_csv(tmp_path / f"{name}.csv")
    cfg = {"name": "pairs", "root": str(tmp_path), "labels": ["label"],
           "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"},
           "features": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}
    if crosses is not None:
        cfg["crosses"] = crosses
    return load_dataset_config(cfg)


def test_crosses_add_every_pair_in_feature_order_and_are_idempotent(tmp_path):
    cfg = dataset(tmp_path, crosses={"fields": ["c", "a", "b"], "min_count": 2})
    crosses = [f for f in cfg.features if f.cross]
    assert [(f.name, f.cross, f.min_count) for f in crosses] == [
        ("a_x_b", ["a", "b"], 2), ("a_x_c", ["a", "c"], 2), ("b_x_c", ["b", "c"], 2)]
    again = load_dataset_config(cfg.to_dict())  # a saved config (features already crossed) loads the same
    assert [f.name for f in again.features] == [f.name for f in cfg.features]


def test_vocabulary_is_fitted_on_train_only_with_min_count_and_oov(tmp_path):
    data = prepare(dataset(tmp_path, crosses={"fields": ["a", "b"], "min_count": 2}), tmp_path / "cache",
                   log=lambda *a: None)
    fmap = data.feature_map
    field = fmap.categorical[fmap.categorical_index("a_x_b")]
    assert (field.origin, field.sources) == ("cross", ["a", "b"])
    assert fmap.crosses() == {("a", "b"): "a_x_b"}
    # (x, 1) 3 times and (y, 2) twice in train; (x, 2) once (< min_count); (y, 1) never in train
    assert fmap.encoders["a_x_b"]["vocab"] == [f"x{SEP}1", f"y{SEP}2"]
    assert field.vocab_size == 4  # + padding and OOV
    j = fmap.categorical_index("a_x_b")
    assert data.splits["train"].arrays["cat"][:, j].tolist() == [2, 2, 2, 3, 3, OOV_ID]
    # (y, 1) is in valid 3 times, yet OOV: valid and test never feed a vocabulary
    assert data.splits["valid"].arrays["cat"][:, j].tolist() == [OOV_ID, OOV_ID, OOV_ID, 2]
    assert data.splits["test"].arrays["cat"][:, j].tolist() == [OOV_ID, 2, OOV_ID]
    # the source fields keep their own ids
    assert fmap.encoders["a"]["vocab"] == ["x", "y"]
    # the saved map round-trips, sources included
    again = FeatureMap.load(data.path / "feature_map.json")
    assert again.categorical[j].sources == ["a", "b"] and again.to_dict() == fmap.to_dict()


def test_a_carved_validation_split_does_not_feed_the_cross_vocabulary(tmp_path):
    cfg = dataset(tmp_path, crosses={"fields": ["a", "b"], "min_count": 1}).to_dict()
    cfg["files"] = {"train": "train.csv", "test": "test.csv"}
    cfg.update(valid_fraction=0.5, split_seed=0)
    data = prepare(load_dataset_config(cfg), tmp_path / "cache", log=lambda *a: None)
    j = data.feature_map.categorical_index("a_x_b")
    train_pairs = set(data.splits["train"].arrays["cat"][:, j].tolist())
    assert OOV_ID not in train_pairs  # min_count 1: every train pair is known
    vocab = data.feature_map.encoders["a_x_b"]["vocab"]
    assert len(vocab) == len(train_pairs) < 3  # only the kept half's pairs


def test_tokens_do_not_depend_on_the_column_type():
    """A CSV's "10", a Parquet 10 and a JSON 10.0 make the same pair (the served request's types vary)."""
    specs = [CategoricalSpec("a"), CategoricalSpec("b"), CategoricalSpec("a_x_b", cross=["a", "b"])]
    text = with_crosses(pl.DataFrame({"a": ["10", None], "b": ["u", "v"]}), specs)
    ints = with_crosses(pl.DataFrame({"a": [10, None], "b": ["u", "v"]}), specs)
    floats = with_crosses(pl.DataFrame({"a": [10.0, float("nan")], "b": ["u", "v"]}), specs)
    expected = [f"10{SEP}u", f"{SEP}v"]  # a missing side is the "" token: still a pair
    for df in (text, ints, floats):
        assert df["__cross__:a_x_b"].to_list() == expected


def test_cache_key_changes_with_the_crosses(tmp_path):
    def folder(crosses):
        return prepare(dataset(tmp_path, crosses=crosses), tmp_path / "cache", log=lambda *a: None)

    plain, two, five, again = (folder(None), folder({"fields": ["a", "b"], "min_count": 2}),
                               folder({"fields": ["a", "b"], "min_count": 5}),
                               folder({"fields": ["a", "b"], "min_count": 2}))
    assert len({plain.path, two.path, five.path}) == 3  # never a stale cache of other crosses
    assert again.reused and again.path == two.path
    assert plain.feature_map.crosses() == {} and five.feature_map.encoders["a_x_b"]["vocab"] == []


def test_bad_crosses_name_the_field_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"crosses\.fields: \['d'\] are not categorical features"):
        dataset(tmp_path, crosses={"fields": ["a", "d"]})
    base = dataset(tmp_path).to_dict()
    base["features"].append({"name": "ac", "cross": ["a", "zz"]})
    with pytest.raises(ConfigError, match=r"features\[ac\]\.cross: \['zz'\] are not categorical features"):
        load_dataset_config(base)
    base["features"][-1] = {"name": "ac", "cross": ["a", "a"]}
    with pytest.raises(ConfigError, match="two different categorical features"):
        load_dataset_config(base)
    with pytest.raises(ConfigError, match="min_count: must be >= 1"):
        dataset(tmp_path, crosses={"min_count": 0})


DATASET = """
name: ml100k_cross
format: csv
files: {train: train.csv, valid: valid.csv, test: test.csv}
labels: [label]
features:
  - {name: user, kind: categorical}
  - {name: item, kind: categorical}
  - {name: hour, source: timestamp, derive: hour}
crosses: {fields: [user, hour], min_count: 2}
"""


@pytest.fixture(scope="module")
def cross_run(ml100k_rating_splits, tmp_path_factory):
    """(run, test file) of a DNN trained on user, item, hour and the derived cross user × hour."""
    tmp = tmp_path_factory.mktemp("cross")
    data = ml100k_rating_splits(tmp / "data")
    (data / "ml100k_cross.yaml").write_text(DATASET)
    run = tmp / "run"
    api.train(dataset=str(data / "ml100k_cross.yaml"), model="DNN", preset="none", output=str(run),
              log=lambda *a: None, overrides=["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=512"])
    return run, data / "test.csv"


def test_predict_artifact_and_server_derive_the_cross_from_the_raw_columns(cross_run, tmp_path):
    from fastapi.testclient import TestClient

    from ctrlab.cli import main
    from ctrlab.data.loader import BatchLoader
    from ctrlab.serve.artifact import as_model_arrays, export_run
    from ctrlab.serve.config import ServeConfig
    from ctrlab.serve.predictor import Predictor
    from ctrlab.serve.server import create_app
    from ctrlab.train.trainer import Trainer

    run, test_file = cross_run
    model, fmap, dcfg, cfg = api.load_run(run)
    j = fmap.categorical_index("user_x_hour")
    data = prepare(dcfg, cache_dir=cfg.cache_dir, log=lambda *a: None, feature_map=fmap)
    encoded = data.splits["test"].arrays
    known = encoded["cat"][:, j] != OOV_ID
    assert 0 < known.sum() < len(known)  # some test pairs were seen twice in train, others not
    trained = Trainer(model, cfg.trainer, run).predict(BatchLoader(data.splits["test"], 512, shuffle=False))

    raw = pl.read_csv(test_file).drop("label")
    rows, scores = tmp_path / "rows.csv", tmp_path / "scores.csv"
    raw.write_csv(rows)
    assert main(["predict", str(run), "--input", str(rows), "--output", str(scores)]) == 0
    np.testing.assert_allclose(pl.read_csv(scores)["probability"].to_numpy(), trained, rtol=1e-6)

    predictor = Predictor(export_run(run, tmp_path / "artifact"))
    assert [c["name"] for c in predictor.schema] == ["user", "item", "timestamp"]  # no cross column asked for
    records = raw.to_dicts()
    request = predictor.encode_records(records)
    for name, array in as_model_arrays(encoded, predictor.inputs).items():
        np.testing.assert_array_equal(request[name], array, err_msg=name)  # the cross ids too
    served = predictor.predict_records(records)
    np.testing.assert_allclose(served, trained, atol=1e-5)
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/predict", json={"records": records})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], served, rtol=1e-6)
        r = client.post("/predict", json={"records": [{**records[0], "user_x_hour": "1"}]})
        assert r.status_code == 422 and r.json()["field"] == "user_x_hour"  # derived, never sent


def test_a_feature_map_whose_cross_names_no_fields_is_refused(tmp_path):
    import json

    from ctrlab.data.errors import DataError

    data = prepare(dataset(tmp_path, crosses={"fields": ["a", "b"]}), tmp_path / "cache", log=lambda *a: None)
    raw = json.loads((data.path / "feature_map.json").read_text())
    cross = next(f for f in raw["categorical"] if f["origin"] == "cross")
    cross["sources"] = ["a", "gone"]
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"'a_x_b'.*'sources' must name two categorical fields"):
        FeatureMap.load(tmp_path / "bad.json")
