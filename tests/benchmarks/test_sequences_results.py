"""benchmarks/sequences.py keeps results with the settings they were made with: a changed variant's
old runs are retired (not mixed into the new mean), and a partial speed call keeps the other rows."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))  # sequences.py imports script_io from beside it
spec = importlib.util.spec_from_file_location("sequences_bench", REPO / "benchmarks" / "sequences.py")
seq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seq)


def _row(label, seed, auc, config):
    return {"dataset": "taobao_long", "model": label, "seed": seed, "auc": auc, "logloss": 0.3, "seconds": 1.0,
            "epochs": 3, "config": config}


def test_runs_made_with_other_settings_are_retired_not_averaged():
    current = seq.variant_config(seq.real_variants("taobao_long")["SDIM"])
    old = json.loads(json.dumps(dict(current, params=dict(current["params"], hash_bits=3))))
    rows = [_row("SDIM", 2021, 0.60, old), _row("SDIM", 2021, 0.67, current), _row("SDIM", 2022, 0.65, current)]
    assert seq.current_rows(rows) == rows[1:]
    text = seq.render_real(rows)
    assert "| SDIM | 2 | 0.6600 ± 0.0141 |" in text
    assert "1 older runs" in text
    # a row without a config (or a label no longer defined) never counts
    assert seq.current_rows([dict(rows[1], config=None), dict(rows[1], model="SDIM-old")]) == []


def test_config_records_what_defines_a_run():
    v = seq.real_variants("taobao_long")["LightSUAN-S distilled from SUAN-L"]
    c = seq.variant_config(v)
    assert c["model"] == "LightSUAN" and c["teacher"] == "SUAN" and c["history_max_len"] == seq.REAL_L
    assert c["epochs"] == seq.REAL_EPOCHS and c["params"]["n_layers"] == 1
    assert c == json.loads(json.dumps(c))  # what the JSON file stores compares equal to it


def test_the_warnings_column_counts_recorded_checks_and_logloss_above_the_constant():
    current = seq.variant_config(seq.real_variants("taobao_long")["DIN"])
    rows = [dict(_row("DIN", 2021, 0.67, current), logloss=0.35, warnings=["epoch_cap_while_improving"]),
            dict(_row("DIN", 2022, 0.66, current), logloss=0.30, warnings=[]),
            _row("DIN", 2023, 0.66, current)]  # made before warnings were recorded, logloss 0.3
    text = seq.run_warnings(rows, base_logloss=0.32)
    assert "**test logloss worse than the base rate** 1/3" in text
    assert "stopped at the epoch cap while improving 1/3" in text
    assert "other checks not recorded for 1/3" in text
    assert seq.run_warnings(rows[1:2], base_logloss=0.32) == ""
    table = seq.render_real(rows, {"taobao_long": 0.32})
    assert "Always predicting the train click rate gives test logloss 0.3200." in table


def test_the_difference_to_mean_pooling_and_its_welch_standard_error():
    d, se = seq.difference([0.70, 0.72, 0.74], [0.66, 0.67, 0.68])
    assert abs(d - 0.05) < 1e-12
    assert abs(se - ((0.02 ** 2 / 3) + (0.01 ** 2 / 3)) ** 0.5) < 1e-12  # sample variances 4e-4 and 1e-4
    current = {lab: seq.variant_config(v) for lab, v in seq.real_variants("taobao_long").items()}
    rows = [_row(seq.BASELINE, 2021 + i, a, current[seq.BASELINE]) for i, a in enumerate([0.66, 0.67, 0.68])]
    rows += [_row("DIN", 2021 + i, a, current["DIN"]) for i, a in enumerate([0.70, 0.72, 0.74])]
    table = seq.render_real(rows)
    assert f"| DIN | 3 | 0.7200 ± 0.0200 | 0.0115 | +0.0500 ± {se:.4f} (> 2 SE) |" in table


def test_sdim_accuracy_target_follows_the_statistical_rule():
    """Within 0.002 of DIN on the mean, or at >= 10 seeds per side not significantly below (Δ + 2·SE >= 0)."""
    speed = [{"model": m, "L": 1000, "batch": 128, "train_sps": sps, "infer_sps": sps}
             for m, sps in (("DIN", 100.0), ("SDIM", 600.0))]

    def verdict(sdim, din):
        acc = [{"model": "SDIM", "seed": i, "auc": a} for i, a in enumerate(sdim)]
        acc += [{"model": "DIN", "seed": i, "auc": a} for i, a in enumerate(din)]
        line = next(ln for ln in seq.render({"speed": speed, "accuracy": acc}).splitlines() if ln.startswith("**Target"))
        return "NOT met" not in line

    assert verdict([0.861, 0.863, 0.862], [0.862, 0.862, 0.863])  # mean within 0.002
    assert not verdict([0.850, 0.870, 0.848], [0.862, 0.862, 0.863])  # 0.006 lower at n = 3: not shown
    noisy = [0.85, 0.87] * 5  # 10 seeds: 0.004 lower on the mean but within 2 SE
    assert verdict(noisy, [0.864, 0.864, 0.863, 0.865, 0.864, 0.864, 0.863, 0.865, 0.864, 0.864])
    assert not verdict([0.855, 0.857] * 5, [0.864, 0.866] * 5)  # 10 seeds, clearly below
