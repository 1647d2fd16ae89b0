"""Multi-task models measured (issue 18): ESMM against the CVR model trained on clicks only (BASE),
the shared-bottom model and MMoE, on a simulation with known truth and on the tiny real
click + conversion samples.

    python benchmarks/multitask.py                 # -> docs/results.md (multitask section), docs/multitask.json
    python benchmarks/multitask.py --quick --output none --json /tmp/mt.json   # a smoke run

Every run is ``ctrlab train`` (``api.train``) with ctrlab's defaults (``preset: auto``), seeds 2021,
2022, 2023, and is scored on its dataset's test split:

* ``selection_bias`` (generated, :mod:`ctrlab.data.datasets.selection_bias`: clicks likelier where
  conversion is unlikely; the files hold each impression's counterfactual conversion z and true pCVR).
  ESMM, SharedBottom and MMoE train on all impressions (labels click, click·z), early-stopped on their main
  task (the CTR AUC) as by default, and ESMM once more on its CTCVR AUC; BASE is ctrlab's DNN
  trained on the clicked rows only (``dataset_params.clicked_only``), label z. Each model's pCVR is
  scored on EVERY test impression against z (the quantity a CVR model is used for: ranking and
  bidding over all impressions): AUC, the mean pCVR over the mean z (calibration) and the expected
  calibration error (10 equal-width bins). pCVR: ESMM's CVR tower; BASE's output; for the shared
  bottom and MMoE, whose conversion tower predicts click·z, ``pCTCVR / pCTR`` (clipped to [0, 1]).
  Also the CVR AUC on the clicked test rows (what a log can measure) and the CTCVR AUC.
* ``ali_ccp_sample``, ``aliexpress_sample``: ESMM, SharedBottom, MMoE; the test split's CTR AUC,
  CTCVR AUC and (where defined) CVR AUC on clicked rows, with the counts that bound what they mean.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, mean_std_se, publish  # noqa: E402

SEEDS = [2021, 2022, 2023]
SIM = "selection_bias"
REAL = ["ali_ccp_sample", "aliexpress_sample"]
MODELS = ["ESMM", "SharedBottom", "MMoE"]
BEGIN, END = markers("multitask")


def task_scores(run_dir: Path, test_file: Path) -> dict[str, np.ndarray]:
    """Every task's test probabilities of a finished run (``ctrlab predict`` on the raw test file)."""
    import polars as pl

    from ctrlab import api

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.csv"
        api.predict(run_dir, test_file, out, log=lambda *a: None)
        frame = pl.read_csv(out)
    return {c: frame[c].to_numpy() for c in frame.columns}


MONITORED = {"ESMM, early stop on CTCVR AUC": ("ESMM", "ctcvr_AUC")}
"""Extra rows on the simulation: a model early-stopped on another task's validation metric than its main
task's (ESMM's CVR tower learns only through the CTCVR term; the default monitor is the CTR AUC)."""


def run_one(dataset: str, model: str, seed: int, runs: Path, params: dict, quick: bool, label: str | None = None,
            monitor: str | None = None) -> dict:
    from sklearn.metrics import roc_auc_score

    from ctrlab import api
    from ctrlab.train.metrics import calibration_ratio, expected_calibration_error

    overrides = ["trainer.progress=false", f"trainer.seed={seed}"] + (["trainer.epochs=2"] if quick else [])
    overrides += [f"dataset_params.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in params.items()]
    overrides += [f"trainer.monitor={monitor}"] if monitor else []
    label = label or ("BASE" if params.get("clicked_only") else model)
    run_dir = runs / dataset / label.replace(" ", "_").replace(",", "") / f"s{seed}"
    result = api.train(dataset=dataset, model=model, output=str(run_dir), overrides=overrides, overwrite=True,
                       log=lambda *a: None)
    dcfg = api.dataset_config(api.load_run_config(None, dataset=dataset, dataset_params=params))
    test_file = Path(dcfg.resolve("test"))
    scores = task_scores(run_dir, test_file)
    row = {"dataset": dataset, "model": label, "seed": seed, "epochs": len(result.history),
           "test": {k: v for k, v in result.metrics["test"].items() if isinstance(v, float)}}
    if dataset != SIM:
        return row
    import polars as pl

    truth = pl.read_parquet(test_file)
    z, y = truth["conversion_if_clicked"].to_numpy(), truth["click"].to_numpy()
    if label == "BASE":
        p_cvr, p_ctcvr = scores["probability"], None
    elif model == "ESMM":  # (also the monitored variants)
        p_cvr, p_ctcvr = scores["probability_cvr"], scores["probability_ctcvr"]
    else:  # the conversion tower predicts click·z: pCVR = pCTCVR / pCTR
        p_ctcvr = scores["probability_conversion"]
        p_cvr = np.clip(p_ctcvr / np.maximum(scores["probability_click"], 1e-12), 0.0, 1.0)
    row["sim"] = {"cvr_auc_all": float(roc_auc_score(z, p_cvr)),
                  "cvr_auc_clicked": float(roc_auc_score(z[y > 0], p_cvr[y > 0])),
                  "ctcvr_auc": None if p_ctcvr is None else float(roc_auc_score(y * z, p_ctcvr)),
                  "calibration": calibration_ratio(z, p_cvr), "ece": expected_calibration_error(z, p_cvr),
                  "bayes_cvr_auc": float(roc_auc_score(z, truth["p_cvr"].to_numpy()))}
    return row


def _fmt(values: list[float], digits: int = 4) -> str:
    if not values:
        return "–"
    if any(v != v for v in values):  # NaN: undefined on this split
        return "undefined"
    m, s, _ = mean_std_se(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def render(rows: list[dict], counts: dict) -> str:
    lines = [BEGIN, "## Multi-task: ESMM, BASE, shared bottom, MMoE (`python benchmarks/multitask.py`)", "",
             "Defaults (`preset: auto`), seeds " + ", ".join(map(str, SEEDS)) + "; mean ± sample std over the seeds "
             "(module docstring of `benchmarks/multitask.py`: the datasets, the models, how each pCVR is read).", ""]
    sim = [r for r in rows if r["dataset"] == SIM]
    if sim:
        bayes = sim[0]["sim"]["bayes_cvr_auc"]
        lines += ["### Selection bias with known truth (`selection_bias`)", "",
                  f"{counts.get(SIM, '')} pCVR scored on every test impression against its counterfactual "
                  f"conversion (Bayes AUC with the true pCVR: {bayes:.4f}); calibration = mean pCVR / conversion "
                  "rate over all impressions (1 = calibrated).", "",
                  "| model | n | CVR AUC, all impressions | CVR AUC, clicked rows | CTCVR AUC | calibration | ECE | epochs |",
                  "|---|---|---|---|---|---|---|---|"]
        for model in ["ESMM", *MONITORED, "BASE", "SharedBottom", "MMoE"]:
            rs = [r for r in sim if r["model"] == model]
            if not rs:
                continue
            get = lambda k: [r["sim"][k] for r in rs if r["sim"][k] is not None]  # noqa: E731
            lines.append(f"| {model} | {len(rs)} | {_fmt(get('cvr_auc_all'))} | {_fmt(get('cvr_auc_clicked'))} | "
                         f"{_fmt(get('ctcvr_auc'))} | {_fmt(get('calibration'), 3)} | {_fmt(get('ece'), 4)} | "
                         f"{np.mean([r['epochs'] for r in rs]):.1f} |")
        lines.append("")
        for a, b in [("ESMM", "BASE"), ("ESMM, early stop on CTCVR AUC", "ESMM"),
                     ("SharedBottom", "ESMM, early stop on CTCVR AUC"), ("MMoE", "SharedBottom")]:
            xa = [r["sim"]["cvr_auc_all"] for r in sim if r["model"] == a]
            xb = [r["sim"]["cvr_auc_all"] for r in sim if r["model"] == b]
            if len(xa) > 1 and len(xb) > 1:
                (ma, se_a), (mb, se_b) = mean_std_se(xa)[::2], mean_std_se(xb)[::2]
                d, se = ma - mb, (se_a ** 2 + se_b ** 2) ** 0.5
                lines.append(f"* {a} − {b}, CVR AUC over all impressions: {d:+.4f} ± {se:.4f} (Welch SE; "
                             f"{'more than' if abs(d) > 2 * se else 'within'} 2 SE).")
        lines += ["", "Reading: training on every impression is what removes the selection bias. BASE, trained on "
                  "the clicked rows (where conversion is unlikely by construction), ranks all impressions worst "
                  "and underestimates the conversion rate most. ESMM's CVR tower learns only through the product "
                  "pCTR·pCVR: early-stopped on the CTR AUC (the default monitor: its main task) it keeps the CTR "
                  "tower's best epoch, which is not the CVR tower's (a lower CVR AUC with a wide seed spread); "
                  "early-stopped on its CTCVR AUC (`trainer.monitor: ctcvr_AUC`, the conversion-side metric a log "
                  "can measure) it ranks within about 0.001 of the shared bottom and MMoE, whose second tower fits "
                  "click·z directly (their pCVR read as pCTCVR / pCTR), and underestimates the rate more. The "
                  "simulation tests the paper's selection-bias claim only (its other claim, conversions too sparse "
                  "for a CVR model alone, needs real logged conversions at scale, which are not here).", ""]
    for dataset in REAL:
        rs = [r for r in rows if r["dataset"] == dataset]
        if not rs:
            continue
        lines += [f"### `{dataset}` (real, tiny)", "", counts.get(dataset, ""), "",
                  "| model | n | CTR AUC | CTCVR AUC | CVR AUC (clicked rows) | epochs |", "|---|---|---|---|---|---|"]
        for model in MODELS:
            mr = [r for r in rs if r["model"] == model]
            if not mr:
                continue
            conv = "cvr" if model == "ESMM" else None
            ctcvr_key = "ctcvr_AUC" if model == "ESMM" else next(
                (k for k in mr[0]["test"] if k.endswith("_AUC") and not k.startswith(("click", "ctr")) and k != "AUC"), None)
            lines.append(f"| {model} | {len(mr)} | {_fmt([r['test']['AUC'] for r in mr])} | "
                         f"{_fmt([r['test'][ctcvr_key] for r in mr]) if ctcvr_key else '–'} | "
                         f"{_fmt([r['test'][conv + '_AUC'] for r in mr]) if conv else '–'} | "
                         f"{np.mean([r['epochs'] for r in mr]):.1f} |")
        lines.append("")
    lines += ["What the real samples allow: nothing about which model is better. With a handful of clicks and one or "
              "two conversions per split, an AUC moves by tenths when one row is ranked differently (the "
              "CVR AUC is undefined where the clicked test rows hold one class). They show that the multi-task "
              "pipeline runs on real Ali-CCP / AliExpress rows end to end (train, per-task metrics, export, "
              "serving); the comparison between the models rests on the simulation.", END]
    return "\n".join(lines)


def split_counts(dataset: str, params: dict | None = None) -> str:
    import polars as pl

    from ctrlab import api

    dcfg = api.dataset_config(api.load_run_config(None, dataset=dataset, dataset_params=params or {}))
    parts = []
    for split in ("train", "valid", "test"):
        path = Path(dcfg.resolve(split))
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema_length=0)
        labels = [frame[c].cast(pl.Float64) for c in dcfg.labels]
        parts.append(f"{split} {frame.height:,} rows, {int(labels[0].sum()):,} clicks, {int(labels[1].sum()):,} conversions")
    return "Splits: " + "; ".join(parts) + "."


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", nargs="*", default=[SIM, *REAL])
    ap.add_argument("--seeds", nargs="*", type=int, default=SEEDS)
    ap.add_argument("--quick", action="store_true", help="2 epochs, one seed, a 20k-row simulation: checks the script")
    ap.add_argument("--runs", default=str(REPO / "runs" / "multitask"))
    ap.add_argument("--output", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--json", default=str(REPO / "docs" / "multitask.json"))
    ap.add_argument("--render-only", action="store_true", help="publish the results already in --json, train nothing")
    args = ap.parse_args(argv)
    if args.render_only:
        saved = json.loads(Path(args.json).read_text())
        publish(render(saved["rows"], saved["counts"]), args.output, None, saved)
        return 0
    seeds = args.seeds[:1] if args.quick else args.seeds
    sim_params = {"rows": 20_000} if args.quick else {}
    path = Path(args.json)
    saved = json.loads(path.read_text()) if path.exists() and not args.quick else {"rows": [], "counts": {}}
    rows, counts = saved["rows"], saved["counts"]
    have = {(r["dataset"], r["model"], r["seed"]) for r in rows}
    for dataset in args.datasets:
        counts[dataset] = split_counts(dataset, sim_params if dataset == SIM else None)
        jobs = [(m, m, {}, None) for m in MODELS]
        if dataset == SIM:
            jobs = [(m, m, dict(sim_params), None) for m in MODELS] + [
                (label, model, dict(sim_params), monitor) for label, (model, monitor) in MONITORED.items()] + [
                ("BASE", "DNN", {**sim_params, "clicked_only": True}, None)]
        for label, model, params, monitor in jobs:
            for seed in seeds:
                if (dataset, label, seed) in have:  # a second call adds what the JSON lacks
                    continue
                rows.append(run_one(dataset, model, seed, Path(args.runs), params, args.quick, label, monitor))
                path.write_text(json.dumps({"rows": rows, "counts": counts}, indent=1))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    publish(render(rows, counts), args.output, args.json, {"rows": rows, "counts": counts})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
