"""benchmarks/efficiency.py (issue 16): the compression table comes from real runs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("efficiency", REPO / "benchmarks" / "efficiency.py")
eff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eff)


def test_one_seed_on_criteo_head10k_and_its_table(data_dir, tmp_path):
    row = eff.one("criteo_head10k", 2021, tmp_path, latency=False)
    base = row["base"]
    assert 0.6 < base["test_AUC"] < 0.85
    for label, method, share, emb in eff.SETTINGS:
        assert row[label]["parameters"] < base["parameters"], label  # every setting makes the model smaller
        assert abs(row[label]["test_AUC"] - base["test_AUC"]) < 0.05, label
    both = row["afm, MLP width/8 + embeddings 4"]["parameters"]
    assert both < row["afm, MLP width/4"]["parameters"] and both < row["afm, embeddings 4 of 10"]["parameters"]
    text = eff.render({"criteo_head10k": [row]}, [2021])
    assert text.startswith(eff.BEGIN) and text.endswith(eff.END)
    assert f"| uncompressed | {base['test_AUC']:.4f} ± 0.0000 (0.0000) | +0.0000 | {base['parameters']:,} | 1.00 |" in text
    assert "| model | test AUC, mean ± std (SE), n=1 |" in text
