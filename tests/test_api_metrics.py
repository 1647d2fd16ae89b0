"""issue 19: every run's final metrics on a dataset with a group_field (real MovieLens 100K rows grouped
by user): the group metrics are on without being configured, metrics.json, `ctrlab evaluate` and the
predictions agree."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlab import api
from ctrlab.cli import main
from ctrlab.data.pipeline import prepare
from ctrlab.train import Trainer
from ctrlab.train.metrics import evaluate_metrics, final_metric_names, reliability

@pytest.fixture(scope="module")
def grouped_run(ml100k_grouped_dataset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grouped")
    dataset = ml100k_grouped_dataset(tmp / "data")
    run = tmp / "run"
    api.train(dataset=str(dataset), model="DNN", preset="none", output=str(run),
              log=lambda *a: None, overrides=["trainer.epochs=2", "trainer.progress=false", "trainer.batch_size=512"])
    return run


def test_group_metrics_are_on_by_default_and_match_the_predictions(grouped_run):
    m = json.loads((grouped_run / "metrics.json").read_text())
    model, _, dset, cfg = api.load_run(grouped_run)
    assert cfg.trainer.metrics == ["AUC", "logloss"]  # not configured: on because of the group_field
    data = prepare(dset, log=lambda *a: None, feature_map=api.load_run(grouped_run)[1])
    names = final_metric_names(["AUC", "logloss"], True)
    for split in ("valid", "test"):
        arrays = data.splits[split].arrays
        assert "group" in arrays
        probs = Trainer(model, cfg.trainer, grouped_run).predict(cfg.trainer.make_eval_loader(data.splits[split]))
        y = arrays["label"][:, 0]
        assert list(m[split]) == names
        assert m[split] == evaluate_metrics(y, probs, names, arrays["group"])
        assert m["reliability"][split] == reliability(y, probs)
        assert all(np.isfinite(v) for v in m[split].values())
    # the per-epoch validation stays the BARS pair (speed and protocol unchanged)
    history = json.loads((grouped_run / "history.json").read_text())
    assert "valid_AUC" in history[0] and "valid_MRR" not in history[0]
    assert "[metrics test] AUC: " in (grouped_run / "train.log").read_text()


def test_ctrlab_evaluate_prints_the_table_and_json(grouped_run, capsys):
    m = json.loads((grouped_run / "metrics.json").read_text())
    assert main(["evaluate", str(grouped_run), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:3] for line in out[2:-1]}
    assert list(rows) == list(m["test"])
    assert float(rows["nDCG@10"][1]) == pytest.approx(m["test"]["nDCG@10"], abs=1e-6)
    assert "plain mean over groups" in next(line for line in out if line.startswith("gAUC_mean"))
    assert json.loads(out[-1]) == {"valid": m["valid"], "test": m["test"]}
