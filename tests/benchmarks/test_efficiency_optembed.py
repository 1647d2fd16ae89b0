"""benchmarks/efficiency_optembed.py (issue 16): the OptEmbed table comes from real runs, and resumes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("efficiency_optembed", REPO / "benchmarks" / "efficiency_optembed.py")
eff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eff)


def test_quick_run_and_its_table(data_dir, tmp_path):
    store, page = tmp_path / "oe.json", tmp_path / "efficiency.md"
    page.write_text("# Efficiency\n\nprose kept\n")
    assert eff.main(["--quick", "--json", str(store), "--output", str(page), "--runs", str(tmp_path / "runs")]) == 0
    results = json.loads(store.read_text())
    (row,) = results["frappe_x1_subset"]["DeepFM"]
    base, oe = row["base"], row["optembed"]
    assert row["seed"] == 2021 and base["epochs"] == 1 == oe["epochs"]
    assert base["embedding_parameters"] == oe["embedding_parameters_full"] == 5287 * 10
    assert 0 < oe["embedding_parameters"] <= base["embedding_parameters"]
    assert oe["sparsity"] == 1 - oe["embedding_parameters"] / base["embedding_parameters"]
    assert 0.5 < base["test_AUC"] < 1 and 0.5 < oe["test_AUC"] < 1
    table = oe["tables"]["embedding.embedding"]
    assert len(table["widths"]) == len(table["kept_features"]) == 10
    text = page.read_text()
    assert text.startswith("# Efficiency\n\nprose kept\n") and eff.BEGIN in text and eff.END in text
    v = eff.verdict([row])
    assert v["delta"] == oe["test_AUC"] - base["test_AUC"] and v["fewer"] == oe["sparsity"]
    assert v["met"] == (oe["sparsity"] >= 0.5 and v["delta"] >= -0.001)
    assert (f"| frappe_x1_subset | DeepFM | 1 | {base['test_AUC']:.4f} ± 0.0000 (0.0000) | "
            f"{oe['test_AUC']:.4f} ± 0.0000 (0.0000) | {v['delta']:+.4f} (0.0000) | 52,870 → "
            f"{oe['embedding_parameters']:,} | {oe['sparsity']:.1%} |") in text
    assert "different data" in text
    # an interrupted run resumes from the JSON: entries there are not recomputed
    assert eff.main(["--datasets", "frappe_x1_subset", "--models", "DeepFM", "--seeds", "2021", "--output", "none",
                     "--json", str(store), "--runs", str(tmp_path / "runs2")]) == 0
    assert json.loads(store.read_text()) == results and not (tmp_path / "runs2").exists()
    # --publish-only renders what the JSON holds and trains nothing, even for seeds it lacks
    page.write_text("")
    assert eff.main(["--datasets", "frappe_x1_subset", "--models", "DeepFM", "FCN", "--seeds", "2021", "2022",
                     "--publish-only", "--output", str(page), "--json", str(store), "--runs", str(tmp_path / "runs3")]) == 0
    assert not (tmp_path / "runs3").exists() and "| frappe_x1_subset | DeepFM | 1 |" in page.read_text()
    assert "| FCN |" not in page.read_text()
