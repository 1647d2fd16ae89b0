"""Multi-task runs end to end on the real Ali-CCP sample (``ali_ccp_sample``: click + purchase labels,
torch-rechub's 100/50/50 rows): ESMM trains with every task's metrics in metrics.json, exports with every task's
probability in the graph (parity on all of them), and serves them from raw rows (ONNX and torch
backends, HTTP answer and the scores CSV)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from fastapi.testclient import TestClient

from ctrlab import api
from ctrlab.data.datasets import get_dataset
from ctrlab.serve.artifact import PARITY_TOLERANCE, export_run
from ctrlab.serve.config import ServeConfig
from ctrlab.serve.predictor import Predictor
from ctrlab.serve.server import create_app

@pytest.fixture(scope="module")
def esmm_export(data_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("esmm")
    run = tmp / "run"
    api.train(dataset="ali_ccp_sample", model="ESMM", output=str(run), log=lambda *a: None,
              overrides=["trainer.epochs=2", "trainer.progress=false"])
    test_file = Path(get_dataset("ali_ccp_sample").resolve("test"))
    return run, export_run(run, tmp / "artifact"), test_file


def test_esmm_run_reports_every_task(esmm_export):
    run, _, _ = esmm_export
    test = json.loads((run / "metrics.json").read_text())["test"]
    for task in ("ctr", "cvr", "ctcvr"):
        assert {f"{task}_AUC", f"{task}_logloss"} <= set(test)
    assert test["AUC"] == test["ctr_AUC"] and test["logloss"] == test["ctr_logloss"]


def test_esmm_exports_and_serves_every_task_from_raw_rows(esmm_export, tmp_path):
    run, art, test_file = esmm_export
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["tasks"] == ["ctr", "cvr", "ctcvr"] and manifest["outputs"][-1] == "task_probabilities"
    assert manifest["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    raw = pl.read_csv(test_file).drop(["click", "purchase"])  # ids as integers, D* as numbers: JSON-like values
    scores = tmp_path / "scores.csv"
    main = api.predict(run, test_file, scores)  # in-process PyTorch on the run: the reference
    written = pl.read_csv(scores)
    assert written.columns == ["probability", "probability_ctr", "probability_cvr", "probability_ctcvr"]
    np.testing.assert_allclose(written["probability"].to_numpy(), main)
    np.testing.assert_allclose(written["probability_ctcvr"].to_numpy(),
                               written["probability_ctr"].to_numpy() * written["probability_cvr"].to_numpy(), rtol=1e-5)
    for backend in ("onnx", "torch"):
        tasks = Predictor(art, backend=backend).predict_tasks(raw)
        assert list(tasks) == ["ctr", "cvr", "ctcvr"]
        for t, p in tasks.items():
            np.testing.assert_allclose(p, written[f"probability_{t}"].to_numpy(), atol=1e-5)
    predictor = Predictor(art)
    records = raw.head(3).to_dicts()
    with TestClient(create_app(predictor, ServeConfig())) as client:
        answer = client.post("/predict", json={"records": records}).json()
        assert client.get("/metadata").json()["tasks"] == ["ctr", "cvr", "ctcvr"]
    assert answer["rows"] == 3 and set(answer["tasks"]) == {"ctr", "cvr", "ctcvr"}
    np.testing.assert_allclose(answer["probabilities"], answer["tasks"]["ctr"])
    np.testing.assert_allclose(answer["tasks"]["cvr"], written["probability_cvr"].to_numpy()[:3], atol=1e-5)
