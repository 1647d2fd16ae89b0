"""benchmarks/efficiency_optinter.py (issue 16): the OptInter table comes from real runs (a --quick run on
2,000 Frappe rows), the verdict follows the numbers, and an interrupted run resumes from its JSON."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("efficiency_optinter", REPO / "benchmarks" / "efficiency_optinter.py")
eff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eff)


def test_quick_run_its_table_and_resume(data_dir, tmp_path):
    store, md = tmp_path / "oi.json", tmp_path / "efficiency.md"
    md.write_text("# Efficiency\n\n<!-- compression:begin -->\nkept\n<!-- compression:end -->\n")
    args = ["--quick", "--seeds", "2021", "--json", str(store), "--output", str(md), "--runs", str(tmp_path / "runs")]
    assert eff.main(args) == 0
    results = json.loads(store.read_text())
    row = results["frappe_x1_subset"]["2021"]
    assert list(row) == eff.VARIANTS
    for variant, entry in row.items():
        assert 0.5 < entry["test_AUC"] < 1.0, variant
    # the OptInter variants on one feature map: sizes follow the architectures
    assert row["all_memorize"]["parameters"] > row["all_factorize"]["parameters"] > row["base"]["parameters"]
    searched = row["searched"]
    assert searched["parameters_fixed"]["all_memorize"] == row["all_memorize"]["parameters"]
    assert searched["parameters_fixed"]["all_factorize"] == row["all_factorize"]["parameters"]
    assert sum(searched["counts"].values()) == 45 == len(searched["chosen"])
    # the section replaces only its own markers
    text = md.read_text()
    assert "<!-- compression:begin -->\nkept\n<!-- compression:end -->" in text
    assert eff.BEGIN in text and eff.END in text and "Quick smoke run" in text and "different data" in text
    mean = row["searched"]["test_AUC"]
    assert f"| {eff.LABELS['searched']} | 1 | {mean:.4f} ± 0.0000 (0.0000) |" in text
    v = eff.verdict(results["frappe_x1_subset"])
    best = max(row[k]["test_AUC"] for k in ("base", "all_memorize", "all_factorize"))
    assert v["gap"] == mean - best
    assert v["met"] == (mean - best >= -eff.TOLERANCE and searched["parameters"] < row["all_memorize"]["parameters"])
    # resume: entries in the JSON are not recomputed (no run folder is made)
    assert eff.main([*args[:-1], str(tmp_path / "runs2")]) == 0
    assert json.loads(store.read_text()) == results and not (tmp_path / "runs2").exists()
