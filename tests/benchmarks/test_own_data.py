"""benchmarks/own_data.py (issue 15.1): DeepFM with the auto defaults against LogisticRegression and
the base rate, on a real dataset; the table and its verdict come from the runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("own_data", REPO / "benchmarks" / "own_data.py")
own = importlib.util.module_from_spec(spec)
spec.loader.exec_module(own)


def test_one_seed_on_criteo_head10k_writes_the_row_and_its_verdict(data_dir, tmp_path):
    out, raw = tmp_path / "results.md", tmp_path / "own.json"
    assert own.main(["--datasets", "criteo_head10k", "--seeds", "2021", "--runs", str(tmp_path / "runs"),
                     "--output", str(out), "--json", str(raw)]) == 0
    (r,) = json.loads(raw.read_text())
    assert r["train_rows"] == 7200 and r["train_positives"] == 1553
    assert 0.65 < r["LR"]["test_AUC"] < 0.8 and r["LR"]["C"] in own.C_GRID and 0.6 < r["LR"]["default_C_test_AUC"] < 0.8
    assert r["DeepFM"][0]["auto_settings"]["trainer.batch_size"] == 128
    base = r["base_rate"]["test_logloss"]
    assert own.TOLERANCE == 0.001  # the project's rule for an accuracy claim against a peer
    assert r["bar_met"] == (r["DeepFM_test_AUC_mean"] >= r["LR"]["test_AUC"] - 0.001
                            and r["DeepFM_test_logloss_mean"] < base)
    assert r["DeepFM"][0]["best_epoch"] is not None  # 0 when the run kept its logistic-regression start
    text = out.read_text()
    assert f"| criteo_head10k | 7,200 | 1,553 (21.6%) | {r['DeepFM_test_AUC_mean']:.4f} ± " in text
    assert f"| {r['DeepFM_test_AUC_mean'] - r['LR']['test_AUC']:+.4f} |" in text
    kept = sum(d["best_epoch"] == 0 for d in r["DeepFM"])
    assert f"| {kept} of 1 | {'yes' if r['bar_met'] else 'no'} |" in text
    assert "Bar met on" in text and ("of 1 datasets" in text)
