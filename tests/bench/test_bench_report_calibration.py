"""The report's calibration and cost columns and its reliability diagram (issue 19), read from the runs'
metrics.json in the store: means ± std over seeds computed right, seeds' diagrams pooled as one diagram
of their predictions together, and runs recorded before these keys existed rendered with "–"."""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from ctrlab.bench import ResultsStore
from ctrlab.bench.report import build_report, leaderboard

ENV = {"python": "3.11", "torch": "2.13.0", "ctrlab": "0.1.0", "cpu": "test cpu", "cores": 2, "cuda": False,
       "git_commit": "abc1234"}


def reliability_of(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """The contract's reliability dict, by hand: equal-width bins of [0, 1] (1 in the last one)."""
    index = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    pred = np.bincount(index, p, bins)
    pos = np.bincount(index, y, bins)
    return {"bins": bins, "count": count.tolist(),
            "mean_prediction": [float(pred[b] / count[b]) if count[b] else None for b in range(bins)],
            "observed_rate": [float(pos[b] / count[b]) if count[b] else None for b in range(bins)]}


def predictions(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 5, size=n)
    y = (rng.random(n) < np.clip(p * 1.2, 0, 1)).astype(float)  # under-predicted: observed above the diagonal
    return y, p


def add_run(store, key, model, seed, test_auc, extra: dict | None = None, measure_cost: bool | None = True,
            dataset="frappe_x1_subset"):
    config = {"dataset": dataset, "model": model, "model_params": {},
              "trainer": {"seed": seed, "num_threads": 1, "progress": False}, "output": f"runs/{key}"}
    if measure_cost is not None:  # a config saved before the option existed has no such key
        config["measure_cost"] = measure_cost
    store.start_run(key, plan="p", dataset=dataset, model=model, seed=seed, hparam_set="preset", protocol="bars",
                    config=config, run_dir=f"runs/{key}", environment=ENV)
    history = [{"epoch": 1, "valid_AUC": 0.9, "valid_logloss": 0.3, "train_loss": 0.4, "lr": 1e-3, "seconds": 2.0,
                "samples_per_s": 20000.0, "best_epoch": 1}]
    metrics = {"parameters": 1000, "epochs": 1, "train_seconds": 2.0, "seconds_per_epoch": 2.0,
               "valid": {"AUC": 0.9, "logloss": 0.3}, "test": {"AUC": test_auc, "logloss": 0.31}}
    for k, v in (extra or {}).items():
        metrics[k] = {**metrics.get(k, {}), **v} if isinstance(v, dict) and k in ("valid", "test") else v
    store.finish_run(key, metrics, history)


NEW = {  # per DNN seed: test NE, calibration, ECE, cost
    1: {"NE": 0.61, "calibration": 0.97, "ECE": 0.012, "flops": 1_041_000.0, "ms1": 0.38, "ms4096": 36.8},
    2: {"NE": 0.63, "calibration": 1.05, "ECE": 0.020, "flops": 1_041_000.0, "ms1": 0.42, "ms4096": 39.0},
}


def new_keys(seed: int) -> dict:
    v = NEW[seed]
    y, p = predictions(seed)
    return {"test": {"NE": v["NE"], "calibration": v["calibration"], "ECE": v["ECE"]},
            "reliability": {"test": reliability_of(y, p)},
            "cost": {"parameters": 1000, "flops_per_row": v["flops"], "latency_ms_1_row": v["ms1"],
                     "latency_ms_4096_rows": v["ms4096"], "threads": 1, "device": "cpu"}}


@pytest.fixture
def store_path(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as s:
        add_run(s, "dnn1", "DNN", 1, 0.96, new_keys(1))
        add_run(s, "dnn2", "DNN", 2, 0.962, new_keys(2), measure_cost=None)  # an older config: same row
        add_run(s, "lr", "LR", 1, 0.93)  # recorded before the keys existed
        add_run(s, "old", "DNN", 1, 0.71, dataset="movielens_100k")  # a dataset with old runs only
    return db


def table(md: str, dataset: str) -> list[dict[str, str]]:
    """The Markdown leaderboard of ``dataset`` as rows of {header: cell}."""
    section = md.split(f"## {dataset}\n")[1].split("\n## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    split = lambda ln: [c.strip() for c in ln.strip("|").split(" | ")]  # noqa: E731
    header = split(lines[0])
    return [dict(zip(header, split(ln))) for ln in lines[2:]]


def test_columns_hold_the_means_and_stds_over_seeds_and_dashes_for_older_runs(store_path, tmp_path):
    files = build_report(store_path, tmp_path / "rep")
    md = files.markdown.read_text()
    dnn, lr = table(md, "frappe_x1_subset")
    assert dnn["model"] == "DNN" and dnn["seeds"] == "2" and lr["model"] == "LR"
    for column, key in (("test NE", "NE"), ("test calibration", "calibration"), ("test ECE", "ECE")):
        xs = [NEW[1][key], NEW[2][key]]
        assert dnn[column] == f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"
        assert lr[column] == "–"
    assert dnn["test calibration"] == "1.0100 ± 0.0566"  # (0.97 + 1.05) / 2, stdev 0.08/√2
    assert dnn["FLOPs/row"] == "1,041,000"
    assert dnn["latency 1 row (ms)"] == "0.400" and dnn["latency 4096 rows (ms)"] == "37.90"
    assert all(lr[c] == "–" for c in ("FLOPs/row", "latency 1 row (ms)", "latency 4096 rows (ms)"))
    assert lr["parameters"] == "1,000"  # the store's own column, there for every run
    assert "Measured with 1 thread on cpu." in md.split("## movielens_100k")[0]
    old = md.split("## movielens_100k")[1]
    assert "Measured with" not in old and table(md, "movielens_100k")[0]["test NE"] == "–"
    page = files.html.read_text()
    assert "<th>test ECE</th>" in page and "<td>1.0100 ± 0.0566</td>" in page


def test_reliability_pools_the_seeds_as_one_diagram_of_their_predictions(store_path):
    with ResultsStore(store_path) as s:
        dnn, lr = leaderboard(s)["frappe_x1_subset"]
    assert lr.reliability() is None
    pred, rate, rows = dnn.reliability()
    (y1, p1), (y2, p2) = predictions(1), predictions(2)
    together = reliability_of(np.concatenate([y1, y2]), np.concatenate([p1, p2]))
    kept = [b for b in range(10) if together["count"][b]]
    assert rows == [together["count"][b] for b in kept] and sum(rows) == 800
    assert pred == pytest.approx([together["mean_prediction"][b] for b in kept], abs=1e-12)
    assert rate == pytest.approx([together["observed_rate"][b] for b in kept], abs=1e-12)


def test_the_reliability_diagram_is_drawn_where_runs_recorded_one(store_path, tmp_path):
    files = build_report(store_path, tmp_path / "rep")
    names = sorted(p.name for p in files.plots)
    assert "frappe_x1_subset_reliability.svg" in names
    assert "movielens_100k_reliability.svg" not in names  # old runs only: no empty plot
    assert len(names) == 4 + 3
    svg = (tmp_path / "rep" / "plots" / "frappe_x1_subset_reliability.svg").read_text()
    assert "perfectly calibrated" in svg and "DNN" in svg and "LR" not in svg  # one line per row that has data
    assert "![reliability](plots/frappe_x1_subset_reliability.svg)" in files.markdown.read_text()
    assert files.html.read_text().count('data-plot="reliability"') == 1


def test_seeds_with_different_bin_counts_are_refused(tmp_path):
    extra = new_keys(1)
    other = {**extra, "reliability": {"test": reliability_of(*predictions(2), bins=5)}}
    with ResultsStore(tmp_path / "r.sqlite") as s:
        add_run(s, "a", "DNN", 1, 0.9, extra)
        add_run(s, "b", "DNN", 2, 0.9, other)
        (row,) = leaderboard(s)["frappe_x1_subset"]
    with pytest.raises(ValueError, match="different bin counts"):
        row.reliability()
