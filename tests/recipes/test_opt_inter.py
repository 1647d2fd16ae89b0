"""``ctrlab optinter`` / ``ctrlab.api.opt_inter`` (issue 16) end to end on real Frappe rows: search into
OUTPUT/search, argmax per pair, retrain into OUTPUT (a normal run folder that evaluates, predicts,
exports with ONNX parity and serves from the raw columns), the report in metrics.json, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import yaml

from ctrlab.config import ConfigError

SMALL = dict(dataset="frappe_x1_subset", dataset_params={"train_rows": 3000}, log=lambda *a: None,
             model_params={"hidden_units": [32, 32], "embedding_dim": 4, "interaction_dim": 4},
             crosses={"fields": "all", "min_count": 3},
             overrides=["trainer.epochs=2", "trainer.progress=false", "trainer.num_threads=1"])


@pytest.fixture(scope="module")
def searched(data_dir, tmp_path_factory):
    from ctrlab.api import opt_inter

    return opt_inter(output=str(tmp_path_factory.mktemp("optinter") / "run"), **SMALL)


def test_search_then_retrain_writes_a_normal_run_with_the_report(searched):
    from ctrlab.api import evaluate, load_run
    from ctrlab.models.optinter import OptInter

    out = searched.run_dir
    report = json.loads((out / "metrics.json").read_text())["optinter"]
    assert report == searched.metrics["optinter"]
    assert len(report["chosen"]) == 45  # every pair of Frappe's 10 fields
    assert set(report["chosen"].values()) <= {"memorize", "factorize", "naive"}
    assert sum(report["counts"].values()) == 45
    assert report["search_run"] == "search" and report["search_steps"] > 0
    # the retrained model: the chosen architecture, naïve pairs dropped, trained from scratch
    model, fmap, _, cfg = load_run(out)
    assert isinstance(model, OptInter) and model.alpha is None
    assert cfg.model_params["pair_methods"] == report["chosen"] == model.chosen_methods()
    kept = sum(m != "naive" for m in report["chosen"].values())
    assert model.mlp.input_dim == 10 * 4 + kept * 4
    assert report["parameters"] == model.count_parameters() == searched.metrics["parameters"]
    fixed = report["parameters_fixed"]
    assert fixed["all_naive"] <= report["parameters"] <= fixed["all_memorize"] + fixed["all_factorize"]
    if report["counts"].get("factorize", 0) < 45:
        assert report["parameters"] < fixed["all_memorize"] + report["parameter_breakdown"]["factorized"]
    assert evaluate(out)["test"] == pytest.approx(searched.metrics["test"])
    assert searched.metrics["test"]["AUC"] > 0.7
    # the search run, kept beside it, is a finished run of the searched (mixed) model
    search_model, search_map, _, search_cfg = load_run(out / "search")
    assert search_cfg.model_params["pair_methods"] == "search" and search_cfg.output == str(out / "search")
    assert search_model.alpha.shape == (45, 3) and search_model.chosen_methods() == report["chosen"]
    assert search_map.to_dict() == fmap.to_dict()  # both phases on one feature map (crosses included)
    assert len(fmap.crosses()) == 45


def test_retrained_run_exports_with_onnx_parity_and_serves_from_raw_columns(searched, tmp_path):
    from fastapi.testclient import TestClient

    from ctrlab.api import load_run, predict
    from ctrlab.serve.artifact import export_run
    from ctrlab.serve.config import ServeConfig
    from ctrlab.serve.predictor import Predictor
    from ctrlab.serve.server import create_app

    _, _, dcfg, _ = load_run(searched.run_dir)
    artifact = export_run(searched.run_dir, tmp_path / "artifact")  # fails on an ONNX / PyTorch mismatch
    predictor = Predictor(artifact)
    assert [c["name"] for c in predictor.schema] == ["user", "item", "daytime", "weekday", "isweekend", "homework",
                                                     "cost", "weather", "country", "city"]  # no cross column
    test_file = dcfg.resolve("test")
    frame = pl.read_csv(test_file, infer_schema_length=0).head(300)
    rows = tmp_path / "rows.csv"
    frame.drop("label").write_csv(rows)
    want = predict(searched.run_dir, rows, log=lambda *a: None)
    records = frame.drop("label").to_dicts()
    np.testing.assert_allclose(predictor.predict_records(records), want, rtol=1e-4, atol=1e-6)
    with TestClient(create_app(predictor, ServeConfig())) as client:
        r = client.post("/predict", json={"records": records})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], want, rtol=1e-4, atol=1e-6)
    # the searched (mixed) model of the search phase exports too
    assert (export_run(searched.run_dir / "search", tmp_path / "search-artifact") / "manifest.json").exists()


def test_cli_and_errors(data_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "ctrlab", "optinter", "--output", str(out), "--dataset", "frappe_x1_subset",
           "--set", "dataset_params.train_rows=2000", "--set", "model_params.hidden_units=[16]",
           "--set", "trainer.progress=false", "--epochs", "1", "--cross-min-count", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[ctrlab] pair user,item: " in proc.stdout and "retrained run:" in proc.stdout
    summary = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("{")))
    assert summary["parameters"] < summary["parameters_all_memorize"] and "AUC" in summary["test"]
    saved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert saved["model"] == "OptInter" and saved["crosses"]["min_count"] == 4
    assert (out / "search" / "model.safetensors").exists()
    # a second call refuses the finished run without --overwrite
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds a finished ctrlab run" in again.stderr

    from ctrlab.api import opt_inter

    with pytest.raises(ConfigError, match="model 'DNN' has no per-pair interaction search"):
        opt_inter(model="DNN", output=str(tmp_path / "dnn"), **SMALL)
    with pytest.raises(ConfigError, match="give the output folder"):
        opt_inter(**SMALL)


def test_a_resumed_search_continues_the_schedule_exactly(data_dir, tmp_path):
    """The annealing step is a saved buffer and α's Adam state is checkpointed with the network's: a search
    stopped after one epoch and resumed ends where an uninterrupted one does, bit for bit."""
    import torch

    from ctrlab.api import load_run, train

    def search(out, epochs, resume=False):
        kw = {k: v for k, v in SMALL.items() if k != "overrides"}
        return train(model="OptInter", output=str(out), resume=resume, **kw,
                     overrides=[*SMALL["overrides"][1:], f"trainer.epochs={epochs}", "trainer.patience=5"])

    whole = search(tmp_path / "whole", 2)
    search(tmp_path / "split", 1)
    resumed = search(tmp_path / "split", 2, resume=True)
    a, *_ = load_run(whole.run_dir)
    b, *_ = load_run(resumed.run_dir)
    assert int(a.step) == int(b.step) > 0
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert resumed.metrics["test"] == whole.metrics["test"]
