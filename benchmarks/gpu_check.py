"""GPU check: the same training on CUDA and on CPU gives equal metrics; samples/s of each.

    .venv/bin/python benchmarks/gpu_check.py            # on a machine with a CUDA GPU -> docs/performance.md
    .venv/bin/python benchmarks/gpu_check.py --output none

For `synthetic` (200k rows) and the real `frappe_x1_subset`, it trains DeepFM and FinalMLP for
`--epochs` epochs with one seed on `cpu`, on `cuda` (fp32) and on `cuda` with `precision: bf16`, each in a
fresh process, and reports test AUC / logloss, the largest difference to the CPU run, and training
samples/s. The runs use the BARS protocol and presets; only `trainer.device` and `trainer.precision`
differ. CUDA kernels sum in a different order than CPU ones (and embedding backward uses atomics), so
equal means within `--tolerance` (AUC and logloss), not bit for bit.

Without a CUDA device it says so and exits with status 3: the CI suite is CPU-only, and this script
is run by hand on a GPU machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from script_io import markers, publish, run_worker  # noqa: E402

BEGIN, END = markers("gpu-check")
CASES = [("synthetic", ["dataset_params.rows=200000"]), ("frappe_x1_subset", [])]
MODELS = ["DeepFM", "FinalMLP"]
SETTINGS = {"cpu": ["trainer.device=cpu"], "cuda": ["trainer.device=cuda"],
            "cuda-bf16": ["trainer.device=cuda", "trainer.precision=bf16"]}


def worker(args) -> dict:
    from ctrlab import api

    dataset, extra = next(c for c in CASES if c[0] == args.dataset)
    overrides = [*extra, *SETTINGS[args.setting], f"trainer.epochs={args.epochs}", "trainer.progress=false",
                 f"trainer.seed={args.seed}"]
    res = api.train(dataset=dataset, model=args.model, output=str(Path(args.work) / f"{dataset}-{args.model}-{args.setting}"),
                    overrides=overrides, overwrite=True, log=lambda *a: None)
    rows = sum(r["samples_per_s"] * r["train_seconds"] for r in res.history)
    seconds = sum(r["train_seconds"] for r in res.history)
    return {"dataset": dataset, "model": args.model, "setting": args.setting, "test_AUC": res.metrics["test"]["AUC"],
            "test_logloss": res.metrics["test"]["logloss"], "samples_per_s": rows / seconds, "epochs": res.metrics["epochs"]}


def render(results: list[dict], args, device: str) -> str:
    lines = [BEGIN, "## GPU check (`benchmarks/gpu_check.py`, issue 7)", "",
             f"`python benchmarks/gpu_check.py --epochs {args.epochs}` ({time.strftime('%Y-%m-%d')}, {device}). "
             f"Same seed and protocol; only the device and precision differ. Tolerance {args.tolerance} on AUC and "
             "logloss against the CPU run.", "",
             "| dataset | model | setting | test AUC | test logloss | Δ vs CPU (AUC / logloss) | within | train samples/s |",
             "|---|---|---|---|---|---|---|---|"]
    cpu = {(r["dataset"], r["model"]): r for r in results if r["setting"] == "cpu"}
    for r in results:
        base = cpu[(r["dataset"], r["model"])]
        da, dl = r["test_AUC"] - base["test_AUC"], r["test_logloss"] - base["test_logloss"]
        ok = abs(da) <= args.tolerance and abs(dl) <= args.tolerance
        lines.append(f"| {r['dataset']} | {r['model']} | {r['setting']} | {r['test_AUC']:.6f} | "
                     f"{r['test_logloss']:.6f} | {da:+.6f} / {dl:+.6f} | {'yes' if ok else '**no**'} | "
                     f"{r['samples_per_s']:,.0f} |")
    lines += ["", END]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--tolerance", type=float, default=2e-3)
    ap.add_argument("--work", default=str(REPO / "runs" / "gpu_check"))
    ap.add_argument("--output", default=str(REPO / "docs" / "performance.md"))
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("[gpu-check] no CUDA device here: nothing to check (run this on a GPU machine)")
        return 3
    device = torch.cuda.get_device_name(0)
    results = []
    for dataset, _ in CASES:
        for model in MODELS:
            for setting in SETTINGS:
                cmd = [sys.executable, __file__, "--worker", "--dataset", dataset, "--model", model,
                       "--setting", setting, "--epochs", str(args.epochs), "--seed", str(args.seed),
                       "--work", args.work]
                res = run_worker(cmd)
                if res is None:
                    return 1
                print(f"[gpu-check] {res}", flush=True)
                results.append(res)
    section = render(results, args, device)
    publish(section, args.output, args.json, results)
    failed = "**no**" in section
    return 1 if failed else 0




if __name__ == "__main__":
    sys.exit(main())
