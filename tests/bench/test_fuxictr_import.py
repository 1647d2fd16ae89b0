"""``ctrlab bench --from-fuxictr``: FuxiCTR / BARS configs imported as bench plans.

The fixtures (tests/bench/fixtures/fuxictr/) hold BARS' tuned Frappe_x1 FinalMLP and DCNv2
experiments in FuxiCTR's YAML layout. ctrlab's shipped presets for those models were taken from
the same BARS configs, so importing them must reproduce the presets exactly: a check of the
importer and of the presets at once.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ctrlab.bench import BenchPlan, Grid, ResultsStore, expand, run_plan
from ctrlab.bench.fuxictr import parse_regularizer, plan_from_fuxictr
from ctrlab.config import ConfigError
from ctrlab.data.schema import load_dataset_config
from ctrlab.train import TrainerConfig

FIXTURES = Path(__file__).parent / "fixtures" / "fuxictr"
MODEL_CONFIG = FIXTURES / "model_config.yaml"
PRESETS = Path(__file__).resolve().parents[2] / "src" / "ctrlab" / "configs" / "presets" / "frappe_x1"
FINALMLP = "FinalMLP_frappe_x1_004_e1ab402f"
DCNV2 = "DCNv2_frappe_x1_007_c207b717"


def edited_config(tmp_path: Path, expid: str, **changes) -> Path:
    """A copy of the fixture configs in tmp_path with keys of ``expid`` set (None value = removed)."""
    folder = tmp_path / "cfg"
    folder.mkdir(exist_ok=True)
    shutil.copy(FIXTURES / "dataset_config.yaml", folder / "dataset_config.yaml")
    sections = yaml.safe_load(MODEL_CONFIG.read_text())
    for key, value in changes.items():
        if value is None:
            sections[expid].pop(key, None)
        else:
            sections[expid][key] = value
    path = folder / "model_config.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.mark.parametrize("expid, model", [(FINALMLP, "FinalMLP"), (DCNV2, "DCNv2")])
def test_bars_tuned_configs_reproduce_ctrlab_presets(tmp_path, expid, model):
    plan = plan_from_fuxictr(MODEL_CONFIG, expid, db=str(tmp_path / "r.sqlite"))
    assert plan.name == f"fuxictr-{expid}" and plan.db == str(tmp_path / "r.sqlite") and plan.jobs == 1
    (grid,) = plan.grids
    # the dataset_id's dataset_config section (Frappe_x1 files, its 10 categorical fields) -> registered split
    assert grid.datasets == ["frappe_x1"] and grid.models == [model] and grid.protocols == ["bars"]
    assert [(s.name, s.preset) for s in grid.hparam_sets] == [(expid, "none")]

    (job,) = expand(plan)
    preset = yaml.safe_load((PRESETS / f"{model}.yaml").read_text())
    assert job.resolved["model_params"] == preset
    trainer = job.resolved["trainer"]
    assert (trainer["lr"], trainer["batch_size"], trainer["epochs"], trainer["patience"]) == (1e-3, 4096, 100, 2)
    assert (trainer["monitor"], trainer["optimizer"]) == ("AUC", "adam")
    # monitor_mode: max, which ctrlab's default `auto` infers for AUC (kept auto: same run key as below)
    assert TrainerConfig(**trainer).resolved_monitor_mode() == "max"
    assert trainer["metrics"] == ["AUC", "logloss"] and trainer["restore_best"] is True
    assert job.seed == 2021 and trainer["seed"] == 2021

    # same experiment as ctrlab's own preset run -> the same run key in the results store
    preset_plan = BenchPlan(runs_dir=str(tmp_path / "other"), grids=[Grid(datasets=["frappe_x1"], models=[model],
                                                                          seeds=[2021])])
    assert expand(preset_plan)[0].key == job.key


def test_config_folder_seeds_jobs_and_dataset_override(tmp_path):
    plan = plan_from_fuxictr(FIXTURES, DCNV2, dataset="frappe_x1_subset", seeds=[1, 2], jobs=2)
    assert plan.jobs == 2 and plan.grids[0].datasets == ["frappe_x1_subset"]
    jobs = expand(plan)
    assert [j.seed for j in jobs] == [1, 2] and {j.dataset for j in jobs} == {"frappe_x1_subset"}
    assert jobs[0].run_dir.endswith(f"frappe_x1_subset/bars/DCNv2-{DCNV2}-s1")


def test_unknown_key_names_file_expid_key_and_fix(tmp_path):
    path = edited_config(tmp_path, FINALMLP, warp_factor=9, mlp3_hidden_units=[10])
    with pytest.raises(ConfigError) as err:
        plan_from_fuxictr(path, FINALMLP)
    msg = str(err.value)
    for part in (str(path), FINALMLP, "warp_factor", "mlp3_hidden_units", "remove it"):
        assert part in msg, msg


@pytest.mark.parametrize("changes, expected", [
    ({"embedding_regularizer": "l1(1.e-5)"}, "l1"),
    ({"model": "NoSuchNet"}, "known models"),
    ({"loss": "mse"}, "binary_crossentropy"),
    ({"task": "regression"}, "binary_classification"),
    ({"shuffle": False}, "shuffle"),
    ({"optimizer": "Adagrad"}, "optimizer"),
    ({"monitor": "NDCG"}, "NDCG"),
    ({"model": "PNN", "product_type": "outer"}, "IPNN"),
])
def test_unmappable_values_raise(tmp_path, changes, expected):
    with pytest.raises(ConfigError, match=expected):
        plan_from_fuxictr(edited_config(tmp_path, FINALMLP, **changes), FINALMLP)


def test_missing_expid_lists_the_available_ones():
    with pytest.raises(ConfigError) as err:
        plan_from_fuxictr(MODEL_CONFIG, "FinalMLP_frappe_x1_999")
    msg = str(err.value)
    assert "FinalMLP_frappe_x1_999" in msg and FINALMLP in msg and DCNV2 in msg and "'Base'" not in msg


def test_regularizer_strings():
    assert parse_regularizer("l2(1.e-5)", "x") == pytest.approx(1e-5)
    assert parse_regularizer("0", "x") == 0.0 and parse_regularizer(0, "x") == 0.0
    assert parse_regularizer(None, "x") == 0.0 and parse_regularizer(0.05, "x") == 0.05
    with pytest.raises(ConfigError, match="L2"):
        parse_regularizer("l1_l2(1e-5)", "x")


def test_renames_aliases_and_metrics(tmp_path):
    # DCN: FuxiCTR's dnn_* names; PNN(inner) is ctrlab's IPNN; metrics in ctrlab's order, unknown ones dropped
    path = edited_config(tmp_path, FINALMLP, model="DCN", dnn_hidden_units=[64], dnn_activations="ReLU",
                         num_cross_layers=2, net_dropout=0.1, batch_norm=False,
                         metrics=["logloss", "AUC", "avgAUC"], monitor={"AUC": 1, "logloss": -1},
                         **{k: None for k in ("mlp1_hidden_units", "mlp1_hidden_activations", "mlp1_dropout",
                                              "mlp1_batch_norm", "mlp2_hidden_units", "mlp2_hidden_activations",
                                              "mlp2_dropout", "mlp2_batch_norm", "use_fs", "fs_hidden_units",
                                              "fs1_context", "fs2_context", "num_heads")})
    with pytest.warns(UserWarning, match="avgAUC"):
        plan = plan_from_fuxictr(path, FINALMLP, dataset="frappe_x1_subset")
    assert plan.grids[0].models == ["DCN"]
    assert plan.grids[0].hparam_sets[0].params == {
        "embedding_dim": 10, "embedding_regularizer": 0.05, "net_regularizer": 0.0, "hidden_units": [64],
        "hidden_activations": "ReLU", "num_cross_layers": 2, "net_dropout": 0.1, "batch_norm": False}
    assert plan.grids[0].trainer["metrics"] == ["AUC", "logloss"]
    # FuxiCTR's weighted monitor; its monitor_mode max is what ctrlab's auto infers, so it stays auto
    assert plan.grids[0].trainer["monitor"] == {"AUC": 1.0, "logloss": -1.0}
    assert "monitor_mode" not in plan.grids[0].trainer

    path = edited_config(tmp_path, DCNV2, model="PNN", product_type="inner", hidden_units=[32], monitor_mode="min",
                         **{k: None for k in ("model_structure", "use_low_rank_mixture", "low_rank", "num_experts",
                                              "num_cross_layers", "stacked_dnn_hidden_units",
                                              "parallel_dnn_hidden_units", "dnn_activations")})
    plan = plan_from_fuxictr(path, DCNV2, dataset="frappe_x1_subset")
    assert plan.grids[0].models == ["IPNN"] and "product_type" not in plan.grids[0].hparam_sets[0].params
    assert plan.grids[0].trainer["monitor_mode"] == "min"  # not what auto infers for AUC: kept


def test_other_dataset_becomes_a_ctrlab_dataset_yaml(tmp_path):
    data = tmp_path / "data"
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "model_config.yaml").write_text(yaml.safe_dump(
        {"Base": {"verbose": 0}, "exp1": {"model": "DNN", "dataset_id": "clicks_v2", "hidden_units": [8]}}))
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump({"clicks_v2": {
        "data_root": "../data/", "data_format": "parquet", "min_categr_count": 2,
        "train_data": str(data / "train.parquet"), "valid_data": str(data / "valid.parquet"),
        "test_data": str(data / "test.parquet"),
        "feature_cols": [
            {"name": ["user_id", "item_id"], "active": True, "dtype": "str", "type": "categorical"},
            {"name": "price", "active": True, "dtype": "float", "type": "numeric", "normalizer": "StandardScaler"},
            {"name": "history", "active": True, "dtype": "str", "type": "sequence", "splitter": "^",
             "max_len": 5, "share_embedding": "item_id", "feature_encoder": None},
            {"name": "unused", "active": False, "dtype": "str", "type": "categorical"}],
        "label_col": {"name": "click", "dtype": "float"}}}))
    plan = plan_from_fuxictr(folder, "exp1", db=str(tmp_path / "store" / "r.sqlite"))
    (ds,) = plan.grids[0].datasets
    assert Path(ds) == tmp_path / "store" / "fuxictr_datasets" / "clicks_v2.yaml"
    cfg = load_dataset_config(ds)
    assert (cfg.name, cfg.format, cfg.labels) == ("clicks_v2", "parquet", ["click"])
    assert cfg.files["train"] == str(data / "train.parquet")
    kinds = {f.name: f.kind for f in cfg.features}
    assert kinds == {"user_id": "categorical", "item_id": "categorical", "price": "numeric", "history": "sequence"}
    by_name = {f.name: f for f in cfg.features}
    assert by_name["user_id"].min_count == 2 and by_name["price"].normalizer == "standard"
    assert (by_name["history"].share_vocab_with, by_name["history"].padding, by_name["history"].max_len) == (
        "item_id", "post", 5)

    sections = yaml.safe_load((folder / "dataset_config.yaml").read_text())
    sections["clicks_v2"]["feature_cols"][1]["type"] = "embedding"
    (folder / "dataset_config.yaml").write_text(yaml.safe_dump(sections))
    with pytest.raises(ConfigError, match="type 'embedding'"):
        plan_from_fuxictr(folder, "exp1", db=str(tmp_path / "store" / "r.sqlite"))


def test_dcnv2_short_run_end_to_end(tmp_path, data_dir):
    plan = plan_from_fuxictr(MODEL_CONFIG, DCNV2, dataset="frappe_x1_subset", db=str(tmp_path / "r.sqlite"))
    plan.runs_dir = str(tmp_path / "runs")
    plan.grids[0].trainer.update(epochs=1, batch_size=8192)
    outcomes = run_plan(plan, log=lambda *_: None)
    assert [o.how for o in outcomes] == ["trained"], outcomes
    (row,) = ResultsStore(plan.db).runs()
    assert row["plan"] == f"fuxictr-{DCNV2}" and row["model"] == "DCNv2" and row["epochs"] == 1
    assert row["test_auc"] > 0.8
    assert row["config"]["model_params"]["hidden_units"] == [400, 400, 400]


def test_cli_dry_run(tmp_path, capsys):
    from ctrlab.cli import main

    rc = main(["bench", "--from-fuxictr", str(MODEL_CONFIG), "--expid", FINALMLP, "--dataset", "frappe_x1_subset",
               "--dry-run", "--db", str(tmp_path / "r.sqlite")])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and len(out) == 1, out
    assert f"frappe_x1_subset bars FinalMLP [{FINALMLP}] seed 2021" in out[0]


def test_cli_reports_a_bad_config(tmp_path, capsys):
    from ctrlab.cli import main

    rc = main(["bench", "--from-fuxictr", str(MODEL_CONFIG), "--expid", "nope", "--dry-run"])
    assert rc == 2 and "available experiment ids" in capsys.readouterr().err


def test_dataset_config_defaults_beside_the_model_config(tmp_path):
    alone = tmp_path / "model_config.yaml"
    shutil.copy(MODEL_CONFIG, alone)
    with pytest.raises(ConfigError, match="no FuxiCTR dataset config"):
        plan_from_fuxictr(alone, FINALMLP)
    plan = plan_from_fuxictr(alone, FINALMLP, dataset_config=FIXTURES / "dataset_config.yaml")
    assert plan.grids[0].datasets == ["frappe_x1"]
    with pytest.raises(ConfigError, match="frappe_x1_04e961e9"):  # the available ids are listed
        plan_from_fuxictr(edited_config(tmp_path, FINALMLP, dataset_id="frappe_x1_missing"), FINALMLP)


# FuxiCTR's FGCNN experiment behind docs/results.md's FuxiCTR column (the "params" of its runs in
# benchmarks/peers/results/fuxictr_frappe_x1_subset.json, runtime keys as in Base above)
FGCNN_EXPERIMENT = {
    "model": "FGCNN", "dataset_id": "frappe_x1_subset", "loss": "binary_crossentropy", "metrics": ["AUC", "logloss"],
    "task": "binary_classification", "optimizer": "adam", "learning_rate": 1.0e-3, "batch_size": 4096,
    "epochs": 100, "shuffle": True, "seed": 2021, "monitor": {"AUC": 1, "logloss": 0}, "monitor_mode": "max",
    "embedding_dim": 10, "share_embedding": False, "channels": [14, 16, 18, 20], "kernel_heights": [7, 7, 7, 7],
    "pooling_sizes": [2, 2, 2, 2], "recombined_channels": [3, 3, 3, 3], "conv_activation": "Tanh",
    "conv_batch_norm": True, "dnn_hidden_units": [400, 400, 400], "dnn_activations": "ReLU",
    "dnn_batch_norm": True, "net_dropout": 0.2, "embedding_regularizer": 0.05, "net_regularizer": 0,
}


def test_fgcnn_import_builds_fuxictrs_model(tmp_path, data_dir):
    """issue 14.12: rerunning a FuxiCTR/BARS FGCNN experiment trains FuxiCTR's model: no gate on the
    generated features, and exactly the parameter count FuxiCTR reported for it (1,145,477)."""
    from ctrlab.data.datasets import get_dataset
    from ctrlab.data.pipeline import prepare
    from ctrlab.models import create

    path = edited_config(tmp_path, FINALMLP)
    sections = yaml.safe_load(path.read_text())
    sections["FGCNN_frappe"] = FGCNN_EXPERIMENT
    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    (job,) = expand(plan_from_fuxictr(path, "FGCNN_frappe", dataset="frappe_x1_subset"))
    params = job.resolved["model_params"]
    assert job.model == "FGCNN" and not params.get("gate_new_features", False)
    fmap = prepare(get_dataset("frappe_x1_subset", data_dir=data_dir), log=lambda *a: None).feature_map
    model = create("FGCNN", fmap, **params)
    assert model.gate is None and model.count_parameters() == 1_145_477
