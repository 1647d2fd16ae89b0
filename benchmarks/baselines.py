"""What users would pick instead, measured beside the deep models (issue 19): the baselines section of
docs/results.md, from the runs of ``benchmarks/plans/baselines.yaml``.

Every dataset × {LR, LightGBM, XGBoost, TabR, DNN, DeepFM, DCNv2, FinalMLP}, 3 seeds, each run through
``ctrlab bench`` on the same encoded splits (vocabularies fitted on train only). Per dataset a table of
test AUC and logloss (mean ± sample std, SE = std/√n), normalized entropy, calibration ratio, ECE and
the model's cost (parameters, FLOPs per row, latency of one row and of 4,096 rows, from each run's
``metrics.json``); with a ``group_field``, the per-group ranking metrics; then the verdict "where trees
win": the better of LightGBM / XGBoost against the best deep or TabR model by mean test AUC, Δ with its
Welch standard error (trees win when Δ − 2·SE > 0, lose when Δ + 2·SE < 0, a tie otherwise).

    make baselines                                              # run what is missing, then render
    python benchmarks/baselines.py --finished-only              # render the finished runs in the store
    python benchmarks/baselines.py --from-json docs/baselines.json   # re-render the recorded runs
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from script_io import mean_std_se, publish  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "benchmarks" / "plans" / "baselines.yaml"
TREES = ("LightGBM", "XGBoost")


def is_tree(label: str) -> bool:
    """A row label of a tree model: ``LightGBM``, or one of its hyperparameter sets (``LightGBM-tuned``)."""
    return label.split("-")[0] in TREES
GROUP_METRICS = ("gAUC", "gAUC_mean", "MRR", "nDCG@5", "nDCG@10")


def store_runs(plan, store) -> list[dict]:
    """The plan's finished runs as flat records: dataset, model, seed and the run's metrics.json."""
    from ctrlab.bench import expand

    runs = []
    for job in expand(plan):
        row = store.get(job.key)
        if row is not None and row["status"] == "finished":
            label = job.model if job.hparam_set == "preset" else f"{job.model}-{job.hparam_set}"
            runs.append({**row["metrics"], "dataset": job.dataset, "model": label, "seed": job.seed})
    return runs


def _values(rs: list[dict], split: str, metric: str) -> list[float]:
    out = []
    for r in rs:
        v = r.get(split, {}).get(metric)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append(float(v))
    return out


def _stat(rs: list[dict], metric: str, digits: int = 4, se: bool = False) -> str:
    xs = _values(rs, "test", metric)
    if not xs:
        return "—"
    mean, std, err = mean_std_se(xs)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" + (f" ({err:.{digits}f})" if se else "")


def _cost(rs: list[dict], key: str) -> float | None:
    xs = [r["cost"][key] for r in rs if isinstance(r.get("cost"), dict) and r["cost"].get(key) is not None]
    return statistics.median(xs) if xs else None


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """(Δ = mean(a) − mean(b), its Welch standard error √(s_a²/n_a + s_b²/n_b))."""
    va = statistics.variance(a) if len(a) > 1 else 0.0
    vb = statistics.variance(b) if len(b) > 1 else 0.0
    return statistics.mean(a) - statistics.mean(b), math.sqrt(va / len(a) + vb / len(b))


def verdict(by_model: dict[str, list[dict]], metric: str = "AUC") -> dict | None:
    """The better tree model against the best other model by mean test ``metric`` (AUC: higher is better;
    logloss: lower), or None when a side is missing. ``diff`` is signed so that > 0 favours the trees."""
    sign = -1.0 if metric == "logloss" else 1.0

    def best(names):
        scored = [(sign * statistics.mean(_values(by_model[m], "test", metric)), m) for m in names
                  if _values(by_model.get(m, []), "test", metric)]
        return max(scored)[1] if scored else None

    tree = best([m for m in by_model if is_tree(m)])
    other = best([m for m in by_model if not is_tree(m)])
    if tree is None or other is None:
        return None
    diff, se = welch(_values(by_model[tree], "test", metric), _values(by_model[other], "test", metric))
    diff *= sign
    outcome = "trees win" if diff - 2 * se > 0 else "trees lose" if diff + 2 * se < 0 else "tie"
    return {"metric": metric, "tree": tree, "other": other, "diff": diff, "se": se, "outcome": outcome}


def dataset_section(dataset: str, rs: list[dict], models: list[str]) -> tuple[str, dict | None]:
    by_model = {m: [r for r in rs if r["model"] == m] for m in models}
    by_model = {m: v for m, v in by_model.items() if v}
    header = ("| model | n | test AUC, mean ± std (SE) | test logloss | NE | calibration (pred/obs) | ECE | "
              "parameters | FLOPs/row | latency 1 row (ms) | latency 4,096 rows (ms) |")
    lines = [header, "|" + "|".join(["---"] * 11) + "|"]
    for m, mr in by_model.items():
        ne = _values(mr, "test", "NE")
        flag = " ⚠" if ne and statistics.mean(ne) >= 1 else ""
        lines.append(
            f"| {m} | {len(mr)} | {_stat(mr, 'AUC', se=True)} | {_stat(mr, 'logloss')} | {_stat(mr, 'NE')}{flag} | "
            f"{_stat(mr, 'calibration', 3)} | {_stat(mr, 'ECE')} | {_num(_cost(mr, 'parameters'), ',.0f')} | "
            f"{_num(_cost(mr, 'flops_per_row'), ',.0f')} | {_num(_cost(mr, 'latency_ms_1_row'), '.3f')} | "
            f"{_num(_cost(mr, 'latency_ms_4096_rows'), '.1f')} |")
    parts = [f"### `{dataset}`", "\n".join(lines)]
    grouped = {m: mr for m, mr in by_model.items() if any(_values(mr, "test", g) for g in GROUP_METRICS)}
    if grouped:
        gl = ["| model | " + " | ".join(GROUP_METRICS) + " |", "|" + "|".join(["---"] * (len(GROUP_METRICS) + 1)) + "|"]
        gl += [f"| {m} | " + " | ".join(_stat(mr, g) for g in GROUP_METRICS) + " |" for m, mr in grouped.items()]
        parts.append("Per-group ranking metrics on test (groups: the dataset's `group_field`):\n\n" + "\n".join(gl))
    found = {m: verdict(by_model, m) for m in ("AUC", "logloss")}
    found = {m: v for m, v in found.items() if v}
    if found:
        parts.append("Trees vs the rest: " + "; ".join(
            f"test {m}: best tree {v['tree']} vs best other {v['other']}, Δ {v['diff']:+.4f} ± {v['se']:.4f} "
            f"({'higher' if m == 'AUC' else 'lower'} is better; Δ > 0 favours the trees; Welch SE): **{v['outcome']}**"
            for m, v in found.items()) + ".")
    bad = [m for m, mr in by_model.items() if _values(mr, "test", "NE") and statistics.mean(_values(mr, "test", "NE")) >= 1]
    if bad:
        parts.append("⚠ NE ≥ 1 (test logloss no better than predicting the base rate): " + ", ".join(bad) + ".")
    return "\n\n".join(parts), [{"dataset": dataset, **v} for v in found.values()]


def render(runs: list[dict], plan) -> str:
    from script_io import markers

    datasets = list(dict.fromkeys(d for g in plan.grids for d in g.datasets))
    models = list(dict.fromkeys(m if h.name == "preset" else f"{m}-{h.name}" for g in plan.grids for m in g.models
                                for h in g.hparam_sets if h.models is None or m in h.models))
    sections, verdicts = [], []
    for d in datasets:
        rs = [r for r in runs if r["dataset"] == d]
        if rs:
            text, found = dataset_section(d, rs, models)
            sections.append(text)
            verdicts += found

    def listed(metric, outcome, none):
        return ", ".join(f"`{v['dataset']}`" for v in verdicts if v["metric"] == metric and v["outcome"] == outcome) or none

    summary = "**Where trees win** (the better of LightGBM / XGBoost against the best of the other models, Δ beyond " \
              "2 Welch SE):\n" + "\n".join(
        f"* test {m}: trees win on {listed(m, 'trees win', 'no dataset')}; lose on {listed(m, 'trees lose', 'no dataset')}; "
        f"within 2 SE on {listed(m, 'tie', 'no dataset')}." for m in ("AUC", "logloss"))
    missing = [d for d in datasets if not any(r["dataset"] == d for r in runs)]
    planned = {(d, m if h.name == "preset" else f"{m}-{h.name}", len(g.seeds)) for g in plan.grids for d in g.datasets
               for m in g.models for h in g.hparam_sets if h.models is None or m in h.models}
    short = sorted((m, d, sum(r["dataset"] == d and r["model"] == m for r in runs), n) for d, m, n in planned
                   if d not in missing and sum(r["dataset"] == d and r["model"] == m for r in runs) < n)
    short_text = ("\n\nRuns of the plan not finished yet (rerun `make baselines` to add them): " + "; ".join(
        f"{m} on `{d}` ({k} of {n} seeds)" for m, d, k, n in short) + ".") if short else ""
    begin, end = markers("baselines")
    n_train = sum(r.get("train_seconds", 0) for r in runs) / 60
    return f"""{begin}
## Trees, TabR and the deep models (`make baselines`)

`benchmarks/plans/baselines.yaml` through `ctrlab bench` (one command: `make baselines`; rendering:
`benchmarks/baselines.py`): every model on the same encoded splits (vocabularies fitted on train only),
`preset: auto` where a dataset has no BARS preset, seeds 2021–2023, 1 thread per run. LightGBM and XGBoost use
native categorical features and their default hyperparameters (on `frappe_x1_subset` also LightGBM-tuned: the
best of 24 Optuna trials of `ctrlab tune benchmarks/plans/tune_lightgbm_frappe.yaml`, chosen on validation AUC,
the deep models there running their BARS-tuned presets), and stop early on the validation split; a behaviour
sequence reaches them only as its length and latest id (docs/baselines.md). With no row or column sampling they
are deterministic, so their seeds agree. TabR with its paper's TabR-S defaults runs on the two smallest datasets
(about 30 s per epoch per 7,200 training rows on one thread); TabR-small (`d_main` 64, 32 context rows) on the
others. NE: test logloss / the logloss of predicting the test base
rate (below 1 = better; ⚠ at or above 1). Calibration: mean prediction / observed rate (1 = calibrated). ECE: 10
equal-width bins. Cost (median over the seeds): parameters (trees: tree nodes), FLOPs per row counted by
PyTorch's FLOP counter (matmuls; gathers are free; — for trees), eval-mode latency of one row and of 4,096
rows on 1 thread, measured at the end of each run beside another run. {len(runs)} runs, {n_train:.0f} min of
training{("; not yet run: " + ", ".join(f"`{d}`" for d in missing)) if missing else ""}.{short_text}

{summary}

{chr(10).join(chr(10) + s + chr(10) for s in sections)}
{end}"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(PLAN))
    ap.add_argument("--db", help="results store (default: the plan's)")
    ap.add_argument("--output", default="docs/results.md", help="Markdown file whose baselines section is replaced "
                                                                 "('none': print only)")
    ap.add_argument("--json", default="docs/baselines.json", help="raw runs (for --from-json)")
    ap.add_argument("--finished-only", action="store_true", help="train nothing: render the store's finished runs")
    ap.add_argument("--from-json", metavar="JSON", help="read no store: render the runs recorded in JSON")
    args = ap.parse_args()

    from ctrlab.bench import ResultsStore, load_plan, run_plan

    plan = load_plan(args.plan, db=args.db)
    t0 = time.time()
    if args.from_json:
        runs = json.loads(Path(args.from_json).read_text())["runs"]
    else:
        if not args.finished_only and any(o.how == "failed" for o in run_plan(plan)):
            print("some runs failed (see above); rendering the finished ones", file=sys.stderr)
        with ResultsStore(plan.db) as store:
            runs = store_runs(plan, store)
    keep = ("dataset", "model", "seed", "parameters", "epochs", "best_epoch", "train_seconds", "valid", "test",
            "cost", "reliability", "warnings")
    slim = [{k: r[k] for k in keep if k in r} for r in runs]
    plan_path = Path(args.plan).resolve()  # recorded relative to the repository: no machine's paths in docs
    plan_label = str(plan_path.relative_to(REPO)) if plan_path.is_relative_to(REPO) else str(args.plan)
    publish(render(slim, plan), args.output, None if args.from_json else args.json,
            {"plan": plan_label, "seconds": round(time.time() - t0, 1), "runs": slim})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
