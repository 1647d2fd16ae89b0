"""Regenerate docs/results.md from the zoo plan's runs in the results store.

The runs are those of ``benchmarks/plans/zoo.yaml`` (``ctrlab bench benchmarks/plans/zoo.yaml`` runs
them: resumable, finished runs skipped, run folders made before the store existed adopted):

* ``frappe_x1_subset``: all feature-interaction models with their shipped presets (the BARS
  Frappe_x1 tuned hyperparameters where BARS has the model), under the BARS protocol (grid
  ``main``); extra seeds for the models whose 3-seed mean fell below FuxiCTR's by more than 0.001
  (grid ``more-seeds``); DNN,
  DeepFM, DCNv2 and FinalMLP also under the ``robust`` protocol (grid ``robust``: ctrlab's
  documented non-BARS options for small data).
* ``movielens_100k``: DNN (history mean-pooled) vs DIN (target attention over the history).

Each table has mean ± sample std over seeds of test AUC and logloss, epochs, seconds per epoch
and parameters; beside it FuxiCTR's numbers on the same split with the same hyperparameters
(``benchmarks/peers/results/fuxictr_<dataset>.json``, written by
``benchmarks/peers/run_fuxictr.py``) and, for frappe, the published BARS numbers (shipped in
``ctrlab/bench/published/bars.csv``).

Every ctrlab-vs-FuxiCTR comparison reports n per library, mean ± sample std, Δ of the means with
its Welch standard error, and the accuracy bar of issue 14 (:func:`compare`): ctrlab's mean test
AUC is not below FuxiCTR's by more than 0.001, or, with at least 10 seeds in each library, not
significantly below it (Δ + 2·SE ≥ 0). The margin alone cannot be judged at 3 seeds (the SE of a
3-seed Δ is about 0.0013 on frappe_x1_subset, larger than the margin), hence the significance
clause and the extra seeds.

    make results   # = ctrlab bench benchmarks/plans/zoo.yaml, then this script --finished-only
    python benchmarks/zoo_results.py --from-json docs/results.json   # re-render the stored runs
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "benchmarks" / "plans" / "zoo.yaml"
# Models where the peer library has no counterpart: checked against their spec sheet instead.
SHEET_CHECKED = {"FCN": "tests/models/test_fcn.py", "ECN": "tests/models/test_fcn.py",
                 "LCN": "tests/models/test_fcn.py"}

BAR_MARGIN = 0.001
"""ctrlab's mean test AUC may be this much below FuxiCTR's (issue 14's accuracy bar)."""
BAR_MIN_SEEDS = 10
"""Seeds per library from which "not significantly below" (Δ + 2·SE ≥ 0) also passes the bar."""
BAR_RULE = ("Δ = ctrlab mean − FuxiCTR mean, SE = its standard error (Welch: √(s₁²/n₁ + s₂²/n₂)); "
            "bar: Δ ≥ −0.001, or, with ≥ 10 seeds per library, not significantly below (Δ + 2·SE ≥ 0)")


def plan_layout(plan) -> dict[str, dict]:
    """Per dataset, from the plan's named grids: main seeds and model order per protocol, and the
    extra seeds and their models (grid ``more-seeds``)."""
    out: dict[str, dict] = {}
    for g in plan.grids:
        for dataset in g.datasets:
            d = out.setdefault(dataset, {"seeds": [], "protocols": {}, "more_seeds": [], "more_models": []})
            if g.name == "more-seeds":
                d["more_seeds"] += [s for s in g.seeds if s not in d["more_seeds"]]
                d["more_models"] += [m for m in g.models if m not in d["more_models"]]
                continue
            if g.name == "main":
                d["seeds"] += [s for s in g.seeds if s not in d["seeds"]]
            for protocol in g.protocols:
                models = d["protocols"].setdefault(protocol, [])
                models += [m for m in g.models if m not in models]
    return out


def store_results(plan, store) -> list[dict]:
    """Finished runs of the plan, in plan order, as flat records (metrics + validation AUC curve)."""
    from ctrlab.bench import expand

    results = []
    for job in expand(plan):
        row = store.get(job.key)
        if row is None or row["status"] != "finished":
            continue
        curve = [round(e["valid_auc"], 6) for e in store.epochs(job.key)]
        results.append({"dataset": job.dataset, "protocol": job.protocol, "model": job.model, "seed": job.seed,
                        **row["metrics"], "valid_AUC_by_epoch": curve})
    return results


def published_numbers(dataset: str) -> dict[str, tuple[float, float]]:
    from ctrlab.bench.report import PUBLISHED_SPLITS, load_published

    split = PUBLISHED_SPLITS.get(dataset, (None, False))[0]
    return {m: (v["auc"], v["logloss"]) for m, v in load_published().get(split, {}).items()}


def mean_std(xs: list[float], digits: int = 4) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.{digits}f} ± {sd:.{digits}f}"


def compare(ours: list[float], theirs: list[float]) -> dict:
    """ctrlab's values (``ours``, one per seed) against the peer's under the accuracy bar.

    Returns n, mean and sample std per side, ``diff`` (Δ = mean(ours) − mean(theirs)), ``se``
    (Welch standard error of Δ), ``passes``, ``reason`` (which clause decided) and ``text`` (the
    numbers as one phrase). The bar: Δ ≥ −BAR_MARGIN, or, when both sides have at least
    BAR_MIN_SEEDS values, Δ + 2·SE ≥ 0 (ctrlab not significantly below the peer)."""
    n_a, n_b = len(ours), len(theirs)
    if n_a == 0 or n_b == 0:
        raise ValueError(f"compare needs values on both sides (got n={n_a} and n={n_b})")
    var_a = statistics.variance(ours) if n_a > 1 else 0.0
    var_b = statistics.variance(theirs) if n_b > 1 else 0.0
    diff = statistics.mean(ours) - statistics.mean(theirs)
    se = math.sqrt(var_a / n_a + var_b / n_b)
    upper = diff + 2 * se
    enough = min(n_a, n_b) >= BAR_MIN_SEEDS
    if diff >= -BAR_MARGIN - 1e-12:  # (tolerance: a Δ printed as -0.0010 is on the margin)
        passes, reason = True, "Δ ≥ −0.001"
    elif enough:
        passes = upper >= 0
        reason = (f"not significantly below: Δ + 2·SE = {upper:+.4f} ≥ 0" if passes
                  else f"Δ < −0.001 and significantly below: Δ + 2·SE = {upper:+.4f} < 0")
    else:
        passes, reason = False, (f"Δ < −0.001; with fewer than {BAR_MIN_SEEDS} seeds per library only the "
                                 "margin applies")
    text = (f"ctrlab {mean_std(ours)} (n={n_a}), FuxiCTR {mean_std(theirs)} (n={n_b}), "
            f"Δ {diff:+.4f} ± {se:.4f}")
    return {"n_ours": n_a, "n_theirs": n_b, "diff": diff, "se": se, "passes": passes, "reason": reason,
            "text": text}


def verdict(c: dict) -> str:
    return ("meets the bar" if c["passes"] else "**below the bar**") + f": {c['reason']}"


def load_peer(path: Path, seeds: list[int]) -> dict[str, list[dict]]:
    """FuxiCTR runs of the given seeds by model, from the peer script's JSON."""
    if not path.is_file():
        return {}
    out: dict[str, list[dict]] = {}
    for r in json.loads(path.read_text())["runs"]:
        if r["seed"] in seeds:
            out.setdefault(r["model"], []).append(r)
    for model, rs in out.items():
        if len({r["seed"] for r in rs}) != len(rs):
            raise SystemExit(f"{path}: {model} has several runs of one seed (an ablation mixed in?)")
    return out


def peer_parameters_note(ours: int, theirs: list[dict]) -> str:
    """`` (FuxiCTR: N)`` when the peer's model has a different number of parameters: the same
    hyperparameters should build the same network, so a difference is a structural one to explain."""
    counts = {r["parameters"] for r in theirs if "parameters" in r}
    return "" if not counts or counts == {ours} else f" (FuxiCTR: {', '.join(f'{c:,}' for c in sorted(counts))})"


def table(rs_all: list[dict], models: list[str], peer: dict[str, list[dict]], published: dict) -> str:
    head = "| model | test AUC | test logloss | epochs | s/epoch | parameters |"
    sep = "|---|---|---|---|---|---|"
    if peer:
        head += " FuxiCTR test AUC (same split) | Δ AUC ± SE |"
        sep += "---|---|"
    if published:
        head += " BARS AUC / logloss (full train) |"
        sep += "---|"
    lines = [head, sep]
    for model in models:
        rs = [r for r in rs_all if r["model"] == model]
        if not rs:
            continue
        aucs = [r["test"]["AUC"] for r in rs]
        row = (
            f"| {model} | {mean_std(aucs)} | {mean_std([r['test']['logloss'] for r in rs])} | "
            f"{mean_std([r['epochs'] for r in rs], 1)} | {statistics.mean(r['seconds_per_epoch'] for r in rs):.2f} | "
            f"{rs[0]['parameters']:,}{peer_parameters_note(rs[0]['parameters'], peer.get(model, []))} |"
        )
        if peer:
            p = [r["test"]["AUC"] for r in peer.get(model, [])]
            c = compare(aucs, p) if p else None
            row += f" {mean_std(p)} (n={len(p)}) | {c['diff']:+.4f} ± {c['se']:.4f} |" if p else (
                f" no counterpart (sheet checks: `{SHEET_CHECKED[model]}`) | – |" if model in SHEET_CHECKED else " – | – |")
        if published:
            row += f" {published[model][0]:.4f} / {published[model][1]:.4f} |" if model in published else " – |"
        lines.append(row)
    return "\n".join(lines)


def head_to_head(ours: list[dict], theirs: list[dict]) -> dict:
    """What both comparison sections report for one model: test AUCs, Δ of the means, stalled runs
    (stopped at least 5 epochs before the median run of both libraries), and the validation AUCs at
    k, the last epoch every run of both libraries trained."""
    epochs = [r["epochs"] for r in ours + theirs]
    k, median_epochs = min(epochs), statistics.median(epochs)
    a, b = [r["test"]["AUC"] for r in ours], [r["test"]["AUC"] for r in theirs]
    return {
        "ours": a, "theirs": b, "diff": statistics.mean(a) - statistics.mean(b), "k": k,
        "stalled_ours": sum(r["epochs"] <= median_epochs - 5 for r in ours),
        "stalled_theirs": sum(r["epochs"] <= median_epochs - 5 for r in theirs),
        "valid_at_k_ours": [r["valid_AUC_by_epoch"][k - 1] for r in ours],
        "valid_at_k_theirs": [r["history"][k - 1]["AUC"] for r in theirs],
    }


def observations(rs_all: list[dict], models: list[str], peer: dict[str, list[dict]],
                 more_seeds_models: tuple[str, ...] = ()) -> str:
    """ctrlab vs FuxiCTR per model: the numbers and the accuracy bar's verdict at these runs' seeds
    (``more_seeds_models``: models whose verdict with all their seeds is in the More-seeds table)."""
    lines = [f"{BAR_RULE}; a run counts as stalled when it stopped at least 5 epochs before the median run "
             "of its model; k = the last epoch every run of the model trained (valid AUC there: the learning "
             "curves compared before any early stop).", ""]
    for model in models:
        ours = [r for r in rs_all if r["model"] == model]
        theirs = peer.get(model, [])
        if len(ours) < 2 or len(theirs) < 2:
            continue
        h = head_to_head(ours, theirs)
        a, b = h["ours"], h["theirs"]
        c = compare(a, b)
        more = " (verdict over all seeds: More seeds, below)" if model in more_seeds_models else ""
        lines.append(
            f"* {model}: {c['text']}: {verdict(c)}{more}; stalled runs: ctrlab {h['stalled_ours']}/{len(a)}, "
            f"FuxiCTR {h['stalled_theirs']}/{len(b)}; AUC range ctrlab {min(a):.4f}–{max(a):.4f}, "
            f"FuxiCTR {min(b):.4f}–{max(b):.4f}; valid AUC at k = {h['k']}: ctrlab "
            f"{statistics.mean(h['valid_at_k_ours']):.4f}, FuxiCTR {statistics.mean(h['valid_at_k_theirs']):.4f}."
        )
    return "\n".join(lines)


def more_seeds_section(models: list[str], more_seeds: list[int], bars: list[dict], peer_file: Path,
                       seeds: list[int]) -> str:
    """Both libraries over the main seeds plus ``more_seeds``, for ``models`` (grid ``more-seeds``)."""
    if not models:
        return ""
    seeds_all = list(dict.fromkeys([*seeds, *more_seeds]))
    peer = load_peer(peer_file, seeds_all)
    lines = [f"### More seeds: {', '.join(models)}", "",
             f"Up to seeds {seeds_all[0]}–{seeds_all[-1]}, the same in both libraries: 10 seeds for the models whose "
             "3-seed Δ was below −0.001, 20 for those still below it at 10 (rule and reason: the `more-seeds` grids "
             "of `benchmarks/plans/zoo.yaml`; n = runs per library). "
             f"{BAR_RULE}: the verdict column. Stalled = stopped ≥ 5 epochs before the model's median run. Epoch "
             "k = the last epoch that every run of the model (both libraries) trained: the mean validation AUC "
             "there compares the learning curves before any early stop could cut a run short. FinalMLP's gap: both "
             "training procedures side by side, re-runs and a hybrid of the two in `benchmarks/peers/README.md` "
             "(issue 14.11).", "",
             "| model | ctrlab test AUC | ctrlab stalled | FuxiCTR test AUC | FuxiCTR stalled | Δ ± SE "
             "| k | valid AUC at k: ctrlab / FuxiCTR | accuracy bar |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in models:
        ours = [r for r in bars if r["model"] == model and r["seed"] in seeds_all]
        theirs = peer.get(model, [])
        if len(ours) < 2 or len(theirs) < 2:
            continue
        h = head_to_head(ours, theirs)
        a, b = h["ours"], h["theirs"]
        c = compare(a, b)
        lines.append(
            f"| {model} | {mean_std(a)} (n={len(a)}) | {h['stalled_ours']} | {mean_std(b)} (n={len(b)}) | "
            f"{h['stalled_theirs']} | {c['diff']:+.4f} ± {c['se']:.4f} | {h['k']} | "
            f"{mean_std(h['valid_at_k_ours'])} / {mean_std(h['valid_at_k_theirs'])} | {verdict(c)} |")
    return "\n".join(lines) if not lines[-1].startswith("|---") else ""  # "" when no model had runs


FRAPPE_INTRO = """* Data: `frappe_x1_subset`: train/valid = a seeded (2023) 80/20 split of the published BARS Frappe_x1
  **valid** file (46,178 / 11,544 rows), test = the published Frappe_x1 **test** file (28,860 rows). The BARS
  train file (202,027 rows) is not available here, so the models see 23% of the BARS training data.
* Hyperparameters: the shipped presets `src/ctrlab/configs/presets/frappe_x1/*.yaml`: the BARS Frappe_x1
  tuned values (run ids in each file) for every model BARS has, embedding_dim 10, batch 4096, Adam lr 1e-3;
  FGCNN and FCN/ECN/LCN have no BARS run: their preset files say where their values come from.
* Parameters: ctrlab's count; FuxiCTR's is shown beside it where the two differ.
* The BARS column is the published leaderboard number on the full Frappe_x1 train split: **not comparable**
  (4.4× more training rows); it is shown for orientation only."""

MOVIELENS_INTRO = """* Data: `movielens_100k`: the GroupLens ml-100k ratings as CTR (label = rating ≥ 4), split by time
  80/10/10 (80,003 / 9,997 / 10,000 rows); `history` = the user's earlier liked items (≤ 20, strictly
  before the row), `genres` multi-valued. Not a BARS dataset: no published number.
* Hyperparameters: `src/ctrlab/configs/presets/movielens_100k/{DNN,DIN}.yaml`, one hand-picked setting
  (not tuned) shared by both models: they differ only in how `history` is pooled (mean vs target
  attention of the candidate `item_id`)."""

INTROS = {"frappe_x1_subset": FRAPPE_INTRO, "movielens_100k": MOVIELENS_INTRO}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plan", default=str(PLAN), help="the bench plan whose runs are rendered (default %(default)s)")
    ap.add_argument("--output", default="docs/results.md")
    ap.add_argument("--db", help="results store (default: the plan's)")
    ap.add_argument("--jobs", type=int, help="parallel runs (default: the plan's)")
    ap.add_argument("--peer-dir", default="benchmarks/peers/results",
                    help="folder of fuxictr_<dataset>.json (benchmarks/peers/run_fuxictr.py)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: render the finished runs in the store (after `ctrlab bench PLAN`)")
    ap.add_argument("--from-json", metavar="JSON",
                    help="train nothing and read no store: render the runs recorded in JSON (a docs/results.json "
                         "written earlier by this script), e.g. after a change to this rendering")
    ap.add_argument("--peer-args", metavar="DATASET",
                    help="print run_fuxictr.py's --models/--seeds for DATASET's extra seeds (a line per "
                         "more-seeds grid) and exit")
    ap.add_argument("--print", action="store_true", help="also print the tables (ctrlab beside FuxiCTR)")
    args = ap.parse_args()

    from ctrlab.bench import ResultsStore, load_plan, run_plan

    plan = load_plan(args.plan, db=args.db, jobs=args.jobs)
    layout = plan_layout(plan)
    if args.peer_args:  # used by `make peers`: one line per more-seeds grid
        for g in plan.grids:
            if g.name == "more-seeds" and args.peer_args in g.datasets:
                print(f"--models {' '.join(g.models)} --seeds {' '.join(map(str, g.seeds))}")
        return 0

    import torch

    import ctrlab

    t0 = time.time()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())["runs"]
    else:
        if not args.finished_only:
            if any(o.how == "failed" for o in run_plan(plan)):
                print("some runs failed (see above); rendering the finished ones", file=sys.stderr)
        with ResultsStore(plan.db) as store:
            results = store_results(plan, store)
    minutes = (time.time() - t0) / 60

    from ctrlab.bench import PROTOCOLS

    robust = " ".join(f"`trainer.{k}={v}`" for k, v in PROTOCOLS["robust"].items())
    sections = []
    for dataset, spec in layout.items():
        seeds = spec["seeds"]
        published = published_numbers(dataset)
        peer_file = Path(args.peer_dir) / f"fuxictr_{dataset}.json"
        peer = load_peer(peer_file, seeds)
        rs = [r for r in results if r["dataset"] == dataset]
        intro = INTROS[dataset]
        peer_note = (f"* FuxiCTR column: `{peer_file}` (FuxiCTR's own pipeline and training loop, the same split "
                     f"files, hyperparameters and protocol; `benchmarks/peers/run_fuxictr.py --dataset {dataset}`)."
                     if peer else "* FuxiCTR column: not shown (no peer results file; see `benchmarks/peers/`).")
        parts = [f"## {dataset} (real data)\n\n{intro}\n{peer_note}"]
        bars = [r for r in rs if r["protocol"] == "bars" and r["seed"] in seeds]
        if bars:
            parts.append("### BARS protocol (default)\n\nEarly stop on validation AUC with patience 2, LR ×0.1 on each "
                         "plateau epoch, best weights restored, then test.\n\n"
                         + table(bars, spec["protocols"]["bars"], peer, published))
            if peer:
                parts.append("### ctrlab vs FuxiCTR (BARS protocol)\n\n"
                             + observations(bars, spec["protocols"]["bars"], peer, tuple(spec["more_models"])))
            more = more_seeds_section(spec["more_models"], spec["more_seeds"],
                                      [r for r in rs if r["protocol"] == "bars"], peer_file, seeds)
            if more:
                parts.append(more)
        robust_rs = [r for r in rs if r["protocol"] == "robust"]
        if robust_rs:
            parts.append(
                "### Robust protocol (documented ctrlab options, not BARS)\n\n"
                f"The same plus {robust}: BatchNorm statistics re-estimated exactly after every epoch (with only "
                "12 batches per epoch the running averages lag the weights, so validation sees miscalibrated "
                "activations), and no early stop before epoch 10 (patience 2 alone can end a run after 5 epochs "
                "on this small split).\n\n" + table(robust_rs, spec["protocols"]["robust"], {}, published))
        sections.append("\n\n".join(parts))
    body = "\n\n".join(sections)
    text = f"""# Results

Regenerate with one command: `make results` (= `ctrlab bench benchmarks/plans/zoo.yaml`, which runs
what is missing (finished runs are skipped), then `python benchmarks/zoo_results.py --finished-only`);
`make report` also writes the HTML report of the same runs (`docs/report/`). Results store: `{plan.db}`.

* Seeds {", ".join(map(str, sorted({s for d in layout.values() for s in d["seeds"]})))} (main tables): mean ± sample std over seeds. Each run uses 1 torch thread on CPU.
* s/epoch is wall time per epoch (training + validation) as measured in each run, often with another run
  sharing the machine: a rough cost indication, not a speed benchmark (those live in `benchmarks/`).
* Machine: {platform.machine()} CPU, torch {torch.__version__}, ctrlab {ctrlab.__version__}; {len(results)} runs,
  {sum(r["train_seconds"] for r in results) / 60:.0f} min of training in total (this regeneration: {minutes:.1f} min).

{body}

Per-run numbers: `docs/results.json`; per-epoch curves: the results store (`epochs` table) and
`history.json` in each run folder.
"""
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    if Path(args.output).exists():  # other scripts' marked sections (own_data.py) are theirs: kept
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from script_io import sections

        kept = sections(Path(args.output).read_text())
        text = text.rstrip("\n") + "".join(f"\n\n{block}" for block in kept.values()) + "\n"
    Path(args.output).write_text(text)
    json_out = Path(args.output).with_suffix(".json")
    if not (args.from_json and json_out.resolve() == Path(args.from_json).resolve()):  # (same runs: keep the file)
        json_out.write_text(json.dumps({"minutes": minutes, "runs": results}, indent=1))
    if args.print:
        print(body)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
