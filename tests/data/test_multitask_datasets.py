"""Click + conversion datasets: the generated selection-bias set (its truth columns, the clicked-only
variant) and the tiny real Ali-CCP and AliExpress samples (labels, rows, split rule)."""
from __future__ import annotations

import numpy as np
import polars as pl

from ctrlab.data.datasets import get_dataset
from ctrlab.data.datasets.selection_bias import simulate_selection_bias


def test_selection_bias_truth_and_the_clicked_only_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("CTRLAB_CACHE_DIR", str(tmp_path))
    cfg = get_dataset("selection_bias", rows=2000, users=50, items=40, seed=3)
    assert cfg.labels == ["click", "conversion"] and [f.name for f in cfg.features] == ["user", "item"]
    frames = {s: pl.read_parquet(cfg.resolve(s)) for s in ("train", "valid", "test")}
    assert [f.height for f in frames.values()] == [1200, 400, 400]
    every = pl.concat(list(frames.values()))
    sim = simulate_selection_bias(2000, 50, 40, seed=3)
    assert np.array_equal(every["conversion_if_clicked"].to_numpy(), sim["conversion_if_clicked"])
    assert (every["conversion"] == every["click"] * every["conversion_if_clicked"]).all()
    # the bias the set exists for: clicked rows convert less often than impressions would
    assert every.filter(pl.col("click") == 1)["conversion_if_clicked"].mean() < every["conversion_if_clicked"].mean() - 0.05
    base = get_dataset("selection_bias", rows=2000, users=50, items=40, seed=3, clicked_only=True)
    assert base.labels == ["conversion"]
    for split in ("train", "valid"):
        clicked = pl.read_parquet(base.resolve(split))
        assert (clicked["click"] == 1).all() and clicked.height == int(frames[split]["click"].sum())
    assert pl.read_parquet(base.resolve("test")).height == 400  # scored on every impression


def test_real_click_and_conversion_samples(data_dir):
    ali = get_dataset("ali_ccp_sample")
    assert ali.labels == ["click", "purchase"] and len(ali.features) == 23 + 8
    train = pl.read_csv(ali.resolve("train"))
    assert train.height == 100 and int(train["purchase"].sum()) == 1
    ae = get_dataset("aliexpress_sample")
    assert ae.labels == ["click", "conversion"] and "search_id" not in [f.name for f in ae.features]
    sizes = {s: pl.read_csv(ae.resolve(s)).height for s in ("train", "valid", "test")}
    assert sizes == {"train": 80, "valid": 20, "test": 100}
