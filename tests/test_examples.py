"""The example configs in examples/ load, and the dataset example runs through the pipeline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ctrlab.api import load_run_config
from ctrlab.config import ConfigError
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import load_dataset_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_run_config_example_loads():
    cfg = load_run_config(EXAMPLES / "dcnv2_run.yaml", ["trainer.lr=0.002"])
    assert cfg.model == "DCNv2" and cfg.model_params == {"num_cross_layers": 3}
    assert cfg.trainer.seed == 2022 and cfg.trainer.lr == pytest.approx(0.002)


def test_dataset_example_encodes_sequences(data_dir, tmp_path):
    cfg = load_dataset_config(EXAMPLES / "taobao_tiny_dataset.yaml")
    data = prepare(cfg, cache_dir=tmp_path, log=lambda *a: None)
    fmap = data.feature_map
    assert [s.name for s in fmap.sequences] == ["click_sequence"]
    assert fmap.sequences[0].shares == "adgroup_id"
    assert any(f.name == "price" and f.origin == "bucketized" for f in fmap.categorical)
    seq = data.splits["train"].arrays["seq:click_sequence"]
    assert seq.shape == (100, 50) and seq.max() < fmap.sequences[0].vocab_size and (seq > 0).any()
    assert "group" in data.splits["test"].arrays


def test_unset_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("CTRLAB_DATA_DIR", raising=False)
    cfg = load_dataset_config(EXAMPLES / "taobao_tiny_dataset.yaml")
    with pytest.raises(ConfigError, match=r"CTRLAB_DATA_DIR.*not set"):
        cfg.resolve("train")


def test_bring_your_own_data_walkthrough(data_dir, tmp_path, capsys):
    """README, "Bring your own data": the example YAML over a user's CSV log (the Avazu head cut into
    train.csv / test.csv, no valid file, a raw YYMMDDHH time column) trains with the auto defaults,
    predicts with id passthrough, exports, and the exported artifact scores a raw record with the same
    probability as predict, deriving hour and weekday from the raw `hour`."""
    import gzip
    import shutil

    import polars as pl

    from ctrlab import api
    from ctrlab.serve.artifact import export_run
    from ctrlab.serve.predictor import Predictor

    folder = tmp_path / "my_log"
    folder.mkdir()
    shutil.copy(EXAMPLES / "own_log.yaml", folder / "dataset.yaml")
    with gzip.open(data_dir / "avazu_head10k" / "train.csv.gz", "rt", encoding="utf-8") as f:
        lines = f.readlines()
    (folder / "train.csv").write_text("".join(lines[:8001]), encoding="utf-8")
    (folder / "test.csv").write_text(lines[0] + "".join(lines[8001:]), encoding="utf-8")

    result = api.train(dataset=str(folder / "dataset.yaml"), model="DeepFM", output=str(tmp_path / "run"),
                       overrides=["trainer.epochs=3", "trainer.progress=false"])
    out = capsys.readouterr().out
    assert "valid: 10% of train.csv (seed 2021), 800 rows" in out
    assert "ignored columns in train.csv: id, device_id, device_ip" in out
    assert "auto: batch_size 128" in out and result.metrics["auto_settings"]["trainer.batch_size"]["value"] == 128
    assert 0.6 < result.metrics["test"]["AUC"] < 1 and isinstance(result.metrics["warnings"], list)

    probs = api.predict(result.run_dir, folder / "test.csv", tmp_path / "scores.csv", keep_columns=["id"])
    scores = pl.read_csv(tmp_path / "scores.csv", infer_schema=False)
    assert scores.columns == ["id", "probability"] and scores.height == len(lines) - 8001
    assert scores["id"][0] == lines[8001].split(",")[0]

    artifact = export_run(result.run_dir, tmp_path / "artifact")
    predictor = Predictor(artifact)
    assert "hour" in predictor.columns and "hour_of_day" not in predictor.columns
    header = lines[0].strip().split(",")
    record = dict(zip(header, lines[8001].strip().split(",")))
    served = predictor.predict_records([{c: record[c] for c in predictor.columns}])
    np.testing.assert_allclose(served, probs[:1], rtol=1e-4, atol=1e-6)
