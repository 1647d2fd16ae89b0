"""The example configs in examples/ load, and the dataset example runs through the pipeline."""
from __future__ import annotations

from pathlib import Path

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
