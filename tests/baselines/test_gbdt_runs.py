"""GBDT baselines as ctrlab runs: `ctrlab train --model LightGBM` on real data writes a run folder and a
metrics.json of the torch runs' schema; evaluate and predict reproduce its numbers; export, serve, resume
and torch-only settings are refused by name; a bench plan mixing GBDTs and a DNN lands in one results
store (skip, adopt, report); tune searches a GBDT's space, and pruning a GBDT run mid-boosting works."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
import yaml
from sklearn.metrics import log_loss, roc_auc_score

from ctrlab import api
from ctrlab.train.metrics import final_metric_names
from ctrlab.bench import ResultsStore, expand, load_plan, run_plan
from ctrlab.bench.plan import HparamSet, make_job
from ctrlab.bench.runner import RunPruned, run_job
from ctrlab.bench.tune import load_tune_config, tune
from ctrlab.cli import main
from ctrlab.config import ConfigError
from ctrlab.data.feature_map import FeatureMap
from ctrlab.data.pipeline import prepare
from ctrlab.data.schema import load_dataset_config
from ctrlab.run_folder import RunFolderError
from ctrlab.serve.artifact import ArtifactError, load_artifact

DATASET = "criteo_head10k"
ROUNDS = ["--set", "model_params.num_boost_round=60", "--set", "model_params.learning_rate=0.1"]
SMALL = {"num_boost_round": 40, "learning_rate": 0.1, "early_stopping_rounds": 10}


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    """A LightGBM run trained through the command line (60 rounds at most)."""
    out = tmp_path_factory.mktemp("lgb") / "run"
    assert main(["train", "--dataset", DATASET, "--model", "LightGBM", "--output", str(out), *ROUNDS]) == 0
    return out


def test_train_writes_a_run_folder_with_the_torch_runs_metrics_schema(run):
    assert sorted(p.name for p in run.iterdir() if p.name != ".ctrlab.lock") == sorted([
        "run_config.yaml", "dataset_config.json", "feature_map.json", "estimator.json", "estimator_lightgbm.txt",
        "metrics.json", "history.json", "train.log"])
    m = json.loads((run / "metrics.json").read_text())
    assert {"dataset", "model", "seed", "parameters", "model_params", "preset", "auto_settings", "epochs", "best_epoch",
            "train_seconds", "seconds_per_epoch", "cache", "valid", "test", "warnings", "cost"} <= set(m)
    assert (m["dataset"], m["model"], m["seed"]) == (DATASET, "LightGBM", 2021)
    assert m["model_params"]["num_boost_round"] == 60 and m["model_params"]["num_leaves"] == 31  # defaults filled
    assert m["auto_settings"] == {}  # preset auto derives torch settings only
    for split in ("valid", "test"):
        assert list(m[split]) == final_metric_names(["AUC", "logloss"], has_group=False)
        assert 0.6 < m[split]["AUC"] < 1 and m[split]["logloss"] > 0
    cost = m["cost"]
    assert set(cost) == {"parameters", "flops_per_row", "latency_ms_1_row", "latency_ms_4096_rows", "threads"}
    assert cost["parameters"] == m["parameters"] > 0 and cost["flops_per_row"] is None and cost["threads"] == 1
    assert all(math.isfinite(cost[k]) and cost[k] > 0 for k in ("latency_ms_1_row", "latency_ms_4096_rows"))
    assert m["estimator"]["parameters_unit"] == "tree nodes" and len(m["estimator"]["columns"]) == 39
    assert isinstance(m["warnings"], list)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == m["epochs"] <= 60 and 1 <= m["best_epoch"] <= m["epochs"]
    assert all({"epoch", "valid_AUC", "valid_logloss", "best_epoch"} <= set(r) for r in history)
    # the final validation AUC is the kept (best) round's: LightGBM's per-round AUC there equals ctrlab's
    assert history[m["best_epoch"] - 1]["valid_AUC"] == pytest.approx(m["valid"]["AUC"], abs=1e-9)
    saved = yaml.safe_load((run / "run_config.yaml").read_text())
    assert saved["model"] == "LightGBM" and saved["preset"] == "none" and saved["model_params"]["num_boost_round"] == 60
    log = (run / "train.log").read_text()
    assert "[metrics test]" in log and "LightGBM on criteo_head10k" in log


@pytest.mark.filterwarnings("ignore::ctrlab.data.errors.DataWarning")  # criteo test ids unseen in 7,200 rows
def test_evaluate_and_predict_reproduce_the_run_metrics(run, tmp_path, capsys):
    m = json.loads((run / "metrics.json").read_text())
    assert api.evaluate(run) == {"valid": m["valid"], "test": m["test"]}
    assert main(["evaluate", str(run)]) == 0
    auc_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("AUC "))
    assert auc_line.split()[1:3] == [f"{m['valid']['AUC']:.6f}", f"{m['test']['AUC']:.6f}"]
    dcfg = load_dataset_config(json.loads((run / "dataset_config.json").read_text()))
    raw = dcfg.resolve("test")
    scores = tmp_path / "scores.csv"
    assert main(["predict", str(run), "--input", str(raw), "--output", str(scores)]) == 0
    p = pl.read_csv(scores)["probability"].to_numpy()
    fmap = FeatureMap.load(run / "feature_map.json")  # the test rows' labels, in file order
    y = prepare(dcfg, log=lambda *a: None, feature_map=fmap).splits["test"].arrays["label"][:, 0]
    assert len(p) == len(y) == 2000
    assert roc_auc_score(y, p) == pytest.approx(m["test"]["AUC"], abs=1e-12)
    assert log_loss(y, p) == pytest.approx(m["test"]["logloss"], abs=1e-9)


def test_export_serve_resume_recipes_and_torch_settings_are_refused(run, tmp_path, capsys):
    assert main(["export", str(run)]) == 2
    err = capsys.readouterr().err
    assert "non-torch baseline (LightGBM)" in err and "ctrlab predict" in err
    with pytest.raises(ArtifactError, match="non-torch baseline .LightGBM., which is not exported or served"):
        load_artifact(run)
    with pytest.raises(ConfigError, match="cannot resume .*LightGBM run, which has no checkpoints"):
        api.train(output=str(run), resume=True, log=lambda *a: None)
    with pytest.raises(RunFolderError, match="already holds a finished ctrlab run"):
        api.train(dataset=DATASET, model="LightGBM", output=str(run), log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"\['init_output_bias'\] is a setting of torch models; LightGBM"):
        api.train(dataset=DATASET, model="LightGBM", init_output_bias=True, output=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()  # refused before a folder is made
    with pytest.raises(ConfigError, match="non-torch baseline"):
        api.compress(run, tmp_path / "c", rank=2)
    with pytest.raises(ConfigError, match=r"model_params \(XGBoost\): unknown key\(s\) \['num_leaves'\]"):
        api.train(dataset=DATASET, model="XGBoost", model_params={"num_leaves": 7}, output=str(tmp_path / "y"))


def plan(tmp_path, name="mix"):
    return {"name": name, "db": str(tmp_path / "r.sqlite"), "runs_dir": str(tmp_path / "runs"),
            "grids": [{"datasets": [DATASET], "models": ["LightGBM", "XGBoost", "DNN"], "seeds": [1],
                       "trainer": {"epochs": 2, "batch_size": 1024},
                       # preset none: preset auto's settings derived for criteo_head10k would make the DNN's
                       # saved config differ from the job's, and its folder would not be adopted below
                       "hparam_sets": [{"name": "preset", "models": ["DNN"], "preset": "none"},
                                       {"name": "small", "models": ["LightGBM", "XGBoost"], "params": SMALL}]}]}


def test_a_bench_plan_runs_gbdts_beside_a_dnn_into_one_store(data_dir, tmp_path):
    from ctrlab.bench.report import build_report

    d = plan(tmp_path)
    jobs = expand(load_plan(d))
    assert [(j.model, j.hparam_set) for j in jobs] == [("DNN", "preset"), ("LightGBM", "small"), ("XGBoost", "small")]
    out = run_plan(load_plan(d), log=lambda *a: None)
    assert [o.how for o in out] == ["trained"] * 3 and all(o.test_auc > 0.6 for o in out)
    with ResultsStore(d["db"]) as store:
        rows = {r["model"]: r for r in store.runs()}
        assert set(rows) == {"DNN", "LightGBM", "XGBoost"}
        for model in ("LightGBM", "XGBoost"):
            r = rows[model]
            m = json.loads((tmp_path / "runs" / DATASET / "bars" / f"{model}-small-s1" / "metrics.json").read_text())
            assert r["valid_auc"] == m["valid"]["AUC"] and r["test_auc"] == m["test"]["AUC"]
            assert r["epochs"] == m["epochs"] and r["best_epoch"] == m["best_epoch"] and r["parameters"] == m["parameters"]
            assert len(store.epochs(r["key"])) == m["epochs"] <= SMALL["num_boost_round"]  # one row per round
        assert len(store.epochs(rows["DNN"]["key"])) == 2
    assert [o.how for o in run_plan(load_plan(d), log=lambda *a: None)] == ["skipped"] * 3
    # a new store over the same run folders adopts the finished runs (the GBDTs' trees read back and counted)
    again = run_plan(load_plan(dict(d, db=str(tmp_path / "other.sqlite"))), log=lambda *a: None)
    assert [o.how for o in again] == ["adopted"] * 3 and [o.test_auc for o in again] == [o.test_auc for o in out]
    # --fresh retrains into the same folders (a GBDT run folder is overwritten like a torch one)
    fresh = run_plan(load_plan(dict(d, db=str(tmp_path / "fresh.sqlite"))), fresh=True, log=lambda *a: None)
    assert [o.how for o in fresh] == ["trained"] * 3 and [o.test_auc for o in fresh] == [o.test_auc for o in out]
    report = build_report(d["db"], tmp_path / "report")
    text = report.markdown.read_text()
    assert "LightGBM" in text and "XGBoost" in text and "DNN" in text


def test_pruning_stops_a_gbdt_run_between_rounds(data_dir, tmp_path):
    job = make_job("p", str(tmp_path / "runs"), DATASET, "LightGBM", 1, hparam_set=HparamSet("small", params=SMALL))
    seen = []

    def prune(estimator, record):
        seen.append(record["epoch"])
        if record["epoch"] == 5:
            raise RunPruned("pruned at round 5")

    outcome = run_job(job, str(tmp_path / "r.sqlite"), callbacks=[prune])
    assert outcome.how == "pruned" and seen == [1, 2, 3, 4, 5]
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.get(job.key)["status"] == "pruned" and len(store.epochs(job.key)) == 5
    again = run_job(job, str(tmp_path / "r.sqlite"))  # the folder's lock was released; retrained from scratch
    assert again.how == "trained" and again.epochs > 5


def test_tune_searches_a_gbdt_space(data_dir, tmp_path):
    cfg = load_tune_config({"name": "lgb", "db": str(tmp_path / "t.sqlite"), "runs_dir": str(tmp_path / "runs"),
                            "dataset": DATASET, "model": "LightGBM", "seeds": [1], "trials": 2,
                            "fixed": SMALL, "pruner": {"enabled": False},
                            "space": {"num_leaves": {"type": "int", "low": 4, "high": 64, "log": True},
                                      "lambda_l2": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}})
    res = tune(cfg, log=lambda *a: None)
    assert [t["state"] for t in res.trials] == ["COMPLETE", "COMPLETE"]
    assert {p["num_leaves"] for p in (t["params"] for t in res.trials)} != {None}
    with ResultsStore(cfg.db) as store:
        rows = store.runs(plan="tune:lgb")
        assert len(rows) == 2 and all(r["model"] == "LightGBM" for r in rows)
        assert res.best_value == max(r["valid_auc"] for r in rows)
        assert {r["config"]["model_params"]["num_leaves"] for r in rows} == {t["params"]["num_leaves"] for t in res.trials}
    with pytest.raises(ConfigError, match=r"space\.hidden_units: LightGBM has no hyperparameter 'hidden_units'"):
        load_tune_config(dict(cfg.__dict__, pruner={}, space={"hidden_units": {"type": "int", "low": 1, "high": 2}}))


def test_the_shipped_lightgbm_search_loads():
    from pathlib import Path

    cfg = load_tune_config(Path(__file__).resolve().parents[2] / "benchmarks/plans/tune_lightgbm_frappe.yaml")
    assert cfg.model == "LightGBM" and cfg.trials == 24 and len(cfg.seeds) == 2
    assert np.all([name in cfg.space for name in ("learning_rate", "num_leaves", "min_data_in_leaf")])


def test_any_registered_estimator_runs_through_train_and_a_worse_than_base_rate_run_is_flagged(data_dir, tmp_path):
    """The protocol is not GBDT-specific: an estimator without a Params class (it takes any model_params)
    that predicts the train click rate everywhere trains, evaluates and predicts as a run; the run checks
    flag its logloss as no better than the base rate's (it is that constant)."""
    from ctrlab.baselines import TabularEstimator, register_estimator

    @register_estimator("BaseRateProbe")
    class BaseRate(TabularEstimator):
        def fit(self, train, valid, seed, threads, log):
            self.rate = float(train.y.mean())
            return {"rounds": 1, "best_round": 1, "history": []}

        def predict_proba(self, split):
            return np.full(len(split), self.rate)

        def save(self, run_dir):
            (run_dir / "estimator_rate.json").write_text(json.dumps({"rate": self.rate}))

        @classmethod
        def load(cls, run_dir, params):
            est = cls(**params)
            est.rate = json.loads((run_dir / "estimator_rate.json").read_text())["rate"]
            return est

        def count_parameters(self):
            return 1

    out = tmp_path / "rate"
    res = api.train(dataset=DATASET, model="baserateprobe", model_params={"anything": 1}, output=str(out),
                    log=lambda *a: None)
    m = res.metrics
    assert m["model"] == "BaseRateProbe" and m["model_params"] == {"anything": 1} and m["parameters"] == 1
    assert m["valid"]["AUC"] == m["test"]["AUC"] == 0.5
    flagged = [w for w in m["warnings"] if w["code"] == "logloss_above_base_rate"]
    assert {w["message"].split()[0] for w in flagged} == {"valid", "test"}
    assert flagged[0]["fix"].startswith("Check the estimator's model_params")  # not the optimiser's fix
    assert api.evaluate(out) == {"valid": m["valid"], "test": m["test"]}


@pytest.mark.filterwarnings("ignore::ctrlab.data.errors.DataWarning")  # criteo test ids unseen in 7,200 rows
def test_calibrate_a_gbdt_run_fits_on_valid_and_predict_evaluate_apply_it(run, tmp_path):
    """`ctrlab calibrate` on a LightGBM run (a copy of it): isotonic fitted on the validation split's
    probabilities only; evaluate and predict then return the calibrated probabilities, whose metrics
    are the record's "after"; --uncalibrated still gives the model's own."""
    import shutil

    from ctrlab.baselines.run import predict_encoded
    from ctrlab.serve.calibration import fit_calibration, load_calibration

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".ctrlab.lock"))
    own = json.loads((copy / "metrics.json").read_text())
    assert main(["calibrate", str(copy), "--method", "isotonic"]) == 0
    record = json.loads((copy / "metrics.json").read_text())["calibration"]
    assert record["method"] == "isotonic" and record["fitted_on"]["split"] == "valid"
    assert record["before"]["test"] == own["test"]
    # isotonic on valid: the valid logloss cannot get worse (it is the fit's own objective's data)
    assert record["after"]["valid"]["logloss"] <= record["before"]["valid"]["logloss"]
    assert api.evaluate(copy) == record["after"] and api.evaluate(copy, calibrated=False) == {
        "valid": own["valid"], "test": own["test"]}
    est, fmap, dcfg, cfg = api._estimator_run(copy)
    data = prepare(dcfg, cache_dir=cfg.cache_dir, log=lambda *_: None, feature_map=fmap)
    own_valid = predict_encoded(est, fmap, data.splits["valid"])
    cal = load_calibration(copy)
    refit = fit_calibration("isotonic", np.asarray(data.splits["valid"].arrays["label"]).reshape(-1), own_valid)
    probe = np.linspace(0.0, 1.0, 101)
    np.testing.assert_allclose(cal.apply(probe), refit.apply(probe))  # fitted on valid, nothing else
    raw = dcfg.resolve("test")
    scores = api.predict(copy, raw, log=lambda *a: None)
    np.testing.assert_allclose(scores, cal.apply(predict_encoded(est, fmap, data.splits["test"])), rtol=1e-12)
