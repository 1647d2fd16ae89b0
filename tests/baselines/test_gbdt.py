"""LightGBM and XGBoost estimators on synthetic tables: they learn a planted interaction that a main-effects
model cannot, early stopping keeps the best round, save/load predicts identically, the node count is the
trees' own, training is seeded, and bad hyperparameters are clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import OneHotEncoder

from ctrlab.baselines import TabularSplit, get_estimator, is_estimator, list_estimators
from ctrlab.config import ConfigError
from ctrlab.data.errors import DataError

ESTIMATORS = ["LightGBM", "XGBoost"]
SMALL = {"num_boost_round": 300, "early_stopping_rounds": 15, "learning_rate": 0.2}


def planted(n: int = 9000, levels: int = 16, seed: int = 0) -> dict[str, TabularSplit]:
    """Two categorical fields whose values each carry a hidden bit; the click is the XOR of the two bits
    (10% of labels flipped): neither field alone says anything about the click, the pair says almost
    everything. A third, numeric column is noise. Ids start at 2 as the encoders write them."""
    rng = np.random.default_rng(seed)
    half = np.repeat([0, 1], levels // 2)  # as many values carry a 1 as a 0: no main effect
    bit_a, bit_b = rng.permutation(half), rng.permutation(half)
    a, b = rng.integers(0, levels, n), rng.integers(0, levels, n)
    y = (bit_a[a] ^ bit_b[b] ^ (rng.random(n) < 0.1)).astype(np.float32)
    X = np.c_[a + 2, b + 2, rng.normal(size=n)].astype(np.float32)
    cut = [0, n * 2 // 3, n * 5 // 6, n]
    return {s: TabularSplit(X[lo:hi], y[lo:hi], ["a", "b", "noise"], [0, 1])
            for s, lo, hi in zip(("train", "valid", "test"), cut, cut[1:])}


@pytest.fixture(scope="module")
def data():
    return planted()


def fit(name: str, data, seed: int = 1, monitor: str = "AUC", **params):
    est = get_estimator(name)(**{**SMALL, **params})
    est.monitor = monitor
    rounds = []
    est.on_round = rounds.append
    out = est.fit(data["train"], data["valid"], seed=seed, threads=1, log=lambda *a: None)
    assert rounds == out["history"]  # every round's record reached on_round, in order
    return est, out


def test_registry():
    assert {"LightGBM", "XGBoost"} <= set(list_estimators())
    assert is_estimator("lightgbm") and is_estimator("XGBoost") and not is_estimator("DNN")
    assert get_estimator("lightGBM").name == "LightGBM"
    with pytest.raises(ValueError, match="unknown estimator 'CatBoost'"):
        get_estimator("CatBoost")


@pytest.mark.parametrize("name", ESTIMATORS)
def test_learns_a_planted_interaction_a_main_effects_model_cannot(name, data):
    onehot = OneHotEncoder(handle_unknown="ignore").fit(data["train"].X[:, :2])
    lr = LogisticRegression(max_iter=1000).fit(onehot.transform(data["train"].X[:, :2]), data["train"].y)
    lr_auc = roc_auc_score(data["test"].y, lr.predict_proba(onehot.transform(data["test"].X[:, :2]))[:, 1])
    est, _ = fit(name, data)
    p = est.predict_proba(data["test"])
    gbdt_auc = roc_auc_score(data["test"].y, p)
    assert lr_auc < 0.56  # main effects alone: chance
    assert gbdt_auc > 0.85 and gbdt_auc > lr_auc + 0.3, (gbdt_auc, lr_auc)
    assert p.shape == (len(data["test"]),) and 0 < p.min() and p.max() < 1


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("monitor", ["AUC", "logloss"])
def test_early_stopping_stops_and_keeps_the_best_round(name, monitor, data):
    est, out = fit(name, data, monitor=monitor, learning_rate=0.5, num_boost_round=500, early_stopping_rounds=10)
    history = out["history"]
    values = [r[f"valid_{monitor}"] for r in history]
    best = (int(np.argmax(values)) if monitor == "AUC" else int(np.argmin(values))) + 1  # the first best round
    assert out["rounds"] == len(history) < 500  # stopped before the cap ...
    assert out["best_round"] == best == out["rounds"] - 10  # ... `patience` rounds after the best one
    assert [r["epoch"] for r in history] == list(range(1, len(history) + 1))
    assert history[best - 1]["improved"] and not any(r["improved"] for r in history[best:])
    assert all(r["best_epoch"] == best for r in history[best - 1:])
    # the kept model is the best round's: its validation metrics are that round's (library's vs sklearn's)
    p = est.predict_proba(data["valid"])
    assert roc_auc_score(data["valid"].y, p) == pytest.approx(history[best - 1]["valid_AUC"], abs=1e-6)
    assert log_loss(data["valid"].y, p) == pytest.approx(history[best - 1]["valid_logloss"], abs=1e-5)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_save_load_round_trip_predicts_identically(name, data, tmp_path):
    est, out = fit(name, data)
    est.save(tmp_path)
    meta = json.loads((tmp_path / "estimator.json").read_text())
    assert meta["estimator"] == name and meta["best_round"] == out["best_round"]
    assert meta["feature_names"] == ["a", "b", "noise"] and meta["categorical"] == [0, 1]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(["estimator.json", *est.model_files]) and all(f.startswith("estimator") for f in files)
    assert b"pickle" not in (tmp_path / est.model_files[0]).read_bytes()[:64]  # the library's text/JSON format
    again = get_estimator(name).load(tmp_path, SMALL)
    np.testing.assert_array_equal(again.predict_proba(data["test"]), est.predict_proba(data["test"]))
    assert again.count_parameters() == est.count_parameters() and again.best_round == out["best_round"]


def _lightgbm_nodes(node: dict) -> int:
    return 1 + (_lightgbm_nodes(node["left_child"]) + _lightgbm_nodes(node["right_child"]) if "left_child" in node else 0)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_parameters_are_the_kept_trees_nodes(name, data):
    est, out = fit(name, data)
    if name == "LightGBM":
        trees = est.booster.dump_model()["tree_info"]
        nodes = sum(_lightgbm_nodes(t["tree_structure"]) for t in trees)
    else:
        trees = est.booster.get_dump()  # one text line per node
        nodes = sum(len(t.strip().splitlines()) for t in trees)
    assert len(trees) == out["best_round"]  # only the kept rounds' trees
    assert est.count_parameters() == nodes > len(trees)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_training_is_seeded(name, data):
    sub = {"LightGBM": {"feature_fraction": 0.5, "bagging_fraction": 0.7, "bagging_freq": 1},
           "XGBoost": {"colsample_bytree": 0.5, "subsample": 0.7}}[name]
    one, two, other = (fit(name, data, seed=s, **sub)[0].predict_proba(data["test"]) for s in (3, 3, 4))
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)  # the seed draws the row and column samples


def test_without_a_validation_split_all_rounds_are_kept(data):
    est = get_estimator("LightGBM")(num_boost_round=25)
    out = est.fit(data["train"], None, seed=1, threads=1, log=lambda *a: None)
    assert out == {"rounds": 25, "best_round": 25, "history": []}
    assert len(est.booster.dump_model()["tree_info"]) == 25


def test_bad_hyperparameters_and_columns_are_clear_errors(data):
    with pytest.raises(ConfigError, match=r"model_params \(LightGBM\): unknown key\(s\) \['num_leavs'\]"):
        get_estimator("LightGBM")(num_leavs=7)
    with pytest.raises(ConfigError, match=r"model_params \(XGBoost\)\.max_depth: expected an integer, got 'deep'"):
        get_estimator("XGBoost")(max_depth="deep")
    with pytest.raises(ConfigError, match=r"early_stopping_rounds: must be >= 1"):
        get_estimator("XGBoost")(early_stopping_rounds=0)
    with pytest.raises(ConfigError, match=r"extra: \['objective'\] are set by ctrlab"):
        get_estimator("LightGBM")(extra={"objective": "regression"})
    est, _ = fit("LightGBM", data, num_boost_round=5)
    other = TabularSplit(data["test"].X[:, [1, 0, 2]], None, ["b", "a", "noise"], [0, 1])
    with pytest.raises(DataError, match=r"trained on the columns \['a', 'b', 'noise'\].*Fix: encode the rows"):
        est.predict_proba(other)


@pytest.mark.parametrize("name", ESTIMATORS)
def test_extra_reaches_the_library(name, data):
    """``extra`` is passed to the library as it is (here: LightGBM's extremely randomized trees, XGBoost's
    leaf-count cap) and changes the trees."""
    extra = {"LightGBM": {"extra_trees": True}, "XGBoost": {"grow_policy": "lossguide", "max_leaves": 2}}[name]
    plain = fit(name, data, num_boost_round=10)[0]
    est = fit(name, data, num_boost_round=10, extra=extra)[0]
    if name == "LightGBM":
        assert "[extra_trees: 1]" in est.booster.model_to_string() and "[extra_trees: 0]" in plain.booster.model_to_string()
    else:
        assert all(len(t.strip().splitlines()) == 3 for t in est.booster.get_dump())  # stumps: 2 leaves
    assert not np.array_equal(est.predict_proba(data["test"]), plain.predict_proba(data["test"]))
