"""ctrlab tune: config checks, budget across resumptions, retry of an interrupted trial, pruned runs."""
from __future__ import annotations

import optuna
import pytest

from ctrlab.bench import ResultsStore, RunPruned, make_job, run_job
from ctrlab.bench.tune import SELECTION_RULE, load_tune_config, tune
from ctrlab.config import ConfigError


def tune_dict(tmp_path, **kw):
    d = {"name": "t", "db": str(tmp_path / "r.sqlite"), "runs_dir": str(tmp_path / "runs"),
         "dataset": "frappe_x1_subset", "model": "DNN", "seeds": [1], "trials": 2,
         "trainer": {"epochs": 2, "batch_size": 8192}, "pruner": {"enabled": False},
         "space": {"net_dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
                   "hidden_units": {"type": "categorical", "choices": [[32], [64, 32]]}}}
    d.update(kw)
    return d


@pytest.mark.parametrize("change,msg", [
    ({"space": {}}, "space is empty"),
    ({"space": {"colour": {"type": "float", "low": 0, "high": 1}}}, "no hyperparameter 'colour'"),
    ({"space": {"net_dropout": {"type": "float", "low": 0.5, "high": 0.1}}}, "low <= high"),
    ({"space": {"embedding_regularizer": {"type": "float", "low": 0, "high": 1, "log": True}}}, "low > 0"),
    ({"space": {"hidden_units": {"type": "categorical"}}}, "choices"),
    ({"trials": None}, "budget"),
])
def test_bad_search_configs(tmp_path, change, msg):
    with pytest.raises(ConfigError, match=msg):
        load_tune_config(tune_dict(tmp_path, **change))


def test_budget_counts_across_resumptions_and_the_rule_is_printed(data_dir, tmp_path):
    lines = []
    res = tune(load_tune_config(tune_dict(tmp_path)), log=lines.append)
    assert len(res.trials) == 2 and all(t["state"] == "COMPLETE" for t in res.trials)
    assert any(SELECTION_RULE in line for line in lines)
    best = max(res.trials, key=lambda t: t["value"])
    assert res.best_params == best["params"] and res.best_value == best["value"]
    assert res.best_params["hidden_units"] in ([32], [64, 32])  # decoded back from Optuna's label
    # the same command with a larger budget runs only the difference
    res3 = tune(load_tune_config(tune_dict(tmp_path, trials=3)), log=lines.append)
    assert len(res3.trials) == 3
    # every trial's runs are in the store with their per-epoch curves; the value is their valid AUC
    with ResultsStore(tmp_path / "r.sqlite") as s:
        runs = s.runs(plan="tune:t")
        assert len({r["hparam_set"] for r in runs}) == len(runs) <= 3
        assert all(len(s.epochs(r["key"])) == 2 for r in runs)
        assert max(r["valid_auc"] for r in runs) == pytest.approx(res3.best_value)


def test_interrupted_trial_is_retried_with_its_parameters(data_dir, tmp_path):
    cfg = load_tune_config(tune_dict(tmp_path, trials=1))
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{tmp_path / 'r.sqlite'}", direction="maximize")
    ghost = study.ask()  # a trial left RUNNING, as by a process killed mid-trial
    ghost.suggest_float("net_dropout", 0.0, 0.3, step=0.1)
    ghost.suggest_categorical("hidden_units", ["[32]", "[64, 32]"])
    lines = []
    res = tune(cfg, log=lines.append)
    assert any("trial 0 was interrupted" in line for line in lines)
    states = {t["number"]: t["state"] for t in res.trials}
    assert states[0] == "FAIL" and states[1] == "COMPLETE"
    assert res.trials[1]["params"] == {"net_dropout": ghost.params["net_dropout"],
                                       "hidden_units": [32] if ghost.params["hidden_units"] == "[32]" else [64, 32]}


def test_a_pruned_run_is_recorded_as_pruned(data_dir, tmp_path):
    job = make_job("p", str(tmp_path / "runs"), "frappe_x1_subset", "LR", 1, trainer={"epochs": 3, "batch_size": 8192})

    def prune(trainer, record):
        if record["epoch"] == 1:
            raise RunPruned("pruned at epoch 1")

    out = run_job(job, str(tmp_path / "r.sqlite"), callbacks=[prune])
    assert out.how == "pruned"
    with ResultsStore(tmp_path / "r.sqlite") as s:
        row = s.get(job.key)
        assert row["status"] == "pruned" and row["error"] == "pruned at epoch 1"
        assert [e["epoch"] for e in s.epochs(job.key)] == [1]
    # without the pruning callback the same job resumes from its epoch-1 checkpoint
    assert run_job(job, str(tmp_path / "r.sqlite")).how == "resumed"


def test_a_dataset_without_a_validation_split_is_refused_before_any_trial(data_dir, tmp_path):
    """Issue 15.3: trials are ranked by validation AUC, so `valid_fraction: 0` (no valid file, no
    carved split) is a clear error up front, not a KeyError on valid_AUC after the first epoch."""
    from test_run_folder import write_tiny_frappe

    yaml_file = write_tiny_frappe(tmp_path / "data", data_dir)
    yaml_file.write_text(yaml_file.read_text().replace("valid: valid.csv, ", "") + "valid_fraction: 0\n")
    cfg = load_tune_config(tune_dict(tmp_path, dataset=str(yaml_file)))
    with pytest.raises(ConfigError, match="has no validation split .* valid_fraction above 0"):
        tune(cfg, log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # no trial ran
