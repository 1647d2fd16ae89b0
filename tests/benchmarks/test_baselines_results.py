"""benchmarks/baselines.py (issue 19): the baselines section is computed from the runs — the verdict
"where trees win" follows the Welch rule, the NE flag follows the runs' NE, and runs without the newer
keys render as "—"."""
from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
spec = importlib.util.spec_from_file_location("baselines_results", REPO / "benchmarks" / "baselines.py")
bl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bl)


def _run(model: str, seed: int, auc: float, ne: float = 0.9, cost: bool = True, dataset: str = "d") -> dict:
    r = {"dataset": dataset, "model": model, "seed": seed, "train_seconds": 60.0,
         "test": {"AUC": auc, "logloss": 0.4, "NE": ne, "calibration": 1.01, "ECE": 0.01}}
    if cost:
        r["cost"] = {"parameters": 1000 + seed, "flops_per_row": None if bl.is_tree(model) else 5000.0,
                     "latency_ms_1_row": 0.2, "latency_ms_4096_rows": 7.5, "threads": 1}
    return r


def _plan(models, datasets=("d",), sets=("preset",)):
    hsets = [SimpleNamespace(name=n, models=None) for n in sets]
    return SimpleNamespace(grids=[SimpleNamespace(datasets=list(datasets), models=list(models), hparam_sets=hsets,
                                                  seeds=[1])])


def test_welch_matches_the_formula():
    a, b = [0.80, 0.81, 0.82], [0.78, 0.785, 0.79]
    diff, se = bl.welch(a, b)
    assert math.isclose(diff, statistics.mean(a) - statistics.mean(b))
    assert math.isclose(se, math.sqrt(statistics.variance(a) / 3 + statistics.variance(b) / 3))


def test_verdict_trees_win_lose_and_tie():
    trees = [_run("LightGBM", s, 0.80 + 0.001 * i) for i, s in enumerate((1, 2, 3))]
    low = [_run("DNN", s, 0.78 + 0.001 * i) for i, s in enumerate((1, 2, 3))]
    high = [_run("DNN", s, 0.82 + 0.001 * i) for i, s in enumerate((1, 2, 3))]
    near = [_run("DNN", s, 0.8005 + 0.002 * i) for i, s in enumerate((1, 2, 3))]
    assert bl.verdict({"LightGBM": trees, "DNN": low})["outcome"] == "trees win"
    assert bl.verdict({"LightGBM": trees, "DNN": high})["outcome"] == "trees lose"
    assert bl.verdict({"LightGBM": trees, "DNN": near})["outcome"] == "tie"
    assert bl.verdict({"DNN": low}) is None  # no tree model: no verdict


def test_verdict_takes_the_better_tree_and_the_best_other_model():
    runs = {"LightGBM": [_run("LightGBM", 1, 0.70), _run("LightGBM", 2, 0.70)],
            "XGBoost": [_run("XGBoost", 1, 0.75), _run("XGBoost", 2, 0.75)],
            "DNN": [_run("DNN", 1, 0.72), _run("DNN", 2, 0.72)],
            "TabR": [_run("TabR", 1, 0.74), _run("TabR", 2, 0.74)]}
    v = bl.verdict(runs)
    assert (v["tree"], v["other"]) == ("XGBoost", "TabR") and math.isclose(v["diff"], 0.01)


def test_a_tuned_tree_counts_as_a_tree():
    runs = {"LightGBM-tuned": [_run("LightGBM-tuned", s, 0.80) for s in (1, 2)],
            "LightGBM": [_run("LightGBM", s, 0.70) for s in (1, 2)],
            "DNN": [_run("DNN", s, 0.75) for s in (1, 2)]}
    v = bl.verdict(runs)
    assert (v["tree"], v["other"], v["outcome"]) == ("LightGBM-tuned", "DNN", "trees win")


def test_logloss_verdict_is_lower_is_better():
    def with_loss(model, seed, loss):
        r = _run(model, seed, 0.8)
        r["test"]["logloss"] = loss
        return r

    trees = [with_loss("LightGBM", s, 0.30 + 0.001 * s) for s in (1, 2, 3)]
    deep = [with_loss("DNN", s, 0.40 + 0.001 * s) for s in (1, 2, 3)]
    v = bl.verdict({"LightGBM": trees, "DNN": deep}, "logloss")
    assert v["outcome"] == "trees win" and math.isclose(v["diff"], 0.10)
    text = bl.render(trees + deep, _plan(["LightGBM", "DNN"]))
    assert "* test logloss: trees win on `d`;" in text and "* test AUC: trees win on no dataset;" in text


def test_section_renders_numbers_flags_bad_ne_and_dashes_for_missing_keys():
    runs = ([_run("LightGBM", s, 0.80) for s in (1, 2, 3)]
            + [_run("DNN", s, 0.70, ne=1.02, cost=False) for s in (1, 2, 3)])
    text = bl.render(runs, _plan(["LightGBM", "DNN"], ["d", "e"]))
    assert text.startswith("<!-- baselines:begin -->") and text.rstrip().endswith("<!-- baselines:end -->")
    lgb = next(line for line in text.splitlines() if line.startswith("| LightGBM |"))
    assert "| 3 | 0.8000 ± 0.0000 (0.0000) |" in lgb and "| 1,002 |" in lgb and "| — |" in lgb  # median params; no FLOPs
    dnn = next(line for line in text.splitlines() if line.startswith("| DNN |"))
    assert "1.0200 ± 0.0000 ⚠" in dnn and dnn.endswith("| — | — | — | — |")
    assert "* test AUC: trees win on `d`;" in text
    assert "NE ≥ 1" in text and "not yet run: `e`" in text


def test_group_metrics_table_only_when_runs_have_them():
    plain = bl.render([_run("DNN", 1, 0.7)], _plan(["DNN"]))
    assert "Per-group ranking metrics" not in plain
    r = _run("DNN", 1, 0.7)
    r["test"].update({"gAUC": 0.61, "gAUC_mean": 0.6, "MRR": 0.5, "nDCG@5": 0.4, "nDCG@10": 0.45})
    grouped = bl.render([r], _plan(["DNN"]))
    assert "| DNN | 0.6100 ± 0.0000 | 0.6000 ± 0.0000 | 0.5000 ± 0.0000 | 0.4000 ± 0.0000 | 0.4500 ± 0.0000 |" in grouped


def test_a_named_hyperparameter_set_is_its_own_row():
    runs = [_run("TabR-small", 1, 0.7), _run("TabR", 1, 0.72)]
    plan = SimpleNamespace(grids=[
        SimpleNamespace(datasets=["d"], models=["TabR"], hparam_sets=[SimpleNamespace(name="preset", models=None)],
                        seeds=[1]),
        SimpleNamespace(datasets=["d"], models=["TabR"], hparam_sets=[SimpleNamespace(name="small", models=None)],
                        seeds=[1])])
    text = bl.render(runs, plan)
    assert "| TabR | 1 | 0.7200" in text and "| TabR-small | 1 | 0.7000" in text


def test_the_docs_section_is_the_rendering_of_the_recorded_runs():
    """docs/results.md's baselines section is what benchmarks/baselines.py renders from docs/baselines.json
    (no hand edits): re-rendered here from the recorded runs and the shipped plan."""
    from ctrlab.bench import load_plan

    sys.path.insert(0, str(REPO / "benchmarks"))
    from script_io import sections

    raw = json.loads((REPO / "docs" / "baselines.json").read_text())
    plan = load_plan(REPO / "benchmarks" / "plans" / "baselines.yaml")
    assert raw["runs"] and sections((REPO / "docs" / "results.md").read_text())["baselines"] == bl.render(
        raw["runs"], plan).strip()


def test_unfinished_planned_runs_are_listed():
    plan = _plan(["LightGBM", "DNN"])
    plan.grids[0].seeds = [1, 2, 3]
    text = bl.render([_run("LightGBM", s, 0.8) for s in (1, 2, 3)] + [_run("DNN", 1, 0.7)], plan)
    assert "Runs of the plan not finished yet" in text and "DNN on `d` (1 of 3 seeds)" in text
    assert "LightGBM on `d`" not in text
