"""Controlled experiment for issue 14.11: ctrlab FinalMLP vs FuxiCTR, one training difference at a time.

Runs ctrlab's FinalMLP (preset frappe_x1, BARS protocol, 1 torch thread) on ``frappe_x1_subset``
with one suspected difference from FuxiCTR's training procedure switched on, and writes one JSON
line per run (seed, test/valid AUC, epochs, and how many training rows were in the regime the
variant changes):

    PYTHONPATH=src .venv/bin/python benchmarks/peers/finalmlp_fidelity.py run --variant logits \\
        --seeds 2021 2022 --out runs/fidelity/logits.jsonl
    # the same seeds in FuxiCTR (its venv), then both side by side under the accuracy bar:
    .peers/fuxictr-venv/bin/python benchmarks/peers/run_fuxictr.py --fuxictr .peers/FuxiCTR \\
        --models FinalMLP --seeds 2021 2022 --json runs/fidelity/fuxictr.json --work-dir runs/fidelity/fuxictr-work
    PYTHONPATH=src .venv/bin/python benchmarks/peers/finalmlp_fidelity.py summarize \\
        runs/fidelity/logits.jsonl --fuxictr runs/fidelity/fuxictr.json

Variants:

* ``logits``: ctrlab as shipped: ``binary_cross_entropy_with_logits(logit, y)``.
* ``prob``: FuxiCTR's loss: ``binary_cross_entropy(sigmoid(logit), y)`` in float32
  (``BaseModel.add_loss`` with ``loss="binary_crossentropy"`` on the model's sigmoid output).
  The two agree except where float32 sigmoid saturates: a negative row whose logit is above
  ~16.6 gets p = 1.0 exactly, and its gradient is 0 (loss clamped at 100) instead of ~1; a
  positive row with p < 1e-12 (logit below ~-27.6) has its gradient damped by p / 1e-12.

The run counts such rows (``saturated_rows``) over all training steps.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train ctrlab runs of one variant")
    run.add_argument("--variant", choices=["logits", "prob"], required=True)
    run.add_argument("--seeds", type=int, nargs="+", required=True)
    run.add_argument("--out", type=Path, required=True, help="JSON lines, one per run (appended)")
    run.add_argument("--model", default="FinalMLP")
    run.add_argument("--dataset", default="frappe_x1_subset")
    summ = sub.add_parser("summarize", help="ctrlab runs (JSON lines) vs FuxiCTR runs under the accuracy bar")
    summ.add_argument("jsonl", type=Path, nargs="+")
    summ.add_argument("--fuxictr", type=Path, nargs="*", default=[],
                      help="run_fuxictr.py JSON files (their FinalMLP runs are pooled)")
    summ.add_argument("--hybrid", type=Path, nargs="*", default=[],
                      help="finalmlp_hybrid.py JSON files: ctrlab's network in FuxiCTR's loop")
    args = ap.parse_args()
    return run_variant(args) if args.command == "run" else summarize(args)


def summarize(args) -> int:
    """n, mean ± std of test AUC per ctrlab variant and for FuxiCTR, and Δ ± SE with the bar's verdict."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_results", Path(__file__).resolve().parents[1] / "zoo_results.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    ours: dict[str, dict[int, dict]] = {}
    for path in args.jsonl:
        for line in path.read_text().splitlines():
            r = json.loads(line)
            ours.setdefault(r["variant"], {})[r["seed"]] = r  # a seed run twice: the last one counts
    def peer_runs(paths: list[Path]) -> dict[int, dict]:
        out: dict[int, dict] = {}
        for path in paths:
            for r in json.loads(path.read_text())["runs"]:
                if r["model"] == "FinalMLP":
                    out[r["seed"]] = r
        return out

    theirs = peer_runs(args.fuxictr)
    b = [r["test"]["AUC"] for r in theirs.values()]
    if b:
        print(f"FuxiCTR: test AUC {zoo.mean_std(b)} (n={len(b)}), valid AUC "
              f"{zoo.mean_std([r['valid']['AUC'] for r in theirs.values()])}")
    hybrid = peer_runs(args.hybrid)
    h = [r["test"]["AUC"] for r in hybrid.values()]
    if h:
        print(f"ctrlab network in FuxiCTR's loop: test AUC {zoo.mean_std(h)} (n={len(h)}), valid AUC "
              f"{zoo.mean_std([r['valid']['AUC'] for r in hybrid.values()])}")
        if b and len(h) > 1 and len(b) > 1:
            c = zoo.compare(h, b)
            print(f"  vs FuxiCTR: {c['text'].replace('ctrlab', 'hybrid', 1)}")
    for variant, runs in ours.items():
        a = [r["test_AUC"] for r in runs.values()]
        sat = sum(r["saturated_rows"] for r in runs.values())
        print(f"ctrlab {variant}: test AUC {zoo.mean_std(a)} (n={len(a)}), valid AUC "
              f"{zoo.mean_std([r['valid_AUC'] for r in runs.values()])}, saturated training rows {sat} of "
              f"{sum(r['rows'] for r in runs.values()):,}")
        if b and len(a) > 1 and len(b) > 1:
            c = zoo.compare(a, b)
            print(f"  vs FuxiCTR: {c['text']}: {zoo.verdict(c)}")
        if h and len(a) > 1 and len(h) > 1:
            c = zoo.compare(a, h)
            print(f"  vs the hybrid: {c['text'].replace('FuxiCTR', 'hybrid', 1)}")
    return 0


def run_variant(args) -> int:
    from ctrlab import api
    from ctrlab.models.base import CTRModel

    torch.set_num_threads(1)
    counter = {"saturated_rows": 0, "rows": 0}

    def task_loss(self, batch, outputs):
        logit = outputs["logit"]
        y = batch["label"][:, 0]
        if self.training:
            with torch.no_grad():
                p = torch.sigmoid(logit.float())
                sat = ((y == 0) & (p == 1.0)) | ((y == 1) & (p < 1e-12))
                counter["saturated_rows"] += int(sat.sum())
                counter["rows"] += int(y.numel())
        if args.variant == "prob":
            return F.binary_cross_entropy(torch.sigmoid(logit), y)
        return F.binary_cross_entropy_with_logits(logit, y)

    CTRModel.task_loss = task_loss
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        counter.update(saturated_rows=0, rows=0)
        with tempfile.TemporaryDirectory() as tmp:
            res = api.train({"dataset": args.dataset, "model": args.model, "output": str(Path(tmp) / "run"),
                             "trainer": {"seed": seed, "num_threads": 1, "progress": False}},
                            log=lambda *a, **k: None)
        row = {"variant": args.variant, "model": args.model, "seed": seed, "epochs": res.metrics["epochs"],
               "valid_AUC": res.metrics["valid"]["AUC"], "test_AUC": res.metrics["test"]["AUC"],
               "test_logloss": res.metrics["test"]["logloss"],
               "valid_AUC_by_epoch": [round(h["valid_AUC"], 6) for h in res.history], **counter}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "valid_AUC_by_epoch"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
