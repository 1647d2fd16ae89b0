"""Performance side by side: ctrlab vs FuxiCTR vs DeepCTR-Torch on identical data and hyperparameters.

    make bench-peers     # = python benchmarks/peers/bench_peers.py --output docs/performance.md

Every measurement runs in a fresh worker process (``workers/<library>_worker.py TASK``: ctrlab's in
this venv, the peers' in the peers venv made by ``setup_fuxictr.sh``), and the libraries take
turns (A B C, then C B A, ...) so that machine drift cancels; each figure is the median over
``--repeats``. Hyperparameters are shared: ``perf_config.json`` (embedding 10, batch 4096, Adam
1e-3, the same hidden layers, no dropout / BN / regularisation).

Tasks:

* ``preprocess``: a raw Criteo-format TSV (13 numeric + 26 categorical, no header) into each
  library's model-ready data: rows/s and peak RSS of the worker. Run on the synthetic TSV (model
  column ``–``) and on the real Criteo sample ``criteo_head10k`` (7,200 raw Kaggle lines; at that
  size fixed start-up costs dominate, so it shows format handling more than throughput).
* ``train``: steady-state training samples/s of DeepFM, DCNv2, FinalMLP, each library with its
  own data loader and training step.
* ``infer``: batch-4096 prediction rows/s and single-row latency (p50, p99).
* ``auc``: test AUC on ``frappe_x1_subset`` after ``--auc-epochs`` epochs with the same
  hyperparameters (speed is never bought with accuracy).
* ``roofline`` (ctrlab's venv only): this machine's torch matmul GFLOP/s on the MLP's shapes
  (fp32 and bf16) and what fraction of it ctrlab's DeepFM step reaches.

Data: the ``synthetic`` Criteo-shaped generator (``--rows``, default 1M, with fields of up to 1M
distinct ids) as Parquet for ``train``/``infer`` and as a raw TSV for ``preprocess``, plus the real
``criteo_head10k`` sample for ``preprocess`` when ``CTRLAB_DATA_DIR`` has it. ``--smoke``
runs everything on a few hundred rows with batch 64 (the CI test; peers only if their venv exists).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKERS = {"ctrlab": HERE / "workers" / "ctrlab_worker.py", "fuxictr": HERE / "workers" / "fuxictr_worker.py",
           "deepctr": HERE / "workers" / "deepctr_worker.py"}
# ctrlab's speed options as extra columns: (worker, extra config). The plain `ctrlab` column is the
# default configuration, the one the targets are judged on; variants show what each lever adds.
VARIANTS = {"ctrlab-bf16": ("ctrlab", {"precision": "bf16"}),
            "ctrlab-sparse": ("ctrlab", {"sparse_embeddings": True}),
            "ctrlab-fast": ("ctrlab", {"precision": "bf16", "sparse_embeddings": True}),
            # not in the default columns: measured slower than eager here (docs/performance.md)
            "ctrlab-compile": ("ctrlab", {"compile": True})}
LABELS = {"ctrlab": "ctrlab", "ctrlab-bf16": "ctrlab bf16", "ctrlab-sparse": "ctrlab sparse",
          "ctrlab-fast": "ctrlab bf16+sparse", "ctrlab-compile": "ctrlab torch.compile", "fuxictr": "FuxiCTR 2.3.9", "deepctr": "DeepCTR-Torch 0.3.0"}
MODELS = ["DeepFM", "DCNv2", "FinalMLP"]
DEFAULT_TASKS = ["preprocess", "train", "infer", "auc", "roofline"]
DEFAULT_LIBRARIES = ["ctrlab", "ctrlab-bf16", "ctrlab-sparse", "ctrlab-fast", "fuxictr", "deepctr"]


def run_worker(library: str, python: str, task: str, config: dict, timeout: float) -> dict:
    """One task in a fresh process; its ``RESULT`` line, or ``{"error": ...}``."""
    worker, extra = VARIANTS.get(library, (library, {}))
    cmd = [python, str(WORKERS[worker]), task, "--config", json.dumps({**config, **extra})]
    env = {**os.environ, "OMP_WAIT_POLICY": "passive", "PYTHONHASHSEED": "0"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {out.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1][len("RESULT "):])


def make_data(rows: int, work: Path, log) -> tuple[Path, Path]:
    """The synthetic train split as Parquet, and the same rows as a raw headerless Criteo TSV."""
    import polars as pl

    from ctrlab.data.datasets import get_dataset

    cfg = get_dataset("synthetic", rows=int(rows / 0.8) + 1)  # train split = round(0.8 n) >= rows
    parquet = Path(cfg.files["train"])
    tsv = work / f"criteo_{rows}.tsv"
    if not tsv.exists():
        t0 = time.perf_counter()
        df = pl.scan_parquet(parquet).head(rows)
        cols = ["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]]
        # Criteo's raw values: integer counts (empty when missing) and hex-string categories
        df = df.select([pl.col("label").cast(pl.Int8)]
                       + [pl.col(f"I{i}").cast(pl.Int64) for i in range(1, 14)]
                       + [pl.format("{}", pl.col(f"C{i}")).alias(f"C{i}") for i in range(1, 27)]).select(cols)
        df.collect().write_csv(tsv, separator="\t", include_header=False, null_value="")
        log(f"[bench-peers] wrote {tsv} ({rows:,} rows) in {time.perf_counter() - t0:.1f} s")
    return parquet, tsv


REAL_CRITEO = "criteo_head10k"
"""Model-column tag of the preprocess task on the real Criteo sample (ctrlab's ``criteo_head10k``)."""


def criteo_head(log) -> Path | None:
    """The train file of ``criteo_head10k`` (7,200 raw Kaggle Criteo lines, headerless TSV, the
    harness's format), or None with a note when the dataset is not in ``CTRLAB_DATA_DIR``."""
    from ctrlab.data.datasets import get_dataset
    from ctrlab.data.datasets.registry import DatasetNotFoundError

    try:
        return Path(get_dataset(REAL_CRITEO).files["train"])
    except DatasetNotFoundError as exc:
        log(f"[bench-peers] skipping preprocess on the real Criteo sample: {str(exc).splitlines()[0]}")
        return None


def roofline(threads: int) -> dict:
    """torch matmul GFLOP/s for the MLP's shapes, fp32 and bf16 (autocast-style inputs)."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(4096, 400, dtype=dtype)
        b = torch.randn(400, 400, dtype=dtype)
        for _ in range(5):
            a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            a @ b
            n += 1
        out[str(dtype).split(".")[-1]] = 2 * 4096 * 400 * 400 * n / (time.perf_counter() - t0) / 1e9
    return out


def deepfm_flops_per_sample(perf: dict, n_fields: int = 39) -> float:
    """Matmul FLOPs of one DeepFM training sample (forward + backward ~ 3x forward) for its MLP."""
    dims = [n_fields * perf["embedding_dim"], *perf["models"]["DeepFM"]["hidden_units"], 1]
    forward = sum(2 * a * b for a, b in zip(dims, dims[1:]))
    return 3 * forward


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def write_report(path: Path, report: str) -> None:
    """Write the report, keeping the sections other benchmark scripts wrote into the file
    (serving, GPU check: ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->``)."""
    sys.path.insert(0, str(HERE.parent))
    from script_io import sections

    kept = [block for name, block in sections(path.read_text() if path.exists() else "").items()
            if name not in sections(report)]
    if kept:
        report = report.rstrip("\n") + "\n\n" + "\n\n".join(kept) + "\n"
    path.write_text(report)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers-python", default=str(REPO / ".peers" / "fuxictr-venv" / "bin" / "python"),
                    help="python of the peers venv (benchmarks/peers/setup_fuxictr.sh)")
    ap.add_argument("--fuxictr", default=str(REPO / ".peers" / "FuxiCTR"), help="FuxiCTR checkout (model_zoo/)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic training rows")
    ap.add_argument("--tasks", nargs="+", default=DEFAULT_TASKS, choices=DEFAULT_TASKS)
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument("--libraries", nargs="+", default=DEFAULT_LIBRARIES,
                    choices=[*WORKERS, *VARIANTS])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--timed-batches", type=int, default=30)
    ap.add_argument("--auc-epochs", type=int, default=3)
    ap.add_argument("--work-dir", default=None, help="data and scratch (default: a temp folder)")
    ap.add_argument("--output", default=None, help="Markdown report (e.g. docs/performance.md)")
    ap.add_argument("--json", default=None, help="raw results JSON")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per worker")
    ap.add_argument("--smoke", action="store_true", help="a few hundred rows, batch 64: proves the harness works")
    ap.add_argument("--runs-note", default=None,
                    help="with --from-json: which run measured which task (printed under the command)")
    ap.add_argument("--no-notes", action="store_true",
                    help="leave performance_notes.md (the hand-written analysis) out of the report")
    ap.add_argument("--from-json", nargs="+", help="re-render the report from earlier runs' --json files, their "
                    "results pooled (measures nothing)")
    args = ap.parse_args()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    if args.from_json:
        saved = [json.loads(Path(f).read_text()) for f in args.from_json]
        for k, v in saved[0].get("args", {}).items():
            setattr(args, k, v)
        results = [r for s in saved for r in s["results"]]
        order = [*DEFAULT_LIBRARIES, *WORKERS, *VARIANTS]
        libraries = sorted(dict.fromkeys(r["library"] for r in results), key=order.index)
        perf = json.loads((HERE / "perf_config.json").read_text())
        roof = next((s["roofline"] for s in saved if s.get("roofline")), None)
        args.runs_note = args.runs_note or saved[0].get("runs")  # how pooled results were measured
        report = render(results, libraries, args, perf, roof, saved[0]["machine"])
        print(report)
        if args.output:
            write_report(Path(args.output), report)
        if args.json:  # the pooled results, re-renderable on their own
            Path(args.json).write_text(json.dumps({**saved[0], "roofline": roof, "runs": args.runs_note,
                                                   "results": results}, indent=1))
        return 0

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    perf_path = HERE / "perf_config.json"
    perf = json.loads(perf_path.read_text())
    if args.smoke:
        args.rows, args.repeats, args.timed_batches, args.auc_epochs = 600, 1, 2, 1
        perf["batch_size"] = 64
        perf_path = work / "perf_config_smoke.json"
        perf_path.write_text(json.dumps(perf))
    pythons = {**{lib: sys.executable for lib in ("ctrlab", *VARIANTS)}, "fuxictr": args.peers_python,
               "deepctr": args.peers_python}
    libraries = [lib for lib in args.libraries if lib.startswith("ctrlab") or Path(pythons[lib]).exists()]
    if len(libraries) < len(args.libraries):
        log(f"[bench-peers] peers venv {args.peers_python} missing: running {libraries} only "
            "(create it with benchmarks/peers/setup_fuxictr.sh)")
    parquet, tsv = make_data(args.rows, work, log)
    # shared_dir: each library's encoded copy of the train Parquet, built by its first train/infer
    # worker and reused by the others (not timed there; the preprocess task always starts from scratch)
    base = {"perf_config": str(perf_path), "threads": args.threads, "fuxictr": args.fuxictr,
            "shared_dir": str(work / "shared")}

    jobs: list[tuple[str, str | None, dict]] = []
    if "preprocess" in args.tasks:
        jobs.append(("preprocess", None, {"tsv": str(tsv)}))
        real = criteo_head(log)
        if real is not None:  # the same task on real Criteo lines: hex ids, empty cells, real skew
            jobs.append(("preprocess", REAL_CRITEO, {"tsv": str(real)}))
    frappe = {}
    if "auc" in args.tasks:  # the real split every library trains on for the accuracy check
        from ctrlab.data.datasets import get_dataset

        fcfg = get_dataset("frappe_x1_subset")
        frappe = {"train_csv": fcfg.files["train"], "valid_csv": fcfg.files["valid"], "test_csv": fcfg.files["test"],
                  "categorical": [f.name for f in fcfg.features], "numeric": [], "label": fcfg.labels[0]}
    for task in ("train", "infer", "auc"):
        if task in args.tasks:
            for model in args.models:
                cfg = {"model": model, "train_parquet": str(parquet), "timed_batches": args.timed_batches,
                       "epochs": args.auc_epochs, "rows": min(65536, args.rows), "single_rows": 200}
                jobs.append((task, model, {**cfg, **frappe} if task == "auc" else cfg))
    results: list[dict] = []
    for task, model, cfg in jobs:
        for r in range(args.repeats):
            order = libraries if r % 2 == 0 else libraries[::-1]  # A B C, C B A, ...: drift cancels
            for lib in order:
                if task == "preprocess" and lib in VARIANTS:
                    continue  # speed options act on training and inference, not on preprocessing
                extra = VARIANTS.get(lib, ("", {}))[1]
                if task == "infer" and (extra.get("sparse_embeddings") or extra.get("compile")):
                    continue  # training-only levers: inference is the fp32/bf16 columns' 
                wd = work / "runs" / f"{lib}-{task}-{model}-{r}"
                res = run_worker(lib, pythons[lib], task, {**base, **cfg, "work_dir": str(wd)}, args.timeout)
                res.update({"library": lib, "task": task, "model": model, "repeat": r})
                results.append(res)
                what = res.get("error") or res.get("unsupported") or ", ".join(
                    f"{k}={v:.4g}" for k, v in res.items() if isinstance(v, float))
                log(f"[bench-peers] {task:10s} {model or '':8s} {lib:8s} #{r}: {what}")
    roof = roofline(args.threads) if "roofline" in args.tasks else None
    from ctrlab.bench.runner import cpu_name

    machine = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
               "threads": args.threads, "cpu": cpu_name()}
    report = render(results, libraries, args, perf, roof, machine)
    print(report)
    if args.output:
        write_report(Path(args.output), report)
        log(f"[bench-peers] wrote {args.output}")
    if args.json:
        run_args = {k: getattr(args, k) for k in ("rows", "repeats", "models", "tasks", "smoke", "threads",
                                                  "timed_batches", "auc_epochs")}
        Path(args.json).write_text(json.dumps({"machine": machine, "roofline": roof, "args": run_args,
                                               "results": results}, indent=1))
    failed = [r for r in results if "error" in r]
    return 1 if failed and args.smoke else 0


FIGURES = {  # task -> (metric, label, higher is better)
    "preprocess": [("rows_per_s", "rows/s", True), ("peak_rss_mb", "peak RSS MB", False)],
    "train": [("samples_per_s", "samples/s", True)],
    "infer": [("rows_per_s", "rows/s (batch 4096)", True), ("single_row_ms_p50", "1-row p50 ms", False),
              ("single_row_ms_p99", "1-row p99 ms", False)],
    "auc": [("test_auc", "test AUC", True)],
}


def targets(results: list[dict], libraries: list[str], models: list[str]) -> list[str]:
    """Issue 5's targets, each checked on the medians of this run: met, or by how much it is missed."""
    def med(lib, task, model, key):
        return median([r.get(key) for r in results if r["library"] == lib and r["task"] == task
                       and r["model"] == model])

    rows = []
    def check(what, ok, detail):
        rows.append(f"| {what} | {'met' if ok else '**not met**'} | {detail} |")

    ours_all = [lib for lib in libraries if lib.startswith("ctrlab")]
    for peer, need in (("fuxictr", 5.0), ("deepctr", 2.0)):
        if peer not in libraries:
            continue
        for model in models:
            for ours in ours_all:
                a, b = med(ours, "train", model, "samples_per_s"), med(peer, "train", model, "samples_per_s")
                if a and b:
                    check(f"{LABELS[ours]} train {model}: ≥ {need:g}× {LABELS[peer]}", a / b >= need, f"{a / b:.2f}×")
    if "fuxictr" in libraries:
        a, b = med("ctrlab", "preprocess", None, "rows_per_s"), med("fuxictr", "preprocess", None, "rows_per_s")
        if a and b:
            check("preprocess rows/s ≥ 10× FuxiCTR", a / b >= 10, f"{a / b:.2f}×")
        a, b = med("ctrlab", "preprocess", None, "peak_rss_mb"), med("fuxictr", "preprocess", None, "peak_rss_mb")
        if a and b:
            check("preprocess peak RSS ≤ 0.5× FuxiCTR", a / b <= 0.5, f"{a / b:.2f}×")
    for peer in [lib for lib in libraries if not lib.startswith("ctrlab")]:
        for model in models:
            a, b = med("ctrlab", "auc", model, "test_auc"), med(peer, "auc", model, "test_auc")
            if a and b:
                check(f"test AUC {model} ≥ {LABELS[peer]} − 0.001", a >= b - 0.001, f"{a - b:+.4f}")
    for ours in [lib for lib in libraries if lib.startswith("ctrlab")]:
        a = med(ours, "train", "DeepFM", "samples_per_s")
        if a:
            check(f"{LABELS[ours]} DeepFM training ≥ 100k samples/s", a >= 100_000, f"{a:,.0f} samples/s")
    for ours in [lib for lib in libraries if lib.startswith("ctrlab-")]:
        for model in models:
            a, b = med(ours, "auc", model, "test_auc"), med("ctrlab", "auc", model, "test_auc")
            if a and b:
                check(f"{LABELS[ours]} test AUC {model} ≥ ctrlab fp32 − 0.001", a >= b - 0.001, f"{a - b:+.4f}")
    if not rows:
        return []
    return ["## Targets (issue 5)", "", "| target | status | this run |", "|---|---|---|", *rows, ""]


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _subset_flags(args) -> str:
    """The --tasks / --models flags of a run that did not measure everything."""
    out = ""
    if list(args.tasks) != DEFAULT_TASKS:
        out += " --tasks " + " ".join(args.tasks)
    if list(args.models) != MODELS:
        out += " --models " + " ".join(args.models)
    return out


def render(results: list[dict], libraries: list[str], args, perf: dict, roof: dict | None, machine: dict) -> str:
    peers = [lib for lib in libraries if not lib.startswith("ctrlab")]
    head = ["task", "model", "figure", *[LABELS[lib] for lib in libraries], *[f"ctrlab / {LABELS[p]}" for p in peers]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, figures in FIGURES.items():
        models = [None, REAL_CRITEO] if task == "preprocess" else args.models
        for model in models:
            rs = [r for r in results if r["task"] == task and r["model"] == model]
            if not rs:
                continue
            for key, label, _ in figures:
                med = {lib: median([r.get(key) for r in rs if r["library"] == lib]) for lib in libraries}
                cells = [task, model or "–", label]
                for lib in libraries:
                    errs = [r.get("error") or r.get("unsupported") for r in rs if r["library"] == lib]
                    cells.append(_num(med[lib]) if med[lib] is not None else ("n/a" if any(errs) else "–"))
                for p in peers:
                    ok = med["ctrlab"] is not None and med[p]
                    if task == "auc":  # a ratio of AUCs says nothing: the difference
                        cells.append(f"Δ {med['ctrlab'] - med[p]:+.4f}" if ok else "–")
                    else:
                        cells.append(f"{med['ctrlab'] / med[p]:.2f}×" if ok else "–")
                lines.append("| " + " | ".join(cells) + " |")
    errors = sorted({f"{r['library']} {r['task']} {r['model'] or ''}: {r.get('error') or r.get('unsupported')}"
                     for r in results if r.get("error") or r.get("unsupported")})
    text = ["# Performance: ctrlab vs FuxiCTR vs DeepCTR-Torch", "",
            f"Command: `python benchmarks/peers/bench_peers.py --rows {args.rows} --repeats {args.repeats}"
            f"{' --smoke' if args.smoke else ''}{_subset_flags(args)}` (`make bench-peers` runs the default tasks at 1M rows). Medians over {args.repeats} repeats, each in a "
            "fresh process, libraries interleaved (A B C, C B A, ...). Same data (synthetic Criteo-shaped, "
            f"{args.rows:,} training rows), same hyperparameters (`benchmarks/peers/perf_config.json`: embedding "
            f"{perf['embedding_dim']}, batch {perf['batch_size']}, Adam {perf['lr']})."
            + (f" Runs pooled here: {args.runs_note}." if getattr(args, "runs_note", None) else ""), "",
            f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads per run; "
            f"{machine['platform']}, Python {machine['python']}.", "", *lines, ""]
    if errors:
        text += ["Not measured:", "", *[f"* {e}" for e in errors], ""]
    text += targets(results, libraries, args.models)
    if roof:
        flops = deepfm_flops_per_sample(perf)
        ours = median([r.get("samples_per_s") for r in results
                       if r["task"] == "train" and r["model"] == "DeepFM" and r["library"] == "ctrlab"])
        text += ["## Roofline", "",
                 f"torch matmul (4096×400)@(400×400) on {machine['threads']} threads: "
                 + ", ".join(f"{k} {v:,.0f} GFLOP/s" for k, v in roof.items()) + ".",
                 f"DeepFM's MLP costs {flops / 1e6:.2f} MFLOP per training sample (forward + backward ≈ 3× "
                 f"forward), so fp32 caps DeepFM at {roof['float32'] * 1e9 / flops:,.0f} samples/s"
                 + (f"; ctrlab's DeepFM step reaches {ours:,.0f} samples/s = "
                    f"{ours / (roof['float32'] * 1e9 / flops):.0%} of that cap." if ours else "."), ""]
    notes = HERE / "performance_notes.md"  # the hand-written analysis (profiles, levers), kept beside the harness
    if notes.is_file() and not args.smoke and not getattr(args, "no_notes", False):
        text += [notes.read_text().strip(), ""]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
