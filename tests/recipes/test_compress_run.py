"""``ctrlab compress`` / ``ctrlab.api.compress`` (issue 16): a finished run -> a compressed run folder
that evaluates, loads, exports (ONNX parity checked by export) and serves like any run."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from ctrlab.layers.low_rank import LowRankLinear


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    from ctrlab.api import train

    out = tmp_path_factory.mktemp("compress") / "base"
    return train(dataset="criteo_head10k", model="DeepFM", output=str(out), log=lambda *a: None,
                 model_params={"hidden_units": [64, 64]},
                 overrides=["trainer.epochs=2", "trainer.progress=false", "trainer.num_threads=1"])


def test_full_rank_afm_keeps_the_metrics(trained, tmp_path):
    """At full rank AFM is an exact rewrite: the compressed run's metrics are the source run's."""
    from ctrlab.api import compress, load_run

    model, *_ = load_run(trained.run_dir)
    hidden = [n for n, m in model.named_modules() if type(m).__name__ == "Linear" and m.out_features == 64]
    res = compress(trained.run_dir, tmp_path / "full", method="afm", rank=64, layers=hidden, log=lambda *a: None)
    for split in ("valid", "test"):
        assert res.metrics[split]["AUC"] == pytest.approx(trained.metrics[split]["AUC"], abs=1e-4)
        assert res.metrics[split]["logloss"] == pytest.approx(trained.metrics[split]["logloss"], abs=1e-4)


def test_compressed_run_evaluates_exports_and_serves(trained, tmp_path):
    from ctrlab.api import compress, evaluate, load_run, predict
    from ctrlab.serve.artifact import export_run
    from ctrlab.serve.predictor import Predictor

    res = compress(trained.run_dir, tmp_path / "r8", method="afm", rank=8, embedding_rank=4, log=lambda *a: None)
    saved = yaml.safe_load((res.run_dir / "run_config.yaml").read_text())
    # the first-order term's table (width 1) has no smaller rank and stays
    assert saved["low_rank"].pop("embedding.embedding") == 4 and "linear.weights.embedding" not in saved["low_rank"]
    assert saved["low_rank"] and set(saved["low_rank"].values()) == {8}
    report = res.metrics["compression"]
    assert report["method"] == "afm" and report["statistics_rows"] == 7200
    saved_params = sum(r["parameters_before"] - r["parameters_after"] for r in report["layers"] + report["tables"])
    assert report["parameters_before"] - res.metrics["parameters"] == saved_params > 0
    assert all(r["eigen_tail"] >= 0 for r in report["layers"])
    model, *_ = load_run(res.run_dir)
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == len(saved["low_rank"])
    assert evaluate(res.run_dir)["test"] == pytest.approx(res.metrics["test"])
    assert res.metrics["test"]["AUC"] > 0.6

    artifact = export_run(res.run_dir, tmp_path / "artifact")  # fails on an ONNX / PyTorch mismatch
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["model"]["low_rank"] == {**saved["low_rank"], "embedding.embedding": 4}
    test_file = json.loads((res.run_dir / "dataset_config.json").read_text())
    from ctrlab.data.pipeline import raw_columns
    from ctrlab.data.readers import read_split
    from ctrlab.data.schema import load_dataset_config

    dcfg = load_dataset_config(test_file)
    frame = read_split(dcfg, dcfg.resolve("test"), raw_columns(dcfg)).head(200)
    want = predict(res.run_dir, dcfg.resolve("test"), log=lambda *a: None)[:200]
    for backend in ("onnx", "torch"):
        got = Predictor(artifact, backend=backend).predict_frame(frame)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_cli_svd_and_clear_errors(trained, tmp_path):
    out = tmp_path / "svd"
    cmd = [sys.executable, "-m", "ctrlab", "compress", str(trained.run_dir), "--output", str(out), "--method", "svd",
           "--rank", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compressed run:" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["compression"]["method"] == "svd" and metrics["compression"]["statistics_rows"] == 0
    bad = subprocess.run([*cmd[:-2], "--keep", "0.9", "--output", str(tmp_path / "x")], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode != 0 and "keep (a share of output variance) needs method afm" in bad.stderr


def test_finetuning_never_ends_worse_on_valid_than_the_rewrite(trained, tmp_path):
    """``finetune_epochs``: the lossy rewrite is trained further, validated first and kept when no
    epoch beats it, so the run's monitored valid score is at least the rewrite's; the run records it."""
    from ctrlab.api import compress, load_run_config

    kw = dict(method="afm", rank=2, embedding_rank=0.5, log=lambda *a: None)
    rewrite = compress(trained.run_dir, tmp_path / "rewrite", **kw)
    tuned = compress(trained.run_dir, tmp_path / "tuned", finetune_epochs=2, **kw)
    info = tuned.metrics["compression"]["finetune"]
    assert info["finetune_epochs"] == 2 and 1 <= info["epochs"] <= 2 and info["best_epoch"] in (0, 1, 2)
    assert len(json.loads((tuned.run_dir / "history.json").read_text())) == info["epochs"]
    tcfg = load_run_config(trained.run_dir / "run_config.yaml").trainer
    weights = tcfg.monitor_weights()
    score = lambda m: sum(w * m["valid"][k] for k, w in weights.items())  # noqa: E731
    # the start the fine-tuning validated is the rewrite (same weights, same valid split)
    assert info["valid_before"] == pytest.approx(score(rewrite.metrics), abs=1e-6)
    better = score(tuned.metrics) >= score(rewrite.metrics) - 1e-9
    assert better if tcfg.resolved_monitor_mode() == "max" else score(tuned.metrics) <= score(rewrite.metrics) + 1e-9
    # a share of variance for the tables picks one rank for the fused table, recorded like an integer one
    saved = yaml.safe_load((tuned.run_dir / "run_config.yaml").read_text())
    assert isinstance(saved["low_rank"]["embedding.embedding"], int)
    with pytest.raises(Exception, match="needs method afm"):
        compress(trained.run_dir, tmp_path / "bad", method="svd", embedding_rank=0.5, log=lambda *a: None)
