"""Hour and weekday derived from a raw timestamp (issue 15.4), end to end on real MovieLens 100K rows:
the training pipeline's encoding, `ctrlab predict` on raw rows, the exported ONNX artifact and the
HTTP server all see the same features and give the same probabilities; requests send the raw
timestamp only."""
from __future__ import annotations


import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.loader import BatchLoader
from ctrlab.data.pipeline import prepare
from ctrlab.serve.artifact import as_model_arrays, export_run
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor
from ctrlab.serve.server import create_app
from ctrlab.train.trainer import Trainer

DATASET = """
name: ml100k_ts
format: csv
files: {train: train.csv, valid: valid.csv, test: test.csv}
labels: [label]
features:
  - {name: user, kind: categorical}
  - {name: item, kind: categorical}
  - {name: hour, source: timestamp, derive: hour, timezone: America/Chicago}
  - {name: weekday, source: timestamp, derive: weekday}
  - {name: month, kind: numeric, source: timestamp, derive: month, normalizer: minmax}
"""


@pytest.fixture(scope="module")
def derived_run(ml100k_rating_splits, tmp_path_factory):
    """(run, artifact, test file) of a DNN trained 2 epochs on 4,000 rows of u.data (rating >= 4 -> label)."""
    tmp = tmp_path_factory.mktemp("derived")
    data = ml100k_rating_splits(tmp / "data")
    (data / "ml100k_ts.yaml").write_text(DATASET)
    run = tmp / "run"
    api.train(dataset=str(data / "ml100k_ts.yaml"), model="DNN", preset="none", output=str(run), log=lambda *a: None,
              overrides=["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=512"])
    return run, export_run(run, tmp / "artifact"), data / "test.csv"


def test_training_predict_artifact_and_server_agree(derived_run, tmp_path):
    run, artifact, test_file = derived_run
    model, fmap, dcfg, cfg = api.load_run(run)
    # the training pipeline's encoding of the test split, scored by the trained model
    data = prepare(dcfg, cache_dir=cfg.cache_dir, log=lambda *a: None, feature_map=fmap)
    encoded = data.splits["test"].arrays
    trained = Trainer(model, cfg.trainer, run).predict(BatchLoader(data.splits["test"], 512, shuffle=False))
    assert len(set(encoded["cat"][:, 2].tolist())) > 5  # the hours vary: the feature is not constant

    # `ctrlab predict` on the raw rows (the raw file, label column dropped)
    raw = pl.read_csv(test_file)
    rows = tmp_path / "rows.csv"
    raw.drop("label").write_csv(rows)
    scores = tmp_path / "scores.csv"
    assert main(["predict", str(run), "--input", str(rows), "--output", str(scores)]) == 0
    np.testing.assert_allclose(pl.read_csv(scores)["probability"].to_numpy(), trained, rtol=1e-6)

    # the ONNX artifact: records with the raw timestamp encode to the training arrays exactly
    predictor = Predictor(artifact)
    schema = {c["name"]: c for c in predictor.schema}
    assert list(schema) == ["user", "item", "timestamp"]  # the raw column once, no derived names
    assert schema["timestamp"]["accepts"] == ["integer", "number", "null"]
    assert [f["derive"] for f in schema["timestamp"]["features"]] == ["hour", "weekday", "month"]
    records = raw.drop("label").to_dicts()
    assert isinstance(records[0]["timestamp"], int)
    request = predictor.encode_records(records)
    for name, array in as_model_arrays(encoded, predictor.inputs).items():
        np.testing.assert_array_equal(request[name], array, err_msg=name)
    served = predictor.predict_records(records)
    np.testing.assert_allclose(served, trained, atol=1e-5)  # ONNX Runtime vs PyTorch

    # the HTTP server: records and columns, the same probabilities
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/predict", json={"records": records})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], served, rtol=1e-6)
        cols = {c: [x[c] for x in records[:50]] for c in predictor.columns}
        cols["timestamp"] = [float(t) for t in cols["timestamp"]]  # a JSON number is the same instant
        r = client.post("/predict", json={"columns": cols})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], served[:50], rtol=1e-6)
        # a missing timestamp is a missing cell; derived names are not request fields
        r = client.post("/predict", json={"records": [{"user": "1", "item": "2", "timestamp": None}]})
        assert r.status_code == 200 and 0 < r.json()["probabilities"][0] < 1
        r = client.post("/predict", json={"records": [{"user": "1", "item": "2", "timestamp": 881250949,
                                                       "hour": 3}]})
        assert r.status_code == 422 and r.json()["field"] == "hour"
        r = client.post("/predict", json={"records": [{"user": "1", "item": "2", "timestamp": "monday"}]})
        assert r.status_code == 422 and r.json()["field"] == "timestamp"
        far = records[:3] + [{**records[3], "timestamp": 10**20}]  # not a time: the derivation names the row
        r = client.post("/predict", json={"records": far})
        assert r.status_code == 422 and r.json()["field"] == "timestamp" and r.json()["row"] == 3, r.text
        assert "is not a time" in r.json()["error"]
