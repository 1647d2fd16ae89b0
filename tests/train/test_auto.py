"""``preset: auto`` on data without a BARS preset (issue 15.1): the derivation rules, and training on
real small data with them."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from ctrlab.train.auto import DataStats, FieldStats, data_stats, derive, keeps_bars_protocol


def _by_key(settings):
    return {s.key: s for s in settings}


def test_small_imbalanced_log_gets_steps_patience_min_count_and_bias():
    """The issue's log: 24k train rows, 0.2% positives, a few dozen validation positives."""
    stats = DataStats(train_rows=24_000, train_positives=48, valid_rows=6_000, valid_positives=12,
                      fields=[FieldStats("user", 9_000, 6_000), FieldStats("ad", 300, 20)],
                      numeric_rms={"price": 7.5})
    got = _by_key(derive(stats))
    assert got["trainer.batch_size"].value == 256
    assert got["trainer.batch_size"].reason == "24,000 train rows: 94 steps per epoch; 4096 would give 6"
    assert got["trainer.lr"].value == pytest.approx(1e-3 * math.sqrt(256 / 4096), rel=1e-2)
    assert got["trainer.monitor"].value == "logloss"
    assert got["trainer.patience"].value > 2 and got["trainer.lr_decay_factor"].value > 0.1
    assert got["trainer.min_epochs"].value >= 3
    assert got["min_count"].value == 2 and "user" in got["min_count"].reason
    assert got["model_params.embedding_regularizer"].value > 0
    assert got["small_numeric_init"].value is True
    assert got["init_output_bias"].value is True
    assert f"{math.log(0.002 / 0.998):.3f}" in got["init_output_bias"].reason
    assert all(s.reason for s in got.values())


def test_large_balanced_data_keeps_the_bars_trainer_settings():
    """Millions of rows and thousands of validation positives: nothing but the output bias changes."""
    stats = DataStats(train_rows=5_000_000, train_positives=1_000_000, valid_rows=500_000,
                      valid_positives=100_000, fields=[FieldStats("user", 90_000, 60_000)])
    assert set(_by_key(derive(stats))) == {"init_output_bias"}


def test_batch_size_floor_and_plenty_of_positives():
    stats = DataStats(train_rows=1_000, train_positives=500, valid_rows=20_000, valid_positives=9_000)
    got = _by_key(derive(stats))
    assert got["trainer.batch_size"].value == 64  # never below 64, even when that leaves 16 steps
    assert "trainer.monitor" not in got and "trainer.patience" not in got  # validation AUC is precise here


def test_explicit_settings_are_never_derived():
    stats = DataStats(train_rows=24_000, train_positives=48, valid_rows=6_000, valid_positives=12,
                      fields=[FieldStats("user", 9_000, 6_000)])
    given = {"trainer.batch_size", "trainer.patience", "min_count", "init_output_bias", "trainer.monitor"}
    got = _by_key(derive(stats, given))
    assert not given & set(got)
    assert "trainer.lr" not in got  # the lr follows a derived batch size only
    assert "trainer.lr_decay_factor" in got


def test_bars_families_keep_the_protocol():
    assert keeps_bars_protocol("frappe_x1", has_shipped_preset=True, has_dataset_params=False)
    assert keeps_bars_protocol("criteo_x1", has_shipped_preset=False, has_dataset_params=False)
    assert keeps_bars_protocol("movielens_100k", has_shipped_preset=True, has_dataset_params=False)  # DNN, DIN
    assert not keeps_bars_protocol("movielens_100k", has_shipped_preset=False, has_dataset_params=False)  # DeepFM
    assert not keeps_bars_protocol("frappe_x1", has_shipped_preset=True, has_dataset_params=True)  # a cut
    assert not keeps_bars_protocol("criteo_head10k", has_shipped_preset=False, has_dataset_params=False)


def test_data_stats_of_encoded_arrays():
    import numpy as np

    from ctrlab.data.loader import EncodedSplit

    train = EncodedSplit({"cat": np.array([[2, 2], [3, 2], [4, 1], [2, 5]], dtype=np.int32),
                          "num": np.array([[3.0], [4.0], [0.0], [0.0]], dtype=np.float32),
                          "label": np.array([[1.0], [0.0], [0.0], [1.0]], dtype=np.float32)})
    valid = EncodedSplit({"cat": np.zeros((2, 2), np.int32), "num": np.zeros((2, 1), np.float32),
                          "label": np.array([[1.0], [0.0]], dtype=np.float32)})
    s = data_stats({"train": train, "valid": valid}, ["a", "b"], ["x"])
    assert (s.train_rows, s.train_positives, s.valid_rows, s.valid_positives) == (4, 2, 2, 1)
    assert [(f.name, f.values, f.singletons) for f in s.fields] == [("a", 3, 2), ("b", 2, 1)]  # OOV (1) not a value
    assert s.numeric_rms["x"] == pytest.approx(2.5)


# ---- end to end on real data ----------------------------------------------------------------
def _train(tmp_path, name, **kw):
    from ctrlab.api import train

    overrides = ["trainer.progress=false", "trainer.epochs=6", "trainer.num_threads=1", *kw.pop("overrides", [])]
    return train(dataset="criteo_head10k", model="DeepFM", output=str(tmp_path / name), log=kw.pop("log", None)
                        or (lambda *a: None), overrides=overrides, **kw)


def test_auto_beats_bars_defaults_on_criteo_head10k(data_dir, tmp_path):
    """Issue 15.1 (fails before: every run got the BARS settings, 2 steps per epoch, Xavier-scaled
    numeric vectors, and ended worse than the constant predictor): with the derived settings DeepFM
    on the real 7,200-row Criteo head beats the BARS defaults by a wide margin in validation AUC and
    its test logloss is below the constant train-base-rate predictor's; metrics.json and the saved
    run config record what was derived and why, and the saved config trains no differently."""
    lines = []
    auto = _train(tmp_path, "auto", log=lines.append)
    bars = _train(tmp_path, "bars", preset="none")
    assert auto.metrics["valid"]["AUC"] > bars.metrics["valid"]["AUC"] + 0.03
    assert auto.metrics["test"]["AUC"] > bars.metrics["test"]["AUC"] + 0.03
    import numpy as np

    from ctrlab.api import dataset_config, load_run_config
    from ctrlab.data.pipeline import prepare

    data = prepare(dataset_config(load_run_config({"dataset": "criteo_head10k"})), log=lambda *a: None)
    p = float(np.asarray(data.splits["train"].arrays["label"]).mean())
    y = np.asarray(data.splits["test"].arrays["label"])[:, 0]
    constant = float(-(y * math.log(p) + (1 - y) * math.log(1 - p)).mean())
    assert auto.metrics["test"]["logloss"] < constant < bars.metrics["test"]["logloss"]

    recorded = json.loads((auto.run_dir / "metrics.json").read_text())["auto_settings"]
    assert recorded["trainer.batch_size"] == {
        "value": 128, "reason": "7,200 train rows: 57 steps per epoch; 4096 would give 2"}
    assert recorded["init_output_bias"]["value"] is True
    assert json.loads((tmp_path / "bars" / "metrics.json").read_text())["auto_settings"] == {}
    assert "[ctrlab] auto: batch_size 128 (7,200 train rows: 57 steps per epoch; 4096 would give 2)" in lines
    saved = yaml.safe_load((auto.run_dir / "run_config.yaml").read_text())
    assert saved["trainer"]["batch_size"] == 128 and saved["init_output_bias"] is True
    assert saved["preset"] == "none" and saved["auto_settings"] == recorded
    assert saved["model_params"]["embedding_regularizer"] == recorded["model_params.embedding_regularizer"]["value"]
    # the saved config is the whole run: trained again from it (no derivation), the same numbers
    from ctrlab.api import evaluate, train

    again = train({**saved, "output": str(tmp_path / "again")}, log=lambda *a: None)
    assert again.metrics["test"] == auto.metrics["test"]
    assert evaluate(auto.run_dir)["test"] == pytest.approx(auto.metrics["test"])


def test_explicit_settings_win_end_to_end(data_dir, tmp_path):
    res = _train(tmp_path, "given", overrides=["trainer.batch_size=512", "init_output_bias=false",
                                               "model_params.embedding_regularizer=0"])
    assert "trainer.batch_size" not in res.metrics["auto_settings"]
    assert "init_output_bias" not in res.metrics["auto_settings"]
    saved = yaml.safe_load((res.run_dir / "run_config.yaml").read_text())
    assert saved["trainer"]["batch_size"] == 512 and saved["init_output_bias"] is False
    assert saved["model_params"]["embedding_regularizer"] == 0


def test_min_count_changes_the_encoding_cache_and_feature_map(data_dir, tmp_path):
    """``min_count`` is part of the dataset config: another cache, and the run's feature map has the
    smaller vocabularies (so evaluate / predict / export encode as the model was trained)."""
    from ctrlab.data.feature_map import FeatureMap

    one = _train(tmp_path, "one", dataset_params={"min_count": 1}, overrides=["trainer.epochs=1", "min_count=1"])
    three = _train(tmp_path, "three", dataset_params={"min_count": 1}, overrides=["trainer.epochs=1", "min_count=3"])
    assert one.metrics["cache"] != three.metrics["cache"]
    v1 = {f.name: f.vocab_size for f in FeatureMap.load(one.run_dir / "feature_map.json").categorical}
    v3 = {f.name: f.vocab_size for f in FeatureMap.load(three.run_dir / "feature_map.json").categorical}
    assert all(v3[k] <= v1[k] for k in v1) and sum(v3.values()) < sum(v1.values())
    dcfg = json.loads((three.run_dir / "dataset_config.json").read_text())
    assert {f["min_count"] for f in dcfg["features"] if f["kind"] == "categorical"} == {3}


def test_first_order_models_on_small_data_get_the_linear_warm_start():
    stats = DataStats(train_rows=7_200, train_positives=1_500, valid_rows=1_400, valid_positives=300)
    got = _by_key(derive(stats, has_first_order=True))
    assert got["linear_warm_start"].value is True and got["trainer.validate_start"].value is True
    # the deep part overtakes the fitted start slowly: a long patience, no plateau LR decay
    assert got["trainer.patience"].value == 8 and got["trainer.reduce_lr_on_plateau"].value is False
    assert "trainer.lr_decay_factor" not in got and got["trainer.monitor"].value == "logloss"  # 300 positives
    assert "linear_warm_start" not in _by_key(derive(stats))  # DCN, FinalMLP, ...: no first-order term
    no_valid = DataStats(train_rows=7_200, train_positives=1_500)
    assert "linear_warm_start" not in _by_key(derive(no_valid, has_first_order=True))
    big = DataStats(train_rows=5_000_000, train_positives=1_000_000, valid_rows=500_000, valid_positives=100_000)
    assert "linear_warm_start" not in _by_key(derive(big, has_first_order=True))
    assert "linear_warm_start" not in _by_key(derive(stats, {"linear_warm_start"}, has_first_order=True))
    # values seen once: pooled for the embeddings of a model without the warm start only
    rare = DataStats(train_rows=7_200, train_positives=1_500, valid_rows=1_400, valid_positives=300,
                     fields=[FieldStats("item", 2_000, 1_500)])
    assert "min_count" not in _by_key(derive(rare, has_first_order=True))
    assert _by_key(derive(rare))["min_count"].value == 2
    assert _by_key(derive(rare, {"linear_warm_start"}, has_first_order=True))["min_count"].value == 2


def test_linear_warm_start_end_to_end_and_resume(data_dir, tmp_path):
    """DeepFM under ``preset: auto`` on the real Criteo head: the run records the fit (the log line,
    metrics.json) and validates its start; a run resumed after epoch 1 ends exactly as an
    uninterrupted one (the start's score travels in the checkpoint)."""
    lines = []
    whole = _train(tmp_path, "whole", log=lines.append, overrides=["trainer.epochs=2"])
    assert whole.metrics["auto_settings"]["linear_warm_start"]["value"] is True
    fit = whole.metrics["linear_warm_start"]
    assert fit["module"] == "linear" and fit["C"] in (0.01, 0.1, 1.0, 10.0)
    assert fit["l2"] == pytest.approx(1 / (fit["C"] * 7200))
    assert any(line.startswith("[ctrlab] linear_warm_start: linear set to the L2 logistic regression on 7,200 "
                               f"train rows (C {fit['C']:g} of [0.01, 0.1, 1.0, 10.0] by valid logloss")
               for line in lines)
    assert "start (validate_start) | valid AUC" in (whole.run_dir / "train.log").read_text()
    part = _train(tmp_path, "part", overrides=["trainer.epochs=1"])
    from ctrlab.api import train

    resumed = train(output=str(part.run_dir), resume=True, overrides=["trainer.epochs=2"], log=lambda *a: None)
    from ctrlab.train import TIMING_KEYS

    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    assert resumed.metrics["test"] == whole.metrics["test"]
    # the fit's record is a run file: the folder can be trained over again (it was "foreign" before)
    again = _train(tmp_path, "whole", overrides=["trainer.epochs=2"], overwrite=True)
    assert again.metrics["test"] == whole.metrics["test"]
