"""``selection_bias``: generated impressions with clicks, conversions AND the counterfactual
conversion of every impression (what it would have been had it been clicked), so that a CVR
model's sample-selection bias can be measured against the truth (the ESMM sheet's experiment)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from ..schema import DatasetConfig
from .registry import DatasetContext, make_config, register_dataset

CVR_BIAS, CTR_BIAS, CTR_SLOPE = -1.0, -2.0, -1.0
VERSION = 1


def simulate_selection_bias(n: int, users: int = 300, items: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` impressions of (user, item) drawn uniformly, with per-user and per-item effects
    ``a_u, b_i ~ N(0, 1)``: true ``pCVR = σ(a_u + b_i − 1)`` and ``pCTR = σ(−2 − (a_u + b_i))``, so
    clicks are likelier exactly where conversion is unlikely and the clicked rows a CVR model usually
    trains on are a biased sample. Returns ``user``, ``item`` (ids from 0), ``click`` y,
    ``conversion`` = y·z (what a log records), ``conversion_if_clicked`` z (the counterfactual, for
    every impression), ``p_ctr``, ``p_cvr`` (float64), from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.0, 1.0, users), rng.normal(0.0, 1.0, items)
    u, i = rng.integers(0, users, n), rng.integers(0, items, n)
    p_cvr = 1.0 / (1.0 + np.exp(-(a[u] + b[i] + CVR_BIAS)))
    p_ctr = 1.0 / (1.0 + np.exp(-(CTR_BIAS + CTR_SLOPE * (a[u] + b[i]))))
    y = (rng.random(n) < p_ctr).astype(np.int8)
    z = (rng.random(n) < p_cvr).astype(np.int8)
    return {"user": u, "item": i, "click": y, "conversion": y * z, "conversion_if_clicked": z,
            "p_ctr": p_ctr, "p_cvr": p_cvr}


def _write(out: Path, rows: int, users: int, items: int, seed: int) -> dict:
    data = pl.DataFrame(simulate_selection_bias(rows, users, items, seed))
    n_train, n_valid = int(round(rows * 0.6)), int(round(rows * 0.2))
    splits = {"train": data[:n_train], "valid": data[n_train:n_train + n_valid], "test": data[n_train + n_valid:]}
    for name, frame in splits.items():
        frame.write_parquet(out / f"{name}.parquet")
        if name != "test":  # the clicked rows alone: what a CVR model without ESMM trains on
            frame.filter(pl.col("click") == 1).write_parquet(out / f"{name}_clicked.parquet")
    return {"splits": {s: {"rows": f.height, "clicks": int(f["click"].sum()), "conversions": int(f["conversion"].sum())}
                       for s, f in splits.items()}}


@register_dataset("selection_bias")
def selection_bias(ctx: DatasetContext, rows: int = 200_000, users: int = 1000, items: int = 1000, seed: int = 2023,
                   clicked_only: bool = False) -> DatasetConfig:
    """Generated click + conversion impressions with known truth (:func:`simulate_selection_bias`):
    features ``user`` and ``item`` (categorical), labels ``click`` and ``conversion`` (= click ×
    counterfactual conversion); the files also hold ``conversion_if_clicked``, ``p_ctr`` and ``p_cvr``
    (not features: the truth, to score a model's pCVR on every impression against).
    Split by row index 60 / 20 / 20 (defaults: 120,000 / 40,000 / 40,000 rows).
    ``clicked_only=True``: the CVR model a user would train without ESMM (the paper's BASE): train
    and valid keep the clicked rows only, label ``conversion``; the test split keeps every impression.
    Source: none (generated; deterministic in its parameters)."""
    if rows < 100 or users < 1 or items < 1:
        raise ValueError(f"selection_bias: rows must be >= 100 and users, items >= 1; got {rows}, {users}, {items}")
    params = {"rows": rows, "users": users, "items": items, "seed": seed}
    folder = ctx.prepare(params, lambda out: _write(out, rows, users, items, seed), {}, version=VERSION)
    files = {s: str(folder / f"{s}.parquet") for s in ("train", "valid", "test")}
    feats = [{"name": "user", "kind": "categorical"}, {"name": "item", "kind": "categorical"}]
    if clicked_only:
        files.update({s: str(folder / f"{s}_clicked.parquet") for s in ("train", "valid")})
        return make_config(name="selection_bias_clicked", format="parquet", files=files, root=str(folder),
                           labels=["conversion"], features=feats)
    return make_config(name="selection_bias", format="parquet", files=files, root=str(folder),
                       labels=["click", "conversion"], features=feats)
