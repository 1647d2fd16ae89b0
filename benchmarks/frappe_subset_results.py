"""Regenerate the frappe_x1_subset tables of docs/results.md.

Trains DNN, DeepFM, DCNv2 and FinalMLP with the BARS Frappe_x1 tuned hyperparameters
(ctrlab's shipped presets: embedding_dim 10, batch 4096, Adam lr 1e-3, embedding L2 0.05) for
3 seeds each, under two protocols:

* ``bars``: the BARS/FuxiCTR protocol exactly (early stop on validation AUC, patience 2,
  LR x0.1 on plateau, best weights restored);
* ``robust``: the same plus ctrlab's documented non-BARS options for small data
  (``trainer.bn_recalibration_batches`` and ``trainer.min_epochs``).

It writes mean ± std of test AUC and logloss, epochs, seconds per epoch and parameters.
With ``--peer-json`` (written by ``benchmarks/peers/run_fuxictr_frappe_subset.py``) the
FuxiCTR numbers on the same split and hyperparameters are shown side by side.

    make results   # = python benchmarks/frappe_subset_results.py --output docs/results.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

MODELS = ["DNN", "DeepFM", "DCNv2", "FinalMLP"]
SEEDS = [2021, 2022, 2023]
PROTOCOLS = {
    "bars": [],
    "robust": ["trainer.bn_recalibration_batches=64", "trainer.min_epochs=10"],
}
# Published BARS Frappe_x1 test AUC / logloss (reczoo/BARS leaderboard; full 202,027-row train split).
BARS = {
    "DNN": (0.9833, 0.1622),
    "DeepFM": (0.9842, 0.1482),
    "DCNv2": (0.9845, 0.1491),
    "FinalMLP": (0.9861, 0.1484),
}


def run_one(job: tuple[str, str, int, str]) -> dict:
    """One training run in a worker process (1 torch thread: runs repeat bit for bit)."""
    protocol, model, seed, runs = job
    from ctrlab.api import train

    res = train(
        dataset="frappe_x1_subset",
        model=model,
        output=str(Path(runs) / protocol / f"{model}-s{seed}"),
        overrides=[f"trainer.seed={seed}", "trainer.progress=false", "trainer.num_threads=1", *PROTOCOLS[protocol]],
        log=lambda *a: None,
    )
    m = res.metrics
    print(
        f"{protocol:6s} {model:9s} seed {seed}: test AUC {m['test']['AUC']:.6f} logloss {m['test']['logloss']:.6f} "
        f"epochs {m['epochs']} ({m['seconds_per_epoch']:.1f} s/epoch)",
        flush=True,
    )
    return {"protocol": protocol, "model": model, "seed": seed, **m}


def mean_std(xs: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def load_peer(path: str | None) -> dict[str, list[dict]]:
    """FuxiCTR runs by model from the peer script's JSON (list of runs with model/test metrics)."""
    if not path or not Path(path).exists():
        return {}
    data = json.loads(Path(path).read_text())
    runs = data["runs"] if isinstance(data, dict) and "runs" in data else data
    out: dict[str, list[dict]] = {}
    for r in runs:
        out.setdefault(r["model"], []).append(r)
    return out


def table(results: list[dict], protocol: str, peer: dict[str, list[dict]]) -> str:
    head = "| model | test AUC | test logloss | epochs | s/epoch | parameters |"
    sep = "|---|---|---|---|---|---|"
    if peer:
        head += " FuxiCTR test AUC (same split) | Δ AUC |"
        sep += "---|---|"
    head += " BARS AUC / logloss (full train) |"
    sep += "---|"
    lines = [head, sep]
    for model in MODELS:
        rs = [r for r in results if r["protocol"] == protocol and r["model"] == model]
        if not rs:
            continue
        aucs = [r["test"]["AUC"] for r in rs]
        row = (
            f"| {model} | {mean_std(aucs)} | {mean_std([r['test']['logloss'] for r in rs])} | "
            f"{mean_std([r['epochs'] for r in rs], 1)} | {statistics.mean(r['seconds_per_epoch'] for r in rs):.2f} | "
            f"{rs[0]['parameters']:,} |"
        )
        if peer:
            p = [r["test_AUC"] if "test_AUC" in r else r["test"]["AUC"] for r in peer.get(model, [])]
            row += (f" {mean_std(p)} (n={len(p)}) | {statistics.mean(aucs) - statistics.mean(p):+.4f} |" if p else " – | – |")
        row += f" {BARS[model][0]:.4f} / {BARS[model][1]:.4f} |"
        lines.append(row)
    return "\n".join(lines)


def observations(results: list[dict], peer: dict[str, list[dict]]) -> str:
    """ctrlab vs FuxiCTR per model, judged against the seed spread (computed, not hand-written)."""
    lines = ["### ctrlab vs FuxiCTR on the same split (BARS protocol)", "",
             "Δ = ctrlab mean − FuxiCTR mean; seed std = the larger of the two sample stds.", ""]
    for model in MODELS:
        ours = [r["test"]["AUC"] for r in results if r["protocol"] == "bars" and r["model"] == model]
        theirs = [r["test"]["AUC"] for r in peer.get(model, [])]
        if len(ours) < 2 or len(theirs) < 2:
            continue
        diff = statistics.mean(ours) - statistics.mean(theirs)
        spread = max(statistics.stdev(ours), statistics.stdev(theirs))
        worst = min(theirs)
        verdict = "within one seed std" if abs(diff) <= spread else (
            "ctrlab higher" if diff > 0 else "ctrlab lower") + f" by {abs(diff) / spread:.1f} seed std"
        # flag a run that ended far below its siblings (e.g. an early stop after a few epochs)
        note = f"; FuxiCTR has an outlier seed at {worst:.4f}" if worst < statistics.median(theirs) - 0.01 else ""
        lines.append(f"* {model}: Δ mean AUC {diff:+.4f}, {verdict}{note}.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="docs/results.md")
    ap.add_argument("--runs", default="runs/results/frappe_x1_subset", help="where run folders go")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs (1 thread each)")
    ap.add_argument("--peer-json", default="benchmarks/peers/results/fuxictr_frappe_x1_subset.json",
                    help="FuxiCTR results on the same split (from benchmarks/peers/run_fuxictr_frappe_subset.py)")
    ap.add_argument("--from-json", help="re-render from a previous run's JSON (docs/results.json) without training")
    args = ap.parse_args()

    import torch

    import ctrlab

    if args.from_json:  # re-render the tables from earlier runs (e.g. after adding peer results)
        saved = json.loads(Path(args.from_json).read_text())
        results, minutes = saved["runs"], saved["minutes"]
    else:
        jobs = [(p, m, s, args.runs) for p in args.protocols for m in args.models for s in args.seeds]
        t0 = time.time()
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(run_one, jobs))
        minutes = (time.time() - t0) / 60
    peer = load_peer(args.peer_json)
    peer_note = (
        f"* FuxiCTR column: `{args.peer_json}`, produced by `benchmarks/peers/run_fuxictr_frappe_subset.py` "
        "(FuxiCTR's own training loop, same split files, same hyperparameters and protocol)."
        if peer
        else "* FuxiCTR column: not shown (no peer results file; see `benchmarks/peers/`)."
    )
    robust = " ".join(f"`{o}`" for o in PROTOCOLS["robust"])
    parts = []
    if "bars" in args.protocols:
        parts.append(
            "### BARS protocol (default)\n\nEarly stop on validation AUC with patience 2, LR ×0.1 on each plateau "
            "epoch, best weights restored, then test.\n\n" + table(results, "bars", peer)
        )
    if "robust" in args.protocols:
        parts.append(
            "### Robust protocol (documented ctrlab options, not BARS)\n\n"
            f"The same plus {robust}: BatchNorm statistics re-estimated exactly after every epoch (with only 12 "
            "batches per epoch the running averages lag the weights, so validation sees miscalibrated "
            "activations), and no early stop before epoch 10 (patience 2 alone can end a run after 5 epochs on "
            "this small split).\n\n" + table(results, "robust", {})
        )
    if peer and "bars" in args.protocols:
        parts.append(observations(results, peer))
    sections = "\n\n".join(parts)
    text = f"""# Results

## frappe_x1_subset (real data)

Regenerate with one command: `make results` (= `python benchmarks/frappe_subset_results.py --output docs/results.md`).

* Data: `frappe_x1_subset` — train/valid = a seeded (2023) 80/20 split of the published BARS Frappe_x1
  **valid** file (46,178 / 11,544 rows), test = the published Frappe_x1 **test** file (28,860 rows). The BARS
  train file (202,027 rows) is not available here, so the models see 23% of the BARS training data.
* Hyperparameters: the BARS Frappe_x1 tuned values (`src/ctrlab/configs/presets/frappe_x1/*.yaml`),
  embedding_dim 10, batch 4096, Adam lr 1e-3, embedding L2 0.05.
* Seeds {", ".join(map(str, args.seeds))}: mean ± sample std over seeds. Each run uses 1 torch thread on CPU.
* s/epoch is wall time per epoch (training + validation) with {args.jobs} runs sharing the machine (and whatever
  else ran on it): a rough cost indication, not a speed benchmark (those live in `benchmarks/`).
* Machine: {platform.machine()} CPU, torch {torch.__version__}, ctrlab {ctrlab.__version__}, {args.jobs} runs in
  parallel; {minutes:.1f} min for everything below.
{peer_note}
* The BARS column is the published leaderboard number on the full Frappe_x1 train split: **not comparable**
  (4.4× more training rows); it is shown for orientation only.

{sections}

Per-run numbers: `docs/results.json`.
"""
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    if not args.from_json:
        Path(args.output).with_suffix(".json").write_text(json.dumps({"minutes": minutes, "runs": results}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
