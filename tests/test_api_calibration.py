"""issue 19: post-hoc calibration of a trained run (`ctrlab calibrate`), end to end on real MovieLens
100K rows: fitted on the validation split only, repairs a deliberately mis-scaled model, kept in the run
and the exported artifact, and applied by predict, evaluate, the predictor and the server alike."""
from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.pipeline import prepare
from ctrlab.serve.artifact import ArtifactError, export_run, load_artifact
from ctrlab.serve.calibration import load_calibration
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor
from ctrlab.serve.server import create_app
from ctrlab.train import Trainer
from ctrlab.train.metrics import final_metric_names

QUIET = lambda *a: None  # noqa: E731


def _train(data, run, **kw):
    api.train(dataset=str(data / "ml100k_grouped.yaml"), model="LR", preset="none", output=str(run), log=QUIET,
              overrides=["trainer.epochs=3", "trainer.progress=false", "trainer.batch_size=256",
                         "trainer.lr=0.01"], **kw)


def _mis_scale(run) -> tuple[float, float]:
    """Make the model 3x overconfident: Platt's fit on the trained LR is ``sigmoid(a0·logit + b0)``;
    LR's logit is a sum of its weights, so weights times ``3·a0`` give logits ``3·a0·logit``, whose
    Platt fit is ``a = 1/3``, ``b = b0``. Returns ``(a0, b0)``."""
    api.calibrate(run, "platt", log=QUIET)
    a0, b0 = load_calibration(run).params["a"], load_calibration(run).params["b"]
    (run / "calibration.json").unlink()
    weights = load_file(str(run / "model.safetensors"))
    save_file({k: v * (3 * a0) for k, v in weights.items()}, str(run / "model.safetensors"))
    return a0, b0


@pytest.fixture(scope="module")
def made(ml100k_grouped_dataset, tmp_path_factory):
    """``make(name)``: a fresh (data folder, run, Platt's (a0, b0) before) of LR trained on 4,000 ratings,
    then made 3x overconfident."""
    tmp = tmp_path_factory.mktemp("calib")

    def make(name: str):
        data = ml100k_grouped_dataset(tmp / name / "data").parent
        run = tmp / name / "run"
        _train(data, run)
        return data, run, _mis_scale(run)

    return make


@pytest.fixture(scope="module")
def platt_run(made):
    data, run, before = made("platt")
    return data, run, api.calibrate(run, "platt", log=QUIET), before


def _raw_model_probs(run, split="test"):
    model, fmap, dset, cfg = api.load_run(run)
    data = prepare(dset, log=QUIET, feature_map=fmap)
    return Trainer(model, cfg.trainer, run).predict(cfg.trainer.make_eval_loader(data.splits[split]))


def test_platt_repairs_the_mis_scaled_model_and_is_recorded(platt_run):
    _, run, record, (a0, b0) = platt_run
    cal = load_calibration(run)
    assert cal.method == "platt" and set(cal.params) == {"a", "b"}
    assert cal.params["a"] == pytest.approx(1 / 3, rel=1e-4) and cal.params["b"] == pytest.approx(b0, abs=1e-5)
    before, after = record["before"], record["after"]
    names = final_metric_names(["AUC", "logloss"], True)
    for split in ("valid", "test"):
        assert list(before[split]) == list(after[split]) == names
    # calibration repaired on held-out test rows
    assert after["test"]["logloss"] < before["test"]["logloss"] - 0.05
    assert after["test"]["ECE"] < before["test"]["ECE"] / 2
    assert abs(after["test"]["calibration"] - 1) < abs(before["test"]["calibration"] - 1)
    assert after["test"]["NE"] < before["test"]["NE"]
    # Platt is strictly increasing: every ranking metric is unchanged
    for m in ("AUC", "gAUC", "gAUC_mean", "MRR", "nDCG@5", "nDCG@10"):
        assert after["test"][m] == pytest.approx(before["test"][m], abs=1e-12), m
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["calibration"] == json.loads(json.dumps(record))
    assert saved["calibration"]["fitted_on"]["split"] == "valid"
    assert sum(saved["calibration"]["reliability_after"]["test"]["count"]) == 500
    # evaluate: the calibrated probabilities by default, the model's own on request
    assert api.evaluate(run) == after
    assert api.evaluate(run, calibrated=False) == before


def test_calibration_is_fitted_on_the_validation_split_only(made):
    data, run, _ = made("valid_only")
    first = api.calibrate(run, "isotonic", log=QUIET)
    params = load_calibration(run).params
    test = pl.read_csv(data / "test.csv")
    test.with_columns(label=1 - pl.col("label")).write_csv(data / "test.csv")  # every test label flipped
    second = api.calibrate(run, "isotonic", log=QUIET)
    assert load_calibration(run).params == params  # the same map, whatever the test labels
    assert second["before"]["valid"] == first["before"]["valid"]
    assert second["after"]["test"]["AUC"] == pytest.approx(1 - first["after"]["test"]["AUC"], abs=1e-12)
    # and a changed valid split does change it
    valid = pl.read_csv(data / "valid.csv")
    valid.with_columns(label=1 - pl.col("label")).write_csv(data / "valid.csv")
    api.calibrate(run, "isotonic", log=QUIET)
    assert load_calibration(run).params != params


def test_predict_the_artifact_and_the_server_apply_it(platt_run, tmp_path):
    data, run, _, _ = platt_run
    cal = load_calibration(run)
    raw = pl.read_csv(data / "test.csv").drop("label")
    rows = tmp_path / "rows.csv"
    raw.write_csv(rows)
    expected = cal.apply(_raw_model_probs(run))
    predicted = api.predict(run, rows, log=QUIET)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-12)
    assert main(["predict", str(run), "--input", str(rows), "--output", str(tmp_path / "s.csv")]) == 0
    np.testing.assert_allclose(pl.read_csv(tmp_path / "s.csv")["probability"].to_numpy(), expected, atol=1e-9)

    artifact = export_run(run, tmp_path / "artifact")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["calibration"]["method"] == "platt" and "calibration.json" in manifest["files"]
    for backend in ("onnx", "torch"):
        predictor = Predictor(artifact, backend=backend)
        served = predictor.predict_frame(raw.with_columns(pl.all().cast(pl.String)))
        np.testing.assert_allclose(served, expected, atol=2e-6)  # float32 output
        assert predictor.metadata()["calibration"]["method"] == "platt"
    with TestClient(create_app(Predictor(artifact), ServeConfig())) as client:
        records = raw.head(40).select("user", "item").with_columns(pl.all().cast(pl.String)).to_dicts()
        r = client.post("/predict", json={"records": records})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], expected[:40], atol=2e-6)

    # the calibration is part of the checked artifact: dropping it from the file list is refused
    broken = tmp_path / "broken"
    shutil.copytree(artifact, broken)
    del manifest["files"]["calibration.json"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="names a platt calibration but does not list calibration.json"):
        load_artifact(broken)
    # an artifact of an uncalibrated run has none, and serves the model's own probabilities
    (run / "calibration.json").rename(tmp_path / "kept.json")
    try:
        plain = Predictor(export_run(run, tmp_path / "plain"))
        assert plain.artifact.calibration is None and "calibration" not in plain.metadata()
        np.testing.assert_allclose(plain.predict_frame(raw.with_columns(pl.all().cast(pl.String))),
                                   _raw_model_probs(run), atol=2e-6)
    finally:
        (tmp_path / "kept.json").rename(run / "calibration.json")


def test_cli_calibrate_and_evaluate(made, capsys):
    _, run, _ = made("cli")
    assert main(["calibrate", str(run), "--method", "isotonic"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "(isotonic, fitted on 500 valid rows)" in out[0]
    assert out[1].split() == ["metric", "valid", "valid+cal", "test", "test+cal"]
    saved = json.loads((run / "metrics.json").read_text())["calibration"]
    logloss_row = next(line.split() for line in out if line.startswith("logloss"))
    assert float(logloss_row[4]) == pytest.approx(saved["after"]["test"]["logloss"], abs=1e-6)
    assert main(["evaluate", str(run), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "(calibrated: isotonic" in out[0]
    assert json.loads(out[-1]) == saved["after"]
    assert main(["evaluate", str(run), "--uncalibrated", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == saved["before"]


def test_training_the_run_again_drops_its_calibration(made):
    data, run, _ = made("retrain")
    api.calibrate(run, "platt", log=QUIET)
    assert (run / "calibration.json").is_file()
    _train(data, run, resume=True)  # the finished run continued (here: nothing left to train, weights rewritten)
    assert not (run / "calibration.json").exists()
    assert "calibration" not in json.loads((run / "metrics.json").read_text())
