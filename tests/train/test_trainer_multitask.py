"""The trainer with multi-task models: every task's metrics on its own rows, early stopping on a
chosen task, every task's predictions, and the errors for tasks that do not exist."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from ctrlab.config import ConfigError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.loader import BatchLoader, EncodedSplit
from ctrlab.models import create
from ctrlab.train import Trainer, TrainerConfig

MAP = FeatureMap.from_fields({"user": 22, "item": 22}, labels=["click", "purchase"])


def _split(n: int, seed: int, conversions: bool = True) -> EncodedSplit:
    """Clicks and conversions (only after a click) driven by the two ids."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(2, 22, size=(n, 2)).astype(np.int32)
    w = np.random.default_rng(7).normal(0, 1, size=(2, 22))
    y = rng.random(n) < 1 / (1 + np.exp(-(w[0, cat[:, 0]] - 1.0)))
    z = y & (rng.random(n) < 1 / (1 + np.exp(-w[1, cat[:, 1]]))) & conversions
    return EncodedSplit({"cat": cat, "label": np.stack([y, z], 1).astype(np.float32)})


def _trainer(tmp_path, model="ESMM", **cfg):
    torch.manual_seed(0)
    m = create(model, MAP, embedding_dim=4, **({"tower_hidden_units": (8,)} if model == "ESMM" else
                                                {"bottom_hidden_units": (8,), "tower_hidden_units": (4,)}))
    config = TrainerConfig(**{"epochs": 3, "batch_size": 256, "lr": 1e-2, "progress": False, **cfg})
    return Trainer(m, config, tmp_path / "run")


def test_every_task_is_evaluated_on_its_rows_and_the_main_task_also_plainly(tmp_path, one_thread):
    trainer = _trainer(tmp_path, monitor="ctcvr_AUC")
    train, valid = _split(4000, 1), _split(2000, 2)
    history = trainer.fit(BatchLoader(train, 256, shuffle=True), BatchLoader(valid, 1000))
    assert {"valid_ctr_AUC", "valid_cvr_AUC", "valid_ctcvr_AUC", "valid_cvr_logloss"} <= set(history[0])
    logs = trainer.evaluate(BatchLoader(valid, 1000))
    probs = trainer.predict_tasks(BatchLoader(valid, 1000))
    assert list(probs) == ["ctr", "cvr", "ctcvr"]
    y, z = valid.arrays["label"][:, 0], valid.arrays["label"][:, 1]
    assert logs["AUC"] == logs["ctr_AUC"] == pytest.approx(roc_auc_score(y, probs["ctr"]), abs=1e-12)
    clicked = y > 0  # CVR on the clicked rows only
    assert logs["cvr_AUC"] == pytest.approx(roc_auc_score(z[clicked], probs["cvr"][clicked]), abs=1e-12)
    assert logs["ctcvr_logloss"] == pytest.approx(log_loss(y * z, probs["ctcvr"]), abs=1e-9)
    np.testing.assert_allclose(probs["ctcvr"], probs["ctr"] * probs["cvr"], rtol=1e-5)
    np.testing.assert_array_equal(trainer.predict(BatchLoader(valid, 1000)), probs["ctr"])
    # the monitor was the CTCVR AUC: the best epoch is the one where it was highest
    best = max(history, key=lambda r: r["valid_ctcvr_AUC"])
    assert trainer.best_epoch == best["epoch"] and trainer.best_metric == best["valid_ctcvr_AUC"]


def test_a_task_with_one_class_on_a_split_gives_nan_metrics_and_a_warning(tmp_path, one_thread):
    trainer = _trainer(tmp_path)
    trainer.fit(BatchLoader(_split(2000, 1), 256, shuffle=True), BatchLoader(_split(500, 2, conversions=False), 500))
    logs = trainer.evaluate(BatchLoader(_split(500, 3, conversions=False), 500))
    assert np.isnan(logs["cvr_AUC"]) and np.isnan(logs["ctcvr_AUC"]) and np.isfinite(logs["AUC"])
    assert np.isfinite(logs["cvr_logloss"]) and np.isfinite(logs["ctcvr_logloss"])  # defined with one class
    assert "task 'cvr' has" in (tmp_path / "run" / "train.log").read_text()


def test_final_evaluation_gives_every_task_the_same_metric_set(tmp_path, one_thread):
    """issue 19: NE, calibration, ECE and (with group ids) the group metrics per task, named
    <task>_<metric>; the reliability diagram is the main task's."""
    from ctrlab.train.metrics import evaluate_metrics, final_metric_names, reliability

    trainer = _trainer(tmp_path, epochs=1)
    valid = _split(1500, 2)
    valid.arrays["group"] = np.random.default_rng(0).integers(0, 60, len(valid)).astype(np.int64)
    trainer.fit(BatchLoader(_split(3000, 1), 256, shuffle=True), BatchLoader(_split(800, 2), 800))
    loader = BatchLoader(valid, 500)
    logs, curve = trainer.evaluate_final(loader, split="valid")
    names = final_metric_names(["AUC", "logloss"], True)
    probs = trainer.predict_tasks(loader)
    y, z, g = valid.arrays["label"][:, 0], valid.arrays["label"][:, 1], valid.arrays["group"]
    clicked = y > 0
    assert logs == {**evaluate_metrics(y, probs["ctr"], names, g),
                    **{f"ctr_{k}": v for k, v in evaluate_metrics(y, probs["ctr"], names, g).items()},
                    **{f"cvr_{k}": v for k, v in evaluate_metrics(z[clicked], probs["cvr"][clicked], names,
                                                                   g[clicked]).items()},
                    **{f"ctcvr_{k}": v for k, v in evaluate_metrics(y * z, probs["ctcvr"], names, g).items()}}
    assert {"ctr_gAUC_mean", "cvr_nDCG@5", "ctcvr_ECE", "cvr_calibration"} <= set(logs)
    assert curve == reliability(y, probs["ctr"])


def test_monitoring_a_task_the_model_does_not_have_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"task 'cvx'.*\['ctr', 'cvr', 'ctcvr'\]"):
        _trainer(tmp_path, monitor="cvx_AUC")
    with pytest.raises(ConfigError, match="one task"):
        Trainer(create("DNN", MAP), TrainerConfig(monitor="cvr_AUC", progress=False), tmp_path / "dnn")
    with pytest.raises(ConfigError, match="unknown metric 'cvr_AUX'"):
        TrainerConfig(monitor="cvr_AUX").validate()
    assert TrainerConfig(monitor="cvr_logloss").resolved_monitor_mode() == "min"


def test_shared_bottom_tasks_are_its_label_columns(tmp_path, one_thread):
    trainer = _trainer(tmp_path, model="SharedBottom", epochs=1)
    valid = _split(1000, 2)
    trainer.fit(BatchLoader(_split(2000, 1), 256, shuffle=True), BatchLoader(valid, 1000))
    logs = trainer.evaluate(BatchLoader(valid, 1000))
    probs = trainer.predict_tasks(BatchLoader(valid, 1000))
    assert logs["purchase_AUC"] == pytest.approx(roc_auc_score(valid.arrays["label"][:, 1], probs["purchase"]))
    assert json.dumps(logs)  # plain floats, for metrics.json


def test_a_single_task_model_predicts_one_probability_under_the_servers_name(tmp_path):
    torch.manual_seed(0)
    trainer = Trainer(create("DNN", MAP, embedding_dim=4, hidden_units=(8,)), TrainerConfig(progress=False),
                      tmp_path / "dnn")
    valid = _split(300, 2)
    probs = trainer.predict_tasks(BatchLoader(valid, 100))
    assert list(probs) == ["probability"] and trainer.task_names == []
    np.testing.assert_array_equal(probs["probability"], trainer.predict(BatchLoader(valid, 100)))


def test_final_metrics_of_given_probabilities_are_for_one_task_models(tmp_path):
    trainer = _trainer(tmp_path)
    with pytest.raises(ValueError, match="has tasks.*use evaluate_final"):
        trainer.final_metrics(np.full(4, 0.5), np.array([0, 1, 0, 1.0]))
    with pytest.raises(ValueError, match="has tasks"):
        trainer.evaluate_final(BatchLoader(_split(200, 1), 200), transform=lambda p: p)
