"""Item vectors end to end (issue 18): a DNN trained one epoch on real MovieLens ratings with an item
text vector (TF-IDF + SVD of ml-latest-small titles, genres and tags), exported, and served from raw
rows: the artifact carries the item table, so the server turns a raw movie id into the vector
training used, and scores like in-process prediction."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from ctrlab import api
from ctrlab.data.item_vectors import ItemVectorEncoder
from ctrlab.data.loader import EncodedSplit
from ctrlab.data.readers import read_split
from ctrlab.serve.artifact import export_run
from ctrlab.serve.predictor import Predictor

QUIET = ["trainer.epochs=1", "trainer.progress=false", "trainer.batch_size=512"]
DIM = 16


@pytest.fixture(scope="module")
def item_vector_run(data_dir, tmp_path_factory):
    """(folder with the data and config, run folder, artifact folder): the first 6,000 ratings of
    ml-latest-small as user, item, label (rating >= 4), shuffled, 4,000 train / 1,000 valid / 1,000 test rows."""
    tmp = tmp_path_factory.mktemp("itemvec")
    src = data_dir / "movielens_latest_small"
    with gzip.open(src / "ratings.csv.gz", "rt") as fh:
        next(fh)
        rows = [line.rstrip("\r\n").split(",") for _, line in zip(range(6000), fh)]
    frame = pl.DataFrame({"user": [r[0] for r in rows], "item": [r[1] for r in rows],
                          "label": [int(float(r[2]) >= 4) for r in rows]})
    frame = frame[np.random.default_rng(0).permutation(frame.height)]  # the file is sorted by user
    data = tmp / "data"
    data.mkdir()
    for split, (lo, hi) in {"train": (0, 4000), "valid": (4000, 5000), "test": (5000, 6000)}.items():
        frame.slice(lo, hi - lo).write_csv(data / f"{split}.csv")
    config = {
        "name": "ml_latest_itemvec", "format": "csv",
        "files": {"train": "train.csv", "valid": "valid.csv", "test": "test.csv"}, "labels": ["label"],
        "features": [
            {"name": "user"}, {"name": "item"},
            {"name": "item_text_vec", "kind": "dense_vector", "dim": DIM, "key": "item", "vectors": {"text": [
                {"file": "${CTRLAB_DATA_DIR}/movielens_latest_small/movies.csv.gz", "key_column": "movieId",
                 "columns": ["title", "genres"]},
                {"file": "${CTRLAB_DATA_DIR}/movielens_latest_small/tags.csv.gz", "key_column": "movieId",
                 "columns": ["tag"], "duplicates": "join"}]}},
        ],
    }
    (data / "data.yaml").write_text(yaml.safe_dump(config))
    run = tmp / "run"
    api.train(output=str(run), dataset=str(data / "data.yaml"), model="DNN", preset="none", overrides=QUIET,
              log=lambda *a: None)
    return data, run, export_run(run, tmp / "artifact")


def test_served_raw_rows_score_like_in_process_prediction(item_vector_run):
    data, run, artifact = item_vector_run
    predictor = Predictor(artifact)
    assert {c["name"]: c["accepts"] for c in predictor.schema}["item"] == ["string", "integer", "null"]
    expected = api.predict(run, data / "test.csv", log=lambda *a: None)  # eager PyTorch on the run's map
    frame = read_split(predictor.artifact.dataset_config, data / "test.csv", predictor.columns).select(predictor.columns)
    records = frame.to_dicts()
    np.testing.assert_allclose(predictor.predict_records(records), expected, rtol=0, atol=1e-5)
    # movie ids as JSON integers are the same items
    as_int = [{**r, "item": int(r["item"])} for r in records]
    np.testing.assert_allclose(predictor.predict_records(as_int), expected, rtol=0, atol=1e-5)


def test_the_server_gets_the_training_vector_of_each_item(item_vector_run):
    """The vectors the server feeds the model are the cached training vectors of the same items; a
    movie never rated in train still has one (from its text); an unknown id gets zeros and counts as
    unseen."""
    data, run, artifact = item_vector_run
    predictor = Predictor(artifact)
    metrics = json.loads((run / "metrics.json").read_text())
    cached = EncodedSplit.load(Path(metrics["cache"]) / "test").arrays["dense:item_text_vec"]
    frame = read_split(predictor.artifact.dataset_config, data / "test.csv", predictor.columns).select(predictor.columns)
    feeds = predictor.encode(frame)
    np.testing.assert_array_equal(feeds["dense__item_text_vec"], cached)

    train_items = set(pl.read_csv(data / "train.csv")["item"].cast(pl.String))
    fresh = next(i for i in frame["item"].to_list() if i not in train_items)
    table = ItemVectorEncoder.from_state(predictor.fmap.encoders["item_text_vec"])
    assert table.report["train_items"] == len(train_items) and len(table.keys) == 9742
    rows = [{"user": "1", "item": fresh}, {"user": "1", "item": "99999999"}, {"user": "1", "item": None}]
    got = predictor.encode_records(rows)["dense__item_text_vec"]
    np.testing.assert_array_equal(got[0], table.vectors[table.keys.index(fresh)])
    assert np.abs(got[0]).sum() > 0 and not got[1].any() and not got[2].any()
    scores = predictor.score_frames([predictor.records_to_frame(rows)])[0]
    field = predictor.unseen.names.index("item_text_vec")
    mask = predictor.unseen.mask(predictor.records_to_frame(rows), predictor._encoded(predictor.records_to_frame(rows)))
    assert mask[:, field].tolist() == [False, True, False]  # a missing item is missing, not unseen
    assert scores.unseen_rows[field] == 1 and np.isfinite(scores.probabilities).all()
    assert "item '99999999' has no vector in the item table" in predictor.unseen.describe(field, "99999999")
