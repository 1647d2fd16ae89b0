"""docs/results.md's verdicts are computed from the runs: check the arithmetic on small hand-made runs."""
from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("zoo_results", REPO / "benchmarks" / "zoo_results.py")
zoo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoo)


def runs(model, aucs, epochs, first_seed=2021):
    """Runs as both libraries record them: ctrlab's valid_AUC_by_epoch, FuxiCTR's history (here
    valid AUC 0.9 + epoch/1000, so the value at the shared last epoch k is known)."""
    return [{"model": model, "seed": first_seed + i, "epochs": e, "test": {"AUC": a, "logloss": 0.3},
             "valid_AUC_by_epoch": [0.9 + j / 1000 for j in range(1, e + 1)],
             "history": [{"AUC": 0.9 + j / 1000} for j in range(1, e + 1)]}
            for i, (a, e) in enumerate(zip(aucs, epochs))]


@pytest.mark.parametrize("ours,verdict", [([0.9490, 0.9500, 0.9510], "meets the bar"),   # Δ = -0.0005
                                          ([0.9470, 0.9480, 0.9490], "**below the bar**")])  # Δ = -0.0025
def test_observation_verdict_against_the_bar(ours, verdict):
    peer = {"M": runs("M", [0.9495, 0.9505, 0.9515], [20, 20, 20])}
    text = zoo.observations(runs("M", ours, [20, 20, 20]), ["M"], peer)
    assert verdict in text
    assert f"Δ {sum(ours) / 3 - 0.9505:+.4f}" in text


def spread(mean, half_width, n):
    """n values with the given mean, alternating mean ± half_width (n even): sample std = half_width·√(n/(n−1))."""
    return [mean + (half_width if i % 2 else -half_width) for i in range(n)]


@pytest.mark.parametrize("n,ours_mean,half,passes,why", [
    # Δ = -0.0005: within the margin at any n
    (4, 0.9500, 0.0010, True, "Δ ≥ −0.001"),
    # Δ = -0.0012, SE ≈ 0.0005 (the FinalMLP case of issue 14.11): Δ + 2·SE < 0 at 20 seeds → fails
    (20, 0.9493, 0.0016, False, "significantly below"),
    # Δ = -0.0015 with a wide spread: SE ≈ 0.0011 at 10 seeds, Δ + 2·SE ≥ 0 → not significantly below
    (10, 0.9490, 0.0025, True, "not significantly below"),
    # the same spread at 4 seeds: the significance test needs ≥ 10 seeds per library → fails
    (4, 0.9490, 0.0025, False, "fewer than 10 seeds"),
])
def test_statistical_accuracy_bar(n, ours_mean, half, passes, why):
    """Issue 14 'Done when': mean ≥ peer − 0.001, or, at ≥ 10 seeds per library, not significantly
    below it (Δ + 2·SE ≥ 0, Welch SE). Reports n per side, mean ± std and the SE of Δ."""
    ours, theirs = spread(ours_mean, half, n), spread(0.9505, half * 0.6, n)
    c = zoo.compare(ours, theirs)
    se = (statistics.variance(ours) / n + statistics.variance(theirs) / n) ** 0.5
    assert c["n_ours"] == c["n_theirs"] == n
    assert c["diff"] == pytest.approx(ours_mean - 0.9505)
    assert c["se"] == pytest.approx(se)
    assert c["passes"] is passes
    assert why in c["reason"]
    assert f"{statistics.mean(ours):.4f} ± {statistics.stdev(ours):.4f} (n={n})" in c["text"]
    assert f"Δ {ours_mean - 0.9505:+.4f} ± {se:.4f}" in c["text"]


def test_observations_report_n_se_and_the_statistical_verdict():
    """The 20-seed FinalMLP shape: below the 0.001 margin and significantly below → **below the bar**,
    with n per side and the SE of Δ in the line; the old 'seed std' wording is gone."""
    ours = runs("M", spread(0.9493, 0.0016, 20), [20] * 20)
    peer = {"M": runs("M", spread(0.9505, 0.0010, 20), [20] * 20)}
    text = zoo.observations(ours, ["M"], peer)
    assert "**below the bar**" in text and "(n=20)" in text and "Δ + 2·SE" in text
    assert "seed std" not in text


def test_stalled_runs_are_counted_against_the_median_epoch():
    peer = {"M": runs("M", [0.95, 0.95, 0.93], [30, 28, 9])}
    text = zoo.observations(runs("M", [0.93, 0.93, 0.95], [8, 10, 31]), ["M"], peer)
    assert "stalled runs: ctrlab 2/3, FuxiCTR 1/3" in text  # median 19.5: stalled = at most 14.5 epochs


def test_more_seeds_section_uses_all_seeds_of_both_libraries(tmp_path):
    peer_file = tmp_path / "peer.json"
    peer_file.write_text(json.dumps({"runs": runs("M", [0.94, 0.95, 0.96, 0.95], [20] * 4)
                                     + runs("M", [0.5], [1], first_seed=2099)}))  # seed outside: ignored
    ours = runs("M", [0.95, 0.95, 0.95, 0.95], [20, 20, 12, 20])  # k = 12: every run trained 12 epochs
    text = zoo.more_seeds_section(["M"], [2024], ours, peer_file, [2021, 2022, 2023])
    row = next(line for line in text.splitlines() if line.startswith("| M |"))
    assert "(n=4)" in row and row.count("(n=4)") == 2
    # ctrlab's sample variance is 0; FuxiCTR's (0.94, 0.95, 0.96, 0.95) is 2e-4 / 3: SE = sqrt(2e-4 / 12)
    assert f"| +0.0000 ± {(2e-4 / 12) ** 0.5:.4f} | 12 | 0.9120 ± 0.0000 / 0.9120 ± 0.0000 |" in row


def test_more_seeds_section_is_empty_without_models_or_runs(tmp_path):
    assert zoo.more_seeds_section([], [2024], [], tmp_path / "none.json", [2021]) == ""     # no models listed
    assert zoo.more_seeds_section(["M"], [2024], [], tmp_path / "none.json", [2021]) == ""  # listed, no runs


def test_layout_of_the_zoo_plan():
    """docs/results.md's structure comes from the named grids of benchmarks/plans/zoo.yaml."""
    from ctrlab.bench import load_plan

    layout = zoo.plan_layout(load_plan(zoo.PLAN))
    frappe = layout["frappe_x1_subset"]
    assert frappe["seeds"] == [2021, 2022, 2023]
    assert frappe["protocols"]["bars"][:3] == ["LR", "FM", "DNN"] and "FinalMLP" in frappe["protocols"]["bars"]
    assert frappe["protocols"]["robust"] == ["DNN", "DeepFM", "DCNv2", "FinalMLP"]
    assert frappe["more_models"] == ["WideDeep", "DeepFM", "xDeepFM", "FinalMLP"]
    assert frappe["more_seeds"] == list(range(2024, 2041))  # 2031-2040: xDeepFM and FinalMLP only
    assert layout["movielens_100k"]["protocols"] == {"bars": ["DNN", "DIN"]}


def test_parameter_count_differing_from_the_peer_is_shown():
    """Same hyperparameters should build the same network in both libraries: a count that differs
    is printed beside ctrlab's (this is how a redundant bias in three models was found)."""
    ours = [{**r, "parameters": 101, "seconds_per_epoch": 1.0} for r in runs("M", [0.95, 0.95], [20, 20])]
    same = {"M": [{**r, "parameters": 101} for r in runs("M", [0.95, 0.95], [20, 20])]}
    other = {"M": [{**r, "parameters": 100} for r in runs("M", [0.95, 0.95], [20, 20])]}
    assert "| 101 |" in zoo.table(ours, ["M"], same, {})
    assert "| 101 (FuxiCTR: 100) |" in zoo.table(ours, ["M"], other, {})


def test_regenerating_keeps_other_scripts_sections(tmp_path, monkeypatch):
    """Issue 15.1: docs/results.md also holds benchmarks/own_data.py's marked section; make report
    (zoo_results) rewrote the file whole and dropped it (test fails before)."""
    import shutil
    import sys

    runs = tmp_path / "results.json"
    shutil.copy(REPO / "docs" / "results.json", runs)
    out = tmp_path / "results.md"
    section = "<!-- own-data:begin -->\n## Own data\n| a |\n<!-- own-data:end -->"
    out.write_text("# Results\n\nold tables\n\n" + section + "\n")
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", ["zoo_results.py", "--from-json", str(runs), "--output", str(out)])
    zoo.main()
    text = out.read_text()
    assert "old tables" not in text and "frappe_x1_subset" in text
    assert text.count(section) == 1
