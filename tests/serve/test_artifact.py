"""Export: every registered model exports to ONNX with ONNX Runtime == PyTorch on thousands of real
rows; artifact folders are complete, checksummed, pickle-free, and score raw rows like the run."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.pipeline import prepare
from ctrlab.data.readers import read_split
from ctrlab.models import create, list_models
from ctrlab.serve.artifact import (
    PARITY_TOLERANCE,
    ArtifactError,
    check_parity,
    export_onnx,
    load_artifact,
    torch_probabilities,
)
from ctrlab.serve.predictor import Predictor

PARITY_ROWS = 4000
# (model, dataset): every model on real Frappe (categorical fields) and on real MovieLens 100K
# (sequence fields, one sharing the item vocabulary); DIN needs the behaviour sequence.
CASES = [(m, "frappe_x1_subset") for m in list_models() if m != "DIN"] + [(m, "movielens_100k") for m in list_models()]


@pytest.fixture(scope="module")
def prepared(data_dir):
    cache: dict[str, object] = {}

    def get(dataset: str):
        if dataset not in cache:
            cfg = api.load_run_config(None, dataset=dataset)
            cache[dataset] = prepare(api.dataset_config(cfg), log=lambda *a: None)
        return cache[dataset]

    return get


def _model(name: str, dataset: str, fmap):
    cfg = api.load_run_config(None, dataset=dataset, model=name)
    params, _ = api.resolve_model_params(cfg)
    torch.manual_seed(0)
    model = create(name, fmap, **params)
    # Trained-like scales: the 1e-4 initial embeddings would make every output ~0.5, and parity
    # on a constant would prove little.
    with torch.no_grad():
        for table in model.embedding_parameters():
            table.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.parametrize("name,dataset", CASES, ids=[f"{m}-{d}" for m, d in CASES])
def test_every_registered_model_exports_with_parity(name, dataset, prepared, tmp_path):
    data = prepared(dataset)
    rows = data.splits["test"].take(slice(0, PARITY_ROWS)).arrays
    model = _model(name, dataset, data.feature_map)
    export_onnx(model, data.feature_map, tmp_path / "model.onnx")
    parity = check_parity(tmp_path / "model.onnx", model, data.feature_map, rows)
    assert parity["rows"] == PARITY_ROWS
    assert parity["max_abs_diff"] <= PARITY_TOLERANCE, parity
    probs = torch_probabilities(model, rows, data.feature_map)
    # the outputs vary from row to row (parity on a constant would prove little)
    assert probs.std() > 1e-3 and np.unique(probs).size > PARITY_ROWS // 2, probs.std()


def test_export_run_writes_a_complete_checksummed_artifact(frappe_export):
    run, art = frappe_export
    names = sorted(p.name for p in art.iterdir())
    assert names == ["dataset_config.json", "feature_map.json", "manifest.json", "model.onnx", "model.safetensors"]
    # Nothing that loads through pickle: protobuf, safetensors and JSON only.
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))]
    m = json.loads((art / "manifest.json").read_text())
    assert m["format"] == "onnx" and m["model"]["name"] == "FinalMLP" and m["dataset"] == "frappe_x1_subset"
    assert m["model"]["params"]["fs1_context"] == ["user"]
    run_metrics = json.loads((run / "metrics.json").read_text())
    assert m["metrics"]["test"] == run_metrics["test"]
    assert [c["name"] for c in m["schema"]] == ["user", "item", "daytime", "weekday", "isweekend", "homework",
                                                "cost", "weather", "country", "city"]
    assert m["schema"][0]["accepts"] == ["string", "integer", "null"]
    assert {"torch", "onnx", "onnxruntime", "polars", "ctrlab"} <= set(m["versions"])
    assert set(m["files"]) == set(names) - {"manifest.json"} and all(len(h) == 64 for h in m["files"].values())
    # parity was measured on the run's real test rows
    assert m["parity"]["rows"] == 4096 and m["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
    assert m["parity"]["source"].startswith("test split")
    assert m["inputs"] == [{"key": "cat", "name": "cat", "dtype": "int64", "width": 10}]


def test_altered_or_missing_file_is_refused(frappe_export, tmp_path):
    _, art = frappe_export
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    with open(copy / "feature_map.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match=r"feature_map.json does not match its checksum"):
        load_artifact(copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model.onnx is missing"):
        load_artifact(copy, verify=False)
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(tmp_path)


def test_raw_rows_score_like_the_eager_run(frappe_export, tmp_path):
    """Raw test-file rows through the artifact (ONNX and torch backends) == ctrlab.predict on the run."""
    run, art = frappe_export
    predictor = Predictor(art)
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).head(3000)
    raw = tmp_path / "raw.csv"
    frame.select(predictor.columns).write_csv(raw)
    eager = api.predict(run, raw)
    np.testing.assert_allclose(predictor.predict_frame(frame), eager, rtol=0, atol=PARITY_TOLERANCE)
    np.testing.assert_allclose(Predictor(art, backend="torch").predict_frame(frame), eager, rtol=0, atol=1e-6)
    # JSON records (strings as in the file) give the same numbers as the frame
    records = frame.select(predictor.columns).head(200).to_dicts()
    np.testing.assert_allclose(predictor.predict_records(records), eager[:200], rtol=0, atol=PARITY_TOLERANCE)


def test_torch_format_and_cli(frappe_export, tmp_path, capsys):
    run, _ = frappe_export
    assert main(["export", str(run), "--format", "torch", "--output", str(tmp_path / "t")]) == 0
    assert "exported FinalMLP (torch)" in capsys.readouterr().out
    assert not (tmp_path / "t" / "model.onnx").exists()
    assert Predictor(tmp_path / "t").backend_name == "torch"
    with pytest.raises(ValueError, match="has no model.onnx"):
        Predictor(tmp_path / "t", backend="onnx")
    # an existing folder is not overwritten silently
    assert main(["export", str(run), "--format", "torch", "--output", str(tmp_path / "t")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing")]) == 2
    assert "is not a finished ctrlab run" in capsys.readouterr().err


def test_sequence_model_export_scores_raw_parquet_rows(movielens_export):
    run, art = movielens_export
    predictor = Predictor(art)
    assert [s["key"] for s in predictor.artifact.manifest["inputs"]] == ["cat", "seq:genres", "seq:history"]
    dcfg = predictor.artifact.dataset_config
    frame = read_split(dcfg, dcfg.resolve("test"), predictor.columns).head(2000)
    eager = Predictor(art, backend="torch").predict_frame(frame)
    np.testing.assert_allclose(predictor.predict_frame(frame), eager, rtol=0, atol=PARITY_TOLERANCE)
    assert eager.std() > 0.01


def test_loading_and_scoring_never_unpickles(frappe_export, monkeypatch):
    """Loading an artifact runs no pickle (no arbitrary code on load), with either backend."""
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used to load the artifact")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    _, art = frappe_export
    record = {"user": "204", "item": "4798", "daytime": "5041", "weekday": "5046", "isweekend": "5053",
              "homework": "5055", "cost": "5058", "weather": "5060", "country": "5073", "city": "5183"}
    for backend in ("onnx", "torch"):
        probs = Predictor(art, backend=backend).predict_records([record])
        assert probs.shape == (1,) and 0 < probs[0] < 1
