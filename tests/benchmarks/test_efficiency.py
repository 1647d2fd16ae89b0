"""benchmarks/efficiency.py (issue 16): the compression table comes from real runs."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("efficiency", REPO / "benchmarks" / "efficiency.py")
eff = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eff)


def test_one_seed_on_criteo_head10k_and_its_table(data_dir, tmp_path):
    settings = [s for s in eff.SETTINGS if s[1] == "afm"]  # the svd rows run the same code path
    row = eff.one("criteo_head10k", 2021, tmp_path, latency=False, settings=settings)
    base = row["base"]
    assert 0.6 < base["test_AUC"] < 0.85
    for label, *_ in settings:
        assert row[label]["parameters"] < base["parameters"], label  # every setting makes the model smaller
        assert abs(row[label]["test_AUC"] - base["test_AUC"]) < 0.05, label
    sizes = [row[label]["parameters"] for label, *_ in settings]
    assert sizes[:4] == sorted(sizes[:4], reverse=True)  # lower ranks, then the tables too: ever smaller
    tuned = row[settings[-1][0]]
    assert tuned["parameters"] == sizes[-2] and tuned["finetune"]["finetune_epochs"] == eff.FINETUNE_EPOCHS
    results = {"criteo_head10k": {"DeepFM": [row]}}
    text = eff.render(results, [2021])
    assert text.startswith(eff.BEGIN) and text.endswith(eff.END)
    assert f"| uncompressed | {base['test_AUC']:.4f} ± 0.0000 (0.0000) | +0.0000 | {base['parameters']:,} | 1.00 |" in text
    assert "| setting | test AUC, mean ± std (SE), n=1 |" in text
    v = eff.verdict([row])
    # the verdict is the largest ratio among afm settings within 0.001, and says met only at >= 3x and faster
    ok = [label for label, *_ in settings if row[label]["test_AUC"] - base["test_AUC"] >= -0.001]
    if ok:
        assert v["best"]["ratio"] == max(base["parameters"] / row[label]["parameters"] for label in ok)
    assert v["met"] is False  # no latency measured here: "faster" cannot be shown
    # an interrupted run resumes from the JSON: entries there are not recomputed
    store = tmp_path / "eff.json"
    store.write_text(json.dumps(results))
    assert eff.main(["--datasets", "criteo_head10k", "--models", "DeepFM", "--seeds", "2021", "--output", "none",
                     "--json", str(store), "--runs", str(tmp_path / "runs")]) == 0
    assert json.loads(store.read_text()) == results and not (tmp_path / "runs").exists()


def test_a_call_with_fewer_seeds_keeps_the_earlier_entries():
    """Resuming with --seeds 2022 must not drop the seeds 2021 and 2023 already in the JSON."""
    done = {"frappe_x1_subset": {"DeepFM": [{"seed": 2021, "v": 1}, {"seed": 2023, "v": 3}]}}
    merged = eff.merge_seed_entries(done, {"frappe_x1_subset": {"DeepFM": [{"seed": 2022, "v": 2}],
                                                                "FCN": [{"seed": 2021, "v": 4}]}})
    assert merged == {"frappe_x1_subset": {"DeepFM": [{"seed": 2021, "v": 1}, {"seed": 2022, "v": 2},
                                                      {"seed": 2023, "v": 3}],
                                           "FCN": [{"seed": 2021, "v": 4}]}}
    assert done["frappe_x1_subset"]["DeepFM"] == [{"seed": 2021, "v": 1}, {"seed": 2023, "v": 3}]  # not mutated
